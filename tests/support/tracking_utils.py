"""MLflow helpers shared by the tracking tests (tests/unit/test_tracking.py, tests/system/test_tracking_server.py).

``no_ambient_mlflow_env`` is registered for the whole suite (``pytest_plugins`` in tests/conftest.py); a module opts
in with ``pytestmark = pytest.mark.usefixtures("no_ambient_mlflow_env")``: no MLflow setting of the calling shell
(``trainer.tracking.mlflow_environment``'s variables) or SLURM_JOB_ID reaches its tests, and whatever a test sets
(``mlflow_settings``, or a program's start-up) is undone after it.
"""

from __future__ import annotations

import json
import posixpath

import pytest

from trainer.tracking import TrackingConfig, TrackingWarning, mlflow_environment, store_client

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MLFLOW_VARIABLES = (*mlflow_environment(TrackingConfig(), "."), "SLURM_JOB_ID")


@pytest.fixture
def no_ambient_mlflow_env(monkeypatch):
    for name in MLFLOW_VARIABLES:
        monkeypatch.setenv(name, "")     # recorded, so that teardown restores the caller's value (or its absence)
        monkeypatch.delenv(name)


def mlflow_settings(monkeypatch, cfg: TrackingConfig, run_dir) -> None:
    """What a program's start-up sets for ``cfg`` (``trainer.runtime.prepare_process_environment``), for one test."""
    for name, value in mlflow_environment(cfg, run_dir).items():
        monkeypatch.setenv(name, value)


def mlflow_client(uri):
    from mlflow import MlflowClient
    return MlflowClient(uri)


def local_artifact_paths(tracking_uri, run_id, path):
    """What ``client.list_artifacts(run_id, path)`` gives through a server, for a run of a sqlite store (whose
    ``mlflow-artifacts:/`` are in ``mlartifacts/`` beside the database: trainer.tracking.store_client)."""
    return {a.path for a in store_client(tracking_uri).list_artifacts(run_id, path)}


def logged_images(paths, key):
    """{step: artifact path} of the full-size images ``key`` among a run's artifact paths under ``images/``:
    ``mlflow.log_image(image, key=key, step=step)`` names them ``images/<key>+step+<step>+timestamp+<ms>+<uuid>.png``,
    beside a ``...+compressed.webp`` (mlflow/tracking/client.py), which is what the run page reads."""
    images = {}
    for path in paths:
        name = posixpath.basename(path)
        if name.startswith(f"{key}+step+") and name.endswith(".png"):
            images[int(name.split("+")[2])] = path
    return dict(sorted(images.items()))


def table_rows(text):
    """The rows of an ``mlflow.log_table`` artifact (pandas' JSON "split" orientation) as dicts."""
    table = json.loads(text)
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


def metric_history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def tracking_warnings(caught, text):
    return [w for w in caught if issubclass(w.category, TrackingWarning) and text in str(w.message)]
