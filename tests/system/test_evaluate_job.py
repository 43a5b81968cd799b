"""trainer.programs.evaluate end to end on checkpoints written by the real main job (trainer/main.py on synthetic clip
shards): the report, a child MLflow run, feature shards giving the same numbers, and
`python -m trainer.programs.evaluate` on an FCCID run with and without TOC."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
from job_utils import REPO, job_env, make_clip_shards, run_job  # noqa: E402
from tracking_utils import local_artifact_paths, table_rows  # noqa: E402

from trainer.programs.evaluate import main  # noqa: E402
from trainer.tracking import store_client  # noqa: E402


# no_ambient_mlflow_env (tests/support/tracking_utils.py) undoes the MLflow settings evaluate's start-up makes
pytestmark = pytest.mark.usefixtures("one_thread", "no_ambient_mlflow_env")


@pytest.mark.slow
def test_command_on_a_checkpoint_of_the_main_job_logs_a_child_mlflow_run(tmp_path, capsys):
    from mlflow import MlflowClient

    from shards.extract import extract
    from trainer.configs.data import DecodeConfig

    shards = make_clip_shards(tmp_path / "data", num_clips=16, seconds=4, clips_per_shard=4)
    run = tmp_path / "run"
    run_job(run, shards, overrides=["run.max_steps=4", "run.ckpt_every=4"])
    ckpt = run / "checkpoints" / "step_00000004"
    meta = json.loads((ckpt / "meta.json").read_text())
    before = hashlib.sha256((ckpt / "model.pt").read_bytes()).hexdigest()

    assert main([str(run), "--epochs", "3", "--split", "0.5,0.25,0.25"]) == 0
    out = capsys.readouterr().out
    report = json.loads((run / "evaluation" / "step_00000004" / "report.json").read_text())
    assert "classification  V→A" in out and "localisation    A→V" in out and "(unicode, step 4)" in out
    assert hashlib.sha256((ckpt / "model.pt").read_bytes()).hexdigest() == before

    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    parent = client.get_run(meta["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id], filter_string="tags.phase = 'evaluate'")
    assert len(children) == 1
    child = children[0]
    assert child.data.tags["mlflow.parentRunId"] == meta["mlflow_run_id"]
    cell = next(p for p in report["probes"] if p["task"] == "classification" and p["direction"] == "V→A")
    # the child run's numbers are its table (mlflow.log_table); through a server: tests/system/test_tracking_server.py
    table = table_rows(Path(store_client(f"sqlite:///{run / 'mlflow.db'}").download_artifacts(
        child.info.run_id, "evaluation/results.json", str(tmp_path))).read_text())
    row = {"task": "classification", "direction": "V_to_A", "measure": "cross", "value": pytest.approx(cell["cross"])}
    assert row in table
    assert child.data.metrics == {}
    # the same numbers on the pretraining run, at the checkpoint's step, and its status left alone
    assert parent.data.metrics["eval/classification/V_to_A/cross"] == pytest.approx(cell["cross"])
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "eval/classification/V_to_A/cross")] == [4]
    assert parent.info.status == "FINISHED"
    assert local_artifact_paths(f"sqlite:///{run / 'mlflow.db'}", child.info.run_id, "evaluation") == \
        {"evaluation/report.json", "evaluation/table.txt", "evaluation/results.json"}

    # the same clips as feature shards (shards.extract with the same backbones) give the very same numbers
    features = tmp_path / "features"
    extract(shards, "launch/configs/backbones/tiny.yaml", str(features / "f-%06d.tar"), num_workers=0,
            decode=DecodeConfig(seconds=4, frames_per_segment=2, frame_size=32), rank=0, world_size=1,
            progress=False)
    urls = str(features / "f-{000000..000003}.tar")
    assert main([str(run), "--data", urls, "--kind", "features", "--epochs", "3", "--split", "0.5,0.25,0.25",
                 "--no-tracking", "--json", str(tmp_path / "features.json")]) == 0
    from_features = json.loads((tmp_path / "features.json").read_text())
    assert [(p["task"], p["direction"], p["cross"], p["in_modality"]) for p in from_features["probes"]] == \
        [(p["task"], p["direction"], p["cross"], p["in_modality"]) for p in report["probes"]]


@pytest.mark.slow
def test_command_on_an_fccid_checkpoint_of_the_main_job_with_and_without_toc(tmp_path):
    """trainer/main.py with launch/configs/demo_fccid.yaml, then `python -m trainer.programs.evaluate` on its run."""
    shards = make_clip_shards(tmp_path / "data", num_clips=16, seconds=4, clips_per_shard=4)
    run = tmp_path / "run"
    run_job(run, shards, config=REPO / "launch" / "configs" / "demo_fccid.yaml", overrides=["run.max_steps=3"])
    model = hashlib.sha256((run / "checkpoints" / "step_00000003" / "model.pt").read_bytes()).hexdigest()
    for toc, out_dir in ((None, "step_00000003"), (32, "step_00000003-toc32")):
        command = [sys.executable, "-m", "trainer.programs.evaluate", str(run), "--epochs", "3", "--split",
                   "0.5,0.25,0.25", "--no-tracking", *(["--toc", str(toc)] if toc else [])]
        done = subprocess.run(command, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        assert "classification  V→A" in done.stdout and "localisation    A→V" in done.stdout
        report = json.loads((run / "evaluation" / out_dir / "report.json").read_text())
        assert (report["task"], report["step"], report["clips"]) == ("fccid", 3, {"train": 8, "val": 4, "test": 4})
        assert {(p["task"], p["direction"]) for p in report["probes"]} == \
            {(t, d) for t in ("classification", "localisation") for d in ("A→V", "V→A")}
        # video retrieves audio per segment, text (captions through the tiny BERT) by its clip-mean code
        assert set(report["retrieval"]) == {"video", "text"}
        assert (report["toc"] is None) if toc is None else len(report["toc"]["dims"]) == toc
    assert hashlib.sha256((run / "checkpoints" / "step_00000003" / "model.pt").read_bytes()).hexdigest() == model
