"""Results on the editor's clock (issue 16): the source's start timecode, read from real
ffmpeg-made files, lands on frame 0 / sample 0 of every output, checked by reading each file
back with an independent reader: ``wavinfo`` (BWF bext/iXML), ffprobe (mattes) and
OpenTimelineIO with its FCP 7 XML, FCPXML and CMX 3600 adapters (timelines)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import opentimelineio as otio
import pytest
import soundfile as sf
from conftest import SR, run_cli
from wavinfo import WavInfoReader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from scene import first_mask, make_scene  # noqa: E402

from worker import media  # noqa: E402
from worker.timecode import (  # noqa: E402
    StartTimecode,
    format_timecode,
    parse_timecode,
    read_start_timecode,
)
from worker.timeline import read_fcpxml  # noqa: E402

NTSC24, NTSC30 = Fraction(24000, 1001), Fraction(30000, 1001)
W, H = 160, 90


def _write_clip(
    path: Path,
    rate: Fraction,
    seconds: float = 2.0,
    extra: tuple[str, ...] = (),
    vf: str | None = None,
    vcodec: tuple[str, ...] = ("libx264", "-crf", "20", "-pix_fmt", "yuv420p"),
    acodec: str = "aac",
):
    """A two-object scene (A panned left, B right) at exactly ``rate``; its scene."""
    scene = make_scene(duration=seconds, width=W, height=H, fps=float(rate))
    n = round(seconds * rate)
    audio = np.stack(
        [0.8 * scene.sound_a + 0.3 * scene.sound_b, 0.3 * scene.sound_a + 0.8 * scene.sound_b], 1
    ).astype(np.float32)
    pcm = path.with_suffix(".f32")
    audio.tofile(pcm)
    cmd = [
        *("ffmpeg", "-hide_banner", "-loglevel", "error", "-y"),
        *("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}"),
        *("-r", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0"),
        *("-f", "f32le", "-ar", str(SR), "-ac", "2", "-i", str(pcm)),
        *("-map", "0:v", "-map", "1:a", "-c:v", *vcodec, "-c:a", acodec),
        *(["-vf", vf, "-fps_mode", "passthrough"] if vf else []),
        *extra,
        str(path),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    bg = scene.background()
    assert proc.stdin is not None
    for i in range(n):
        proc.stdin.write(scene.frame(i, bg)[0].tobytes())
    proc.stdin.close()
    assert proc.wait() == 0
    pcm.unlink()
    return scene


def _masks(folder: Path, scene) -> dict[str, Path]:
    out = {}
    for name in ("a", "b"):
        out[name] = folder / f"mask_{name}.png"
        cv2.imwrite(str(out[name]), first_mask(scene, name))
    return out


def _ffprobe(path: Path, *args: str) -> dict:
    res = subprocess.run(
        ["ffprobe", "-v", "error", *args, "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout)


def _frame_times(path: Path) -> np.ndarray:
    info = _ffprobe(path, "-select_streams", "v:0", "-show_entries", "frame=pts_time")
    return np.array([float(f["pts_time"]) for f in info["frames"]])


# ----------------------------------------------------------------------------- counting


@pytest.mark.parametrize(
    "text,rate",
    [
        ("10:00:00:00", NTSC24),
        ("10:00:00:00", Fraction(25)),
        ("10:00:00;00", NTSC30),
        ("01:09:59;29", NTSC30),
        ("00:10:00;00", NTSC30),
        ("00:01:00;02", NTSC30),
        ("23:59:59;59", Fraction(60000, 1001)),
        ("00:00:00:00", Fraction(24)),
    ],
)
def test_counting_agrees_with_opentimelineio(text, rate):
    frames, drop = parse_timecode(text, rate)
    assert frames == otio.opentime.from_timecode(text, float(rate)).value
    assert format_timecode(frames, rate, drop) == text
    assert drop == (";" in text)


def test_drop_frame_labels_round_trip_over_a_day():
    rng = np.random.default_rng(0)
    for frames in [0, 1, 1799, 1800, 17981, 17982, *rng.integers(0, 2589407, 3000).tolist()]:
        text = format_timecode(int(frames), NTSC30, True)
        assert parse_timecode(text, NTSC30) == (int(frames), True)
        rt = otio.opentime.RationalTime(int(frames), float(NTSC30))
        assert text == otio.opentime.to_timecode(rt, float(NTSC30))


@pytest.mark.parametrize(
    "text",
    ["garbage", "", "25:00:00:00", "10:61:00:00", "10:00:00:30", "10:01:00;00", "1:2:3:4:5"],
)
def test_invalid_timecodes_are_refused(text):
    with pytest.raises(ValueError):
        parse_timecode(text, NTSC30)


def test_drop_frame_at_a_rate_without_it_is_refused():
    with pytest.raises(ValueError, match="drop-frame"):
        parse_timecode("10:00:00;00", Fraction(25))


def test_ten_hours_in_samples():
    """The BWF TimeReference of 10:00:00:00 at 48 kHz: real time since midnight."""
    assert StartTimecode(864000, NTSC24).samples(48000) == 36036 * 48000
    assert StartTimecode(900000, Fraction(25)).samples(48000) == 36000 * 48000
    assert StartTimecode(1078920, NTSC30, True).samples(48000) == 1_727_998_272  # 35999.964 s


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    "ext,rate,tc,vcodec,acodec,where",
    [
        (".mov", NTSC24, "10:00:00:00", ("libx264",), "aac", "the tmcd track"),
        (".mp4", Fraction(25), "10:00:00:00", ("libx264",), "aac", "the tmcd track"),
        (".mov", NTSC30, "10:00:00;00", ("libx264",), "aac", "the tmcd track"),
        (".mkv", Fraction(25), "10:00:00:00", ("ffv1",), "flac", "the container's timecode tag"),
        (".mxf", NTSC30, "10:00:00;00", ("mpeg2video",), "pcm_s16le", "the container's"),
        (".mxf", Fraction(25), "10:00:00:00", ("mpeg2video",), "pcm_s16le", "the container's"),
    ],
)
def test_start_timecode_is_read_from_each_container(tmp_path, ext, rate, tc, vcodec, acodec, where):
    path = tmp_path / f"clip{ext}"
    _write_clip(path, rate, 2.0, ("-timecode", tc), vcodec=vcodec, acodec=acodec)
    p = media.probe(path)
    got, warnings = read_start_timecode(p, media.picture_start(p))
    assert warnings == []
    assert (got.text, got.rate, got.drop_frame) == (tc, rate, ";" in tc)
    assert got.source.startswith(where)
    assert got.frames == otio.opentime.from_timecode(tc, float(rate)).value


def test_no_tag_counts_the_container_start_time(tmp_path):
    path = tmp_path / "late.mkv"
    _write_clip(path, Fraction(25), 2.0, ("-output_ts_offset", "10"))
    p = media.probe(path)
    got, warnings = read_start_timecode(p, media.picture_start(p))
    assert warnings == [] and got.source == "container start time"
    assert got.text == "00:00:10:00" and got.frames == 250


@pytest.mark.parametrize("tag", ["garbage", "99:99:99:99", "10:00:00;00", "\x1b[31m10:00"])
def test_a_bad_tag_falls_back_to_the_start_time_and_says_so(tmp_path, tag):
    path = tmp_path / "bad.mkv"
    _write_clip(path, Fraction(25), 2.0, ("-metadata", f"timecode={tag}"))
    p = media.probe(path)
    got, warnings = read_start_timecode(p, media.picture_start(p))
    assert got.source == "container start time" and got.frames == 0
    assert len(warnings) == 1 and "not usable" in warnings[0] and "\x1b" not in warnings[0]


# ----------------------------------------------------------------------------- a whole job


def _check_bwf(wav: Path, tc: StartTimecode, label: str, stem: str, job: dict, source: Path):
    info = WavInfoReader(str(wav))
    sr = info.fmt.sample_rate
    reference = Fraction(tc.frames * sr) / tc.rate
    assert reference.denominator == 1  # 10 h is a whole number of samples at these rates
    assert info.bext.time_reference == int(reference), wav
    assert info.bext.originator == "sonomask" and info.bext.originator_ref == job["id"][:32]
    assert info.ixml.project == source.stem
    x = info.ixml.raw_xml
    assert x.findtext("SONOMASK/JOB_ID") == job["id"]
    assert x.findtext("SONOMASK/LABEL") == label and x.findtext("SONOMASK/STEM") == stem
    assert x.findtext("SONOMASK/SOURCE_FILE") == source.name
    assert x.findtext("HISTORY/PARENT_FILENAME") == source.name
    assert x.findtext("SPEED/TIMECODE_RATE") == f"{tc.rate.numerator}/{tc.rate.denominator}"
    assert x.findtext("SPEED/TIMECODE_FLAG") == ("DF" if tc.drop_frame else "NDF")
    lo = int(x.findtext("SPEED/TIMESTAMP_SAMPLES_SINCE_MIDNIGHT_LO"))
    hi = int(x.findtext("SPEED/TIMESTAMP_SAMPLES_SINCE_MIDNIGHT_HI"))
    assert (hi << 32) + lo == int(reference)
    # still a plain WAV to soundfile, every sample where wavinfo finds the data chunk
    s = sf.info(str(wav))
    assert (s.format, s.samplerate, s.frames) == ("WAV", sr, info.data.frame_count)


def _check_matte(matte: Path, tc: StartTimecode, frames: int, alpha_of: Path | None):
    streams = _ffprobe(
        matte,
        "-show_entries",
        "stream=codec_type,codec_tag_string,avg_frame_rate,pix_fmt,nb_frames:stream_tags=timecode",
    )["streams"]
    video = [s for s in streams if s["codec_type"] == "video"]
    tmcd = [s for s in streams if s.get("codec_tag_string") == "tmcd"]
    assert len(video) == 1 and len(tmcd) == 1
    assert tmcd[0]["tags"]["timecode"] == tc.text  # frame 0 is the source's start
    assert Fraction(tmcd[0]["avg_frame_rate"]) == tc.rate  # counted at the exact rate
    assert int(video[0]["nb_frames"]) == frames
    if alpha_of is not None:
        assert video[0]["pix_fmt"] in ("yuva444p10le", "yuva444p12le")
        raw = subprocess.run(
            [
                *("ffmpeg", "-v", "error", "-i", str(matte), "-vf", "alphaextract"),
                *("-f", "rawvideo", "-pix_fmt", "gray", "pipe:1"),
            ],
            capture_output=True,
            check=True,
        ).stdout
        masks = np.load(alpha_of)["masks"]
        alpha = np.frombuffer(raw, np.uint8).reshape(masks.shape)
        assert np.array_equal(alpha, masks * 255)  # the alpha plane is the mask, exactly


def _clips(tl) -> list[tuple[str, str, otio.opentime.TimeRange]]:
    return [(t.kind, c.name, c.source_range) for t in tl.tracks for c in t.find_clips()]


def _check_timelines(out: Path, tc: StartTimecode, expected_tracks: list[str]):
    rate = float(tc.rate)
    start = otio.opentime.RationalTime(tc.frames, rate)
    # OTIO: every clip's first frame at the start timecode, at the timeline's start
    tl = otio.adapters.read_from_file(str(out / "timeline.otio"))
    assert tl.global_start_time.value == tc.frames and tl.global_start_time.rate == rate
    assert [t.name for t in tl.tracks] == expected_tracks
    clips = _clips(tl)
    for t in tl.tracks:
        for c in t.find_clips():
            assert c.source_range.start_time.value == tc.frames
            assert c.source_range.start_time.rate == rate
            assert c.source_range.start_time.to_timecode(rate, tc.drop_frame) == tc.text
            assert c.media_reference.available_range.start_time == start
            assert c.range_in_parent().start_time.value == 0
    # FCP 7 XML: well-formed, OTIO's adapter reads the same clips at the same ranges
    ET.parse(out / "timeline.xml")
    x = otio.adapters.read_from_file(str(out / "timeline.xml"), adapter_name="fcp_xml")
    assert x.global_start_time.value == tc.frames and x.global_start_time.rate == rate
    assert sorted(_clips(x), key=str) == sorted(clips, key=str)
    for e in ET.parse(out / "timeline.xml").iter("timecode"):
        assert e.findtext("string") == tc.text and int(e.findtext("frame")) == tc.frames
        assert e.findtext("displayformat") == ("DF" if tc.drop_frame else "NDF")
    # FCPXML: well-formed, every start exactly the timecode's time; OTIO's adapter reads
    # back the same clips at the same ranges (read_fcpxml: the adapter counting at the exact
    # rate; the adapter alone is shown off by up to a frame at NTSC rates, to notice a fix)
    root = ET.parse(out / "timeline.fcpxml").getroot()
    seconds = Fraction(tc.frames) / tc.rate
    starts = [e.get("start") for e in root.iter() if e.tag in ("clip", "asset")]
    assert starts and all(Fraction(s.removesuffix("s")) == seconds for s in starts)
    seq = root.find(".//sequence")
    assert Fraction(seq.get("tcStart").removesuffix("s")) == seconds
    assert seq.get("tcFormat") == ("DF" if tc.drop_frame else "NDF")
    fx = read_fcpxml(out / "timeline.fcpxml")
    fx = fx[0] if isinstance(fx, otio.schema.SerializableCollection) else fx
    back = _clips(fx)
    assert sorted(back, key=str) == sorted(clips, key=str)
    for _, _, r in back:
        assert r.start_time.to_timecode(rate, tc.drop_frame) == tc.text
    plain = otio.adapters.read_from_file(str(out / "timeline.fcpxml"), adapter_name="fcpx_xml")
    plain = plain[0] if isinstance(plain, otio.schema.SerializableCollection) else plain
    assert (sorted(_clips(plain), key=str) == sorted(clips, key=str)) == (tc.rate.denominator == 1)
    # EDL: the picture (V) and the first two stems (A, A2), source in and record in at the
    # timecode; OTIO's adapter reads back the same three clips at the same ranges
    text = (out / "timeline.edl").read_text()
    events = [line.split() for line in text.splitlines() if re.match(r"\d{3} ", line)]
    stems = [c for c in clips if c[0] == "Audio"][1:3]
    assert [e[0] for e in events] == ["001", "002", "003"][: 1 + len(stems)]
    assert [e[2] for e in events] == ["V", "A", "A2"][: 1 + len(stems)]
    for e in events:
        assert e[4] == tc.text and e[6] == tc.text
    assert f"FCM: {'DROP FRAME' if tc.drop_frame else 'NON-DROP FRAME'}" in text
    e = otio.adapters.read_from_file(str(out / "timeline.edl"), adapter_name="cmx_3600", rate=rate)
    assert [t.name for t in e.tracks] == ["V", "A1", "A2"][: 1 + len(stems)]
    edl_clips = [c for t in e.tracks for c in t.find_clips()]
    assert [c.source_range for c in edl_clips] == [clips[0][2]] + [r for _, _, r in stems]
    # in sync: the reader puts every event at the same record position
    assert len({c.range_in_parent().start_time.to_seconds() for c in edl_clips}) == 1


@pytest.mark.parametrize(
    "rate,tc,several",
    [
        (NTSC24, "10:00:00:00", False),
        (Fraction(25), "10:00:00:00", True),
        (NTSC30, "10:00:00;00", False),
    ],
    ids=["23.976", "25-two-objects-prores4444", "29.97DF"],
)
def test_everything_lands_at_ten_hours(tmp_path, rate, tc, several):
    src = tmp_path / "shoot.mov"
    scene = _write_clip(src, rate, 2.0, ("-timecode", tc))
    masks = _masks(tmp_path, scene)
    out = tmp_path / "out"
    args = ["separate", str(src), "--out", str(out), "--separator", "classical"]
    args += ["--timeline", "otio,fcp7xml,fcpxml,edl"]
    if several:
        args += ["--object", "a", "--mask", str(masks["a"]), "--object", "b"]
        args += ["--mask", str(masks["b"]), "--matte-format", "prores4444"]
    else:
        args += ["--mask", str(masks["a"]), "--matte-format", "grey"]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    job = json.loads((out / "job.json").read_text())
    frames = round(2.0 * rate)
    tc0 = StartTimecode.from_json(job["timecode"])
    assert (tc0.text, tc0.rate, tc0.source) == (tc, rate, "the tmcd track")
    for name in ("timeline.otio", "timeline.xml", "timeline.fcpxml", "timeline.edl"):
        assert name in job["outputs"] and (out / name).is_file()
    if several:
        for label in ("a", "b"):
            _check_bwf(out / "objects" / label / "target.wav", tc0, label, "target", job, src)
            _check_matte(
                out / "objects" / label / "matte.mov",
                tc0,
                frames,
                out / "objects" / label / "masks.npz",
            )
        tracks = ["picture", "matte a", "matte b", "original audio", "isolated a"]
        tracks += ["isolated b", "removed"]
    else:
        _check_bwf(out / "target.wav", tc0, "object", "target", job, src)
        _check_matte(out / "matte.mov", tc0, frames, None)
        tracks = ["picture", "matte", "original audio", "isolated", "removed"]
    _check_bwf(out / "residual.wav", tc0, "residual", "residual", job, src)
    _check_timelines(out, tc0, tracks)
    # the timeline points at the published files
    tl = otio.adapters.read_from_file(str(out / "timeline.otio"))
    urls = {c.media_reference.target_url for t in tl.tracks for c in t.find_clips()}
    assert src.resolve().as_uri() in urls
    assert all(u == src.resolve().as_uri() or u.startswith(out.resolve().as_uri()) for u in urls)
    for u in urls:
        assert Path(u.removeprefix("file://")).is_file()


# ----------------------------------------------------------------------------- mattes


def test_track_prores4444_matte_is_the_picture_with_the_mask_as_alpha(tmp_path):
    src = tmp_path / "shot.mov"
    scene = _write_clip(src, NTSC30, 2.0, ("-timecode", "10:00:00;00"))
    masks = _masks(tmp_path, scene)
    out = tmp_path / "shot.npz"
    res = run_cli("track", str(src), "--mask", str(masks["a"]), "--out", str(out))
    assert res.returncode == 0, res.stderr  # grey stays the default
    assert (tmp_path / "shot_matte.mkv").is_file()
    res = run_cli(
        *("track", str(src), "--mask", str(masks["a"]), "--out", str(out)),
        "--matte-format",
        "prores4444",
    )
    assert res.returncode == 0, res.stderr
    matte = tmp_path / "shot_matte.mov"
    _check_matte(matte, StartTimecode(1078920, NTSC30, True), 60, out)

    # the picture is the source's: its luma to within ProRes's (visually lossless) coding

    def luma(path: Path) -> np.ndarray:
        raw = subprocess.run(
            [
                *("ffmpeg", "-v", "error", "-i", str(path)),
                "-f",
                "rawvideo",
                "-pix_fmt",
                "yuv444p",
                "-",
            ],
            capture_output=True,
            check=True,
        ).stdout
        return np.frombuffer(raw, np.uint8).reshape(-1, 3, H, W)[:, 0].astype(int)

    diff = np.abs(luma(matte) - luma(src))
    assert diff.mean() < 1.0 and diff.max() <= 4
    bad = run_cli(
        *("track", str(src), "--mask", str(masks["a"]), "--out", str(out)),
        *("--matte-format", "prores4444", "--matte", str(tmp_path / "m.mkv")),
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_vfr_matte_keeps_the_frame_times_timecode_and_nominal_rate(tmp_path):
    src = tmp_path / "vfr.mov"
    # 25 fps for a second, then frames 60 ms apart: a variable frame rate
    vf = r"setpts=(N/25+gte(N\,25)*(N-25)*0.02)/TB"
    scene = _write_clip(src, Fraction(25), 2.0, ("-timecode", "10:00:00:00"), vf=vf)
    p = media.probe(src)
    tc, _ = read_start_timecode(p, media.picture_start(p))
    assert tc.text == "10:00:00:00"
    src_times = _frame_times(src)
    assert np.ptp(np.diff(src_times)) > 0.015  # really variable
    masks = _masks(tmp_path, scene)
    for name in ("m.mov", "m.mkv"):
        matte = tmp_path / name
        res = run_cli(
            *("track", str(src), "--mask", str(masks["a"])),
            *("--out", str(tmp_path / "m.npz"), "--matte", str(matte)),
        )
        assert res.returncode == 0, res.stderr
        got = _frame_times(matte)
        assert len(got) == len(src_times)
        assert np.allclose(got - got[0], src_times - src_times[0], atol=1.5e-3)
        tags = _ffprobe(matte, "-show_entries", "format_tags:stream_tags")
        if name == "m.mov":
            (tmcd,) = [
                s for s in tags["streams"] if s["tags"].get("handler_name") == "TimeCodeHandler"
            ]
            assert tmcd["tags"]["timecode"] == "10:00:00:00"
            info = _ffprobe(matte, "-show_entries", "stream=codec_tag_string,avg_frame_rate")
            rates = [
                s["avg_frame_rate"] for s in info["streams"] if s["codec_tag_string"] == "tmcd"
            ]
            assert Fraction(rates[0]) == tc.rate
        else:
            assert tags["format"]["tags"]["TIMECODE"] == "10:00:00:00"
            assert Fraction(tags["format"]["tags"]["TIMECODE_RATE"]) == tc.rate


# ----------------------------------------------------------------------------- attacks


def test_a_garbage_timecode_does_not_fail_the_job(tmp_path):
    src = tmp_path / "odd.mkv"
    scene = _write_clip(src, Fraction(25), 2.0, ("-metadata", "timecode=not-a-timecode"))
    masks = _masks(tmp_path, scene)
    out = tmp_path / "out"
    res = run_cli(
        *("separate", str(src), "--mask", str(masks["a"]), "--out", str(out)),
        *("--separator", "classical", "--timeline", "otio,edl"),
    )
    assert res.returncode == 0, res.stderr
    assert "'not-a-timecode'" in res.stderr and "container's start time" in res.stderr
    job = json.loads((out / "job.json").read_text())
    assert job["timecode"]["source"] == "container start time"
    assert job["timecode"]["timecode"] == "00:00:00:00"
    assert any("not-a-timecode" in w for w in job["warnings"])
    assert WavInfoReader(str(out / "target.wav")).bext.time_reference == 0
    tl = otio.adapters.read_from_file(str(out / "timeline.otio"))
    assert tl.global_start_time.value == 0


@pytest.mark.parametrize("value", ["avid", "otio,,", "otio,aaf", "x" * 300])
def test_a_bad_timeline_value_is_one_line_and_exit_2(tmp_path, value):
    res = run_cli("separate", str(tmp_path / "none.mp4"), "--mask", "m.png", "--timeline", value)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--timeline" in lines[0] and "otio, fcp7xml, fcpxml, edl" in lines[0]


def test_the_job_spec_takes_timelines_as_a_list_or_a_string():
    from worker.errors import BadInput
    from worker.spec import JobSpec

    base = {"video": "v.mp4", "masks": ["m.png"]}
    assert JobSpec.build(**base).timeline == ["otio"]
    assert JobSpec.build(**base, timeline="fcpxml, EDL,edl").timeline == ["fcpxml", "edl"]
    assert JobSpec.build(**base, timeline=["fcp7xml"]).timeline == ["fcp7xml"]
    assert JobSpec.build(**base, timeline="none").timeline == []
    with pytest.raises(BadInput, match="timeline"):
        JobSpec.build(**base, timeline=["premiere"])
    with pytest.raises(BadInput, match="project"):
        JobSpec.build(**base, project="a\x1bb")


def test_remux_never_hands_ffmpeg_a_garbage_timecode(tmp_path):
    """The remuxed videos rebuild MOV/MP4 timecode from the tag: only a valid one."""
    path = tmp_path / "clip.mov"
    _write_clip(path, NTSC30, 2.0, ("-timecode", "10:00:00;00"))
    p = media.probe(path)
    assert media._timecode(p) == "10:00:00;00"
    for s in p.streams:
        if "timecode" in s.raw.get("tags", {}):
            s.raw["tags"]["timecode"] = "10:00:00;00 -map 0"
    assert media._timecode(p) is None


def test_several_objects_stems_file_carries_the_timecode(tmp_path):
    src = tmp_path / "duo.mov"
    scene = _write_clip(src, Fraction(25), 2.0, ("-timecode", "10:00:00:00"))
    masks = _masks(tmp_path, scene)
    out = tmp_path / "out"
    res = run_cli(
        *("separate", str(src), "--out", str(out), "--separator", "classical"),
        *("--object", "a", "--mask", str(masks["a"]), "--object", "b", "--mask", str(masks["b"])),
        *("--stems-format", "mov", "--matte-format", "none", "--timeline", "none"),
    )
    assert res.returncode == 0, res.stderr
    job = json.loads((out / "job.json").read_text())
    assert not any(n.endswith(("matte.mov", ".otio")) for n in job["outputs"])
    info = _ffprobe(out / "stems.mov", "-show_entries", "stream=codec_tag_string:stream_tags")
    (tmcd,) = [s for s in info["streams"] if s["codec_tag_string"] == "tmcd"]
    assert tmcd["tags"]["timecode"] == "10:00:00:00"


def test_odd_file_names_still_make_valid_xml(tmp_path):
    """A source named with a control character and non-ASCII letters: the iXML and the
    XML timelines stay well-formed (the character becomes '?')."""
    from worker.bwf import StemInfo, tag_wav
    from worker.timeline import Media, TimelinePlan, write

    name = "take\x01 é & <1>.mov"
    tc = StartTimecode(900000, Fraction(25))
    wav = tmp_path / "t.wav"
    x = np.random.default_rng(0).standard_normal((4801, 2)).astype(np.float32) * 0.1
    sf.write(wav, x, 48000, subtype="PCM_24")
    before = sf.read(wav, dtype="float32")[0]
    tag_wav(wav, StemInfo("proj é", name, "object", "target", "job1", tc))
    assert np.array_equal(sf.read(wav, dtype="float32")[0], before)
    info = WavInfoReader(str(wav))
    assert info.ixml.raw_xml.findtext("SONOMASK/SOURCE_FILE") == "take? é & <1>.mov"
    assert info.ixml.project == "proj é" and info.bext.time_reference == 36000 * 48000
    media_ = Media(name, (tmp_path / name).as_uri(), 25)
    plan = TimelinePlan("proj\x02", tc, (W, H), media_, media_, [], [("isolated", media_)])
    for fmt, ext in (("fcp7xml", "xml"), ("fcpxml", "fcpxml"), ("otio", "otio"), ("edl", "edl")):
        write(plan, fmt, tmp_path / f"t.{ext}")
    ET.parse(tmp_path / "t.xml")
    ET.parse(tmp_path / "t.fcpxml")
    back = otio.adapters.read_from_file(str(tmp_path / "t.xml"), adapter_name="fcp_xml")
    assert {c.name for c in back.find_clips()} == {"take? é & <1>.mov"}
    # An EDL is lines of text: a line break in a name must not add a line (an event).
    evil = "take\n002  AX V C 00:00:00:00 00:00:01:00 00:00:00:00 00:00:01:00.mov"
    media_ = Media(evil, (tmp_path / "take.mov").as_uri(), 25)
    write(
        TimelinePlan("p\nFCM: DROP FRAME", tc, (W, H), media_, media_, [], []),
        "edl",
        tmp_path / "e.edl",
    )
    lines = (tmp_path / "e.edl").read_text().splitlines()
    assert sum(ln.startswith("002 ") for ln in lines) == 0
    assert [ln for ln in lines if ln.startswith("FCM:")] == ["FCM: NON-DROP FRAME"]
    assert any("take?002" in ln for ln in lines)
