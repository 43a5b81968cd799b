"""How a job and its supervisor talk through the run directory and the exit code; torch-free, so that the supervisor
(trainer/programs/supervisor.py) and Slurm's scripts read it without importing the training stack.

- ``<run_dir>/STOP``: ``touch`` it and a running job checkpoints and exits (the supervisor and Slurm use it);
- ``<run_dir>/status.json``: rank 0 writes ``{"state": "finished"|"stopped", "step": N}`` on the way out
  (none: it crashed, or it is still running);
- exit code ``EXIT_RESUME`` (75, sysexits' EX_TEMPFAIL): a checkpoint was written after a stop request, requeue or
  resume the run; ``SUPERVISED_ENV=1`` tells the ranks that the supervisor maps their exit codes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STOP_FILE = "STOP"
STATUS_FILE = "status.json"
EXIT_RESUME = 75
SUPERVISED_ENV = "CMG_SUPERVISED"


def status_of(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What the last job in ``run_dir`` said on its way out (None if it crashed or is still running)."""
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_status(run_dir: str | os.PathLike, state: str, step: int) -> None:
    (Path(run_dir) / STATUS_FILE).write_text(json.dumps({"state": state, "step": step}) + "\n")
