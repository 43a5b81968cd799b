"""Shared checks of task objects (Uni-Code, FCCID), and phase checkpoints for continual tests."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import MODEL_FILE, TASK_EXTRA_FILE, CheckpointManager, save_rank_state
from trainer.config import to_dict


def write_phase(run_dir: Path, task, model_cfg, step: int) -> Path:
    """A complete checkpoint of a COMET ``task`` (model file, meta.json with ``model_config``, the task's hand-over)
    as the main job writes it at the end of a continual phase; returns the checkpoint directory."""
    def write(tmp: Path) -> None:
        torch.save(task.model.state_dict(), tmp / MODEL_FILE)
        extra = task.extra_state()
        if extra:
            torch.save(extra, tmp / TASK_EXTRA_FILE)
        save_rank_state(tmp, {})

    return CheckpointManager(Path(run_dir) / "checkpoints").save(
        step, write, {"task": "comet", "model_config": to_dict(model_cfg)})


def assert_task_state_round_trips(make_task: Callable, features: Callable, metric_keys: Sequence[str],
                                  mismatched, mismatch_pattern: str) -> None:
    """Two SGD steps; then the task state (CLUB estimators, their optimiser, the CPC generator) and the model go
    through a ``weights_only`` save/load into a task built from another seed: its next step is identical (same t,
    same estimator updates with the Adam moments restored). ``mismatched`` (a task with other ablation switches)
    refuses the state with a KeyError matching ``mismatch_pattern``."""
    task = make_task()
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.01)
    for step in range(2):
        loss, _ = task.compute_loss(features(seed=step), step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        task.after_optimizer_step_()
    buffer = io.BytesIO()
    torch.save({"task": task.state_dict(), "model": task.model.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state["task"]) == {"club", "club_optimizer", "cpc_generator"}
    fresh = make_task(seed=5)
    fresh.model.load_state_dict(state["model"])      # what the engine restores
    fresh.load_state_dict(state["task"])
    assert all(torch.equal(v, task.club.state_dict()[k]) for k, v in fresh.club.state_dict().items())
    _, ours = task.compute_loss(features(seed=9), 2)
    _, theirs = fresh.compute_loss(features(seed=9), 2)
    for key in metric_keys:
        assert torch.equal(ours[key], theirs[key]), key
    with pytest.raises(KeyError, match=mismatch_pattern):
        mismatched.load_state_dict(state["task"])
