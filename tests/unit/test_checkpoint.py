"""Checkpoint manager: atomic publish, latest pointer, keep-last-k, crash safety, RNG round trip; manifests,
verification, resume falling back past damaged checkpoints, load errors that name the checkpoint and the file."""

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint import (
    RunCheckpoints, load_rank_state, read_init_source, read_model_state, read_task_extra, rng_state, save_rank_state,
    set_rng_state, write_model_state, write_task_extra,
)
from trainer.checkpoint_format import (
    MANIFEST, META_VERSION, MODEL_FILE, OPTIMIZER_FILE, CheckpointError, CheckpointManager, CheckpointMeta, brief,
    rank_file, read_meta, resolve_checkpoint, verify_checkpoint, write_manifest, write_meta,
)


def _writer(value):
    def write(tmp):
        save_rank_state(tmp, {"value": torch.tensor([value]), "rng": rng_state()})
    return write


def test_publish_latest_and_keep_last(tmp_path):
    mgr = CheckpointManager(tmp_path / "ck", keep_last=2)
    assert mgr.latest() is None and mgr.resolve("auto") is None
    for step in (10, 20, 30):
        mgr.save(step, _writer(step), CheckpointMeta(step, 1, mlflow_run_id="abc"))
    names = [p.name for p in mgr.complete()]
    assert names == ["step_00000020", "step_00000030"]          # keep-last-2
    assert mgr.latest().name == "step_00000030"
    assert read_meta(mgr.latest()) == CheckpointMeta(30, 1, mlflow_run_id="abc", manifest="manifest.json")
    state = load_rank_state(mgr.resolve("auto"))
    assert state["value"].item() == 30


def test_keep_best_survives_keep_last_pruning_until_a_better_one_replaces_it(tmp_path):
    mgr = CheckpointManager(tmp_path / "ck", keep_last=1)
    scores = {10: 50.0, 20: 80.0, 30: 70.0, 40: 75.0, 50: 90.0, 60: 10.0}
    for step, score in scores.items():
        ckpt = mgr.save(step, _writer(step))
        better = mgr.record_best_(ckpt, "eval/accuracy_cross_mean", score)
        assert better == (score == max(v for s, v in scores.items() if s <= step))
        best = mgr.best()
        kept = [p.name for p in mgr.complete()]
        # keep-last-1 leaves only the newest, and the best one apart from it
        assert kept == sorted({ckpt.name, best["checkpoint"]}), (step, kept)
    assert mgr.best() == {"metric": "eval/accuracy_cross_mean", "value": 90.0, "step": 50,
                          "checkpoint": "step_00000050"}
    assert [p.name for p in mgr.complete()] == ["step_00000050", "step_00000060"]
    assert load_rank_state(tmp_path / "ck" / "step_00000050")["value"].item() == 50   # intact, loadable
    # a rerun that ranks by another metric starts its own record
    assert mgr.record_best_(tmp_path / "ck" / "step_00000060", "eval/accuracy_audio_to_video", 1.0)
    assert [p.name for p in mgr.complete()] == ["step_00000060"]


def test_crash_mid_save_leaves_previous_checkpoint(tmp_path):
    mgr = CheckpointManager(tmp_path / "ck", keep_last=1)
    mgr.save(1, _writer(1))

    def crashing(tmp):
        (tmp / "half_written.bin").write_bytes(b"xx")
        raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError):
        mgr.save(2, crashing)
    assert mgr.latest().name == "step_00000001"                  # untouched
    assert load_rank_state(mgr.latest())["value"].item() == 1
    assert any(p.name.startswith(".tmp-") for p in mgr.root.iterdir())
    mgr.clean_partial()
    assert not any(p.name.startswith(".tmp-") for p in mgr.root.iterdir())


def test_incomplete_dir_is_never_resumed(tmp_path, capsys):
    mgr = CheckpointManager(tmp_path / "ck")
    mgr.save(5, _writer(5))
    (mgr.root / "step_00000009").mkdir()                         # no meta.json: not complete
    (mgr.root / "latest").write_text("step_00000009")            # even a bad pointer falls back
    assert mgr.latest().name == "step_00000005"
    assert "step_00000009: manifest.json missing" in capsys.readouterr().err       # reported, not silently skipped
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        mgr.resolve(str(mgr.root / "step_00000009"))


def test_rng_state_round_trip_is_exact(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    mgr = CheckpointManager(tmp_path / "ck")
    mgr.save(1, lambda tmp: save_rank_state(tmp, {"rng": state}))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_rank_state(mgr.latest())["rng"])          # loaded with weights_only=True
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


# ---------------------------------------------------------------------- manifests, verification, fallback
ENGINE_FILE = "engine/optimizer.pt"
KINDS = ["rank_00000.pt", MODEL_FILE, "task_extra.pt", ENGINE_FILE, "meta.json", MANIFEST]


def _full_writer(value):
    """Every kind of file a checkpoint holds: a (fake) engine file, model.pt, task_extra.pt, this rank's state."""
    def write(tmp):
        (tmp / "engine").mkdir(exist_ok=True)
        torch.save({"exp_avg": torch.full((64,), float(value))}, tmp / ENGINE_FILE)
        write_model_state(tmp, {"w": torch.full((4, 4), float(value))})
        write_task_extra(tmp, {"codes": torch.arange(value + 1)})
        save_rank_state(tmp, {"value": torch.tensor([value]), "rng": rng_state()})
    return write


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


DAMAGE = {"truncated": _truncate, "deleted": Path.unlink}


def test_manifest_lists_every_other_file_with_size_and_sha256(tmp_path):
    ckpt = CheckpointManager(tmp_path / "ck").save(1, _full_writer(1))
    manifest = json.loads((ckpt / MANIFEST).read_text())
    files = {e["path"]: e for e in manifest["files"]}
    assert sorted(files) == sorted(k for k in KINDS if k != MANIFEST)       # meta.json included, itself not
    for name, entry in files.items():
        data = (ckpt / name).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    verify_checkpoint(ckpt)


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("name", KINDS)
def test_resume_falls_back_past_a_damaged_file_and_names_it(tmp_path, capsys, name, damage):
    mgr = CheckpointManager(tmp_path / "ck", keep_last=3)
    old = mgr.save(1, _full_writer(1))
    new = mgr.save(2, _full_writer(2))
    DAMAGE[damage](new / name)
    capsys.readouterr()

    assert mgr.resolve("auto") == old
    err = capsys.readouterr().err
    assert f"[cmg] skipping checkpoint {new}: {name}" in err, err
    assert load_rank_state(old)["value"].item() == 1
    assert resolve_checkpoint(tmp_path / "ck") == old                       # a directory: the same fallback
    for explicit in (lambda: mgr.resolve(str(new)), lambda: resolve_checkpoint(new),
                     lambda: read_init_source(str(new))):                   # an explicit path: an error, no fallback
        with pytest.raises(CheckpointError) as info:
            explicit()
        assert f"checkpoint {new}: {name}" in str(info.value) and info.value.file == new / name


def test_checksum_mismatch_of_same_size_is_caught(tmp_path, capsys):
    mgr = CheckpointManager(tmp_path / "ck", keep_last=3)
    old = mgr.save(1, _full_writer(1))
    new = mgr.save(2, _full_writer(2))
    data = bytearray((new / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (new / MODEL_FILE).write_bytes(bytes(data))
    assert mgr.resolve("auto") == old
    assert f"skipping checkpoint {new}: {MODEL_FILE}: sha256" in capsys.readouterr().err


def test_no_checkpoint_verifies_is_an_error_not_a_fresh_start(tmp_path, capsys):
    mgr = CheckpointManager(tmp_path / "ck", keep_last=3)
    first, second = (mgr.save(s, _full_writer(s)) for s in (1, 2))
    _truncate(rank_file(first, 0))
    (second / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="no checkpoint under .* verifies"):
        mgr.resolve("auto")
    err = capsys.readouterr().err
    assert f"checkpoint {first}: rank_00000.pt" in err and f"checkpoint {second}: {MANIFEST} missing" in err
    assert CheckpointManager(tmp_path / "none").resolve("auto") is None     # no step directory: a fresh start


def test_prune_never_deletes_the_new_checkpoint_after_a_fallback(tmp_path, capsys):
    CheckpointManager(tmp_path / "ck", keep_last=2).save(1, _full_writer(1))
    damaged = CheckpointManager(tmp_path / "ck", keep_last=2).save(3, _full_writer(3))
    _truncate(rank_file(damaged, 0))
    mgr = CheckpointManager(tmp_path / "ck", keep_last=1)                  # the resumed run keeps one
    assert mgr.resolve("auto").name == "step_00000001"
    two = mgr.save(2, _full_writer(2))                                  # the resumed run's next checkpoint
    assert [p.name for p in mgr.step_dirs()] == ["step_00000002", "step_00000003"]   # step 1 pruned, 3 left
    assert mgr.resolve("auto") == two
    verify_checkpoint(mgr.save(3, _full_writer(3)))                     # the damaged one is overwritten
    assert [p.name for p in mgr.step_dirs()] == ["step_00000003"]



def test_keep_last_counts_complete_checkpoints_before_the_new_one(tmp_path):
    mgr = CheckpointManager(tmp_path / "ck", keep_last=6)
    for step in (1, 2, 3, 4):
        mgr.save(step, _writer(step))
    assert [p.name for p in mgr.complete()] == [f"step_{s:08d}" for s in (1, 2, 3, 4)]
    (mgr.root / "step_00000000").mkdir()                         # debris (no manifest, no meta.json)
    mgr = CheckpointManager(tmp_path / "ck", keep_last=2)
    mgr.save(5, _writer(5))
    assert [p.name for p in mgr.step_dirs()] == ["step_00000004", "step_00000005"]

@pytest.mark.parametrize("empty", [False, True])
@pytest.mark.parametrize("name, read", [("rank_00000.pt", load_rank_state), (MODEL_FILE, read_model_state),
                                        ("task_extra.pt", read_task_extra)])
def test_loading_a_damaged_file_names_checkpoint_and_file(tmp_path, name, read, empty):
    ckpt = CheckpointManager(tmp_path / "ck").save(1, _full_writer(1))
    if empty:
        (ckpt / name).write_bytes(b"")
    else:
        _truncate(ckpt / name)
    with pytest.raises(CheckpointError) as info:
        read(ckpt)                                                          # bypassing verification
    message = str(info.value)
    assert f"checkpoint {ckpt}: {name}: cannot be loaded" in message and info.value.__cause__ is not None


class _NotAState:
    pass


class _Reduces:
    def __reduce__(self):
        return os.getpid, ()


@pytest.mark.parametrize("payload", [_NotAState(), _Reduces()], ids=["instance", "reduce"])
def test_model_file_with_pickled_objects_is_refused(tmp_path, payload):
    ckpt = tmp_path / "step_00000001"
    ckpt.mkdir()
    torch.save({"w": torch.ones(2), "x": payload}, ckpt / MODEL_FILE)
    with pytest.raises(CheckpointError) as info:
        read_model_state(ckpt)
    message = str(info.value)
    assert f"checkpoint {ckpt}: {MODEL_FILE}: not a plain tensor state dict" in message and "refused" in message
    assert "weights_only=False" not in message and "set to `False`" not in message
    assert info.value.__suppress_context__                                  # torch's advice is not printed either


def test_checkpoint_without_manifest_from_before_manifests_is_taken_with_a_warning(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints" / "step_00000007"
    ckpt.mkdir(parents=True)
    write_model_state(ckpt, {"w": torch.ones(2)})
    (ckpt / "meta.json").write_text(json.dumps({"step": 7, "world_size": 1}))   # no "manifest": an older checkpoint
    (tmp_path / "checkpoints" / "latest").write_text(ckpt.name)
    assert resolve_checkpoint(tmp_path) == ckpt
    assert CheckpointManager(tmp_path / "checkpoints").resolve("auto") == ckpt
    assert f"checkpoint {ckpt}: no {MANIFEST}" in capsys.readouterr().err


class _Part:
    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


class _Engine:
    zero_stage = 0

    def __init__(self, fail=False):
        self.fail = fail
        self.resharded = None

    def save(self, ckpt_dir):
        (ckpt_dir / "engine").mkdir()
        torch.save({"w": torch.ones(3)}, ckpt_dir / "engine" / "state.pt")

    def load(self, ckpt_dir):
        if self.fail:
            raise RuntimeError("Error(s) in loading state_dict: size mismatch")
        torch.load(ckpt_dir / "engine" / "state.pt", weights_only=True)

    def model_state_dict(self):
        return {"w": torch.ones(3)}

    def optimizer_state(self):
        return {"params": {"w": {"fp32": torch.ones(3), "exp_avg": torch.full((3,), 0.5), "step": 4}}, "lr": [0.1]}

    def load_resharded(self, model_state, optimizer_state):
        self.resharded = model_state, optimizer_state


class _Task:
    def replicated_state(self):
        return {}

    def extra_state(self):
        return {}


class _SplitPart(_Part):
    """A part whose state is per rank: a resume with another world size hands it every old rank's."""

    def needs_resplit(self, state):
        return False

    def load_resplit(self, states):
        self.value = sum(state["value"] for state in states)


def _as_if_written_by_two_ranks(ckpt: Path, rank1_state: dict) -> None:
    """Give a checkpoint written by this one process a rank 1 and the meta.json of a 2-rank job (re-manifested)."""
    torch.save(rank1_state, rank_file(ckpt, 1))
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps(meta | {"world_size": 2}))
    write_manifest(ckpt)


def test_restore_with_another_world_size_is_elastic(tmp_path, capsys):
    split, same = _SplitPart(), _Part()
    split.value, same.value = 3, 7
    parts = {"split": split, "same": same}
    ckpt = RunCheckpoints(tmp_path / "ck", 2, _Engine(), parts, _Task()).save(4, CheckpointMeta(4, 1))
    assert read_meta(ckpt).zero_stage == 0
    _as_if_written_by_two_ranks(ckpt, {"split": {"value": 5}, "same": {"value": 7}, "replicas": {}})
    engine, split, same = _Engine(), _SplitPart(), _Part()
    assert RunCheckpoints(tmp_path / "ck", 2, engine, {"split": split, "same": same}, _Task()).restore("auto") == ckpt
    model_state, optimizer_state = engine.resharded                  # model.pt and optimizer.pt, not engine/
    assert torch.equal(model_state["w"], torch.ones(3)) and optimizer_state["params"]["w"]["step"] == 4
    assert split.value == 3 + 5 and same.value == 7                  # every rank's state; rank 0's
    out = capsys.readouterr().out
    assert f"[cmg] elastic resume from {ckpt} (step 4): world size 2 -> 1, engine plain torch -> plain torch" in out
    assert "re-split over the new layout: split; every other part from rank 0 (not bit-exact" in out


def test_an_elastic_resume_without_optimizer_state_names_the_file(tmp_path):
    ckpt = RunCheckpoints(tmp_path / "ck", 2, _Engine(), {"part": _Part()}, _Task()).save(4, CheckpointMeta(4, 1))
    (ckpt / OPTIMIZER_FILE).unlink()
    _as_if_written_by_two_ranks(ckpt, {"part": {"value": 0}, "replicas": {}})
    with pytest.raises(CheckpointError) as info:
        RunCheckpoints(tmp_path / "ck", 2, _Engine(), {"part": _Part()}, _Task()).restore("auto")
    assert f"checkpoint {ckpt}: {OPTIMIZER_FILE}: missing" in str(info.value)
    assert info.value.file == ckpt / OPTIMIZER_FILE


def test_restore_round_trip_and_engine_errors_name_the_engine_dir(tmp_path):
    part = _Part()
    part.value = 5
    RunCheckpoints(tmp_path / "ck", 2, _Engine(), {"part": part}, _Task()).save(4, CheckpointMeta(4, 1))
    fresh = _Part()
    ckpt = RunCheckpoints(tmp_path / "ck", 2, _Engine(), {"part": fresh}, _Task()).restore("auto")
    assert ckpt.name == "step_00000004" and fresh.value == 5
    with pytest.raises(CheckpointError) as info:
        RunCheckpoints(tmp_path / "ck", 2, _Engine(fail=True), {"part": _Part()}, _Task()).restore("auto")
    assert f"checkpoint {ckpt}: engine/" in str(info.value) and info.value.file == ckpt / "engine"
    assert isinstance(info.value.__cause__, RuntimeError)


# ---------------------------------------------------------------------- meta.json (CheckpointMeta)
def test_meta_round_trips_through_meta_json(tmp_path):
    meta = CheckpointMeta(12, 4, zero_stage=2, task="comet", model_config={"modalities": ["audio", "video"]},
                          backbones={"audio": {"family": "ast"}}, phase="p1", mlflow_run_id="r1", samples_seen=96,
                          data_kind="features", data_source={"urls": "abc"}, manifest=MANIFEST)
    write_meta(tmp_path, meta)
    assert read_meta(tmp_path) == meta
    assert json.loads((tmp_path / "meta.json").read_text())["version"] == META_VERSION


def test_an_old_meta_json_without_version_loads_with_the_defaults_of_its_time(tmp_path):
    # what the manager wrote before meta.json had a version (and before it named the task or the engine)
    (tmp_path / "meta.json").write_text(json.dumps({"step": 7, "world_size": 2, "mlflow_run_id": None,
                                                    "model_config": {"modalities": ["video"]}, "retired": 1}))
    meta = read_meta(tmp_path)
    assert meta == CheckpointMeta(7, 2, model_config={"modalities": ["video"]})
    assert meta.version == 1 and meta.task == "unicode" and meta.zero_stage is None and meta.manifest is None


@pytest.mark.parametrize(("contents", "error"), [
    ({"step": 1, "world_size": 1, "version": META_VERSION + 1},
     rf"version {META_VERSION + 1}, written by a newer trainer \(this one reads up to {META_VERSION}\)"),
    ({"world_size": 1}, "'step' must be an integer, got None"),
    ({"step": 1, "world_size": "2"}, "'world_size' must be an integer"),
    ({"step": 1, "world_size": 1, "task": 3}, "'task' must be str, got 3"),
    ([1], "expected a JSON object, got list"),
])
def test_a_bad_or_future_meta_json_is_refused_naming_the_file_and_key(tmp_path, contents, error):
    (tmp_path / "meta.json").write_text(json.dumps(contents))
    with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path}: meta.json: {error}") as info:
        read_meta(tmp_path)
    assert info.value.file == tmp_path / "meta.json"


def test_a_load_error_in_brief_keeps_what_torch_puts_after_its_colon():
    """torch's first line "Error(s) in loading state_dict for X:" says nothing; the next says which tensor differs."""
    try:
        torch.nn.Linear(2, 3).load_state_dict({"weight": torch.zeros(4, 2), "bias": torch.zeros(4)})
    except RuntimeError as err:
        text = brief(err)
    assert text.startswith("RuntimeError: Error(s) in loading state_dict for Linear: size mismatch for ")
    assert "torch.Size([4, 2]) from checkpoint" in text, text
