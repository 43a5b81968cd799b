"""trainer/tracking.py without a server: metric names, params, config, the inactive tracker, failure handling when
the server is down or silent, a real sqlite store, re-delivery on resume and moving the store; and the code-usage
classes and figure (trainer/code_usage.py). Against a real ``mlflow server``: tests/system/test_tracking_server.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import time
import warnings

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dist_utils import free_port  # noqa: E402
from tracking_utils import (  # noqa: E402
    PNG_SIGNATURE, metric_history, mlflow_client, mlflow_settings, tracking_warnings,
)

from trainer.code_usage import classify_code_usage, plot_code_usage  # noqa: E402
from trainer.configs.load import ConfigError, load_config  # noqa: E402
from trainer.tracking import (
    Tracker, clean_key, create_tracker, mlflow_metric_key, mlflow_params,
    resolve_tracking_uri,
)
from trainer.configs.tracking import TrackingConfig

pytestmark = pytest.mark.usefixtures("no_ambient_mlflow_env")   # tests/support/tracking_utils.py


# ----------------------------------------------------------------------------------------------------
# code-usage classes and plot (no server)

def test_two_modality_classes_match_fig4_rule():
    # code:        0   1  2  3  4  5  6
    audio = [10, 0, 5, 1, 0, 9, 8]
    video = [0, 10, 5, 9, 0, 1, 2]
    usage = classify_code_usage({"audio": torch.tensor(audio), "video": np.array(video)}, dominance=0.8)
    names = [usage.class_names[c] for c in usage.code_class]
    # 9/10 and 8/10 reach the 80% share -> single-modality; 5/5 -> shared; no assignment -> unused.
    assert names == ["audio_only", "video_only", "shared", "video_only", "unused", "audio_only", "audio_only"]
    assert usage.summary() == {"shared": 1, "audio_only": 3, "video_only": 2, "unused": 1}
    # strict "only" with dominance 1: 1/9, 9/1 and 8/2 become shared
    strict = classify_code_usage({"audio": audio, "video": video}, dominance=1.0)
    assert strict.summary() == {"shared": 4, "audio_only": 1, "video_only": 1, "unused": 1}


def test_three_modality_classes_split_shared_and_mixed():
    counts = {"audio": [8, 9, 5, 4, 0, 1, 0.5],
              "video": [1, 1, 5, 3, 0, 0, 0.25],
              "text": [1, 0, 0, 3, 0, 0, 0.25]}
    usage = classify_code_usage(counts, dominance=0.7)
    names = [usage.class_names[c] for c in usage.code_class]
    # 0.8 >= 0.7 -> audio_only; (0.5, 0.5, 0) -> mixed (text never uses it); (0.4, 0.3, 0.3) -> shared;
    # fractional EMA counts (0.5, 0.25, 0.25) -> shared: each share >= (1 - 0.7) / 2 = 0.15
    assert names == ["audio_only", "audio_only", "mixed", "shared", "unused", "audio_only", "shared"]
    assert usage.class_names == ("shared", "audio_only", "video_only", "text_only", "mixed", "unused")
    # at dominance 0.7 the minimum share is (1 - 0.7) / 2 = 15%, inclusive (despite float rounding):
    # (60%, 25%, 15%) is shared, (65%, 25%, 10%) is mixed
    boundary = classify_code_usage({"a": [12, 13], "b": [5, 5], "c": [3, 2]}, dominance=0.7)
    assert [boundary.class_names[c] for c in boundary.code_class] == ["shared", "mixed"]


@pytest.mark.parametrize("counts, message", [
    ({"audio": [1, 2]}, "at least two modalities"),
    ({"audio": [1, 2], "video": [[1, 2]]}, "counts['video'] has shape (1, 2)"),
    ({"audio": [1, 2], "video": [1, 2, 3]}, "counts['video'] has 3 codes"),
    ({"audio": [1, -2], "video": [1, 2]}, "counts['audio'] must be finite and non-negative"),
    ({"audio": [], "video": []}, "counts['audio'] has shape (0,)"),
])
def test_bad_counts_name_the_modality(counts, message):
    with pytest.raises(ValueError) as err:
        classify_code_usage(counts)
    assert message in str(err.value)


def test_plot_is_a_png_for_two_and_three_modalities(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    two = {"audio": rng.integers(0, 5, 400), "video": rng.integers(0, 5, 400)}
    data = plot_code_usage(two)
    assert isinstance(data, bytes) and data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    three = dict(two, text=rng.integers(0, 3, 400))
    path = plot_code_usage(three, tmp_path / "plots" / "usage.png", title="three")
    assert path == tmp_path / "plots" / "usage.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 300


# ----------------------------------------------------------------------------------------------------
# params, keys, config, API (no server)

def test_params_respect_mlflow_limits():
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name

    long_a, long_b = "k" * 300 + "a", "k" * 300 + "b"
    params = mlflow_params({"model": {"dims": {"audio": 128}, "notes": "x" * 7000},
                            "bad key!": 1, "bad key?": 2, long_a: 3, long_b: 4})
    assert params["model.dims.audio"] == "128"
    assert len(params["model.notes"]) == 6000 and params["model.notes"].endswith("...[1000 more chars cut]")
    # '!' and '?' both become '_': the second key is kept under a distinct name, not overwritten
    assert params["bad key_"] == "1" and params["bad key__2"] == "2"
    long_keys = [k for k in params if k.startswith("kkk")]
    assert len(long_keys) == 2 and all(len(k) == 250 for k in long_keys)
    assert sorted(params[k] for k in long_keys) == ["3", "4"]
    for key in [*params, clean_key("a//b"), clean_key("../x"), clean_key("/abs"), clean_key("."), clean_key("a/")]:
        _validate_param_name(key)      # MLflow's own validators: raise if the name would be refused
        _validate_metric_name(key)
    assert clean_key("loss/recon") == "loss/recon" and clean_key("a//b") == "a/b"


def test_metric_names_put_the_loss_first_on_the_run_page():
    """MLflow's run page draws sections named by the key up to its last '/' and sorts sections and charts by name."""
    loop = ["loss", "cpc", "cpc_audio2video", "mi", "recon_video", "club_log_likelihood", "lr", "codebook/perplexity",
            "codebook/active_codes", "codebook/window/shared", "codebook/window/active", "data/skipped",
            "perf/clips_per_s", "eval/accuracy_cross_mean", "system/cpu_utilization_percentage"]
    names = {name: mlflow_metric_key(name) for name in loop}
    assert names["loss"] == "1 loss/total" and names["cpc"] == "1 loss/terms/cpc"
    assert names["codebook/active_codes"] == "2 codebook/step/active_codes"      # one optimizer step
    assert names["codebook/window/active"] == "2 codebook/window/active"         # since the previous figure
    assert names["lr"] == "5 optim/lr" and names["club_log_likelihood"] == "5 optim/club_log_likelihood"
    assert names["eval/accuracy_cross_mean"] == "eval/accuracy_cross_mean"
    assert names["system/cpu_utilization_percentage"] == "system/cpu_utilization_percentage"
    assert all(mlflow_metric_key(v) == v for v in names.values())              # idempotent
    sections = sorted({v.rsplit("/", 1)[0] for v in names.values() if not v.startswith("system/")})
    assert sections == ["1 loss", "1 loss/terms", "2 codebook/step", "2 codebook/window", "3 data", "4 perf",
                        "5 optim", "eval"]


def test_run_description_and_dataset_of_a_job_config(tmp_path):
    from trainer.tracking import run_description, shard_dataset

    shards = tmp_path / "pretrain_shards"
    shards.mkdir()
    manifest = {"shards": [{"name": f"train-{i:06d}.tar", "samples": 4} for i in range(3)], "total": 12}
    (shards / "manifest.json").write_text(json.dumps(manifest))
    job = {"task": "unicode", "run": {"phase": "demo", "max_steps": 30, "init_from": ""},
           "data": {"kind": "clips", "urls": f"{shards}/train-{{000000..000002}}.tar", "manifest": "", "batch_size": 2},
           "model": {"modalities": ["audio", "video"], "quantizer": {"num_codes": 16}}}
    text = run_description(job)
    assert "**unicode** pretraining, phase `demo`: audio + video into one codebook of 16 codes" in text
    assert "**1 loss**" in text and "**2 codebook/step**" in text
    dataset = shard_dataset(job)
    digest = hashlib.sha256((shards / "manifest.json").read_bytes()).hexdigest()[:16]
    assert (dataset.name, dataset.digest, dataset.source_type) == ("pretrain_shards (clips)", digest, "local")
    assert json.loads(dataset.profile)["samples"] == 12 and json.loads(dataset.source)["uri"] == job["data"]["urls"]
    assert run_description({"lr": 1}) is None and shard_dataset({"lr": 1}) is None


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == "http://127.0.0.1:1"
    assert resolve_tracking_uri(TrackingConfig(tracking_uri="http://h:2"), tmp_path) == "http://h:2"


def test_config_validation():
    with pytest.raises(ValueError, match="log_every"):
        TrackingConfig(log_every=0)
    with pytest.raises(ValueError, match="http_max_retries"):
        TrackingConfig(http_max_retries=11)
    with pytest.raises(ValueError, match="usage_dominance"):
        TrackingConfig(usage_dominance=0.5)
    # composes with the project's typed config loader: overrides are type-checked, errors name the key
    cfg = load_config(TrackingConfig, overrides=["log_every=5", "tracking_uri=http://127.0.0.1:5000"])
    assert cfg.log_every == 5 and cfg.tracking_uri == "http://127.0.0.1:5000" and cfg.run_name is None
    with pytest.raises(ConfigError, match="log_every must be >= 1"):
        load_config(TrackingConfig, overrides=["log_every=0"])
    with pytest.raises(ConfigError, match="'flush_every'"):
        load_config(TrackingConfig, overrides=["flush_every=3"])


def test_an_inactive_tracker_does_nothing(tmp_path):
    cfg = TrackingConfig(log_every=3, plot_every=4)
    assert create_tracker(cfg, tmp_path, is_main=True).active
    assert not create_tracker(TrackingConfig(enabled=False), tmp_path, is_main=True).active
    null = create_tracker(cfg, tmp_path, is_main=False)
    # same schedule on every rank, so collectives done only on logging steps stay matched
    for tracker in (null, Tracker(cfg, tmp_path)):
        assert [s for s in range(13) if tracker.should_log(s)] == [0, 3, 6, 9, 12]
        assert [s for s in range(13) if tracker.should_plot(s)] == [0, 4, 8, 12]
    null.start(tags={"phase": "x"})                    # no MLflow settings needed: it never opens a run
    null.log_config(TrackingConfig())
    null.log_metrics({"loss": 1.0}, 1)
    null.log_code_usage({"audio": [1], "video": [1]}, 1, plot=True)
    null.log_tensor(torch.ones(2), "t.npy")
    null.end("FINISHED")
    assert list(tmp_path.iterdir()) == [] and null.run_id is None and null.flush()


# ----------------------------------------------------------------------------------------------------
# failure handling without a server

def test_a_down_server_warns_once_and_costs_one_attempt(tmp_path, monkeypatch):
    cfg = TrackingConfig(tracking_uri=f"http://127.0.0.1:{free_port()}")
    mlflow_settings(monkeypatch, cfg, tmp_path)
    environment = dict(os.environ)
    tracker = Tracker(cfg, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.start()
        t0 = time.monotonic()
        tracker.log_config({"lr": 1})
        for step in range(50):
            tracker.log_metrics({"loss": 1.0 / (step + 1)}, step)
        tracker.log_code_usage({"audio": [1, 0], "video": [0, 1]}, 50, plot=True)
        tracker.end("KILLED")
        elapsed = time.monotonic() - t0
    assert elapsed < 5.0 and tracker.run_id is None    # off after the failed start: the calls make no request
    assert len(tracking_warnings(caught, "training goes on")) == 1 and len(caught) == 1
    assert dict(os.environ) == environment              # no MLflow setting toggled around its calls
    assert (tmp_path / "tracking" / "code_usage" / "step_00000050.png").is_file()   # the figure is still written


def test_unresponsive_server_is_bounded_by_the_http_timeout(tmp_path, monkeypatch):
    # A socket that listens but never answers: connections succeed, requests wait for a reply that
    # never comes. MLflow's defaults (120 s timeout, 7 retries) would block for many minutes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        cfg = TrackingConfig(tracking_uri=f"http://127.0.0.1:{silent.getsockname()[1]}", http_timeout_s=1)
        mlflow_settings(monkeypatch, cfg, tmp_path)
        tracker = Tracker(cfg, tmp_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.monotonic()
            tracker.start()
            for step in range(20):
                tracker.log_metrics({"loss": float(step)}, step)
            tracker.end("KILLED")
            elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 6.0, elapsed   # one attempt of ~1 s; MLflow defaults: minutes
    assert len(tracking_warnings(caught, "training goes on")) == 1


@pytest.mark.slow   # ~5 s: MLflow creates and migrates a fresh sqlite database
def test_sqlite_default_works_without_a_server(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = TrackingConfig(experiment="local", system_metrics=False)
    mlflow_settings(monkeypatch, cfg, run_dir)
    tracker = Tracker(cfg, run_dir)
    tracker.start(tags={"phase": "demo"})
    for step in range(1, 4):
        tracker.log_metrics({"loss": step / 4}, step)
    codebook = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tracker.log_tensor(codebook, "codebook/final.npy")
    tracker.end("FINISHED")

    client = mlflow_client(f"sqlite:///{run_dir.resolve()}/mlflow.db")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert "resumed_from_step" not in run.data.tags                  # None means no tag, not the text "None"
    assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.type"] == "LOCAL"
    assert metric_history(client, tracker.run_id, "1 loss/total") == [(1, 0.25), (2, 0.5), (3, 0.75)]
    # recorded relative to the store's artifact destination, mlartifacts/ beside it (nothing names the run dir)
    assert run.info.artifact_uri == f"mlflow-artifacts:/local/{tracker.run_id}/artifacts"
    stored = run_dir / "mlartifacts" / "local" / tracker.run_id / "artifacts" / "codebook" / "final.npy"
    assert np.array_equal(np.load(stored, allow_pickle=False), codebook.numpy())


@pytest.mark.slow   # ~10 s: three trackers on a sqlite store
def test_a_resume_re_delivers_what_the_run_lacks_and_skips_what_it_has(tmp_path, monkeypatch):
    """A kill -9 loses what MLflow's async queue held (here: steps 4-6 never sent) and leaves what the crashed job
    logged after its last checkpoint (steps 7-8; the checkpoint is at 6): the resumed job makes the run's history
    equal metrics.jsonl, each step once."""
    cfg = TrackingConfig(experiment="local", system_metrics=False)
    mlflow_settings(monkeypatch, cfg, tmp_path)
    crashed = Tracker(cfg, tmp_path)
    crashed.start()
    for step in (1, 2, 3, 7, 8):
        crashed.log_metrics({"loss": step / 8, "cpc": step}, step)
    crashed.end("FAILED")
    rows = [{"step": step, "loss": step / 8, "cpc": step} for step in range(1, 7)]   # metrics.jsonl, trimmed to 6

    resumed = Tracker(cfg, tmp_path)
    resumed.start(resumed_from_step=6, logged=rows)
    for step in range(7, 11):
        resumed.log_metrics({"loss": step / 8, "cpc": step}, step)
    resumed.end("FINISHED")
    assert resumed.run_id == crashed.run_id
    client = mlflow_client(resolve_tracking_uri(cfg, tmp_path))
    assert metric_history(client, resumed.run_id, "1 loss/total") == [(s, s / 8) for s in range(1, 11)]
    assert metric_history(client, resumed.run_id, "1 loss/terms/cpc") == [(s, s) for s in range(1, 11)]
    assert client.get_run(resumed.run_id).data.tags["resume_count"] == "1"

    fresh = Tracker(cfg, tmp_path)                    # not a resume: a new run
    fresh.start()
    fresh.end("FINISHED")
    assert fresh.run_id != resumed.run_id


@pytest.mark.slow   # ~8 s: two trackers on a sqlite store
def test_a_moved_or_copied_run_directory_still_opens(tmp_path, monkeypatch, capsys):
    """Nothing in the store names the run directory: a job resuming it at its new place logs its artifacts there,
    and `python -m trainer.programs.mlflow_ui` serves them from there (the server: tests/system/test_tracking_server.py
    ``test_a_short_run_reads_as_a_training_run_in_the_mlflow_ui``)."""
    first = tmp_path / "first"
    cfg = TrackingConfig(experiment="local", system_metrics=False)
    mlflow_settings(monkeypatch, cfg, first)
    tracker = Tracker(cfg, first)
    tracker.start()
    tracker.log_tensor(torch.ones(2), "codebook/final.npy")
    tracker.end("FINISHED")
    run_id = tracker.run_id
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.copytree(first, tmp_path / "copy")
    first.rename(moved)

    monkeypatch.delenv("MLFLOW_TRACKING_URI")         # a new process: the environment of the first job is gone
    mlflow_settings(monkeypatch, cfg, moved)
    resumed = Tracker(cfg, moved)
    resumed.start(resumed_from_step=1)
    resumed.log_tensor(torch.zeros(2), "codebook/resumed.npy")
    resumed.end("FINISHED")
    assert resumed.run_id == run_id
    artifacts = moved / "mlartifacts" / "local" / run_id / "artifacts" / "codebook"
    assert sorted(p.name for p in artifacts.iterdir()) == ["final.npy", "resumed.npy"]

    # the untouched copy: the ui command serves its own mlartifacts/ and prints the run page in the training UI
    from trainer.programs.mlflow_ui import main as ui_main

    copy = tmp_path / "copy"
    assert ui_main([str(copy), "--port", "5999", "--print-only"]) == 0
    printed = capsys.readouterr().out
    assert f"--artifacts-destination {copy.resolve() / 'mlartifacts'}" in printed
    assert f"/runs/{run_id}/model-metrics?workflowType=machine_learning" in printed
    assert np.array_equal(np.load(copy / "mlartifacts" / "local" / run_id / "artifacts" / "codebook" / "final.npy"),
                          np.ones(2))


def test_three_modality_code_usage_with_the_seeds_rule():
    """Seed 003 Figs. 5-6 / seed 004 Fig. 3: red when one modality holds > 95 % of a code, green when all three hold
    at least 5 %, blue otherwise (``SEED_THREE_MODALITIES``), by hand on five codes."""
    from trainer.code_usage import SEED_THREE_MODALITIES, classify_code_usage, plot_code_usage

    counts = {"video": [96, 5, 10, 0, 0], "audio": [2, 5, 85, 50, 0], "text": [2, 90, 5, 50, 0]}
    usage = classify_code_usage(counts, **SEED_THREE_MODALITIES)
    # code 0: video 96 % -> video only; 1: 5/5/90 % -> all >= 5 %: shared; 2: 10/85/5: shared; 3: video 0: mixed
    assert [usage.class_names[c] for c in usage.code_class] == ["video_only", "shared", "shared", "mixed", "unused"]
    # the default floor, the two-modality rule generalised ((1 - 0.95) / 2 = 2.5 %), lets a 3 % share pass; the
    # seeds' 5 % does not
    loose = classify_code_usage({"video": [3, 60], "audio": [3, 37], "text": [94, 3]}, dominance=0.95)
    strict = classify_code_usage({"video": [3, 60], "audio": [3, 37], "text": [94, 3]}, **SEED_THREE_MODALITIES)
    assert [loose.class_names[c] for c in loose.code_class] == ["shared", "shared"]
    assert [strict.class_names[c] for c in strict.code_class] == ["mixed", "mixed"]
    assert plot_code_usage(usage, seed_colours=True)[:8] == b"\x89PNG\r\n\x1a\n"
