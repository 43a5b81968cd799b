"""The checkpoint directories of a run on disk: the files of one checkpoint (their names, ``meta.json``
(``CheckpointMeta``), ``manifest.json``, written last and verified by every reader, the weights-only load of its
``.pt`` files), and ``CheckpointManager``: publishing, finding, pruning and resolving checkpoints.

trainer/checkpoint.py restores and saves a run's state with these (its module docstring has the layout and the
rules); every reader and writer of these files goes through the two modules. This one is torch-free at import (torch
and the collectives are imported where a function needs them), so that the job's checks read checkpoints in the
supervisor without the training stack (trainer/job.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any


META = "meta.json"
MANIFEST = "manifest.json"           # every other file of a checkpoint with its size and sha256; written last
_MANIFEST_FORMAT = 1
_HASH_CHUNK = 1 << 20                # bytes read per step while hashing (files are streamed, never read whole)
_HASH_THREADS = 4                    # files hashed concurrently (hashlib releases the GIL)
MODEL_FILE = "model.pt"              # consolidated fp32 model state (evaluation, export, the next phase's init)
TASK_EXTRA_FILE = "task_extra.pt"    # a task's optional hand-over to the next phase (trainer/tasks/base.py)
OPTIMIZER_FILE = "optimizer.pt"      # optimizer state by parameter name (trainer/engine.py: optimizer_state)


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, damaged or unreadable. The message names the checkpoint and the file;
    ``checkpoint`` and ``file`` hold them (``None`` where not known). A ``ValueError``, so the command-line
    tools that report bad input as ``error: ...`` (evaluate, toc) report these the same way."""

    def __init__(self, message: str, checkpoint: Path | None = None, file: Path | None = None):
        super().__init__(message)
        self.checkpoint, self.file = checkpoint, file


META_VERSION = 1   # meta.json's layout; one without "version" (written before it had one) is version 1


@dataclass(frozen=True)
class CheckpointMeta:
    """A checkpoint's ``meta.json``: what wrote it and what rebuilds its model. ``CheckpointManager.save`` sets
    ``step``, ``world_size`` and ``manifest``; the defaults are what a meta.json written before a key existed
    means. Keys this version does not know (an older trainer's) are ignored; a newer ``version`` is refused."""

    step: int                                     # the optimizer steps taken
    world_size: int                               # the ranks that wrote it (one rank_*.pt each)
    zero_stage: int | None = None                 # its engine (0 = plain torch); None: before elastic resumes
    task: str = "unicode"                         # the registered task (trainer/tasks); Uni-Code's before others
    model_config: dict[str, Any] | None = None    # the resolved model config: rebuilds the model
    # the resolved job config that trained it (config.yaml's; None: written before meta.json recorded it): what a
    # resume compares its own config with (trainer/job.py, run_start)
    job_config: dict[str, Any] | None = None
    backbones: dict[str, Any] | None = None       # the frozen backbones' records by modality (clip shards)
    phase: str = ""                               # run.phase
    mlflow_run_id: str | None = None              # the run in the tracking store (the evaluation's parent)
    samples_seen: int = 0
    data_kind: str = ""                           # data.kind of the run ("" before it was recorded)
    data_source: dict[str, Any] | None = None     # trainer.data.stream.data_source (None: in-memory, or older)
    manifest: str | None = None                   # the promise that manifest.json was written (None: older)
    version: int = META_VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, contents: Any, ckpt: Path) -> CheckpointMeta:
        """The parsed meta.json of ``ckpt``, checked: a ``CheckpointError`` naming the file and the key."""
        path = ckpt / META

        def bad(message: str) -> CheckpointError:
            return CheckpointError(f"checkpoint {ckpt}: {META}: {message}", ckpt, path)

        if not isinstance(contents, dict):
            raise bad(f"expected a JSON object, got {type(contents).__name__}")
        version = contents.get("version", 1)
        if not isinstance(version, int) or version > META_VERSION:
            raise bad(f"version {version!r}, written by a newer trainer (this one reads up to {META_VERSION}): "
                      "read it with that version")
        for name in ("step", "world_size"):
            if not isinstance(contents.get(name), int):
                raise bad(f"{name!r} must be an integer, got {contents.get(name)!r}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in contents.items() if k in known}
        for name, value in values.items():
            kinds = _META_KINDS[name]
            if not isinstance(value, kinds):
                raise bad(f"{name!r} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
        return cls(**values)


_META_KINDS: dict[str, tuple[type, ...]] = {
    "step": (int,), "world_size": (int,), "zero_stage": (int, type(None)), "task": (str,),
    "model_config": (dict, type(None)), "job_config": (dict, type(None)), "backbones": (dict, type(None)),
    "phase": (str,),
    "mlflow_run_id": (str, type(None)), "samples_seen": (int,), "data_kind": (str,),
    "data_source": (dict, type(None)), "manifest": (str, type(None)), "version": (int,),
}


def read_meta(ckpt_dir: str | Path) -> CheckpointMeta:
    """The ``meta.json`` of ``ckpt_dir``; a ``CheckpointError`` naming it if it is missing, unreadable or bad."""
    ckpt = Path(ckpt_dir)
    return CheckpointMeta.from_json(read_json(ckpt, META), ckpt)


def write_meta(ckpt_dir: Path, meta: CheckpointMeta) -> None:
    (Path(ckpt_dir) / META).write_text(json.dumps(meta.to_json(), indent=1))


def write_manifest(ckpt_dir: str | Path) -> Path:
    """Write ``ckpt_dir/manifest.json``: every other file under ``ckpt_dir`` with its size and sha256 (streamed
    in chunks). Written last, it marks the checkpoint complete (the file itself is fsynced; the caller fsyncs the
    directory before publishing it)."""
    ckpt = Path(ckpt_dir)
    files = _files_of(ckpt)
    digests = _sha256_all([ckpt / f for f in files])
    entries = [{"path": f, "size": (ckpt / f).stat().st_size, "sha256": d} for f, d in zip(files, digests)]
    target = ckpt / MANIFEST
    with open(target, "w") as out:
        json.dump({"format": _MANIFEST_FORMAT, "hash": "sha256", "files": entries}, out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    return target


def verify_checkpoint(ckpt_dir: str | Path) -> None:
    """Check that ``ckpt_dir`` is complete and undamaged; a ``CheckpointError`` naming it and the file if not.

    The manifest must be readable and every file it lists (meta.json among them) present with its size and
    sha256 (sizes are checked for all files before anything is hashed). Files the manifest does not list are not
    looked at. A directory with a meta.json that promises no manifest (written before checkpoints carried one)
    passes with a warning: there is nothing to check it against.
    """
    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint {ckpt}: not a directory", ckpt)
    if not (ckpt / MANIFEST).is_file():
        if not (ckpt / META).is_file():
            raise CheckpointError(f"checkpoint {ckpt}: {MANIFEST} missing (and {META} too): not a complete "
                                  "checkpoint", ckpt, ckpt / MANIFEST)
        if read_meta(ckpt).manifest is not None:
            raise CheckpointError(f"checkpoint {ckpt}: {MANIFEST} missing ({META} says one was written)",
                                  ckpt, ckpt / MANIFEST)
        report(f"checkpoint {ckpt}: no {MANIFEST} (written before checkpoints carried one): its files are not "
               "verified")
        return
    entries = _read_manifest(ckpt)
    if META not in {e["path"] for e in entries}:
        raise CheckpointError(f"checkpoint {ckpt}: {MANIFEST} does not list {META}", ckpt, ckpt / MANIFEST)
    for entry in entries:
        path = ckpt / entry["path"]
        if not path.is_file():
            raise CheckpointError(f"checkpoint {ckpt}: {entry['path']}: missing (listed in {MANIFEST})", ckpt, path)
        size = path.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(f"checkpoint {ckpt}: {entry['path']}: {size} bytes, {MANIFEST} says "
                                  f"{entry['size']} (truncated or rewritten)", ckpt, path)
    for entry, digest in zip(entries, _sha256_all([ckpt / e["path"] for e in entries])):
        if digest != entry["sha256"]:
            raise CheckpointError(f"checkpoint {ckpt}: {entry['path']}: sha256 {digest[:16]}… differs from "
                                  f"{MANIFEST}'s {entry['sha256'][:16]}… (damaged)", ckpt, ckpt / entry["path"])


def _read_manifest(ckpt: Path) -> list[dict[str, Any]]:
    """The manifest's file entries, checked for shape; a ``CheckpointError`` naming manifest.json if it is bad."""
    data = read_json(ckpt, MANIFEST)
    entries = data.get("files") if isinstance(data, dict) else None

    def good(e: Any) -> bool:
        if not (isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("sha256"), str)
                and isinstance(e.get("size"), int)):
            return False
        rel = Path(e["path"])
        return not rel.is_absolute() and ".." not in rel.parts and e["path"] != MANIFEST

    if not isinstance(entries, list) or not all(good(e) for e in entries):
        raise CheckpointError(f"checkpoint {ckpt}: {MANIFEST}: malformed (expected {{\"files\": [{{\"path\", "
                              "\"size\", \"sha256\"}, ...]}, relative paths inside the checkpoint)",
                              ckpt, ckpt / MANIFEST)
    return entries


def read_json(ckpt: Path, name: str) -> Any:
    path = ckpt / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {ckpt}: {name}: missing", ckpt, path) from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {ckpt}: {name}: unreadable ({type(err).__name__}: {err}; truncated or "
                              "damaged)", ckpt, path) from err


def _files_of(ckpt: Path) -> list[str]:
    """Every file under ``ckpt`` but the manifest, as sorted relative POSIX paths."""
    found = (p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file())
    return sorted(f for f in found if f != MANIFEST)


def _sha256(path: Path) -> str:
    digest, buffer = hashlib.sha256(), bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _sha256_all(paths: list[Path]) -> list[str]:
    if len(paths) <= 1:
        return [_sha256(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, len(paths))) as pool:
        return list(pool.map(_sha256, paths))


def report(message: str) -> None:
    from trainer import distributed as dist

    if dist.rank() == 0:
        print(f"[cmg] {message}", file=sys.stderr, flush=True)


def load_file(ckpt: Path, name: str, holds: str) -> Any:
    """``torch.load(weights_only=True)`` of ``ckpt/name``; any failure a ``CheckpointError`` naming both.

    A file that holds anything but ``holds`` (tensors, numbers, strings and containers of them) is refused,
    never unpickled; that message does not repeat torch's advice to load it with ``weights_only`` off.
    """
    import torch

    path = Path(ckpt) / name
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f"it holds a pickled object ({found.group(1)})" if found else "it holds pickled objects"
            refusal = CheckpointError(f"checkpoint {ckpt}: {name}: not {holds}: {what}; refused, never unpickled",
                                      Path(ckpt), path)
            raise refusal from None   # torch's text (still in __context__) suggests loading it unsafely
        raise CheckpointError(f"checkpoint {ckpt}: {name}: cannot be loaded ({brief(err)}); truncated or "
                              "damaged?", Path(ckpt), path) from err


def brief(err: BaseException) -> str:
    """``Type: first sentence`` of an error (torch's messages run on for lines); a first line that ends in ":" (torch's
    "Error(s) in loading state_dict for X:") with the first sentence of the next."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    first = lines[0].split(". ")[0][:200] if lines else ""
    if first.endswith(":") and len(lines) > 1:
        first = f"{first} {lines[1].split('. ')[0][:200]}"
    return f"{type(err).__name__}: {first}" if first and "weights_only" not in first else type(err).__name__


# ---------------------------------------------------------------------- the checkpoints of a run directory
_STEP_DIR = re.compile(r"^step_(\d{8})$")
LATEST = "latest"
BEST = "best.json"   # in the checkpoints root: the checkpoint run.keep_best keeps, with its metric (record_best_)


def rank_file(ckpt_dir: Path, rank: int) -> Path:
    return Path(ckpt_dir) / f"rank_{rank:05d}.pt"


class CheckpointManager:
    def __init__(self, root: str | Path, keep_last: int = 2):
        if keep_last < 1:
            raise ValueError(f"checkpoint keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last

    # ------------------------------------------------------------------ discovery
    def step_dirs(self) -> list[Path]:
        """Every ``step_N`` directory, complete or not, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)), key=_step)

    def complete(self) -> list[Path]:
        """Complete checkpoints (a manifest, or an older checkpoint's meta.json), oldest first; not verified."""
        return [p for p in self.step_dirs() if (p / MANIFEST).is_file() or (p / META).is_file()]

    def latest(self) -> Path | None:
        """The newest checkpoint that verifies: the one ``latest`` names, else the newest by step that does.

        Every checkpoint tried and skipped is reported with the failing file (``[cmg]`` on stderr, rank 0).
        """
        tried: set[Path] = set()
        pointer = self.root / LATEST
        if pointer.is_file():
            name = pointer.read_text().strip()
            candidate = self.root / name
            if _STEP_DIR.match(name) and candidate.is_dir():
                if _verifies(candidate):
                    return candidate
                tried.add(candidate)
            else:
                report(f"{pointer} names {name!r}, not a checkpoint directory; looking for the newest one")
        for candidate in reversed(self.step_dirs()):
            if candidate not in tried and _verifies(candidate):
                return candidate
        return None

    def named_latest(self) -> Path | None:
        """The checkpoint ``latest`` names, unverified (None without a pointer): a cheap look before any work at
        what ``run.resume=auto`` will most likely take (the resume itself verifies, and may fall back)."""
        pointer = self.root / LATEST
        name = pointer.read_text().strip() if pointer.is_file() else ""
        return self.root / name if _STEP_DIR.match(name) else None

    def resolve(self, resume: str | None) -> Path | None:
        """``None``/"" -> no resume; "auto" -> the newest checkpoint that verifies (``latest``; None if there is
        no step directory; an error if there are some and none verifies); else a checkpoint directory, which must
        verify (or a checkpoints root: its newest checkpoint that verifies)."""
        if not resume:
            return None
        if resume == "auto":
            return self._newest_verified(required=False)
        path = Path(resume)
        if path.is_dir() and (path / LATEST).is_file():  # a checkpoints root was given
            return CheckpointManager(path)._newest_verified(required=True)
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            raise CheckpointError(f"run.resume={resume!r}: {err}", err.checkpoint, err.file) from err
        return path

    def _newest_verified(self, required: bool) -> Path | None:
        found = self.latest()
        if found is None and (required or self.step_dirs()):
            dirs = [p.name for p in self.step_dirs()]
            raise CheckpointError(f"no checkpoint under {self.root} verifies (step directories: {dirs or 'none'}; "
                                  "each one's failing file is reported above): repair or remove them, or start over "
                                  "with run.resume=''", self.root)
        return found

    def clean_partial(self) -> None:
        """Remove temp dirs left by a crash mid-save (rank 0 only; called before training starts)."""
        from trainer import distributed as dist
        if dist.rank() == 0 and self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith((".tmp-", ".token-")):
                    shutil.rmtree(p, ignore_errors=True)
        dist.barrier()

    # ------------------------------------------------------------------ saving
    def save(self, step: int, write: Callable[[Path], None], meta: CheckpointMeta | None = None) -> Path:
        """Collective: every rank calls it. ``write(tmp_dir)`` writes this rank's part of the checkpoint; ``meta``
        goes into its meta.json with this ``step``, this world size and the manifest's promise."""
        from trainer import distributed as dist

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
            write_meta(tmp, dataclasses.replace(meta or CheckpointMeta(step, dist.world_size()), step=step,
                                                world_size=dist.world_size(), manifest=MANIFEST))
            write_manifest(tmp)   # last: it lists (and so vouches for) every other file, meta.json included
            _fsync_dir(tmp)
            if final.exists():  # re-saving the same step (e.g. a stop signal right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            pointer_tmp = self.root / f".{LATEST}.tmp"
            pointer_tmp.write_text(final.name)
            os.replace(pointer_tmp, self.root / LATEST)
            _fsync_dir(self.root)
            token_file.unlink(missing_ok=True)
            self._prune(final)
        dist.barrier()
        return final

    def _prune(self, newest: Path) -> None:
        """Keep-last-k once ``newest`` is published: it and the k-1 newest complete checkpoints before it stay;
        every older step directory goes (complete or not), except the best one (``best.json``, run.keep_best).
        Newer step directories (an earlier attempt's, that a resume fell back from) stay until the run overwrites
        them: ``newest`` is never pruned."""
        older = [p for p in self.step_dirs() if _step(p) < _step(newest)]
        complete = [p for p in older if (p / MANIFEST).is_file() or (p / META).is_file()]
        keep = set(complete[-(self.keep_last - 1):]) if self.keep_last > 1 else set()
        best = self.best()
        if best is not None:
            keep.add(self.root / best["checkpoint"])
        for old in older:
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------ the best checkpoint (run.keep_best)
    def best(self) -> dict[str, Any] | None:
        """``{"metric", "value", "step", "checkpoint"}`` of the best checkpoint so far, or None."""
        path = self.root / BEST
        return json.loads(path.read_text()) if path.is_file() else None

    def record_best_(self, ckpt: Path, metric: str, value: float) -> bool:
        """Rank 0, after ``ckpt`` was published and probed: make it the best if ``value`` of ``metric`` (higher is
        better) beats the recorded one, then prune the previous best unless keep-last still holds it. A best.json
        of another metric (a rerun that changed run.keep_best) is replaced. Returns whether ``ckpt`` is the best."""
        best = self.best()
        if best is not None and best["metric"] == metric and best["value"] >= value:
            return False
        record = {"metric": metric, "value": value, "step": _step(ckpt), "checkpoint": ckpt.name}
        tmp = self.root / f".{BEST}.tmp"
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, self.root / BEST)
        latest = self.named_latest()
        if latest is not None:
            self._prune(latest)
        return True


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory meant by ``path``, verified: itself (a step directory, or one with a manifest or
    meta.json: it must verify), a ``model.pt`` inside one, a checkpoints directory or a run directory (then its
    newest checkpoint that verifies, as ``run.resume=auto`` picks it)."""
    path = Path(path)
    if path.is_file() and path.name == MODEL_FILE:
        path = path.parent
    if _STEP_DIR.match(path.name) or (path / MANIFEST).is_file() or (path / META).is_file():
        verify_checkpoint(path)
        return path
    for root in (path, path / "checkpoints"):
        found = CheckpointManager(root)._newest_verified(required=False)
        if found is not None:
            return found
    raise CheckpointError(f"{path}: not a checkpoint (no {MANIFEST} or {META}), and no checkpoint under "
                          f"{path} or {path / 'checkpoints'}", path)


def _verifies(ckpt: Path) -> bool:
    """Whether ``ckpt`` verifies; if not, reports it (with the failing file) as skipped."""
    try:
        verify_checkpoint(ckpt)
    except CheckpointError as err:
        report(f"skipping {err}")
        return False
    return True


def _step(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
