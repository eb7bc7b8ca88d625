"""Finding and loading SAM Audio checkpoints (local folder or the Hugging Face cache).

Layout of a model folder (the facebook/sam-audio-* repositories): ``config.json`` plus
``checkpoint.pt`` (a plain state dict) and/or ``model.safetensors``. The T5 text encoder is
not in the checkpoint: ``text_encoder.name`` names a folder inside the model folder or a Hub id.

Differences from the reference loader (``sam_audio/model/base.py``, ``SAMAudio.load_state_dict``)
that are deliberate: keys of parts this port does not run (PE text tower, rankers, span
predictor, T5) are ignored instead of demanded, and any other missing, unexpected or
mis-shaped key is an error that lists the first few.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from model.sam_audio.errors import SAMAudioLoadError

CHECKPOINT_FILE = "checkpoint.pt"
SAFETENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_REPO_ID = "facebook/sam-audio-base"

IGNORED_KEYS = re.compile(
    r"^(text_encoder|visual_ranker|text_ranker|span_predictor|span_predictor_transform)\."
    r"|^vision_encoder\.model\."
    r"(token_embedding|positional_embedding|transformer\.|ln_final|text_projection|logit_scale|attn_mask)"
)
"""State-dict keys that exist in released checkpoints but are unused for separation: the T5
(loaded from ``text_encoder.name``), the Perception Encoder's text tower (``pe.CLIP`` keeps it at
``vision_encoder.model.{token_embedding, transformer.resblocks.*, ...}``; only ``.visual.*`` is
used), the rankers and the span predictor."""

_TRUE = {"1", "true", "yes", "on"}


def hf_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for cache-only Hub access (read at call time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def download_hint(repo_id: str = DEFAULT_REPO_ID) -> str:
    return (
        f"accept the license at https://huggingface.co/{repo_id}, log in with "
        f"`huggingface-cli login` (or set HF_TOKEN), then run "
        f"`huggingface-cli download {repo_id}` (fills the HF cache) or "
        f"`huggingface-cli download {repo_id} --local-dir /path/to/{repo_id.split('/')[-1]}` "
        "and pass that folder"
    )


def _looks_like_repo_id(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name)) and not name.startswith(".")


def _snapshot(
    repo_id: str,
    *,
    revision: str | None,
    local_files_only: bool,
    allow_patterns: list[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            repo_id=repo_id,
            revision=revision,
            local_files_only=local_files_only,
            allow_patterns=allow_patterns,
            cache_dir=cache_dir,
        )
    )


def resolve_model_dir(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """A local folder holding config.json, from a path or a Hub repo id.

    Repo ids are looked up in the local HF cache first; the Hub is only contacted when
    ``local_files_only`` is False (default: False unless ``HF_HUB_OFFLINE`` is set).
    """
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise SAMAudioLoadError(f"{path} has no {CONFIG_FILE}; is it a SAM Audio model folder?")
        return path
    name = str(name_or_path)
    if not _looks_like_repo_id(name) or path.exists():
        raise SAMAudioLoadError(
            f"SAM Audio model folder {name!r} does not exist; to get the weights, "
            + download_hint()
        )
    if local_files_only is None:
        local_files_only = hf_offline()
    try:
        folder = _snapshot(name, revision=revision, local_files_only=True, cache_dir=cache_dir)
    except Exception as cache_err:  # noqa: BLE001 - any cache miss falls through
        if local_files_only:
            raise SAMAudioLoadError(
                f"{name!r} is not a folder and is not in the local Hugging Face cache "
                f"({'HF_HUB_OFFLINE is set' if hf_offline() else 'cache-only lookup'}); "
                + download_hint(name if "/" in name else DEFAULT_REPO_ID)
            ) from cache_err
        try:
            folder = _snapshot(name, revision=revision, local_files_only=False, cache_dir=cache_dir)
        except Exception as err:  # noqa: BLE001 - network, auth, gating, missing repo
            raise SAMAudioLoadError(
                f"could not download {name!r} from the Hugging Face Hub ({type(err).__name__}: "
                f"{err}); " + download_hint(name if "/" in name else DEFAULT_REPO_ID)
            ) from err
    if not (folder / CONFIG_FILE).is_file():
        raise SAMAudioLoadError(
            f"the cached copy of {name!r} at {folder} has no {CONFIG_FILE}; " + download_hint(name)
        )
    return folder


def find_cached_dir(
    name_or_path: str | os.PathLike[str],
    *,
    what: str,
    revision: str,
    not_found: Callable[[str], str],
    cache_dir: str | os.PathLike[str] | None = None,
    check_paths: bool = False,
) -> Path:
    """A folder with ``what``'s config.json (the span predictor, the judge): a path, or a Hub
    id (``facebook/<name>`` for a bare name) at ``revision``, then the default revision, in
    the local Hugging Face cache. Never downloads. ``not_found(repo_id)`` ends the message of a
    miss; ``check_paths``: a name that is a path and not a folder is "does not exist"."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise SAMAudioLoadError(f"{what} folder {path} has no {CONFIG_FILE}")
        return path
    name = str(name_or_path)
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.replace("/", "", 1)
    if check_paths and (looks_like_path or name.count("/") > 1 or not name.strip()):
        raise SAMAudioLoadError(f"{what} folder {name!r} does not exist")
    repo_id = name if "/" in name else f"facebook/{name}"
    for rev in (revision, None):
        try:
            folder = _snapshot(repo_id, revision=rev, local_files_only=True, cache_dir=cache_dir)
        except Exception:  # noqa: BLE001 - any cache miss
            continue
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise SAMAudioLoadError(
        f"{what} {name!r} is neither a folder nor in the local Hugging Face cache"
        + not_found(repo_id)
    )


_T5_FILES = [
    "config.json",
    "*.safetensors",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]


def resolve_text_encoder_dir(
    name: str,
    model_dir: Path | None,
    *,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Folder of the T5 named by ``text_encoder.name``.

    A folder of that name inside the model folder wins (the reference resolves the name against
    the current directory, which is where its released folders are used from); otherwise the
    name is a Hub id (``t5-base`` is also tried as ``google-t5/t5-base``) looked up in the
    local HF cache, and downloaded only when allowed.
    """
    if model_dir is not None and (Path(model_dir) / name).is_dir():
        return Path(model_dir) / name
    if Path(os.path.expanduser(name)).is_dir():
        return Path(os.path.expanduser(name))
    candidates = [name] if "/" in name else [name, f"google-t5/{name}"]
    if local_files_only is None:
        local_files_only = hf_offline()
    errors = []
    for repo in candidates:
        try:
            return _snapshot(repo, revision=None, local_files_only=True, cache_dir=cache_dir)
        except Exception as err:  # noqa: BLE001
            errors.append(err)
    if not local_files_only:
        try:
            return _snapshot(
                candidates[-1],
                revision=None,
                local_files_only=False,
                allow_patterns=_T5_FILES,
                cache_dir=cache_dir,
            )
        except Exception as err:  # noqa: BLE001
            errors.append(err)
    where = f"inside {model_dir} or " if model_dir is not None else ""
    raise SAMAudioLoadError(
        f"text encoder {name!r} is not a folder {where}in the local Hugging Face cache"
        + (" (HF_HUB_OFFLINE is set)" if hf_offline() else "")
        + f"; run `huggingface-cli download {candidates[-1]}` on a machine with network access "
        f"(last error: {type(errors[-1]).__name__}: {errors[-1]})"
    ) from errors[-1]


def load_state_dict_file(model_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of a model folder: model.safetensors when present, else checkpoint.pt
    (``torch.load(weights_only=True)``, memory-mapped)."""
    st = model_dir / SAFETENSORS_FILE
    pt = model_dir / CHECKPOINT_FILE
    if st.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except Exception as err:
            raise SAMAudioLoadError(f"cannot read {st}: {err}") from err
    if pt.is_file():
        try:
            try:
                sd = torch.load(pt, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) format cannot be mmapped
                sd = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as err:
            raise SAMAudioLoadError(f"cannot read {pt}: {err}") from err
        if not isinstance(sd, Mapping):
            raise SAMAudioLoadError(f"{pt} holds a {type(sd).__name__}, not a state dict")
        return dict(sd)
    raise SAMAudioLoadError(
        f"{model_dir} has neither {SAFETENSORS_FILE} nor {CHECKPOINT_FILE}; " + download_hint()
    )


def _first(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    head = ", ".join(items[:n])
    return head + (f", ... ({len(items)} in all)" if len(items) > n else "")


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    skip_prefixes: tuple[str, ...] = ("text_encoder.",),
    source: str = "checkpoint",
) -> list[str]:
    """Copy ``state_dict`` into ``model`` after checking it covers exactly the model.

    Keys matching IGNORED_KEYS are dropped; model keys under ``skip_prefixes`` (loaded from
    elsewhere) are not required. Returns the ignored keys. Works for models built on the
    ``meta`` device (tensors are assigned, not copied).
    """
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(skip_prefixes)}
    ignored = [k for k in state_dict if IGNORED_KEYS.search(k)]
    given = {k: v for k, v in state_dict.items() if not IGNORED_KEYS.search(k)}
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    if missing:
        raise SAMAudioLoadError(f"{source} is missing {len(missing)} weights: {_first(missing)}")
    if unexpected:
        raise SAMAudioLoadError(
            f"{source} has {len(unexpected)} weights this model does not have: "
            f"{_first(unexpected)} (wrong config.json for this checkpoint?)"
        )
    bad = [
        f"{k} {tuple(given[k].shape)} (model expects {tuple(v.shape)})"
        for k, v in own.items()
        if tuple(given[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise SAMAudioLoadError(f"{source} has {len(bad)} mis-shaped weights: {_first(bad, 3)}")
    prepared = {}
    for k, v in given.items():
        # Some checkpoints hold overlapping strided views; give every parameter its own
        # contiguous storage in the model's dtype.
        prepared[k] = v.to(own[k].dtype).contiguous().clone()
    model.load_state_dict(prepared, strict=False, assign=True)
    return ignored
