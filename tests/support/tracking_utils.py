"""MLflow helpers shared by the tracking tests (tests/unit/test_tracking.py, tests/system/test_tracking_server.py).

``no_ambient_mlflow_env`` is registered for the whole suite (``pytest_plugins`` in tests/conftest.py); a module opts
in with ``pytestmark = pytest.mark.usefixtures("no_ambient_mlflow_env")``: no MLflow setting of the calling shell
(``trainer.tracking.mlflow_environment``'s variables) or SLURM_JOB_ID reaches its tests, and whatever a test sets
(``mlflow_settings``, or a program's start-up) is undone after it.
"""

from __future__ import annotations

import pytest

from trainer.tracking import TrackingConfig, TrackingWarning, local_artifacts, mlflow_environment

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
    """What ``client.list_artifacts(run_id, path)`` gives through a server, for a run of a sqlite store: its
    ``mlflow-artifacts:/`` are in ``mlartifacts/`` beside the database (trainer/tracking.py)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    uri = mlflow_client(tracking_uri).get_run(run_id).info.artifact_uri
    root = local_artifacts(tracking_uri) / uri.removeprefix("mlflow-artifacts:").lstrip("/")
    return {a.path for a in get_artifact_repository(root.as_uri()).list_artifacts(path)}


def metric_history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def tracking_warnings(caught, text):
    return [w for w in caught if issubclass(w.category, TrackingWarning) and text in str(w.message)]
