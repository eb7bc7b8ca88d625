"""The restore stage streams block by block and matches one pass over the whole clip."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from model.remix import restore
from worker.settings import Settings
from worker.spec import JobSpec
from worker.stages import restore as restore_stage
from worker.workspace import Workspace


@pytest.mark.parametrize("sr,channels", [(44100, 2), (96000, 6), (48000, 1)])
def test_blockwise_restore_matches_one_pass(tmp_path, monkeypatch, sr, channels):
    rng = np.random.default_rng(1)
    seconds = 7.3
    n = int(seconds * sr)
    source = (0.1 * rng.standard_normal((n, channels))).astype(np.float32)
    m = int(np.ceil(seconds * 48000))
    target48 = (0.05 * rng.standard_normal(m)).astype(np.float32)
    residual48 = (0.05 * rng.standard_normal(m)).astype(np.float32)
    ws = Workspace.create(
        tmp_path,
        JobSpec.build(video="x.mp4", boxes=["0,0,4,4"], stem_format="float32"),
        job_id="job",
    )
    sf.write(ws.file("audio_source.wav"), source, sr, subtype="FLOAT")
    np.save(ws.file("stems_target.npy"), target48)
    np.save(ws.file("stems_residual.npy"), residual48)
    monkeypatch.setattr(restore_stage, "RESTORE_BLOCK_SECONDS", 2.0)  # several blocks
    restore_stage.run(ws, Settings.from_env())
    got_t, _ = sf.read(ws.file("target.wav"), dtype="float32", always_2d=True)
    got_r, _ = sf.read(ws.file("residual.wav"), dtype="float32", always_2d=True)
    want_t, _ = restore(source, target48, residual48, sr)
    assert got_t.shape == source.shape
    assert np.abs(got_t - want_t).max() < 1e-5
    assert np.abs(got_t + got_r - source).max() < 1e-6
