"""Input processing for SAM Audio (reference ``sam_audio/processor.py``).

Turns descriptions, mono/multichannel waveforms, span anchors and masked videos into a
``Batch``: zero-padded mono audio, feature-frame sizes and padding mask, anchor ids and their
per-frame alignment, and video frames resampled to the audio feature rate.

Mask convention: like the reference, the model is fed videos in which the *object is zeroed*
(``mask_videos`` keeps pixels where the mask is 0). sonomask's masks are 1 = object; the
conversion lives in ``vision.prompt``. This processor takes already-masked videos.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from model.sam_audio.conditioning import ANCHOR_TOKENS
from model.sam_audio.config import SAMAudioConfig
from model.sam_audio.errors import SAMAudioInputError
from model.sam_audio.loading import CONFIG_FILE, resolve_model_dir

Anchor = tuple[str, float, float]
"""(token, start seconds, end seconds); token '+' (target present) or '-' (absent)."""


def _as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise SAMAudioInputError(
        f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}"
    )


def _load_audio_file(path: str, sample_rate: int) -> torch.Tensor:
    """[channels, N] float32 at ``sample_rate`` (soundfile + polyphase resampling; the reference
    uses torchaudio, so resampled files will not match it bit for bit)."""
    import soundfile as sf

    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:
        raise SAMAudioInputError(f"cannot read audio file {path}: {err}") from err
    wav = data.T
    if sr != sample_rate:
        from scipy.signal import resample_poly

        g = math.gcd(int(sr), int(sample_rate))
        wav = resample_poly(wav, sample_rate // g, int(sr) // g, axis=-1).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(wav))


def batch_audio(audios: Sequence, sample_rate: int = 48_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Mono mixdown (mean over channels) and right zero-padding to the longest clip.

    Each audio is [channels, N] (a 1-D [N] tensor is taken as mono), a numpy array or a file
    path. Returns audios [B, 1, Nmax] float32 and the true lengths [B] int64.
    """
    wavs = []
    for i, audio in enumerate(audios):
        if isinstance(audio, str | os.PathLike):
            wav = _load_audio_file(str(audio), sample_rate)
        else:
            wav = _as_tensor(audio, f"audios[{i}]")
        if wav.ndim == 1:
            wav = wav[None]
        if wav.ndim != 2 or wav.shape[-1] == 0:
            raise SAMAudioInputError(
                f"audios[{i}] must be [channels, samples] with samples > 0, got {tuple(wav.shape)}"
            )
        if not wav.is_floating_point():
            raise SAMAudioInputError(f"audios[{i}] must be floating point, got {wav.dtype}")
        wavs.append(wav.mean(0))
    sizes = torch.tensor([w.size(-1) for w in wavs])
    return pad_sequence(wavs, batch_first=True).unsqueeze(1), sizes


def mask_from_sizes(sizes: torch.Tensor) -> torch.Tensor:
    """[B, T] bool, True where frame t < sizes[b] (reference; ``sizes`` may be float)."""
    return torch.arange(sizes.max()).expand(len(sizes), -1) < sizes.unsqueeze(1)


class Batch:
    """Processed inputs (reference ``Batch``; same field names and dtypes).

    ``sizes`` is float32 as in the reference (``ceil(wav_sizes / hop)``).
    """

    def __init__(
        self,
        audios: torch.Tensor,
        sizes: torch.Tensor,
        wav_sizes: torch.Tensor,
        descriptions: list[str],
        hop_length: int,
        audio_sampling_rate: int,
        anchors: list[list[Anchor]] | None = None,
        audio_pad_mask: torch.Tensor | None = None,
        masked_video: list[torch.Tensor] | None = None,
    ) -> None:
        self.audios = audios
        self.sizes = sizes
        self.wav_sizes = wav_sizes
        self.descriptions = list(descriptions)
        self.audio_pad_mask = (
            audio_pad_mask if audio_pad_mask is not None else mask_from_sizes(sizes)
        )
        self.masked_video = masked_video
        self.hop_length = hop_length
        self.audio_sampling_rate = audio_sampling_rate
        if self.audios.size(0) != len(self.descriptions):
            raise SAMAudioInputError(
                f"{self.audios.size(0)} audios but {len(self.descriptions)} descriptions"
            )
        self.process_anchors(anchors)

    def _wav_to_feature_idx(self, wav_idx: float) -> int:
        return math.ceil(wav_idx / self.hop_length)

    def to(self, device: torch.device | str) -> Batch:
        self.audios = self.audios.to(device)
        self.anchor_ids = self.anchor_ids.to(device)
        self.anchor_alignment = self.anchor_alignment.to(device)
        self.sizes = self.sizes.to(device)
        self.wav_sizes = self.wav_sizes.to(device)
        self.audio_pad_mask = self.audio_pad_mask.to(device)
        if self.masked_video is not None:
            self.masked_video = [v.to(device) for v in self.masked_video]
        return self

    def process_anchors(self, anchors: list[list[Anchor]] | None) -> None:
        """Anchor ids [B, K] (``[<null>, <pad>, span tokens...]``, right-padded with <pad>) and
        per-frame positions into them [B, T]: 0 on valid frames, 1 (<pad>) on padded frames,
        ``2 + j`` inside span j (later spans overwrite earlier ones).

        The frame of a time is ``ceil(t * sr / hop)`` in Python float64, in that order, like the
        reference (0.68 s -> frame 18 at 48 kHz / 1920).
        """
        batch_size = len(self.audios)
        T = self.audio_pad_mask.size(-1)
        alignment = torch.zeros(batch_size, T, dtype=torch.long)
        alignment[~self.audio_pad_mask.cpu()] = 1
        if anchors is None:
            anchor_ids = torch.full((batch_size, 2), ANCHOR_TOKENS["<null>"], dtype=torch.long)
            anchor_ids[:, 1] = ANCHOR_TOKENS["<pad>"]
        else:
            if len(anchors) != batch_size:
                raise SAMAudioInputError(f"{len(anchors)} anchor lists for {batch_size} audios")
            ids = []
            for i, anchor_list in enumerate(anchors):
                current = [ANCHOR_TOKENS["<null>"], ANCHOR_TOKENS["<pad>"]]
                for anchor in anchor_list:
                    try:
                        token, start, end = anchor
                    except (TypeError, ValueError) as err:
                        raise SAMAudioInputError(
                            f"anchor {anchor!r} must be (token, start_seconds, end_seconds)"
                        ) from err
                    if token not in ("+", "-"):
                        raise SAMAudioInputError(f"anchor token must be '+' or '-', got {token!r}")
                    start, end = float(start), float(end)
                    if not (0 <= start <= end):
                        raise SAMAudioInputError(
                            f"anchor span ({start}, {end}) must have 0 <= start <= end"
                        )
                    s = self._wav_to_feature_idx(start * self.audio_sampling_rate)
                    e = self._wav_to_feature_idx(end * self.audio_sampling_rate)
                    alignment[i, s:e] = len(current)
                    current.append(ANCHOR_TOKENS[token])
                ids.append(torch.tensor(current))
            anchor_ids = pad_sequence(ids, batch_first=True, padding_value=ANCHOR_TOKENS["<pad>"])
        self.anchor_ids = anchor_ids.to(self.audios.device)
        self.anchor_alignment = alignment.to(self.audios.device)
        self.anchors = anchors


def sample_video_frames(video: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Pick ``num_frames`` frames spread evenly over the video (reference ``load_video`` for
    tensors: ``linspace(0, F-1, n).round()``, round half to even)."""
    idx = torch.linspace(0, video.size(0) - 1, int(num_frames)).round().long()
    return video[idx]


class SAMAudioProcessor:
    """Reference ``SAMAudioProcessor``: ``processor(descriptions=, audios=, anchors=,
    masked_videos=) -> Batch``."""

    def __init__(self, audio_hop_length: int, audio_sampling_rate: int) -> None:
        self.audio_hop_length = int(audio_hop_length)
        self.audio_sampling_rate = int(audio_sampling_rate)

    @classmethod
    def from_config(cls, config: SAMAudioConfig) -> SAMAudioProcessor:
        return cls(config.audio_codec.hop_length, config.audio_codec.sample_rate)

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike[str],
        *,
        revision: str | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> SAMAudioProcessor:
        """Read hop length and sample rate from the model folder's / cached repo's config."""
        folder = resolve_model_dir(
            model_name_or_path,
            revision=revision,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
        )
        return cls.from_config(SAMAudioConfig.from_json_file(Path(folder) / CONFIG_FILE))

    def feature_to_wav_idx(self, feature_idx):
        return feature_idx * self.audio_hop_length

    def wav_to_feature_idx(self, wav_idx):
        ceil = torch.ceil if torch.is_tensor(wav_idx) else math.ceil
        return ceil(wav_idx / self.audio_hop_length)

    def mask_videos(
        self, videos: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Zero the object: keep pixels where the mask is 0 (reference ``mask_videos``).

        videos [F, 3, H, W], masks [F, 1, H, W] or [F, 3, H, W]; the dtype is kept.
        """
        if len(videos) != len(masks):
            raise SAMAudioInputError(f"{len(videos)} videos but {len(masks)} masks")
        out = []
        for i, (v, m) in enumerate(zip(videos, masks, strict=True)):
            if isinstance(v, str | os.PathLike) or isinstance(m, str | os.PathLike):
                raise SAMAudioInputError(
                    "video files are not decoded here; pass frame tensors [F, 3, H, W]"
                )
            v, m = _as_tensor(v, f"videos[{i}]"), _as_tensor(m, f"masks[{i}]")
            out.append(v * m.eq(0))
        return out

    def __call__(
        self,
        descriptions: Sequence[str],
        audios: Sequence,
        anchors: Sequence[Sequence[Anchor]] | None = None,
        masked_videos: Sequence[torch.Tensor] | None = None,
    ) -> Batch:
        """Build a Batch.

        descriptions: one text per item ('' for none). audios: [channels, N] tensors at the
        model's sample rate (or file paths). anchors: per item a list of (token, start_s, end_s)
        or None. masked_videos: per item uint8 [F, 3, H, W] frames with the object zeroed; they
        are resampled to one frame per audio feature frame.
        """
        if isinstance(descriptions, str):
            raise SAMAudioInputError("descriptions must be a list of strings, one per audio")
        descriptions = list(descriptions)
        if not all(isinstance(d, str) for d in descriptions):
            raise SAMAudioInputError("descriptions must be a list of strings")
        if len(descriptions) != len(audios):
            raise SAMAudioInputError(f"{len(descriptions)} descriptions but {len(audios)} audios")
        if anchors is not None and len(anchors) != len(descriptions):
            raise SAMAudioInputError(f"{len(anchors)} anchor lists for {len(descriptions)} audios")
        if masked_videos is not None and len(masked_videos) != len(descriptions):
            raise SAMAudioInputError(f"{len(masked_videos)} videos for {len(descriptions)} audios")

        wavs, wav_sizes = batch_audio(audios, self.audio_sampling_rate)
        sizes = self.wav_to_feature_idx(wav_sizes)
        audio_pad_mask = mask_from_sizes(sizes)

        masked_video = None
        if masked_videos is not None:
            masked_video = []
            for i, (size, video) in enumerate(zip(sizes, masked_videos, strict=True)):
                if isinstance(video, str | os.PathLike):
                    raise SAMAudioInputError(
                        "video files are not decoded here; pass frame tensors [F, 3, H, W]"
                    )
                video = _as_tensor(video, f"masked_videos[{i}]")
                if video.ndim != 4 or video.size(1) != 3 or video.size(0) == 0:
                    raise SAMAudioInputError(
                        f"masked_videos[{i}] must be [frames, 3, H, W], got {tuple(video.shape)}"
                    )
                masked_video.append(sample_video_frames(video, int(size)))

        return Batch(
            audios=wavs,
            sizes=sizes,
            wav_sizes=wav_sizes,
            descriptions=descriptions,
            hop_length=self.audio_hop_length,
            audio_sampling_rate=self.audio_sampling_rate,
            anchors=[list(a or []) for a in anchors] if anchors is not None else None,
            audio_pad_mask=audio_pad_mask,
            masked_video=masked_video,
        )
