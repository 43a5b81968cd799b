"""``python -m trainer.programs.mlflow_ui RUN_DIR``: open a run directory's MLflow store in the browser UI.

    python -m trainer.programs.mlflow_ui runs/demo [--port 5000] [--host 127.0.0.1] [mlflow ui options]
    # open http://127.0.0.1:5000/#/experiments/1/runs/<run id>/model-metrics?workflowType=machine_learning

For a run directory with the default store (``<run_dir>/mlflow.db``, artifacts in ``<run_dir>/mlartifacts``): prints
the ``mlflow ui`` command, starts it, and prints the address of the newest training run's charts in MLflow's "Model
training" mode once the server answers (``GET /health``): the address works when it appears. Stops with the server
(Ctrl-C, SIGTERM). The store records its artifacts as ``mlflow-artifacts:/...``, which the server resolves against
``--artifacts-destination <run_dir>/mlartifacts`` (trainer/tracking.py): a moved or copied run directory opens as it
is. The server is ``mlflow ui --workers 1`` with ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: MLflow's defaults, 4
uvicorn workers and a job runner with a huey consumer process per job queue (GenAI scorers, trace rollups: nothing a
training run uses), took 90 s to answer on a shared 2-core machine, this 22 to 27 s (docs/mlflow.md). Options this
program does not know (``--workers 4``, ...) go to ``mlflow ui``; the variable set in the environment wins.
``--print-only`` prints the command and the address and exits. Exit 2 when RUN_DIR has no store (a run that logged
to a server: open the server).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from trainer.tracking import local_artifacts, ui_url


def latest_run(tracking_uri: str) -> tuple[str, str] | None:
    """(experiment id, run id) of the newest top-level run in a store (a training run, not an evaluation's child
    run), or None."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time DESC"])
    run = next((r for r in runs if "mlflow.parentRunId" not in r.data.tags), None)
    return (run.info.experiment_id, run.info.run_id) if run else None


JOB_EXECUTION = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"   # mlflow/environment_variables.py; read by `mlflow ui`


def answers(base: str) -> bool:
    """Whether the MLflow server at ``base`` answers ``GET /health`` with 200."""
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Start ``mlflow ui`` on RUN_DIR's store, print the run page's address once it answers (module docstring)."""
    p = argparse.ArgumentParser(prog="python -m trainer.programs.mlflow_ui", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory with the default store (mlflow.db, mlartifacts/)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--print-only", action="store_true", help="print the mlflow ui command and the address, exit")
    a, ui_options = p.parse_known_args(argv)
    db = (Path(a.run_dir) / "mlflow.db").resolve()
    if not db.is_file():
        print(f"error: no MLflow store {db} (did the run log to a server? MLFLOW_TRACKING_URI or "
              "tracking.tracking_uri in its config.yaml)", file=sys.stderr)
        return 2
    uri = f"sqlite:///{db}"
    workers = [] if any(o in ("-w", "--workers") or o.startswith("--workers=") for o in ui_options) else \
        ["--workers", "1"]
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--artifacts-destination",
               str(local_artifacts(uri)), "--host", a.host, "--port", str(a.port), *workers, *ui_options]
    env = {**os.environ, JOB_EXECUTION: os.environ.get(JOB_EXECUTION, "false")}
    print(f"{JOB_EXECUTION}={env[JOB_EXECUTION]} {' '.join(command)}", flush=True)
    base = f"http://{a.host}:{a.port}"
    if a.print_only:
        found = latest_run(uri)
        print(f"open {ui_url(base, *found) if found else base}")
        return 0
    server = subprocess.Popen(command, env=env)
    for signum in (signal.SIGINT, signal.SIGTERM):   # the server shuts down, then this program returns
        signal.signal(signum, lambda signum, _frame: server.poll() is None and server.send_signal(signum))
    try:
        found = latest_run(uri)   # while the server starts
    except BaseException:
        server.terminate()
        raise
    local = base.replace("://0.0.0.0:", "://127.0.0.1:")   # where to ask a server that listens everywhere
    while server.poll() is None and not answers(local):
        time.sleep(0.1)
    if server.poll() is None:
        print(f"open {ui_url(base, *found) if found else base}", flush=True)
    code = server.wait()
    return code if code >= 0 else 128 - code   # killed by a signal: the shell's convention


if __name__ == "__main__":
    sys.exit(main())
