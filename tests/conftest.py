"""Shared test media, generated with real ffmpeg from the synthetic two-object scene."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from scene import SR, first_mask, make_scene, write_clip  # noqa: E402

SONOMASK = str(Path(sys.executable).parent / "sonomask")


def _find_sam_audio_fixture() -> Path:
    """Fixture A (reference SAM Audio outputs): $SONOMASK_SAM_AUDIO_FIXTURE, else the
    ``shared/`` folder beside this checkout, else the workplace's /work/shared."""
    name = Path("fixtures") / "sam_audio_reference_a"
    candidates = [ROOT.parent / "shared" / name, Path("/work/shared") / name]
    env = os.environ.get("SONOMASK_SAM_AUDIO_FIXTURE")
    if env:
        return Path(env)
    for c in candidates:
        if (c / "checkpoint.pt").is_file():
            return c
    return candidates[0]


SAM_AUDIO_FIXTURE = _find_sam_audio_fixture()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600):
    """Run the installed console script; returns CompletedProcess with text output."""
    return subprocess.run(
        [SONOMASK, *args, "--quiet"]
        if args and args[0] in ("separate", "track", "demo")
        else [SONOMASK, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def probe_stream(path: Path, stream: str, entries: str) -> list[str]:
    """ffprobe's values of ``entries`` (comma-separated stream fields) for one stream."""
    out = subprocess.run(
        [
            *("ffprobe", "-v", "error", "-select_streams", stream),
            *("-show_entries", f"stream={entries}", "-of", "csv=p=0", str(path)),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().split(",")


def decode_audio(
    path: Path, stream: str = "a:0", rate: int | None = None
) -> tuple[np.ndarray, int]:
    """Decode an audio stream independently of sonomask, placed on the file's own clock.

    Returns float32 [N, C] whose sample 0 is presentation time 0 of the file (a later
    start is padded with silence, as a player would).
    """
    info = probe_stream(path, stream, "sample_rate,channels,start_time")
    sr, ch = int(info[0]), int(info[1])
    start = float(info[2]) if len(info) > 2 and info[2] not in ("", "N/A") else 0.0
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(path),
            "-map",
            f"0:{stream}",
            "-f",
            "f32le",
            "-c:a",
            "pcm_f32le",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    x = np.frombuffer(raw, np.float32).reshape(-1, ch)
    pad = int(round(start * sr))
    if pad > 0:
        x = np.concatenate([np.zeros((pad, ch), np.float32), x])
    return x, sr


# --------------------------------------------------------------------------- parallel runs
#
# CI runs the suite with pytest-xdist, `-n 3 --dist loadfile --no-loadscope-reorder`, so that
# the tests that mostly wait on real services (recovery, queue, hostile) overlap with the
# rest. Each test file runs whole in one worker (its module fixtures are built once); every
# service test starts its own Redis on a free port, its own RabbitMQ vhost, workspace and
# worker processes (tests/service.py), and each worker has its own tmp_path tree, so the
# workers share nothing but the machine. Files go out longest first (LONGEST_FIRST, measured:
# recovery ~6-7 min, queue ~4 min, the rest ~2 min or less; then the other files in file
# order), so that no long file starts last.

LONGEST_FIRST = (
    "test_recovery.py",
    "test_queue.py",
    "test_longform_sync.py",
    "test_sam_audio_cli.py",
    "test_sam_audio_model.py",
    "test_hostile.py",
    "test_web.py",
    "test_watch.py",
)


@pytest.hookimpl(trylast=True)  # after pytest's own ordering (module fixtures' tests together)
def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the controller schedules files in this order
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of small-tensor tests: on a shared 2-core machine two
    contending OpenMP threads were measured several times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def scene():
    return make_scene(duration=6.0, width=320, height=180, fps=25.0)


@pytest.fixture(scope="session")
def scene_mp4(media_dir, scene) -> Path:
    path = media_dir / "scene.mp4"
    write_clip(scene, path, stereo=True, crf=20)
    return path


@pytest.fixture(scope="session")
def mask_a(media_dir, scene) -> Path:
    path = media_dir / "mask_a.png"
    cv2.imwrite(str(path), first_mask(scene, "a"))
    return path


@pytest.fixture(scope="session")
def mask_b(media_dir, scene) -> Path:
    path = media_dir / "mask_b.png"
    cv2.imwrite(str(path), first_mask(scene, "b"))
    return path


__all__ = [
    "SR",
    "SONOMASK",
    "SAM_AUDIO_FIXTURE",
    "run_cli",
    "ffmpeg",
    "decode_audio",
    "probe_stream",
]
