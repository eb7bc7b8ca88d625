"""Long clips stay in sync: beeps at known times are at those times (±1 ms) everywhere.

A 150 s clip with a tiny picture (cheap to decode and track) and 48 kHz stereo audio that
is low noise plus beeps with a sharp onset at known, irregular times, several where
separation windows (``SONOMASK_WINDOW_SECONDS=20`` here) and processing blocks join and one
in the last 2 s. Times are on the picture's clock: 0 is the first video frame's
presentation time. Each beep must start within 1 ms of its time in the stems, in the
remuxed files decoded on their own clock, and in the source decoded the same way, also when
the audio starts after or before the picture and when the picture has a variable frame rate.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import soundfile as sf
from conftest import SR, decode_audio, ffmpeg, probe_stream, run_cli
from scipy.signal import correlate

DURATION = 150.0  # seconds of picture; the audio ends with it
W, H = 64, 36
SQ_X, SQ_Y, SQ = 16, 10, 16  # the white square (the object) at frame 0
# Near the joins of 20 s separation windows (18-20 s, 36-38 s, ... crossfades), of 30 s and
# 60 s windows and of restore blocks, spread irregularly, and one in the last 2 s.
BEEPS = [
    0.75,
    19.993,
    29.987,
    37.021,
    40.011,
    55.994,
    59.996,
    60.5,
    79.989,
    90.004,
    100.013,
    108.006,
    119.991,
    120.6,
    127.97,
    139.5,
    149.1,
]
BEEP_AMP = (0.5, 0.3)  # per channel; the noise is about -40 dBFS
TOL = SR // 1000  # 1 ms in samples
SEARCH = SR // 20  # ±50 ms around each expected onset

# Frame rates of the VFR picture: 25 fps for 50 s, 12.5 fps for 50 s, 30 fps to the end.
VFR_PTS = "if(lt(N,1250),N/25,if(lt(N,1875),50+(N-1250)/12.5,100+(N-1875)/30))/TB"
VFR_FRAMES = 1250 + 625 + 1500


def _vfr_time(i):
    """Presentation time of frame ``i`` of the VFR picture (as ``VFR_PTS`` sets it)."""
    if i < 1250:
        return i / 25
    return 50 + (i - 1250) / 12.5 if i < 1875 else 100 + (i - 1875) / 30


CASES = {
    # name: (container, audio codec, audio start minus picture start in s, VFR picture,
    # how the stems are rebuilt at the source's rate and channels)
    "audio-late": (".mov", "pcm_s24le", 0.3, False, "masked"),
    "audio-early": (".mkv", "flac", -0.2, False, "masked"),
    "vfr": (".mkv", "flac", 0.0, True, "masked"),
    # The model's own output, joined across windows, becomes the stems (mono in each channel).
    "generative": (".mkv", "flac", 0.3, False, "generative"),
}


def _make_clip(tmp_path, ext, acodec, offset, vfr):
    """Write the clip; returns it and the picture-clock sample index of each beep."""
    rng = np.random.default_rng(3)
    off = round(offset * SR)  # audio sample i is picture time (i + off) / SR
    n = round(DURATION * SR) - off
    audio = (0.01 * rng.standard_normal((n, 2))).astype(np.float32)
    k = np.arange(SR // 10)  # 100 ms of 1 kHz, full scale at its first sample, then decaying
    burst = np.cos(2 * np.pi * 1000 * k / SR) * np.exp(-k / (0.03 * SR))
    onsets = [round(t * SR) for t in BEEPS]
    for b in onsets:
        i = b - off
        for c in range(2):
            audio[i : i + len(burst), c] += BEEP_AMP[c] * burst
    audio.tofile(tmp_path / "a.f32")
    # The object jumps aside while each beep sounds (its motion is the visual prompt).
    frame_t = _vfr_time if vfr else (lambda i: i / 25)
    frames = VFR_FRAMES if vfr else round(DURATION * 25)
    moving = [i for i in range(frames) if any(-0.02 <= frame_t(i) - t < 0.1 for t in BEEPS)]
    jump = "+".join(f"eq(n,{i})" for i in moving)
    graph = (
        f"color=c=0x203040:s={W}x{H}:r=25:d={DURATION}[bg];"
        f"color=c=white:s={SQ}x{SQ}:r=25:d={DURATION}[sq];"
        f"[bg][sq]overlay=x='{SQ_X}+3*({jump})':y={SQ_Y}:shortest=1"
    )
    if vfr:
        graph += f",trim=end_frame={VFR_FRAMES},settb=1/1000,setpts='{VFR_PTS}'"
    video_in = ["-f", "lavfi", "-i", graph + "[out0]"]
    audio_in = ["-f", "f32le", "-ar", str(SR), "-ac", "2", "-i", str(tmp_path / "a.f32")]
    if offset > 0:
        inputs = [*video_in, "-itsoffset", str(offset), *audio_in]
    else:
        inputs = ["-itsoffset", str(-offset), *video_in, *audio_in]
    vfr_out = ["-fps_mode", "passthrough", "-enc_time_base:v", "1:1000"] if vfr else []
    src = tmp_path / f"long{ext}"
    ffmpeg(*inputs, "-c:v", "libx264", *vfr_out, "-c:a", acodec, str(src))
    mask = np.zeros((H, W), np.uint8)
    mask[SQ_Y : SQ_Y + SQ, SQ_X : SQ_X + SQ] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    return src, onsets


def _separate(video, mask, out, *extra):
    env = dict(os.environ, SONOMASK_WINDOW_SECONDS="20")
    res = run_cli("separate", str(video), "--mask", str(mask), "--out", str(out), *extra, env=env)
    assert res.returncode == 0, res.stderr
    return res


def _onset(x, expected, threshold):
    """First sample within ±50 ms of ``expected`` whose magnitude exceeds ``threshold``."""
    lo = max(0, expected - SEARCH)
    seg = np.abs(x[lo : expected + SEARCH])
    hits = np.flatnonzero(seg > threshold)
    return lo + int(hits[0]) if len(hits) else None


def _offsets(x, onsets, start=0, amp=BEEP_AMP):
    """Per channel and beep: onset found in ``x`` minus expected, in samples (None: none).

    ``start`` is where the picture's time 0 is in ``x``; the threshold is half the beep's
    peak ``amp`` (per channel).
    """
    return [
        [
            None if (f := _onset(x[:, c], start + b, 0.5 * amp[c])) is None else f - start - b
            for b in onsets
        ]
        for c in range(x.shape[1])
    ]


def _lags(x, stem, onsets, start):
    """Per channel and beep: the shift (samples) that best lays ``x`` on ``stem`` near the beep.

    Least squares over ±50 ms of lag on a 100 ms stretch around each beep: 0 when the file's
    audio is its stem at the right place, whatever share of the beep the stem has.
    """
    result = []
    for c in range(x.shape[1]):
        row = []
        for b in onsets:
            v = stem[max(0, b - SEARCH) : b + SEARCH, c].astype(np.float64)
            a0 = max(0, start + b - 2 * SEARCH)
            a = x[a0 : start + b + 2 * SEARCH, c].astype(np.float64)
            corr = correlate(a, v, mode="valid", method="fft")
            energy = np.convolve(a * a, np.ones(len(v)), mode="valid")
            ssd = energy - 2 * corr + np.dot(v, v)
            row.append(a0 + int(np.argmin(ssd)) - (start + max(0, b - SEARCH)))
        result.append(row)
    return result


def _assert_in_sync(what, offs):
    worst = max((abs(o) if o is not None else np.inf) for row in offs for o in row)
    ms = [[None if o is None else round(1000 * o / SR, 3) for o in row] for row in offs]
    print(f"{what}: worst {1000 * worst / SR:.3f} ms")
    assert worst <= TOL, f"{what}: offsets in ms per channel and beep {BEEPS}: {ms}"


@pytest.mark.parametrize("case", list(CASES))
def test_beeps_stay_in_sync_in_a_long_clip(tmp_path, case):
    ext, acodec, offset, vfr, method = CASES[case]
    src, onsets = _make_clip(tmp_path, ext, acodec, offset, vfr)
    v0 = float(probe_stream(src, "v:0", "start_time")[0])
    start = round(v0 * SR)  # the first frame on the file's own clock, in samples
    expected = round(DURATION * SR)  # stems run from the first frame to the audio's end

    src_audio, sr = decode_audio(src)
    assert sr == SR
    _assert_in_sync(f"{case} source", _offsets(src_audio, onsets, start))

    out = tmp_path / "out"
    # The object's jumps and "+" spans on the beeps send the beeps to the target stem.
    spans = [a for t in BEEPS for a in ("--span", f"+{t:.3f}-{t + 0.1:.3f}")]
    extra = ["--reconstruct", method]
    if method == "generative":
        extra += ["--tracker", "copy"]  # the other cases track; this one saves the time
    _separate(src, tmp_path / "mask.png", out, *spans, *extra)

    t, tsr = sf.read(str(out / "target.wav"), dtype="float32", always_2d=True)
    r, _ = sf.read(str(out / "residual.wav"), dtype="float32", always_2d=True)
    assert tsr == SR and t.shape[1] == 2 and t.shape == r.shape
    both = t + r
    # Generative stems carry the model's mono mixdown (the channels' mean) in every channel.
    amp = BEEP_AMP if method == "masked" else (np.mean(BEEP_AMP),) * 2
    _assert_in_sync(f"{case} target+residual", _offsets(both, onsets, 0, amp))
    _assert_in_sync(f"{case} target", _offsets(t, onsets, 0, amp))
    assert abs(len(t) - expected) <= 1, (len(t), expected)
    ref = src_audio[start : start + len(both)]
    if method == "generative":
        ref = np.repeat(ref.mean(axis=1, keepdims=True), 2, axis=1)
    assert len(ref) >= len(both) - 1
    n = min(len(ref), len(both))
    assert np.abs(both[:n] - ref[:n]).max() <= 1e-4, "stems do not sum to the source"

    remuxed = {}
    for name, stem in ((f"isolated{ext}", t), (f"removed{ext}", r)):
        codec = probe_stream(out / name, "a:0", "codec_name")[0]
        assert codec == probe_stream(src, "a:0", "codec_name")[0], (name, codec)
        x, xsr = decode_audio(out / name)
        assert xsr == SR and x.shape[1] == 2
        remuxed[name] = x
        if name.startswith("isolated"):  # the file that holds the beeps
            _assert_in_sync(f"{case} {name}", _offsets(x, onsets, start, amp))
        _assert_in_sync(f"{case} {name} vs its stem", _lags(x, stem, onsets, start))
        assert abs(len(x) - (start + len(stem))) <= 1, (name, len(x), start + len(stem))
        m = min(len(x) - start, len(stem))
        assert np.abs(x[start : start + m] - stem[:m]).max() <= 1e-4, f"{name} != its stem"
    iso, rem = remuxed.values()
    m = min(len(iso), len(rem))
    _assert_in_sync(f"{case} isolated+removed", _offsets(iso[:m] + rem[:m], onsets, start, amp))
