"""trainer/tracking.py against a real ``mlflow server`` (sqlite backend, loopback; tests/support/mlflow_server.py).

One server serves the module (``mlflow_server`` fixture); the unreachable-then-reachable test starts a
second one on the port its first tracker was pointed at while nothing listened there. The last test reads a short
training run the way the browser UI does (``python -m trainer.programs.mlflow_ui``, MLflow's REST API).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dist_utils import free_port  # noqa: E402
from mlflow_server import MlflowServer  # noqa: E402
from tracking_utils import (  # noqa: E402
    PNG_SIGNATURE, logged_images, metric_history, mlflow_client, mlflow_settings, table_rows,
    tracking_warnings,
)

from trainer.configs.load import flatten, to_dict  # noqa: E402
from trainer.tracking import Tracker, create_tracker, mlflow_metric_key
from trainer.configs.tracking import TrackingConfig

pytestmark = pytest.mark.usefixtures("no_ambient_mlflow_env")   # tests/support/tracking_utils.py

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow_server")) as server:
        yield server


@dataclass
class _ModelCfg:
    num_codes: int = 400
    dims: dict[str, int] = field(default_factory=lambda: {"audio": 128, "video": 512})


@dataclass
class _JobCfg:
    model: _ModelCfg = field(default_factory=_ModelCfg)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    notes: str = "n" * 6500        # longer than an MLflow param value may be


@pytest.mark.slow
def test_training_loop_logs_everything(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    job = _JobCfg(tracking=TrackingConfig(tracking_uri=mlflow_server.url, experiment="loop", log_every=5,
                                          plot_every=30))
    run_dir = tmp_path / "pretrain-av"
    mlflow_settings(monkeypatch, job.tracking, run_dir)
    tracker = create_tracker(job.tracking, run_dir, is_main=True)
    tracker.start(tags={"phase": "pretrain_av"})
    tracker.log_config(job)
    codebook = torch.linspace(-1, 1, 8 * 4).reshape(8, 4)
    usage = {"audio": torch.tensor([5, 0, 3, 9, 0, 1, 4, 0]), "video": torch.tensor([0, 6, 3, 1, 0, 1, 4, 0])}
    for step in range(1, 31):                                   # the fake training loop
        if tracker.should_log(step):
            tracker.log_metrics({"loss/total": 8.0 / step, "loss/commit": torch.tensor(step / 16)}, step)
        if tracker.should_plot(step):
            tracker.log_code_usage(usage, step, plot=True)
    tracker.log_tensor(codebook, "codebook/final.npy")
    tracker.end("FINISHED")

    client = mlflow_client(mlflow_server.url)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain-av"
    expected_params = {k: str(v) for k, v in flatten(to_dict(job)).items()}
    expected_params["notes"] = "n" * (6000 - 23) + "...[500 more chars cut]"
    assert run.data.params == expected_params
    # grouped for the run page (trainer.tracking.mlflow_metric_key)
    assert metric_history(client, tracker.run_id, "1 loss/total") == [(s, 8.0 / s) for s in (5, 10, 15, 20, 25, 30)]
    assert metric_history(client, tracker.run_id, "1 loss/terms/commit") == [(s, s / 16) for s in (5, 10, 15, 20, 25,
                                                                                                   30)]
    # codes 0..7: audio only, video only, shared, audio only (9 of 10), unused, shared, shared, unused
    window = {k.removeprefix("2 codebook/window/"): v for k, v in run.data.metrics.items() if "window/" in k}
    assert window == {"audio_only": 2, "video_only": 1, "shared": 3, "unused": 2, "active": 6}
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    tags = run.data.tags
    assert tags["phase"] == "pretrain_av" and tags["world_size"] == "1" and tags["slurm_job_id"] == "4242"
    assert tags["mlflow.source.git.commit"] == head and tags["git_dirty"] in ("true", "false")

    # the figure as MLflow's image "code_usage" at its step (the run page's image chart), the file in the run dir
    figures = logged_images([a.path for a in client.list_artifacts(tracker.run_id, "images")], "code_usage")
    assert list(figures) == [30] and tags["mlflow.loggedImages"] == "True"
    assert (run_dir / "tracking" / "code_usage" / "step_00000030.png").read_bytes().startswith(PNG_SIGNATURE)
    out = Path(client.download_artifacts(tracker.run_id, "", str(tmp_path / "download")))
    png = (out / figures[30]).read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    from PIL import Image
    with Image.open(io.BytesIO(png)) as image:
        image.verify()
    assert torch.equal(torch.from_numpy(np.load(out / "codebook" / "final.npy", allow_pickle=False)), codebook)
    resolved = yaml.safe_load((out / "config" / "resolved.yaml").read_text())
    assert resolved == to_dict(job) and len(resolved["notes"]) == 6500   # the full value survives here


@pytest.mark.slow
def test_resume_continues_the_same_run_and_step_axis(mlflow_server, tmp_path, monkeypatch):
    cfg = TrackingConfig(tracking_uri=mlflow_server.url, experiment="resume")
    mlflow_settings(monkeypatch, cfg, tmp_path)
    first = Tracker(cfg, tmp_path)
    first.start(tags={"phase": "pretrain_av"})
    first.log_params({"lr": 4e-4, "max_steps": 10})
    for step in range(1, 11):
        first.log_metrics({"loss": step / 8}, step)
    first.end("KILLED")                                         # preempted
    client = mlflow_client(mlflow_server.url)
    assert client.get_run(first.run_id).info.status == "KILLED"

    second = Tracker(cfg, tmp_path)                             # the run id from <run_dir>/tracking/run.json
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second.start(tags={"phase": "pretrain_av"}, resumed_from_step=10,
                     logged=[{"step": step, "loss": step / 8} for step in range(1, 11)])   # all delivered already
        second.log_params({"lr": 4e-4, "max_steps": 20})        # edited config: params are immutable
        for step in range(11, 21):
            second.log_metrics({"loss": step / 8}, step)
        second.end("FINISHED")
    assert second.run_id == first.run_id
    assert len(tracking_warnings(caught, "kept at their first values: max_steps")) == 1

    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert metric_history(client, first.run_id, mlflow_metric_key("loss")) == [(s, s / 8) for s in range(1, 21)]
    assert run.data.params == {"lr": "0.0004", "max_steps": "10"}
    assert run.data.tags["resume_count"] == "1" and run.data.tags["params_changed"] == "max_steps"
    assert run.data.tags["resumed_from_step"] == "10"


@pytest.mark.slow
def test_metrics_wait_for_the_flush_interval(mlflow_server, tmp_path, monkeypatch):
    cfg = TrackingConfig(tracking_uri=mlflow_server.url, experiment="batch", flush_interval_s=600)
    mlflow_settings(monkeypatch, cfg, tmp_path)
    tracker = Tracker(cfg, tmp_path)
    tracker.start()                                            # opens the run at once
    assert tracker.run_id is not None
    for step in range(10):
        tracker.log_metrics({"loss": step / 4, "lr": 0.5}, step)
    client = mlflow_client(mlflow_server.url)
    time.sleep(1.0)
    assert client.get_metric_history(tracker.run_id, mlflow_metric_key("loss")) == []   # in MLflow's async queue
    assert tracker.flush()
    assert metric_history(client, tracker.run_id, mlflow_metric_key("loss")) == [(s, s / 4) for s in range(10)]
    tracker.end("FINISHED")


@pytest.mark.slow
def test_a_refused_batch_is_reported_once_and_later_ones_still_go(mlflow_server, tmp_path, monkeypatch):
    cfg = TrackingConfig(tracking_uri=mlflow_server.url, experiment="reject", flush_interval_s=0)
    mlflow_settings(monkeypatch, cfg, tmp_path)
    tracker = Tracker(cfg, tmp_path)
    tracker.start()
    tracker.log_metrics({"loss": 1.0}, 1)
    assert tracker.flush()
    client = mlflow_client(mlflow_server.url)
    client.delete_run(tracker.run_id)                          # the server now refuses writes (HTTP 400)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.log_metrics({"loss": 2.0, "lr": 0.1}, 2)
        assert not tracker.flush()
    assert len(tracking_warnings(caught, "1 metric batches")) == 1
    client.restore_run(tracker.run_id)
    tracker.log_metrics({"loss": 3.0}, 3)
    tracker.end("FINISHED")
    assert metric_history(client, tracker.run_id, mlflow_metric_key("loss")) == [(1, 1.0), (3, 3.0)]


@pytest.mark.slow
def test_a_job_that_found_mlflow_down_is_delivered_by_its_resume(tmp_path, monkeypatch):
    """Down at the start: one warning, training goes on, no run; the resumed job (MLflow up again) opens the run and
    delivers every row of metrics.jsonl."""
    port = free_port()
    cfg = TrackingConfig(tracking_uri=f"http://127.0.0.1:{port}", experiment="late")
    mlflow_settings(monkeypatch, cfg, tmp_path)
    down = Tracker(cfg, tmp_path / "run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        down.start(tags={"phase": "pretrain_av"})
        for step in range(1, 31):
            down.log_metrics({"loss": step / 4}, step)
        down.end("KILLED")
    assert down.run_id is None and len(tracking_warnings(caught, "training goes on")) == 1 and len(caught) == 1

    with MlflowServer(tmp_path / "late_server", port=port) as server:
        up = Tracker(cfg, tmp_path / "run")
        up.start(tags={"phase": "pretrain_av"}, resumed_from_step=30,
                 logged=[{"step": step, "loss": step / 4} for step in range(1, 31)])
        up.log_metrics({"loss": 31 / 4}, 31)
        up.end("FINISHED")
        client = mlflow_client(server.url)
        run = client.get_run(up.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["phase"] == "pretrain_av"
        assert metric_history(client, up.run_id, mlflow_metric_key("loss")) == [(s, s / 4) for s in range(1, 32)]


def _rest(base: str, endpoint: str, **query: str):
    """GET ``base/endpoint?query`` from the MLflow server: the parsed JSON of an ``api/`` endpoint, else the bytes."""
    url = f"{base}/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
        return json.loads(body) if endpoint.startswith("api/") else body


@pytest.mark.slow   # ~90 s: a 12-step job (1 process), an evaluation of it, then `cmg ui` on its moved run directory
@pytest.mark.usefixtures("one_thread")
def test_a_short_run_reads_as_a_training_run_in_the_mlflow_ui(tmp_path, capsys):
    """What a browser gets from `python -m trainer.programs.mlflow_ui RUN_DIR`, through MLflow's REST API: an address
    that answers as it is printed, the training kind, grouped metric sections, system metrics, the code-usage figure
    as the run's image, the dataset and description, the evaluation's child run with its numbers as a table, served
    from a run directory that was moved after training."""
    from job_utils import make_clip_shards, run_job

    from trainer.programs.evaluate import main as evaluate

    shards = make_clip_shards(tmp_path / "data")
    trained = tmp_path / "run"
    run_job(trained, shards, overrides=["run.max_steps=12", "tracking.plot_every=6",
                                        "tracking.system_metrics_interval_s=1"])
    assert evaluate([str(trained), "--epochs", "1", "--split", "0.5,0.25,0.25"]) == 0
    evaluation_id = re.search(r"^MLflow run (\w+) \(parent", capsys.readouterr().out, re.M).group(1)
    report = json.loads((trained / "evaluation" / "step_00000012" / "report.json").read_text())
    run_dir = tmp_path / "moved" / "run"
    run_dir.parent.mkdir()
    trained.rename(run_dir)

    port = free_port()
    command = [sys.executable, "-m", "trainer.programs.mlflow_ui", str(run_dir), "--port", str(port)]   # its defaults
    with MlflowServer(tmp_path / "ui", port=port, command=command).start(wait=False) as ui:
        page = ui.wait_for_output(r"^open (\S+)", timeout=300).group(1)
        printed = time.monotonic()
        while not ui.healthy() and time.monotonic() < printed + 10:
            time.sleep(0.1)
        assert ui.healthy(), f"{ui.url} did not answer within 10 s of its address being printed:\n{ui.log_tail()}"
        experiment_id, run_id = re.search(r"#/experiments/(\d+)/runs/(\w+)/model-metrics", page).groups()
        assert page.endswith("?workflowType=machine_learning")    # MLflow 3.17: the UI's mode switch, not the tag
        experiment = _rest(ui.url, "api/2.0/mlflow/experiments/get", experiment_id=experiment_id)["experiment"]
        assert {t["key"]: t["value"] for t in experiment["tags"]}["mlflow.experimentKind"] == \
            "custom_model_development"
        run = _rest(ui.url, "api/2.0/mlflow/runs/get", run_id=run_id)["run"]
        metrics = {m["key"] for m in run["data"]["metrics"]}
        sections = sorted({key.rsplit("/", 1)[0] for key in metrics if not key.startswith(("system/", "eval/"))})
        assert sections == ["1 loss", "1 loss/terms", "2 codebook/step", "2 codebook/window", "3 data", "4 perf",
                            "5 optim"], sections
        assert {"1 loss/total", "1 loss/terms/cpc", "2 codebook/step/perplexity", "2 codebook/window/shared",
                "4 perf/clips_per_s", "5 optim/lr", "eval/classification/V_to_A/cross"} <= metrics
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= metrics
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["mlflow.note.content"].startswith("**unicode** pretraining, phase `demo`")
        assert tags["mlflow.source.git.commit"] and "resumed_from_step" not in tags
        (dataset,) = run["inputs"]["dataset_inputs"]
        manifest = Path(shards).parent / "manifest.json"
        assert dataset["dataset"]["digest"] == hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]

        # the code-usage figures: MLflow's image "code_usage" at steps 6 and 12 (the run page's image chart), served
        # from the moved directory (the store records them relative to the ui's --artifacts-destination)
        images = [f["path"] for f in _rest(ui.url, "api/2.0/mlflow/artifacts/list", run_id=run_id,
                                            path="images")["files"]]
        figures = logged_images(images, "code_usage")
        assert list(figures) == [6, 12] and tags["mlflow.loggedImages"] == "True"
        assert _rest(ui.url, "get-artifact", path=figures[12], run_uuid=run_id).startswith(PNG_SIGNATURE)
        assert sorted(p.name for p in (run_dir / "tracking" / "code_usage").iterdir()) == \
            ["step_00000006.png", "step_00000012.png"]

        # the evaluation: a child run named after the checkpoint, its numbers as a table (mlflow.log_table)
        child = _rest(ui.url, "api/2.0/mlflow/runs/get", run_id=evaluation_id)["run"]
        child_tags = {t["key"]: t["value"] for t in child["data"]["tags"]}
        assert child["info"]["run_name"] == "evaluate-step_00000012" and child_tags["mlflow.parentRunId"] == run_id
        assert {"path": "evaluation/results.json", "type": "table"} in json.loads(child_tags["mlflow.loggedArtifacts"])
        assert "evaluation/results.json" in [f["path"] for f in _rest(
            ui.url, "api/2.0/mlflow/artifacts/list", run_id=evaluation_id, path="evaluation")["files"]]
        rows = {(r["task"], r["direction"], r["measure"]): r["value"] for r in table_rows(_rest(
            ui.url, "get-artifact", path="evaluation/results.json", run_uuid=evaluation_id))}
        cells = {(p["task"], p["direction"].replace("→", "_to_"), key): p[key] for p in report["probes"]
                 for key in ("cross", "in_modality", "val")}
        assert cells and {cell: rows[cell] for cell in cells} == pytest.approx(cells, rel=1e-9)
        assert child["data"].get("metrics", []) == []   # no one-point charts: the numbers compare on the parent run
