"""Atomic, resumable, self-verifying checkpoints on a filesystem shared by all ranks.

Layout under ``<run_dir>/checkpoints``::

    step_00000100/            a checkpoint (only published ones ever carry this name)
        engine/               DeepSpeed/accelerate engine state (model, optimizer, scheduler shards; ENGINE_DIR)
        rank_00000.pt         per-rank trainer state (task extras, data stream, RNG states)
        model.pt              consolidated fp32 model state (rank 0; MODEL_FILE)
        optimizer.pt          the optimizer state by parameter name, independent of world size and ZeRO partitions
                              (rank 0; OPTIMIZER_FILE): what an elastic resume loads instead of engine/
        task_extra.pt         a task's hand-over to the next phase, when it has one (TASK_EXTRA_FILE)
        meta.json             step, world size, MLflow run id, ... (META; written after every other file but one)
        manifest.json         every other file under the directory: relative path, size in bytes, sha256
                              (MANIFEST; written last: a checkpoint is complete when it has one)
    latest                    text file naming the newest complete checkpoint (replaced atomically)
    .tmp-step_00000200-<id>/  a checkpoint being written (never read; removed on the next start)

(The run directory's config.yaml, the resolved job, is trainer/job.py's: ``ResolvedJob.write``, ``read_run_config``.)

Rules:
1. every rank writes into the same temporary directory; a barrier; rank 0 checks it, writes ``meta.json``, then
   ``manifest.json`` (hashing every file, streamed in chunks), fsyncs and renames it into place (``os.replace`` of
   a directory is atomic on POSIX), then replaces ``latest``; a barrier;
2. older checkpoints are pruned (keep-last-k) only after the new one is complete and ``latest`` points at it,
   and only those older than it: a crash at any moment leaves the previous complete checkpoint intact, and the
   checkpoint just written is never pruned (step directories newer than it, left by an earlier attempt that a
   resume fell back from, are left alone until the run overwrites them);
3. every reader verifies first (``verify_checkpoint``: the manifest is readable, every file it lists is there with
   its size and sha256; ``meta.json`` is one of them). ``run.resume=auto`` (``CheckpointManager.resolve``/
   ``latest``) takes the checkpoint ``latest`` names if it verifies, else the newest one that does, and reports
   every checkpoint it skips with the failing file (``[cmg]`` on stderr, rank 0); when step directories exist but
   none verifies it is an error, never a silent fresh start. An explicit path (``run.resume=<step dir>``, a step
   directory given to ``resolve_checkpoint``) that fails is an error naming the file, never a fallback. Every
   rank verifies for itself: the result is a deterministic function of the shared filesystem, so all ranks pick
   the same checkpoint without a collective (the price: each rank hashes the checkpoint it takes, once per start;
   the page cache serves the ranks of one node). A step directory with ``meta.json`` but no
   manifest that its ``meta.json`` does not promise (written before checkpoints carried manifests) is taken as
   it is, with a warning; without either file a directory is incomplete and reported;
4. loading uses ``torch.load(weights_only=True)``: per-rank state holds only tensors, numbers, strings and
   containers of them (RNG states are tensors), never pickled objects; a file holding anything else is refused;
5. every load error is a ``CheckpointError`` naming the checkpoint and the file (for the engine: ``engine/``),
   chained to the original error;
6. a checkpoint resumes exactly (``engine/`` and this rank's ``rank_*.pt``) when the world size and the engine
   (``meta.json``'s ``zero_stage``, 0 = plain torch) are the ones it was written with. Otherwise the resume is
   *elastic* (``RunCheckpoints.restore``): the engine loads ``model.pt`` and ``optimizer.pt`` into its own
   partitioning, a part whose state is split over ranks (``Resplittable``: the data stream, the RNG streams)
   gets every old rank's state, and every other part, identical on all ranks, gets rank 0's. A part can ask for
   every rank's state at the same world size too (the data stream, when its workers or batch size changed).

This module and trainer/checkpoint_format.py (the file names, ``meta.json`` as ``CheckpointMeta``, ``manifest.json``
and verification, the weights-only load) are the ones that know these files: every reader and writer of
``model.pt``, ``optimizer.pt``, ``task_extra.pt``, ``meta.json`` and ``manifest.json`` goes through them
(``read_model_state``, ``read_meta``, ``read_init_source``, ``load_init_state_``, ``verify_checkpoint``, ...), so does
the state surgery of ``run.init_from`` (a model started from another run's model.pt).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from trainer import distributed as dist
from trainer.checkpoint_format import (
    META, MODEL_FILE, OPTIMIZER_FILE, TASK_EXTRA_FILE, CheckpointError, CheckpointManager, CheckpointMeta,
    brief, load_file, rank_file, read_meta, resolve_checkpoint,
)
from trainer.engine import ENGINE_DIR

CODEBOOK_PREFIX = "quantizer."       # model.pt keys of the shared codebook (trainer/models/segment_coder.py)


# ---------------------------------------------------------------------- one run's checkpoints
class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Any) -> None: ...


@runtime_checkable
class Resplittable(Stateful, Protocol):
    """A part whose state differs between ranks and can be re-split over another world size (or layout)."""

    def needs_resplit(self, state: Any) -> bool:
        """Whether this rank's own saved ``state`` cannot be resumed as it is (same world size), only re-split."""

    def load_resplit(self, states: list[Any]) -> None:
        """Continue from every old rank's state (in rank order) on this rank of the new world."""


class Engine(Protocol):
    """What a checkpoint needs of the training engine (``trainer.engine.TrainEngine``)."""

    zero_stage: int   # 0: plain torch

    def save(self, ckpt_dir: Path) -> None: ...
    def load(self, ckpt_dir: Path) -> None: ...
    def model_state_dict(self) -> dict[str, Tensor] | None: ...
    def optimizer_state(self) -> dict[str, Any] | None: ...
    def load_resharded(self, model_state: Mapping[str, Tensor], optimizer_state: Mapping[str, Any]) -> None: ...


class Handover(Protocol):
    """What a checkpoint needs of the task besides its ``state_dict`` (``trainer.tasks.base.Task``)."""

    def replicated_state(self) -> dict[str, Tensor]: ...
    def extra_state(self) -> dict[str, Any]: ...


class RunCheckpoints:
    """The checkpoints of one run: what each one holds, written and restored in one place.

    ``parts`` is the registry of this rank's stateful parts (name -> ``state_dict``/``load_state_dict``); a
    checkpoint holds the engine's state (model, optimizer), ``model.pt`` and ``optimizer.pt`` (rank 0), the
    task's hand-over ``task_extra.pt`` (rank 0, when non-empty), and per rank every part's state plus
    ``replicas`` (this rank's copies of the replicated state the engine does not own, for cross-rank checks).
    A part that is ``Resplittable`` follows a change of world size; every other part must be identical on all
    ranks (rule 6 of the module docstring).
    """

    def __init__(self, root: Path, keep_last: int, engine: Engine, parts: Mapping[str, Stateful], task: Handover):
        self.manager = CheckpointManager(root, keep_last)
        self.engine, self.parts, self.task = engine, dict(parts), task
        self.manager.clean_partial()

    def restore(self, resume: str | None) -> Path | None:
        """Collective. Load the checkpoint ``run.resume`` names into the engine and every part; the directory,
        or None. Exact when the world size and engine are the ones it was written with, elastic otherwise
        (rule 6 of the module docstring), which rank 0 reports in one line.

        The checkpoint is verified first (``CheckpointManager.resolve``); a load that fails all the same is a
        ``CheckpointError`` naming the checkpoint and the file (``engine/`` for the engine's state)."""
        ckpt = self.manager.resolve(resume)
        if ckpt is None:
            return None
        meta = read_meta(ckpt)
        old_world, world = meta.world_size, dist.world_size()
        old_stage = self.engine.zero_stage if meta.zero_stage is None else meta.zero_stage
        reshard = old_world != world or old_stage != self.engine.zero_stage
        if reshard:
            optimizer_state = read_optimizer_state(ckpt)
            try:
                self.engine.load_resharded(read_model_state(ckpt), optimizer_state)
            except Exception as err:
                raise CheckpointError(f"checkpoint {ckpt}: {OPTIMIZER_FILE}: the optimizer state cannot be loaded "
                                      f"into this engine ({brief(err)})", ckpt, ckpt / OPTIMIZER_FILE) from err
        else:
            try:
                self.engine.load(ckpt)
            except Exception as err:
                raise CheckpointError(f"checkpoint {ckpt}: {ENGINE_DIR}/: the engine state cannot be loaded "
                                      f"({brief(err)})", ckpt, ckpt / ENGINE_DIR) from err
        own = load_rank_state(ckpt) if old_world == world else None
        every: list[dict[str, Any]] = []   # every old rank's state, read once a part needs them
        resplit = []
        for name, part in self.parts.items():
            splits = isinstance(part, Resplittable)
            if own is not None and not (splits and part.needs_resplit(_part_state(own, name, ckpt, dist.rank()))):
                part.load_state_dict(own[name])
                continue
            every = every or [load_rank_state(ckpt, rank) for rank in range(old_world)]
            if splits:
                part.load_resplit([_part_state(state, name, ckpt, rank) for rank, state in enumerate(every)])
                resplit.append(name)
            else:
                part.load_state_dict(_part_state(every[0], name, ckpt, 0))   # identical on every rank
        if (reshard or resplit) and dist.rank() == 0:
            notes = [f"world size {old_world} -> {world}, engine {_engine_name(old_stage)} -> "
                     f"{_engine_name(self.engine.zero_stage)}"]
            notes += [f"optimizer state re-sharded from {OPTIMIZER_FILE}"] if reshard else []
            notes += [f"re-split over the new layout: {', '.join(resplit)}"] if resplit else []
            notes += ["every other part from rank 0"] if own is None else []
            print(f"[cmg] elastic resume from {ckpt} (step {meta.step}): {'; '.join(notes)} (not bit-exact: see "
                  "docs/training.md, Elastic resume)", flush=True)
        return ckpt

    def save(self, step: int, meta: CheckpointMeta) -> Path:
        """Collective: the checkpoint of ``step`` with ``meta`` (and the engine's ``zero_stage``) in its meta.json;
        its directory."""
        def write(tmp: Path) -> None:
            self.engine.save(tmp)
            model_state = self.engine.model_state_dict()
            if model_state is not None:
                write_model_state(tmp, model_state)
            optimizer_state = self.engine.optimizer_state()
            if optimizer_state is not None:
                write_optimizer_state(tmp, optimizer_state)
            extra = self.task.extra_state()
            if extra and dist.rank() == 0:
                write_task_extra(tmp, extra)
            save_rank_state(tmp, {name: part.state_dict() for name, part in self.parts.items()}
                            | {"replicas": self.task.replicated_state()})

        return self.manager.save(step, write, dataclasses.replace(meta, zero_stage=self.engine.zero_stage))


def _part_state(state: Mapping[str, Any], name: str, ckpt: Path, rank: int) -> Any:
    if name not in state:
        raise KeyError(f"{rank_file(ckpt, rank)}: no state for '{name}' (written by another version?)")
    return state[name]


def _engine_name(zero_stage: int) -> str:
    return f"ZeRO-{zero_stage}" if zero_stage else "plain torch"


# ---------------------------------------------------------------------- model.pt, task_extra.pt, init_from
def write_model_state(ckpt_dir: Path, state: Mapping[str, Tensor]) -> None:
    torch.save(dict(state), Path(ckpt_dir) / MODEL_FILE)


def read_model_state(ckpt_dir: Path) -> dict[str, Tensor]:
    """The consolidated model state of a checkpoint (weights only, on the CPU); a ``CheckpointError`` naming the
    checkpoint and model.pt if it is missing, damaged, or holds anything but a plain tensor state dict."""
    ckpt = Path(ckpt_dir)
    if not (ckpt / MODEL_FILE).is_file():
        raise CheckpointError(f"checkpoint {ckpt}: {MODEL_FILE}: missing (the consolidated model state)",
                              ckpt, ckpt / MODEL_FILE)
    return load_file(ckpt, MODEL_FILE, "a plain tensor state dict")


def read_codebook(path: str | Path) -> tuple[Tensor, Path]:
    """The codebook ``(m d)`` fp32 of a checkpoint (any path ``resolve_checkpoint`` accepts) and its directory."""
    ckpt = resolve_checkpoint(path)
    state = read_model_state(ckpt)
    key = CODEBOOK_PREFIX + "codebook"
    if key not in state:
        raise KeyError(f"{ckpt / MODEL_FILE} has no '{key}' (not the state dict of a codebook model?)")
    return state[key].float(), ckpt


def write_optimizer_state(ckpt_dir: Path, state: Mapping[str, Any]) -> None:
    torch.save(dict(state), Path(ckpt_dir) / OPTIMIZER_FILE)


def read_optimizer_state(ckpt_dir: Path) -> dict[str, Any]:
    """A checkpoint's optimizer state by parameter name (``TrainEngine.optimizer_state``'s format); a
    ``CheckpointError`` naming optimizer.pt if it is missing or damaged."""
    ckpt = Path(ckpt_dir)
    if not (ckpt / OPTIMIZER_FILE).is_file():
        raise CheckpointError(f"checkpoint {ckpt}: {OPTIMIZER_FILE}: missing (written before elastic resumes "
                              "existed): resume it with the world size and engine that wrote it", ckpt,
                              ckpt / OPTIMIZER_FILE)
    return load_file(ckpt, OPTIMIZER_FILE, "a plain optimizer state")


def write_task_extra(ckpt_dir: Path, extra: Mapping[str, object]) -> None:
    torch.save(dict(extra), Path(ckpt_dir) / TASK_EXTRA_FILE)


def read_task_extra(ckpt_dir: Path) -> dict[str, object]:
    """A task's hand-over to the next phase; ``{}`` when the checkpoint has none."""
    path = Path(ckpt_dir) / TASK_EXTRA_FILE
    return load_file(Path(ckpt_dir), TASK_EXTRA_FILE, "plain state") if path.is_file() else {}


@dataclass
class InitSource:
    """A finished checkpoint that a run starts from (``run.init_from``), as read from disk once."""

    checkpoint: Path                      # the step directory
    meta: CheckpointMeta                  # its meta.json
    model_state: dict[str, Tensor]        # its model.pt
    extra: dict[str, object]              # its task_extra.pt ({} if none)

    @property
    def modalities(self) -> list[str]:
        """The modalities that run trained (its model config's)."""
        return list((self.meta.model_config or {})["modalities"])


def read_init_source(source: str) -> InitSource:
    """The checkpoint ``run.init_from`` names (a step, checkpoints or run directory, or a model.pt), verified."""
    try:
        ckpt = resolve_checkpoint(source)
        return InitSource(ckpt, read_meta(ckpt), read_model_state(ckpt), read_task_extra(ckpt))
    except CheckpointError as err:
        raise CheckpointError(f"run.init_from={source!r}: {err}", err.checkpoint, err.file) from err


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

    def needs_resplit(self, state: dict[str, Any]) -> bool:
        return False

    def load_resplit(self, states: list[dict[str, Any]]) -> None:
        """Another world size: one rank's streams cannot be split or merged, so every rank starts new ones, seeded
        by its rank and the torch RNG state old rank 0 saved (seeds differ between ranks and between checkpoints)."""
        digest = hashlib.sha256(states[0]["torch"].numpy().tobytes() + f"/{dist.rank()}".encode()).digest()
        seed = int.from_bytes(digest[:4], "little")
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def save_rank_state(ckpt_dir: Path, state: dict[str, Any]) -> None:
    torch.save(state, rank_file(ckpt_dir, dist.rank()))


def load_rank_state(ckpt_dir: Path, rank: int | None = None) -> dict[str, Any]:
    """The state ``rank`` (default: this rank) saved in ``ckpt_dir``; a ``CheckpointError`` naming the checkpoint
    and the file on any failure."""
    ckpt = Path(ckpt_dir)
    path = rank_file(ckpt, dist.rank() if rank is None else rank)
    if not path.is_file():
        try:
            written = f"written by world size {read_meta(ckpt).world_size}"
        except CheckpointError:
            written = f"its {META} unreadable"
        raise CheckpointError(f"checkpoint {ckpt}: {path.name}: missing (checkpoint {written}, this job runs world "
                              f"size {dist.world_size()})", ckpt, path)
    return load_file(ckpt, path.name, "plain per-rank state")
