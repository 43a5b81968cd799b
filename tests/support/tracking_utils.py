"""MLflow helpers shared by the tracking tests (tests/unit/test_tracking.py, tests/system/test_tracking_server.py).

``no_ambient_mlflow_env`` is registered for the whole suite (``pytest_plugins`` in tests/conftest.py); a module opts
in with ``pytestmark = pytest.mark.usefixtures("no_ambient_mlflow_env")``: no MLFLOW_* or SLURM_JOB_ID setting of
the calling shell reaches its tests.
"""

from __future__ import annotations

import pytest

from trainer.tracking import TrackingWarning

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def no_ambient_mlflow_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                 "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


def mlflow_client(uri):
    from mlflow import MlflowClient
    return MlflowClient(uri)


def metric_history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def tracking_warnings(caught, text):
    return [w for w in caught if issubclass(w.category, TrackingWarning) and text in str(w.message)]
