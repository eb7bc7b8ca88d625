"""The real-footage tracking benchmark: its annotations hold together, and it runs.

The clips are Debian's opencv-doc videos (``benchmarks/real_clips``); the annotations and
true masks are committed beside them. CI installs opencv-doc (``scripts/setup --test``);
elsewhere the test that decodes a clip skips without it, except where
SONOMASK_TEST_ALL_BROKERS=1 says this is CI, where a missing package is a failure.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import tracking as bench  # noqa: E402
from benchmarks.real_clips import clips as real  # noqa: E402
from vision.metrics import region_similarity  # noqa: E402

SHORT = "vtest_walker"  # 61 frames of a small walker: the quickest object to track


def _need_clips() -> None:
    if real.available():
        return
    if os.environ.get("SONOMASK_TEST_ALL_BROKERS") == "1":
        pytest.fail(f"the real clips are missing on CI: {real.MISSING_HINT} (scripts/setup --test)")
    pytest.skip(real.MISSING_HINT)


@pytest.fixture(scope="module")
def objects() -> list[real.TrackObject]:
    return real.load_objects()


def test_objects_cover_both_halves_and_the_motions_asked_for(objects):
    names = [o.name for o in objects]
    assert len(names) == len(set(names)) >= 5
    assert len({o.clip for o in objects}) >= 4
    assert all(o.clip in real.SOURCES for o in objects)
    for half in ("dev", "heldout"):
        tests = {t for o in objects if o.half == half for t in o.tests}
        assert {"enter", "turn", "scale"} <= tests, f"{half} lacks {tests}"
    assert {o.half for o in objects} == {"dev", "heldout"}
    # one clip's objects are in one half, except vtest's walkers (documented in objects.json)
    for clip in {o.clip for o in objects} - {"vtest"}:
        assert len({o.half for o in objects if o.clip == clip}) == 1


def test_every_object_has_true_masks_on_its_annotated_frames(objects):
    for obj in objects:
        truth = real.load_truth(obj)
        assert sorted(truth) == sorted(obj.hints), f"{obj.name}: run annotate.py again"
        assert len(truth) >= 8 and min(truth) == obj.first and max(truth) <= obj.last
        w, h = real.work_size(obj.clip)
        for t, mask in truth.items():
            assert mask.shape == (h, w) and mask.dtype == np.uint8, (obj.name, t)
            assert set(np.unique(mask)) <= {0, 1}
            assert mask.any(), f"{obj.name}: empty mask on frame {t}"


def test_rough_first_masks_are_loose_outlines_not_the_truth(objects):
    for obj in objects:
        truth = real.load_truth(obj)[obj.first]
        rough = real.rough_mask(truth)
        iou = region_similarity(rough, truth)
        assert 0.5 < iou < 0.95, (obj.name, iou)
        covered = np.count_nonzero(rough & truth) / np.count_nonzero(truth)
        assert covered > 0.9, (obj.name, covered)  # loose around the object, not inside it


def test_the_correction_keyframe_is_the_annotated_frame_nearest_the_middle():
    assert real.correction_frame([0, 10, 20, 30, 40], 41) == 20
    assert real.correction_frame([0, 10, 30], 41) == 30  # a tie goes to the later frame
    assert real.correction_frame([0, 50], 51) == 50  # never the first frame


def test_true_masks_round_trip_through_the_packed_file(tmp_path):
    rng = np.random.default_rng(0)
    obj = real.TrackObject("thing", "cup", 0, 20, "dev", ("turn",), "")
    w, h = real.work_size("cup")
    masks = {t: (rng.random((h, w)) > 0.5).astype(np.uint8) for t in (0, 7, 20)}
    real.save_truth({"thing": masks}, tmp_path / "truth.npz")
    back = real.load_truth(obj, tmp_path / "truth.npz")
    assert sorted(back) == [0, 7, 20]
    assert all(np.array_equal(back[t], masks[t]) for t in masks)


def test_real_section_tracks_one_object_both_ways(objects, monkeypatch, tmp_path, capsys):
    _need_clips()
    obj = next(o for o in objects if o.name == SHORT)
    seq = real.sequence(obj, cache=False)  # decodes only the start of the clip
    assert seq.frames.shape == (obj.last - obj.first + 1, 360, 480, 3)
    assert 0 not in seq.scored() and seq.correction not in seq.scored()
    assert seq.correction in seq.truth
    monkeypatch.setattr(real, "sequence", lambda o: seq)

    results = bench.run_real(["flow", "copy"], [obj])
    for tracker in ("flow", "copy"):
        for mode in bench.MODES:
            r = results[tracker][mode][SHORT]
            assert 0.0 <= r.j <= 1.0 and 0.0 <= r.f <= 1.0 and r.fps > 0
            assert r.scored == len(seq.scored()) and r.frames == len(seq.frames)
    for mode in bench.MODES:  # the walker moves: following it beats standing still
        assert results["flow"][mode][SHORT].jf > results["copy"][mode][SHORT].jf
    table = bench.real_table(results, [obj])
    assert "**mean dev** (1)" in table and "+key" in table

    out = tmp_path / "real.json"
    argv = ["tracking.py", "--real-only", "--objects", SHORT, "--trackers", "copy"]
    monkeypatch.setattr(sys, "argv", [*argv, "--json", str(out)])
    bench.main()
    report = json.loads(out.read_text())
    assert set(report) == {"real"}
    means = report["real"]["means"]["copy"]
    assert set(means) == set(bench.MODES) and set(means["rough"]) == {"dev"}
    assert "| vtest_walker | dev |" in capsys.readouterr().out


def test_real_section_says_how_to_get_the_clips_when_they_are_missing(monkeypatch, capsys):
    monkeypatch.setattr(real, "available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["tracking.py", "--real-only", "--trackers", "copy"])
    bench.main()
    captured = capsys.readouterr()
    assert "apt-get install opencv-doc" in captured.err
    assert captured.out == ""
