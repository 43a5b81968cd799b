"""trainer/tracking.py against a real ``mlflow server`` (sqlite backend, loopback) and a real sqlite store.

One server serves the module (``mlflow_server`` fixture); the unreachable-then-reachable test starts a
second one on the port its tracker was pointed at while nothing listened there.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import socket
import subprocess
import time
import urllib.parse
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

from trainer.config import ConfigError, flatten, load_config, to_dict  # noqa: E402
from trainer.tracking import (  # noqa: E402
    NullTracker,
    Tracker,
    TrackingConfig,
    TrackingWarning,
    classify_code_usage,
    clean_key,
    create_tracker,
    mlflow_params,
    plot_code_usage,
    resolve_tracking_uri,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow_server")) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_ambient_mlflow_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                 "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


def _client(uri):
    from mlflow import MlflowClient
    return MlflowClient(uri)


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _tracking_warnings(caught, text):
    return [w for w in caught if issubclass(w.category, TrackingWarning) and text in str(w.message)]


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
    # display order: class (shared, audio, video, unused), then most used first
    assert usage.order().tolist() == [2, 0, 5, 6, 1, 3, 4]
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


def test_null_tracker_has_the_same_api_and_does_nothing(tmp_path):
    public = {n for n in dir(Tracker) if not n.startswith("_")}
    assert public == {n for n in dir(NullTracker) if not n.startswith("_")}
    for name in public:
        real, null = getattr(Tracker, name), getattr(NullTracker, name)
        if callable(real):
            assert inspect.signature(real) == inspect.signature(null), name

    cfg = TrackingConfig(log_every=3, plot_every=4)
    assert isinstance(create_tracker(cfg, tmp_path, is_main=True), Tracker)
    assert isinstance(create_tracker(TrackingConfig(enabled=False), tmp_path, is_main=True), NullTracker)
    null = create_tracker(cfg, tmp_path, is_main=False)
    assert type(null) is NullTracker
    # same schedule on every rank, so collectives done only on logging steps stay matched
    real = Tracker(cfg, tmp_path)
    for tracker in (null, real):
        assert [s for s in range(13) if tracker.should_log(s)] == [0, 3, 6, 9, 12]
        assert [s for s in range(13) if tracker.should_plot(s)] == [0, 4, 8, 12]
    null.start(tags={"phase": "x"})
    null.log_config(TrackingConfig())
    null.log_metrics({"loss": 1.0}, 1)
    null.log_code_usage({"audio": [1], "video": [1]}, 1, plot=True)
    null.log_tensor(torch.ones(2), "t.npy")
    null.end("FINISHED")
    assert list(tmp_path.iterdir()) == [] and null.state_dict() == {} and null.flush()


# ----------------------------------------------------------------------------------------------------
# failure handling without a server

def test_backoff_keeps_calls_cheap_and_flush_forces_a_retry(tmp_path):
    cfg = TrackingConfig(tracking_uri=f"http://127.0.0.1:{free_port()}", retry_interval_s=600.0)
    tracker = Tracker(cfg, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.monotonic()
        tracker.start()
        for step in range(50):
            tracker.log_metrics({"loss": 1.0 / (step + 1)}, step)
        elapsed = time.monotonic() - t0
        assert tracker.stats.failed_attempts == 1        # the other 50 calls only queued
        assert tracker.stats.pending_metrics == 50 and tracker.run_id is None
        assert not tracker.flush()                       # forced attempt, still down
        assert tracker.stats.failed_attempts == 2
        tracker.end("KILLED")
    assert elapsed < 30.0
    assert len(_tracking_warnings(caught, "is unavailable")) == 1
    assert len(_tracking_warnings(caught, "ended with undelivered data: 50 metric points")) == 1


def test_unresponsive_server_is_bounded_by_the_http_timeout(tmp_path, monkeypatch):
    # A socket that listens but never answers: connections succeed, requests wait for a reply that
    # never comes. MLflow's defaults (120 s timeout, 7 retries) would block for many minutes.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        cfg = TrackingConfig(tracking_uri=f"http://127.0.0.1:{silent.getsockname()[1]}", http_timeout_s=1,
                             retry_interval_s=600.0)
        tracker = Tracker(cfg, tmp_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.monotonic()
            tracker.start()
            for step in range(20):
                tracker.log_metrics({"loss": float(step)}, step)
            elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 6.0, elapsed   # one attempt of ~1 s; MLflow defaults: minutes
    assert tracker.stats.failed_attempts == 1 and tracker.stats.pending_metrics == 20
    assert len(_tracking_warnings(caught, "is unavailable")) == 1
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"    # the caller's setting is restored


@pytest.mark.slow   # ~5 s: MLflow creates and migrates a fresh sqlite database
def test_sqlite_default_works_without_a_server(tmp_path):
    run_dir = tmp_path / "run"
    tracker = Tracker(TrackingConfig(experiment="local"), run_dir)
    tracker.start(tags={"phase": "demo"})
    for step in range(1, 4):
        tracker.log_metrics({"loss": step / 4}, step)
    codebook = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tracker.log_tensor(codebook, "codebook/final.npy")
    tracker.end("FINISHED")
    assert tracker.stats.connected and tracker.stats.pending_metrics == 0

    client = _client(f"sqlite:///{run_dir.resolve()}/mlflow.db")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert _history(client, tracker.run_id, "loss") == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert run.info.artifact_uri.startswith((run_dir.resolve() / "mlartifacts").as_uri())
    stored = Path(urllib.parse.unquote(urllib.parse.urlparse(run.info.artifact_uri).path)) / "codebook" / "final.npy"
    assert stored.is_relative_to(run_dir.resolve() / "mlartifacts")
    assert np.array_equal(np.load(stored, allow_pickle=False), codebook.numpy())


# ----------------------------------------------------------------------------------------------------
# a real server

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
    tracker.log_tensor(codebook, "codebook/final.pt")
    tracker.end("FINISHED")
    assert tracker.stats.pending_metrics == tracker.stats.pending_artifacts == tracker.stats.rejected == 0

    client = _client(mlflow_server.url)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain-av"
    expected_params = {k: str(v) for k, v in flatten(to_dict(job)).items()}
    expected_params["notes"] = "n" * (6000 - 23) + "...[500 more chars cut]"
    assert run.data.params == expected_params
    assert _history(client, tracker.run_id, "loss/total") == [(s, 8.0 / s) for s in (5, 10, 15, 20, 25, 30)]
    assert _history(client, tracker.run_id, "loss/commit") == [(s, s / 16) for s in (5, 10, 15, 20, 25, 30)]
    # codes 0..7: audio only, video only, shared, audio only (9 of 10), unused, shared, shared, unused
    assert run.data.metrics["codes/audio_only"] == 2 and run.data.metrics["codes/video_only"] == 1
    assert run.data.metrics["codes/shared"] == 3 and run.data.metrics["codes/unused"] == 2
    assert run.data.metrics["codes/active"] == 6
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    tags = run.data.tags
    assert tags["phase"] == "pretrain_av" and tags["world_size"] == "1" and tags["slurm_job_id"] == "4242"
    assert tags["mlflow.source.git.commit"] == head and tags["git_dirty"] in ("true", "false")

    assert [a.path for a in client.list_artifacts(tracker.run_id, "code_usage")] == ["code_usage/step_00000030.png"]
    out = Path(client.download_artifacts(tracker.run_id, "", str(tmp_path / "download")))
    png = (out / "code_usage" / "step_00000030.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    from PIL import Image
    with Image.open(io.BytesIO(png)) as image:
        image.verify()
    assert torch.equal(torch.from_numpy(np.load(out / "codebook" / "final.npy", allow_pickle=False)), codebook)
    assert torch.equal(torch.load(out / "codebook" / "final.pt", weights_only=True), codebook)
    resolved = yaml.safe_load((out / "config" / "resolved.yaml").read_text())
    assert resolved == to_dict(job) and len(resolved["notes"]) == 6500   # the full value survives here


@pytest.mark.slow
def test_resume_continues_the_same_run_and_step_axis(mlflow_server, tmp_path):
    cfg = TrackingConfig(tracking_uri=mlflow_server.url, experiment="resume")
    first = Tracker(cfg, tmp_path)
    first.start(tags={"phase": "pretrain_av"})
    first.log_params({"lr": 4e-4, "max_steps": 10})
    for step in range(1, 11):
        first.log_metrics({"loss": step / 8}, step)
    saved = io.BytesIO()
    # As a checkpoint would hold it. Within the default flush_interval_s of start() all ten points are
    # still queued here, so they are both in the checkpoint and delivered by end() below: the resumed
    # tracker re-sends them, and MLflow must keep one copy of each (same key, step, timestamp, value).
    assert len(first.state_dict()["metrics"]) == 10
    torch.save({"tracking": first.state_dict()}, saved)
    first.end("KILLED")                                         # preempted
    client = _client(mlflow_server.url)
    assert client.get_run(first.run_id).info.status == "KILLED"

    saved.seek(0)
    state = torch.load(saved, weights_only=True)["tracking"]
    second = Tracker(cfg, tmp_path)
    second.load_state_dict(state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second.start(tags={"phase": "pretrain_av"})
        second.log_params({"lr": 4e-4, "max_steps": 20})        # edited config: params are immutable
        for step in range(11, 21):
            second.log_metrics({"loss": step / 8}, step)
        second.end("FINISHED")
    assert second.run_id == first.run_id
    assert len(_tracking_warnings(caught, "kept at their first values: max_steps")) == 1

    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert _history(client, first.run_id, "loss") == [(s, s / 8) for s in range(1, 21)]
    assert run.data.params == {"lr": "0.0004", "max_steps": "10"}
    assert run.data.tags["resume_count"] == "1" and run.data.tags["params_changed"] == "max_steps"


@pytest.mark.slow
def test_metrics_wait_for_the_flush_interval(mlflow_server, tmp_path):
    tracker = Tracker(TrackingConfig(tracking_uri=mlflow_server.url, experiment="batch", flush_interval_s=600.0),
                      tmp_path)
    tracker.start()                                            # opens the run at once
    assert tracker.run_id is not None and tracker.stats.connected
    for step in range(10):
        tracker.log_metrics({"loss": step / 4, "lr": 0.5}, step)
    assert tracker.stats.pending_metrics == 20                 # queued: no request in the interval
    client = _client(mlflow_server.url)
    assert client.get_metric_history(tracker.run_id, "loss") == []
    assert tracker.flush() and tracker.stats.pending_metrics == 0
    assert _history(client, tracker.run_id, "loss") == [(s, s / 4) for s in range(10)]
    tracker.end("FINISHED")


@pytest.mark.slow
def test_rejected_batches_are_dropped_not_retried(mlflow_server, tmp_path):
    tracker = Tracker(TrackingConfig(tracking_uri=mlflow_server.url, experiment="reject", flush_interval_s=0.0),
                      tmp_path)
    tracker.start()
    tracker.log_metrics({"loss": 1.0}, 1)
    client = _client(mlflow_server.url)
    client.delete_run(tracker.run_id)                          # the server now refuses writes (HTTP 400)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.log_metrics({"loss": 2.0, "lr": 0.1}, 2)
    assert tracker.stats.rejected == 2 and tracker.stats.pending_metrics == 0
    assert tracker.stats.failed_attempts == 0 and tracker.stats.connected
    assert len(_tracking_warnings(caught, "rejected 2 metrics")) == 1
    client.restore_run(tracker.run_id)
    tracker.log_metrics({"loss": 3.0}, 3)                      # no backoff: delivered at once
    tracker.end("FINISHED")
    assert _history(client, tracker.run_id, "loss") == [(1, 1.0), (3, 3.0)]


@pytest.mark.slow
def test_undelivered_metrics_travel_in_the_checkpoint(mlflow_server, tmp_path):
    down = Tracker(TrackingConfig(tracking_uri=f"http://127.0.0.1:{free_port()}", experiment="carry"), tmp_path)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        down.start()
        for step in range(1, 6):
            down.log_metrics({"loss": step / 2}, step)
    state = json.loads(json.dumps(down.state_dict()))         # e.g. in the checkpoint's meta.json
    assert state["run_id"] is None and len(state["metrics"]) == 5
    up = Tracker(TrackingConfig(tracking_uri=mlflow_server.url, experiment="carry"), tmp_path)
    up.load_state_dict(state)
    up.start()
    up.end("FINISHED")
    assert _history(_client(mlflow_server.url), up.run_id, "loss") == [(s, s / 2) for s in range(1, 6)]


@pytest.mark.slow
def test_unreachable_server_buffers_then_flushes_when_it_comes_up(tmp_path):
    port = free_port()
    cfg = TrackingConfig(tracking_uri=f"http://127.0.0.1:{port}", experiment="late", retry_interval_s=0.0,
                         max_buffered_metrics=20)
    tracker = Tracker(cfg, tmp_path / "run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.monotonic()
        tracker.start(tags={"phase": "pretrain_av"})
        tracker.log_params({"lr": 4e-4})
        tracker.log_code_usage({"audio": [3, 0, 2], "video": [0, 4, 2]}, 0, plot=True)  # 5 metric points
        for step in range(1, 31):
            tracker.log_metrics({"loss": step / 4}, step)
        elapsed = time.monotonic() - t0
    assert elapsed < 30.0, elapsed
    # retry_interval_s=0: each of the 33 calls tried once and failed, quickly, without raising
    assert tracker.stats.failed_attempts == 33 and tracker.run_id is None
    # 35 points into a buffer of 20: the 15 oldest (the code metrics and loss steps 1..10) dropped
    assert tracker.stats.pending_metrics == 20 and tracker.stats.dropped_metrics == 15
    assert len(_tracking_warnings(caught, "is unavailable")) == 1
    assert len(_tracking_warnings(caught, "buffer full")) == 1

    with MlflowServer(tmp_path / "late_server", port=port) as server:
        assert tracker.flush()
        tracker.end("FINISHED")
        client = _client(server.url)
        run = client.get_run(tracker.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["phase"] == "pretrain_av"
        assert run.data.params == {"lr": "0.0004"}
        assert _history(client, tracker.run_id, "loss") == [(s, s / 4) for s in range(11, 31)]
        assert "codes/shared" not in run.data.metrics
        assert [a.path for a in client.list_artifacts(tracker.run_id, "code_usage")] == ["code_usage/step_00000000.png"]
    assert tracker.stats.connected and tracker.stats.pending_artifacts == 0
