"""Atomic, resumable checkpoints on a filesystem shared by all ranks.

Layout under ``<run_dir>/checkpoints``::

    step_00000100/            a complete checkpoint (only complete ones ever carry this name)
        engine/               DeepSpeed/accelerate engine state (model, optimizer, scheduler shards)
        rank_00000.pt         per-rank trainer state (task extras, data stream, RNG states)
        meta.json             step, world size, MLflow run id, ... (written last inside the temp dir)
        model.pt              consolidated fp32 model state (rank 0; MODEL_FILE)
        task_extra.pt         a task's hand-over to the next phase, when it has one (TASK_EXTRA_FILE)
    latest                    text file naming the newest complete checkpoint (replaced atomically)
    .tmp-step_00000200-<id>/  a checkpoint being written (never read; removed on the next start)

Rules:
1. every rank writes into the same temporary directory; a barrier; rank 0 checks it and renames it into
   place (``os.replace`` of a directory is atomic on POSIX), then replaces ``latest``; a barrier;
2. older checkpoints are pruned (keep-last-k) only after the new one is complete and ``latest`` points at it,
   so a crash at any moment leaves the previous complete checkpoint intact;
3. loading uses ``torch.load(weights_only=True)``: per-rank state holds only tensors, numbers, strings and
   containers of them (RNG states are tensors), never pickled objects.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer import distributed as dist

_STEP_DIR = re.compile(r"^step_(\d{8})$")
LATEST = "latest"
META = "meta.json"
MODEL_FILE = "model.pt"              # consolidated fp32 model state (evaluation, export, the next phase's init)
TASK_EXTRA_FILE = "task_extra.pt"    # a task's optional hand-over to the next phase (trainer/tasks/__init__.py)


def rank_file(ckpt_dir: Path, rank: int) -> Path:
    return Path(ckpt_dir) / f"rank_{rank:05d}.pt"


class CheckpointManager:
    def __init__(self, root: str | Path, keep_last: int = 2):
        if keep_last < 1:
            raise ValueError(f"checkpoint keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last

    # ------------------------------------------------------------------ discovery
    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / META).is_file()]
        return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))

    def latest(self) -> Path | None:
        """The checkpoint ``latest`` names; falls back to the newest complete one if the pointer is missing."""
        pointer = self.root / LATEST
        if pointer.is_file():
            candidate = self.root / pointer.read_text().strip()
            if (candidate / META).is_file():
                return candidate
        done = self.complete()
        return done[-1] if done else None

    def resolve(self, resume: str | None) -> Path | None:
        """``None``/"" -> no resume; "auto" -> latest complete (or None); else a checkpoint directory path."""
        if not resume:
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if path.is_dir() and (path / LATEST).is_file():  # a checkpoints root was given
            return CheckpointManager(path).latest()
        if not (path / META).is_file():
            raise FileNotFoundError(f"resume={resume!r}: {path} is not a complete checkpoint (no {META})")
        return path

    def clean_partial(self) -> None:
        """Remove temp dirs left by a crash mid-save (rank 0 only; called before training starts)."""
        if dist.rank() == 0 and self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith((".tmp-", ".token-")):
                    shutil.rmtree(p, ignore_errors=True)
        dist.barrier()

    # ------------------------------------------------------------------ saving
    def save(self, step: int, write: Callable[[Path], None], meta: dict[str, Any]) -> Path:
        """Collective: every rank calls it. ``write(tmp_dir)`` writes this rank's part of the checkpoint."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step_{step:08d}"
        # all ranks must agree on the temp name: derive it from the step and a token broadcast via the fs
        token_file = self.root / f".token-{step:08d}"
        if dist.rank() == 0:
            token_file.write_text(uuid.uuid4().hex[:8])
        dist.barrier()
        tmp = self.root / f".tmp-step_{step:08d}-{token_file.read_text()}"
        tmp.mkdir(parents=True, exist_ok=True)
        write(tmp)
        dist.barrier()
        if dist.rank() == 0:
            missing = [r for r in range(dist.world_size()) if not rank_file(tmp, r).is_file()]
            if missing:
                raise RuntimeError(f"checkpoint {tmp}: ranks {missing} wrote no state; not publishing it")
            (tmp / META).write_text(json.dumps({"step": step, "world_size": dist.world_size(), **meta}, indent=1))
            _fsync_dir(tmp)
            if final.exists():  # re-saving the same step (e.g. a stop signal right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            pointer_tmp = self.root / f".{LATEST}.tmp"
            pointer_tmp.write_text(final.name)
            os.replace(pointer_tmp, self.root / LATEST)
            _fsync_dir(self.root)
            token_file.unlink(missing_ok=True)
            for old in self.complete()[:-self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return final

    @staticmethod
    def read_meta(ckpt_dir: Path) -> dict[str, Any]:
        return json.loads((Path(ckpt_dir) / META).read_text())


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory meant by ``path``: itself (it has meta.json), a ``model.pt`` inside one, a
    checkpoints directory or a run directory (then its ``latest`` complete checkpoint)."""
    path = Path(path)
    if path.is_file() and path.name == MODEL_FILE:
        path = path.parent
    if (path / META).is_file():
        return path
    for root in (path, path / "checkpoints"):
        latest = CheckpointManager(root).latest()
        if latest is not None:
            return latest
    raise FileNotFoundError(f"{path}: not a checkpoint (no {META}), and no complete checkpoint under "
                            f"{path} or {path / 'checkpoints'}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- RNG state (per rank)
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/ints only, so they load with weights_only=True."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rank_state(ckpt_dir: Path, state: dict[str, Any]) -> None:
    torch.save(state, rank_file(ckpt_dir, dist.rank()))


def load_rank_state(ckpt_dir: Path) -> dict[str, Any]:
    path = rank_file(ckpt_dir, dist.rank())
    if not path.is_file():
        meta = CheckpointManager.read_meta(ckpt_dir)
        raise FileNotFoundError(f"{path} missing: checkpoint was written by world size {meta.get('world_size')}, "
                                f"this job runs world size {dist.world_size()}")
    return torch.load(path, map_location="cpu", weights_only=True)
