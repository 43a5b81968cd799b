"""How a job and its supervisor talk through the run directory and the exit code; torch-free, so that the supervisor
(trainer/programs/supervisor.py) and Slurm's scripts read it without importing the training stack.

- ``<run_dir>/STOP``: ``touch`` it and a running job checkpoints and exits (the supervisor and Slurm use it);
- ``<run_dir>/status.json``: the last word on the run, ``{"state": ..., "step": N}`` with N its last checkpoint's step.
  ``running``: a job started (written by the launchers before they start it, and by rank 0 at the start, in place of
  the last job's word: a launcher never reads an earlier job's outcome as this one's); ``finished`` / ``stopped``:
  rank 0 on the way out; ``failed``: the job raised (rank 0, with ``"error"``) or its launcher saw it end otherwise
  (``"error"``: the exit code). A ``running`` left behind: the job was killed without a word, or still runs;
- exit code ``EXIT_RESUME`` (75, sysexits' EX_TEMPFAIL): a checkpoint was written after a stop request, requeue or
  resume the run; ``SUPERVISED_ENV=1`` tells the ranks that the supervisor maps their exit codes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainer.atomic_write import write_atomic

STOP_FILE = "STOP"
STATUS_FILE = "status.json"
EXIT_RESUME = 75
SUPERVISED_ENV = "CMG_SUPERVISED"


def status_of(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The last word on the run in ``run_dir`` (None if it has none: no job ever started there)."""
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_status(run_dir: str | os.PathLike, state: str, step: int, **detail: Any) -> None:
    """Replace the status atomically: a reader (the launchers, several of them on several nodes) never sees half."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(run_dir) / STATUS_FILE, (json.dumps({"state": state, "step": step, **detail}) + "\n").encode())


def last_checkpoint_step(run_dir: str | os.PathLike) -> int:
    """The step of the checkpoint ``<run_dir>/checkpoints/latest`` names (0 if none, or if it is unreadable)."""
    from trainer.checkpoint_format import CheckpointError, CheckpointManager, read_meta

    latest = CheckpointManager(Path(run_dir) / "checkpoints").named_latest()
    try:
        return read_meta(latest).step if latest is not None else 0
    except CheckpointError:
        return 0


def mark_running(run_dir: str | os.PathLike) -> None:
    """A job starts in ``run_dir``: ``running`` until it says how it ended."""
    write_status(run_dir, "running", last_checkpoint_step(run_dir))


def mark_failed(run_dir: str | os.PathLike, error: str) -> None:
    """The job ended without saying how (``running``) or raised: ``failed``, with ``error``."""
    write_status(run_dir, "failed", last_checkpoint_step(run_dir), error=error)
