"""``python -m trainer.programs.mlflow_ui RUN_DIR``: open a run directory's MLflow store in the browser UI.

    python -m trainer.programs.mlflow_ui runs/demo [--port 5000] [--host 127.0.0.1] [mlflow ui options]
    # open http://127.0.0.1:5000/#/experiments/1/runs/<run id>/model-metrics?workflowType=machine_learning

For a run directory with the default store (``<run_dir>/mlflow.db``, artifacts in ``<run_dir>/mlartifacts``): prints
the address of the newest training run's charts in MLflow's "Model training" mode and the ``mlflow ui`` command, then
runs that command in this process (exec). The store records its artifacts as ``mlflow-artifacts:/...``, which the
server resolves against ``--artifacts-destination <run_dir>/mlartifacts`` (trainer/tracking.py): a moved or copied
run directory opens as it is. Options this program does not
know (``--workers 1``, ...) go to ``mlflow ui``; ``--print-only`` prints and exits. Exit 2 when RUN_DIR has no store
(a run that logged to a server: open the server).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainer.tracking import local_artifacts


def ui_url(base: str, experiment_id: str, run_id: str | None = None, tab: str = "model-metrics") -> str:
    """The UI page of a run (its ``tab``) or of an experiment's runs, in MLflow's "Model training" mode.

    MLflow 3.17's UI takes the experiment kind from its "GenAI | Model training" switch (the URL's ``workflowType``,
    else the browser's last choice, GenAI by default), not from the ``mlflow.experimentKind`` tag: a first visit
    without it lands on the GenAI overview. The link carries the switch.
    """
    page = f"experiments/{experiment_id}/runs/{run_id}/{tab}" if run_id else f"experiments/{experiment_id}/runs"
    return f"{base.rstrip('/')}/#/{page}?workflowType=machine_learning"


def latest_run(tracking_uri: str) -> tuple[str, str] | None:
    """(experiment id, run id) of the newest top-level run in a store (a training run, not an evaluation's child
    run), or None."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time DESC"])
    run = next((r for r in runs if "mlflow.parentRunId" not in r.data.tags), None)
    return (run.info.experiment_id, run.info.run_id) if run else None


def main(argv: list[str] | None = None) -> int:
    """Print the run page's address, exec ``mlflow ui`` on RUN_DIR's store (see the module docstring)."""
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
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--artifacts-destination",
               str(local_artifacts(uri)), "--host", a.host, "--port", str(a.port), *ui_options]
    found = latest_run(uri)
    base = f"http://{a.host}:{a.port}"
    print(f"open {ui_url(base, *found) if found else base}")
    print(" ".join(command), flush=True)
    if a.print_only:
        return 0
    os.execv(sys.executable, command)


if __name__ == "__main__":
    sys.exit(main())
