"""The downstream probe during pretraining (``eval.every``) and ``run.keep_best``, through trainer/main.py.

- every ``eval.every`` steps the checkpoint of that step is probed (cross-modal accuracies logged to MLflow);
- the best checkpoint by ``run.keep_best`` survives keep-last pruning and is named in checkpoints/best.json;
- the probe leaves the run's RNG alone: the losses are those of the same run without probes, step by step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from job_utils import make_clip_shards, read_metrics, run_job
from tracking_utils import metric_history, mlflow_client

from trainer.checkpoint_format import CheckpointManager, verify_checkpoint

STEPS = 6
METRIC = "eval/accuracy_cross_mean"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_clip_shards(tmp_path_factory.mktemp("data"))      # 16 labelled clips, 3 classes


@pytest.mark.slow
def test_probe_every_2_steps_keeps_the_best_checkpoint_and_changes_no_loss(tmp_path, shards):
    plain = tmp_path / "plain"
    run_job(plain, shards, overrides=[f"run.max_steps={STEPS}", "run.keep_last=1"])
    probed = tmp_path / "probed"
    run = run_job(probed, shards, overrides=[f"run.max_steps={STEPS}", "run.keep_last=1", "eval.every=2",
                                             f"eval.urls={shards}", "eval.epochs=3", f"run.keep_best={METRIC}"])
    assert [r["loss"] for r in read_metrics(probed)] == [r["loss"] for r in read_metrics(plain)]

    manager = CheckpointManager(probed / "checkpoints")
    best = manager.best()
    assert best["metric"] == METRIC and best["step"] in (2, 4, 6)
    verify_checkpoint(probed / "checkpoints" / best["checkpoint"])             # kept whole through the pruning
    kept = {p.name for p in manager.complete()}
    assert kept == {"step_00000006", best["checkpoint"]}                        # keep_last=1 + the best one
    assert f"best {METRIC}" in run.stdout

    run_id = json.loads((manager.latest() / "meta.json").read_text())["mlflow_run_id"]
    client = mlflow_client(f"sqlite:///{Path(probed) / 'mlflow.db'}")
    history = metric_history(client, run_id, METRIC)
    assert [step for step, _ in history] == [2, 4, 6]
    assert max(value for _, value in history) == best["value"]
    for name in ("eval/accuracy_audio_to_video", "eval/accuracy_video_to_audio"):
        assert all(0.0 <= v <= 100.0 for _, v in metric_history(client, run_id, name)), name
