"""Checkpoint manager: atomic publish, latest pointer, keep-last-k, crash safety, RNG round trip."""

import random

import numpy as np
import pytest
import torch

from trainer.checkpoint import (CheckpointManager, load_rank_state, rng_state, save_rank_state,
                                set_rng_state)


def _writer(value):
    def write(tmp):
        save_rank_state(tmp, {"value": torch.tensor([value]), "rng": rng_state()})
    return write


def test_publish_latest_and_keep_last(tmp_path):
    mgr = CheckpointManager(tmp_path / "ck", keep_last=2)
    assert mgr.latest() is None and mgr.resolve("auto") is None
    for step in (10, 20, 30):
        mgr.save(step, _writer(step), {"mlflow_run_id": "abc"})
    names = [p.name for p in mgr.complete()]
    assert names == ["step_00000020", "step_00000030"]          # keep-last-2
    assert mgr.latest().name == "step_00000030"
    assert mgr.read_meta(mgr.latest()) == {"step": 30, "world_size": 1, "mlflow_run_id": "abc"}
    state = load_rank_state(mgr.resolve("auto"))
    assert state["value"].item() == 30


def test_crash_mid_save_leaves_previous_checkpoint(tmp_path):
    mgr = CheckpointManager(tmp_path / "ck", keep_last=1)
    mgr.save(1, _writer(1), {})

    def crashing(tmp):
        (tmp / "half_written.bin").write_bytes(b"xx")
        raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError):
        mgr.save(2, crashing, {})
    assert mgr.latest().name == "step_00000001"                  # untouched
    assert load_rank_state(mgr.latest())["value"].item() == 1
    assert any(p.name.startswith(".tmp-") for p in mgr.root.iterdir())
    mgr.clean_partial()
    assert not any(p.name.startswith(".tmp-") for p in mgr.root.iterdir())


def test_incomplete_dir_is_never_resumed(tmp_path):
    mgr = CheckpointManager(tmp_path / "ck")
    mgr.save(5, _writer(5), {})
    (mgr.root / "step_00000009").mkdir()                         # no meta.json: not complete
    (mgr.root / "latest").write_text("step_00000009")            # even a bad pointer falls back
    assert mgr.latest().name == "step_00000005"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        mgr.resolve(str(mgr.root / "step_00000009"))


def test_rng_state_round_trip_is_exact(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    mgr = CheckpointManager(tmp_path / "ck")
    mgr.save(1, lambda tmp: save_rank_state(tmp, {"rng": state}), {})
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_rank_state(mgr.latest())["rng"])          # loaded with weights_only=True
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
