"""The separation benchmark's clips are what they claim: sources add up to the mixture,
every object has a mask, prompts point at real sources, and each sounding object moves
with its own sound more than with any other sound of the clip."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import uniform_filter1d

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.separation_scenes import SCENES_BY_NAME, envelope, make_scene, tools_missing  # noqa: E402

SMALL = (128, 76)
# one clip per half, each with an off-screen or silent extra so "more than the others" bites
CLIPS = ("dev-speech+percussion-b", "heldout-silent-object-b")


def _motion(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean |frame difference| inside the object's mask (union of t-1 and t), per frame."""
    g = frames.astype(np.float32).mean(axis=-1)
    d = np.abs(np.diff(g, axis=0))
    m = mask[1:] | mask[:-1]
    out = np.array([d[i][m[i]].mean() if m[i].any() else 0.0 for i in range(len(d))])
    return np.concatenate([out[:1], out])


@pytest.mark.parametrize("name", CLIPS)
def test_clip_is_consistent_and_motion_follows_own_sound(name, tmp_path, monkeypatch):
    missing = tools_missing()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    monkeypatch.setenv("SONOMASK_BENCH_CACHE", str(tmp_path))
    spec = SCENES_BY_NAME[name]
    scene = make_scene(spec, SMALL)

    total = np.sum([s.astype(np.float64) for s in scene.sources.values()], axis=0)
    assert np.max(np.abs(total - scene.mix)) < 1e-5
    assert scene.mix.dtype == np.float32 and abs(float(np.max(np.abs(scene.mix))) - 0.5) < 1e-3
    f, h, w, _ = scene.frames.shape
    assert (w, h) == SMALL and scene.frames.dtype == np.uint8
    assert np.allclose(scene.times, np.arange(f) / 25.0)

    objects = [o for o, _ in scene.prompts]
    assert sorted(objects) == sorted(scene.masks), "every on-screen object is prompted once"
    for obj, src in scene.prompts:
        mask = scene.masks[obj]
        assert mask.shape == (f, h, w) and mask.dtype == bool
        assert mask.reshape(f, -1).any(axis=1).mean() > 0.9, f"{obj} missing in many frames"
        assert src is None or src in scene.sources

    envs = {k: uniform_filter1d(envelope(x, scene.times), 5) for k, x in scene.sources.items()}
    for obj, src in scene.prompts:
        if src is None:
            continue
        motion = uniform_filter1d(_motion(scene.frames, scene.masks[obj]), 5)
        corr = {k: float(np.corrcoef(motion, e)[0, 1]) for k, e in envs.items()}
        others = {k: c for k, c in corr.items() if k != src}
        assert corr[src] > 0.1, (obj, corr)
        assert corr[src] > max(others.values()), (obj, corr)


def test_halves_share_no_sound_and_no_seed():
    """The held-out half is held out: other seeds, voices, texts, programs, drums, files."""
    import benchmarks.separation_scenes as S

    dev, held = ([s for s in S.SCENES if s.half == h] for h in ("dev", "heldout"))
    assert len(dev) == len(held) >= 12
    assert {s.category for s in dev} == {s.category for s in held} == set(S.CATEGORIES)
    assert not {s.seed for s in dev} & {s.seed for s in held}

    def langs(h: str) -> set[str]:
        out = set()
        for v in S.VOICES_BY_HALF[h]:
            lang = v.split("+")[0]
            out.add("en-gb" if lang.startswith("en-gb") else {"fr-fr": "fr"}.get(lang, lang))
        return out

    assert not set(S.VOICES_BY_HALF["dev"]) & set(S.VOICES_BY_HALF["heldout"])
    assert not langs("dev") & langs("heldout")
    texts = [set().union(*(S.TEXTS_BY_LANGUAGE[lang] for lang in langs(h))) for h in S.HALVES]
    assert not texts[0] & texts[1]
    programs = [{i.program for i in S.INSTRUMENTS_BY_HALF[h].values()} for h in S.HALVES]
    assert not programs[0] & programs[1]
    notes = [{n for n, _ in S.DRUMS_BY_HALF[h].values()} for h in S.HALVES]
    assert not notes[0] & notes[1]
    files = [set().union(*S.THEMES_BY_HALF[h].values()) for h in S.HALVES]
    assert not files[0] & files[1]
