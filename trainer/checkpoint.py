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

(The run directory's config.yaml, the resolved job, is trainer/job.py's: ``ResolvedJob.write``, ``read_run_config``.)

Rules:
1. every rank writes into the same temporary directory; a barrier; rank 0 checks it and renames it into
   place (``os.replace`` of a directory is atomic on POSIX), then replaces ``latest``; a barrier;
2. older checkpoints are pruned (keep-last-k) only after the new one is complete and ``latest`` points at it,
   so a crash at any moment leaves the previous complete checkpoint intact;
3. loading uses ``torch.load(weights_only=True)``: per-rank state holds only tensors, numbers, strings and
   containers of them (RNG states are tensors), never pickled objects.

This module is the one that knows these files: every reader and writer of ``model.pt``, ``task_extra.pt`` and
``meta.json`` goes through it (``read_model_state``, ``read_init_source``, ``load_init_state_``, ...), so does
the state surgery of ``run.init_from`` (a model started from another run's model.pt).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from trainer import distributed as dist

_STEP_DIR = re.compile(r"^step_(\d{8})$")
LATEST = "latest"
META = "meta.json"
MODEL_FILE = "model.pt"              # consolidated fp32 model state (evaluation, export, the next phase's init)
TASK_EXTRA_FILE = "task_extra.pt"    # a task's optional hand-over to the next phase (trainer/tasks/base.py)
CODEBOOK_PREFIX = "quantizer."       # model.pt keys of the shared codebook (trainer/models/segment_coder.py)


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


# ---------------------------------------------------------------------- one run's checkpoints
class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Any) -> None: ...


class Engine(Protocol):
    """What a checkpoint needs of the training engine (``trainer.engine.TrainEngine``)."""

    def save(self, ckpt_dir: Path) -> None: ...
    def load(self, ckpt_dir: Path) -> None: ...
    def model_state_dict(self) -> dict[str, Tensor] | None: ...


class Handover(Protocol):
    """What a checkpoint needs of the task besides its ``state_dict`` (``trainer.tasks.base.Task``)."""

    def replicated_state(self) -> dict[str, Tensor]: ...
    def extra_state(self) -> dict[str, Any]: ...


class RunCheckpoints:
    """The checkpoints of one run: what each one holds, written and restored in one place.

    ``parts`` is the registry of this rank's stateful parts (name -> ``state_dict``/``load_state_dict``); a
    checkpoint holds the engine's state (model, optimizer), ``model.pt`` (rank 0), the task's hand-over
    ``task_extra.pt`` (rank 0, when non-empty), and per rank every part's state plus ``replicas`` (this rank's
    copies of the replicated state the engine does not own, for cross-rank checks).
    """

    def __init__(self, root: Path, keep_last: int, engine: Engine, parts: Mapping[str, Stateful], task: Handover):
        self.manager = CheckpointManager(root, keep_last)
        self.engine, self.parts, self.task = engine, dict(parts), task
        self.manager.clean_partial()

    def restore(self, resume: str | None) -> Path | None:
        """Load the checkpoint ``run.resume`` names into the engine and every part; the directory, or None."""
        ckpt = self.manager.resolve(resume)
        if ckpt is not None:
            self.engine.load(ckpt)
            state = load_rank_state(ckpt)
            missing = sorted(set(self.parts) - set(state))
            if missing:
                raise KeyError(f"{rank_file(ckpt, dist.rank())}: no state for {missing} (written by another version?)")
            for name, part in self.parts.items():
                part.load_state_dict(state[name])
        return ckpt

    def save(self, step: int, meta: dict[str, Any]) -> Path:
        """Collective: the checkpoint of ``step`` with ``meta`` in its meta.json; its directory."""
        def write(tmp: Path) -> None:
            self.engine.save(tmp)
            model_state = self.engine.model_state_dict()
            if model_state is not None:
                write_model_state(tmp, model_state)
            extra = self.task.extra_state()
            if extra and dist.rank() == 0:
                write_task_extra(tmp, extra)
            save_rank_state(tmp, {name: part.state_dict() for name, part in self.parts.items()}
                            | {"replicas": self.task.replicated_state()})

        return self.manager.save(step, write, meta)

    def latest(self) -> Path | None:
        return self.manager.latest()


# ---------------------------------------------------------------------- model.pt, task_extra.pt, init_from
def write_model_state(ckpt_dir: Path, state: Mapping[str, Tensor]) -> None:
    torch.save(dict(state), Path(ckpt_dir) / MODEL_FILE)


def read_model_state(ckpt_dir: Path) -> dict[str, Tensor]:
    """The consolidated model state of a checkpoint (weights only, on the CPU)."""
    path = Path(ckpt_dir) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the consolidated model state of the checkpoint)")
    return torch.load(path, map_location="cpu", weights_only=True)


def read_codebook(path: str | Path) -> tuple[Tensor, Path]:
    """The codebook ``(m d)`` fp32 of a checkpoint (any path ``resolve_checkpoint`` accepts) and its directory."""
    ckpt = resolve_checkpoint(path)
    state = read_model_state(ckpt)
    key = CODEBOOK_PREFIX + "codebook"
    if key not in state:
        raise KeyError(f"{ckpt / MODEL_FILE} has no '{key}' (not the state dict of a codebook model?)")
    return state[key].float(), ckpt


def write_task_extra(ckpt_dir: Path, extra: Mapping[str, object]) -> None:
    torch.save(dict(extra), Path(ckpt_dir) / TASK_EXTRA_FILE)


def read_task_extra(ckpt_dir: Path) -> dict[str, object]:
    """A task's hand-over to the next phase; ``{}`` when the checkpoint has none."""
    path = Path(ckpt_dir) / TASK_EXTRA_FILE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else {}


@dataclass
class InitSource:
    """A finished checkpoint that a run starts from (``run.init_from``), as read from disk once."""

    checkpoint: Path                      # the step directory
    meta: dict[str, object]               # its meta.json
    model_state: dict[str, Tensor]        # its model.pt
    extra: dict[str, object]              # its task_extra.pt ({} if none)

    @property
    def modalities(self) -> list[str]:
        """The modalities that run trained (its model config's)."""
        return list(self.meta["model_config"]["modalities"])


def read_init_source(source: str) -> InitSource:
    """The checkpoint ``run.init_from`` names (a step, checkpoints or run directory, or a model.pt)."""
    try:
        ckpt = resolve_checkpoint(source)
        return InitSource(ckpt, CheckpointManager.read_meta(ckpt), read_model_state(ckpt), read_task_extra(ckpt))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"run.init_from={source!r}: {err}") from None


def load_init_state_(model: nn.Module, init: InitSource) -> list[str]:
    """Start ``model`` (a ``SegmentCoder``) from ``init``'s model.pt; returns the modules that stay fresh.

    The source may come from a phase with other modalities (continual learning): modules of modalities in
    both runs are loaded, those new to this run keep their initial weights, and the shared codebook is adopted
    with its usage clocks remapped by modality name. Rank-identical: every rank reads the same file.
    """
    state, prefix = init.model_state, CODEBOOK_PREFIX
    model.quantizer.adopt_({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, init.modalities)
    own = model.state_dict()
    shared = {k: v for k, v in state.items() if not k.startswith(prefix) and k in own}
    loaded = {k: v for k, v in shared.items() if own[k].shape == v.shape}
    mismatched = sorted(k for k, v in shared.items() if own[k].shape != v.shape)
    if mismatched:
        raise ValueError(f"run.init_from={str(init.checkpoint)!r}: shapes differ for {mismatched[:5]} (a modality's "
                         "feature dims or the model sizes changed between runs)")
    model.load_state_dict(loaded, strict=False)
    return sorted({".".join(k.split(".")[:2]) for k in own if k not in loaded and not k.startswith(prefix)})


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


class ProcessRNG:
    """This process's Python, numpy and torch (and CUDA) generators as one stateful part of a checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state)


def save_rank_state(ckpt_dir: Path, state: dict[str, Any]) -> None:
    torch.save(state, rank_file(ckpt_dir, dist.rank()))


def load_rank_state(ckpt_dir: Path) -> dict[str, Any]:
    path = rank_file(ckpt_dir, dist.rank())
    if not path.is_file():
        meta = CheckpointManager.read_meta(ckpt_dir)
        raise FileNotFoundError(f"{path} missing: checkpoint was written by world size {meta.get('world_size')}, "
                                f"this job runs world size {dist.world_size()}")
    return torch.load(path, map_location="cpu", weights_only=True)
