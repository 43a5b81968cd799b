"""Encode clips into codes with a trained model (``cmg encode``, ``python -m trainer.encode``).

    cmg encode MODEL INPUT [INPUT ...] --out OUT [--batch-size 16] [--num-workers 2] [--device cuda]
    cmg encode runs/demo 'my_clips/*.mp4' --out codes.npz               # one table
    cmg encode exports/demo 'clips/train-{000000..000015}.tar' --out codes/     # WebDataset shards
    accelerate launch --num_processes 2 -m trainer.encode MODEL INPUT --out OUT    # or torchrun: ranks split the input

MODEL: a run directory (its latest checkpoint), a checkpoints directory, step_N, a model.pt, or an export directory
(``CMGModel.save_pretrained``). Clips are decoded as the model's training decoded them and go through the frozen
backbones it names, fingerprints checked (trainer/pretrained.py). No labels are needed: a clip is its video and audio
(``KEY.mp4``, or ``KEY.wav``/``KEY.flac`` for the audio) and, when the model encodes text, its caption (``KEY.txt``).

INPUT: clip shards (a brace pattern, or a glob, of .tar files, as ``shards.write`` packs them), or mp4 files: a glob,
a directory of ``KEY.mp4`` files, or the files themselves; a file's ``KEY.wav``/``.flac``/``.txt``/``.json`` next to
it belong to the clip, as ``shards.write`` packs them. Give shards or mp4 files, not both.

OUT, one of:
- a directory: WebDataset shards ``OUT/codes-%06d.tar`` whose clip ``KEY`` has, for every modality m the model
  encodes, ``KEY.<m>.codes.npy`` ``(t)`` int64 (the code of each segment; text: of each real token) and
  ``KEY.<m>.z.npy`` ``(t D)`` float32 (the semantic vectors the codes were chosen for), plus the clip's ``json`` /
  ``txt`` where it has them; ``OUT/codebook.npy`` ``(M D)`` (a code's vector: ``codebook[code]``) and
  ``OUT/manifest.json`` (shards and counts, the model's task, source and backbone fingerprints). ``.npy`` members are
  written with ``allow_pickle=False`` (read them with ``trainer.data.features.decode_npy``);
- ``OUT.npz``: one table, a row per clip in input order: ``key`` (n), ``<m>.codes`` (n t) int64, ``<m>.z``
  (n t D) float32 (text: padded to the longest caption, code -1 and zero vectors past a caption's end), ``codebook``;
- ``OUT.parquet`` (needs pyarrow, which MLflow installs; without it, write ``.npz``): columns ``key``, ``<m>.codes``
  (list of int64) and ``<m>.z`` (list of D-float32 lists), real tokens only; the codebook in ``OUT.codebook.npy``.

Work: a unit is an input shard, or ``--clips-per-shard`` mp4 clips in sorted order; unit i becomes ``codes-<i>.tar``.
Rank r of a launch (RANK / WORLD_SIZE, as accelerate launch and torchrun set them; no process group is formed) takes
units ``[r::world]``; its ``--num-workers`` DataLoader processes decode them (worker w: its units ``[w::W]``) while the
backbones and the model run in the rank's process, on its device. Resumable: a unit's shard is written under a
temporary name and renamed when complete, so a rerun skips the units whose shard exists (and refuses an ``OUT``
written from other inputs). Rank 0 waits for every unit, then writes the manifest, or assembles the table from the
shards (kept in ``OUT.parts/`` until then). Prints each rank's throughput in clips/s (decode, backbones and model).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader
from tqdm import tqdm

from shards.extract import (
    ClipFiles, ShardBatches, annotation_members, default_device, launch_rank, one_thread, raw_samples, wait_for_files,
)
from shards.inspect import expand_shard_args
from shards.write import collect_clips
from trainer.cli import encode_parser
from trainer.data.features import decode_npy, encode_npy
from trainer.data.stream import MANIFEST_NAME, load_manifest_counts
from trainer.pretrained import CMGModel, Codes

CODES_FORMAT = "cmg-trainer-codes/1"
PART = "codes-{:06d}.tar"
UNITS_DIR = ".units"          # per-unit records (name, samples, source), written before the unit's shard
TABLES = (".npz", ".parquet")


@dataclass
class Unit:
    index: int
    source: str | ClipFiles   # a shard URL, or clip files

    @property
    def name(self) -> str:
        return PART.format(self.index)

    def describe(self) -> str:
        """What the unit was made from (a rerun must find the same)."""
        if isinstance(self.source, str):
            return self.source
        return f"{len(self.source)} clips {self.source[0][0]} .. {self.source[-1][0]}"


# ---------------------------------------------------------------------- inputs
def _clip_files(mp4s: list[Path]) -> list[tuple[str, dict[str, Path]]]:
    """Each mp4 with the files of its clip next to it (``shards.write.collect_clips``), keys unique."""
    clips, seen, folders = [], {}, {}
    for path in mp4s:
        key = path.name.partition(".")[0]
        folder = folders.setdefault(path.parent, collect_clips(path.parent))
        if folder.get(key, {}).get("mp4") != path:
            raise ValueError(f"{path}: not a clip file KEY.mp4 (a key holds no dot)")
        if key in seen:
            raise ValueError(f"two clips have the key {key!r}: {seen[key]} and {path}")
        seen[key] = path
        clips.append((key, dict(folder[key])))
    return clips


def input_units(inputs: Sequence[str], clips_per_shard: int) -> list[Unit]:
    """The units of work of ``inputs`` (module docstring), in order."""
    shards: list[str] = []
    mp4s: list[Path] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            found = [files["mp4"] for files in collect_clips(path).values() if "mp4" in files]
            if not found:
                raise ValueError(f"{spec}: no KEY.mp4 file in this directory")
            mp4s += found
        elif spec.endswith(".tar") or "{" in spec or spec.startswith("pipe:"):
            found = expand_shard_args([spec])   # brace patterns expanded, globs matched
            missing = [url for url in found if ":" not in url.split("/")[0] and not Path(url).is_file()]
            if missing:
                raise FileNotFoundError(f"{spec}: no shard {missing[0]}")
            shards += found
        elif any(c in spec for c in "*?["):
            matched = sorted(glob(spec))
            if not matched:
                raise ValueError(f"{spec}: no file matches")
            mp4s += [Path(m) for m in matched if m.lower().endswith(".mp4")]
        elif path.is_file():
            mp4s.append(path)
        else:
            raise ValueError(f"{spec}: not found")
    if shards and mp4s:
        raise ValueError("give clip shards or mp4 files, not both")
    if shards:
        return [Unit(i, url) for i, url in enumerate(shards)]
    if not mp4s:
        raise ValueError(f"{list(inputs)}: no mp4 file")
    clips = _clip_files(mp4s)
    return [Unit(i, clips[start:start + clips_per_shard])
            for i, start in enumerate(range(0, len(clips), clips_per_shard))]


def _expected_clips(units: list[Unit]) -> int | None:
    """Clips in ``units`` (shards: from their manifest, if it is next to them; else unknown)."""
    shards = [u.source for u in units if isinstance(u.source, str)]
    try:
        counted = sum(load_manifest_counts(shards, "")) if shards else 0
    except ValueError:
        return None
    return counted + sum(len(u.source) for u in units if not isinstance(u.source, str))


# ---------------------------------------------------------------------- outputs
def work_dir(out: Path) -> Path:
    """Where the unit shards go: ``OUT`` itself, or ``OUT.parts`` for a table."""
    return out.with_name(out.name + ".parts") if out.suffix in TABLES else out


def code_samples(batch: dict, encoded: dict[str, Codes]) -> Iterator[dict]:
    """One output sample per clip of ``batch``: its codes and semantic vectors per modality (text: real tokens only),
    and its json / txt where it has them."""
    for i, key in enumerate(batch["key"]):
        sample = {"__key__": key}
        for m, codes in encoded.items():
            real = slice(None) if codes.mask is None else codes.mask[i]
            sample[f"{m}.codes.npy"] = encode_npy(codes.codes[i][real].numpy())
            sample[f"{m}.z.npy"] = encode_npy(codes.semantic[i][real].numpy().astype(np.float32))
        yield sample | annotation_members(batch, i)


def _record(work: Path, unit: Unit) -> dict[str, Any] | None:
    """The record of a finished unit (None if it is not finished); refuses one of other inputs."""
    if not (work / unit.name).is_file():
        return None
    record = json.loads((work / UNITS_DIR / f"{unit.index:06d}.json").read_text())
    if record["source"] != unit.describe():
        raise ValueError(f"{work / unit.name} was encoded from {record['source']!r}, not {unit.describe()!r}: "
                         "these inputs need another --out")
    return record


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def encode_units(model: CMGModel, units: list[Unit], out: Path, batch_size: int = 16, num_workers: int = 2,
                 rank: int = 0, world_size: int = 1, progress: bool = True) -> dict[str, Any]:
    """Encode this rank's units that are not done yet; returns this rank's counts and seconds."""
    work = work_dir(out)
    (work / UNITS_DIR).mkdir(parents=True, exist_ok=True)
    mine = units[rank::world_size]
    todo = [u for u in mine if _record(work, u) is None]
    for unit in todo:   # what a killed run of this rank left half-written (units are disjoint across ranks)
        for stale in work.glob(f".{unit.name}.tmp-*"):
            stale.unlink()
    by_index = {u.index: u for u in todo}
    start = time.perf_counter()
    clips = skipped = 0
    model_s = 0.0
    if todo:
        require_caption = "text" in {model.streams[m] for m in model.modalities}   # captions are encoded
        batches = ShardBatches([(u.index, u.source) for u in todo], model.decode, batch_size, require_caption)
        loader = DataLoader(batches, batch_size=None, num_workers=min(num_workers, len(todo)),
                            worker_init_fn=one_thread)
        bar = tqdm(total=_expected_clips(todo), desc=f"encode rank {rank}/{world_size}", unit="clip",
                   disable=not progress)
        writers: dict[int, tuple[wds.TarWriter, Path, list[int]]] = {}
        for index, batch, bad, last in loader:
            skipped += bad
            unit = by_index[index]
            if index not in writers:
                tmp = work / f".{unit.name}.tmp-{os.getpid()}"
                writers[index] = (wds.TarWriter(str(tmp)), tmp, [0, 0])
            writer, tmp, counts = writers[index]
            counts[1] += bad
            if batch is not None:
                began = time.perf_counter()
                encoded = model.encode_batch(batch)
                model_s += time.perf_counter() - began
                for sample in code_samples(batch, encoded):
                    writer.write(sample)
                counts[0] += len(batch["key"])
                clips += len(batch["key"])
                bar.update(len(batch["key"]))
            if last:
                writer.close()
                record = {"name": unit.name, "samples": counts[0], "skipped": counts[1], "source": unit.describe()}
                _write_atomic(work / UNITS_DIR / f"{index:06d}.json", json.dumps(record).encode())
                os.replace(tmp, work / unit.name)   # the unit is done once its shard has its name
                del writers[index]
        bar.close()
    seconds = time.perf_counter() - start
    return {"rank": rank, "world_size": world_size, "units": len(mine), "resumed": len(mine) - len(todo),
            "clips": clips, "skipped": skipped, "seconds": seconds, "model_seconds": model_s,
            "clips_per_s": clips / seconds if clips else 0.0}


def finish(model: CMGModel, units: list[Unit], out: Path, timeout_s: float = 3600.0) -> dict[str, Any]:
    """Rank 0, once every unit's shard exists: the manifest and codebook of a directory, or the table."""
    work = work_dir(out)
    wait_for_files([work / u.name for u in units], timeout_s, "the units' shards")
    records = [_record(work, u) for u in units]
    manifest = {
        "format": CODES_FORMAT, "model": model.describe(),
        "modalities": {m: {"stream": model.streams[m], "dim": model.codebook.shape[1]} for m in model.modalities},
        "codebook": "codebook.npy", "shards": records,
        "total": sum(r["samples"] for r in records), "skipped": sum(r["skipped"] for r in records),
    }
    if out.suffix not in TABLES:
        np.save(out / "codebook.npy", model.codebook.numpy(), allow_pickle=False)
        _write_atomic(out / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode())
        return manifest
    rows = list(read_codes([str(work / u.name) for u in units], model.modalities))
    write_table(rows, out, model.modalities, model.codebook.numpy(), manifest)
    shutil.rmtree(work)
    return manifest


# ---------------------------------------------------------------------- tables
def read_codes(urls: list[str], modalities: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The clips of code shards: ``{"key", "<m>.codes", "<m>.z"}`` arrays (never unpickled), in order."""
    for url in urls:
        for sample in raw_samples(url):
            row = {"key": sample["__key__"]}
            for m in modalities:
                for name in ("codes", "z"):
                    member = f"{m}.{name}.npy"
                    row[f"{m}.{name}"] = decode_npy(sample[member], f"{url}:{row['key']}.{member}")
            yield row


def _padded(arrays: list[np.ndarray], fill: float) -> np.ndarray:
    longest = max(a.shape[0] for a in arrays)
    return np.stack([np.pad(a, [(0, longest - a.shape[0])] + [(0, 0)] * (a.ndim - 1), constant_values=fill)
                     for a in arrays])


def write_table(rows: list[dict[str, Any]], out: Path, modalities: Sequence[str], codebook: np.ndarray,
                manifest: dict[str, Any]) -> None:
    """``rows`` as ``OUT.npz`` or ``OUT.parquet`` (module docstring), written under a temporary name first."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}{out.suffix}")
    if out.suffix == ".npz":
        columns = {"key": np.array([r["key"] for r in rows])}
        for m in modalities:
            columns[f"{m}.codes"] = _padded([r[f"{m}.codes"] for r in rows], -1)
            columns[f"{m}.z"] = _padded([r[f"{m}.z"] for r in rows], 0.0)
        np.savez(tmp, codebook=codebook, **columns)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {"key": pa.array([r["key"] for r in rows], pa.string())}
        for m in modalities:
            codes = [r[f"{m}.codes"] for r in rows]
            offsets = pa.array(np.concatenate([[0], np.cumsum([len(c) for c in codes])]).astype(np.int32))
            columns[f"{m}.codes"] = pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(codes)))
            z = np.concatenate([r[f"{m}.z"] for r in rows])
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), z.shape[-1])
            columns[f"{m}.z"] = pa.ListArray.from_arrays(offsets, vectors)
        table = pa.table(columns).replace_schema_metadata({"cmg": json.dumps(manifest | {"shards": None})})
        pq.write_table(table, tmp)
        np.save(out.with_name(out.stem + ".codebook.npy"), codebook, allow_pickle=False)
    os.replace(tmp, out)


def check_output(out: Path) -> None:
    """Refuse a Parquet ``OUT`` without pyarrow before any work."""
    if out.suffix == ".parquet":
        import importlib.util

        if importlib.util.find_spec("pyarrow") is None:
            raise ValueError(f"--out {out}: Parquet needs pyarrow (pip install pyarrow), or write {out.stem}.npz")


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    a = encode_parser().parse_args(argv)
    out = Path(a.out)
    rank, world_size = launch_rank()
    try:
        check_output(out)
        if a.clips_per_shard < 1 or a.batch_size < 1 or a.num_workers < 0:
            raise ValueError("--clips-per-shard and --batch-size must be >= 1, --num-workers >= 0")
        units = input_units(a.inputs, a.clips_per_shard)
        if out.suffix in TABLES and out.is_file():
            print(f"{out} exists: nothing to encode (remove it to encode again)")
            return 0
        model = CMGModel.from_pretrained(a.model, torch.device(a.device) if a.device else default_device(),
                                         a.backbones)
        done = encode_units(model, units, out, a.batch_size, a.num_workers, rank, world_size, not a.no_progress)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"rank {rank}/{world_size}: {done['clips']} clips in {done['seconds']:.1f} s = {done['clips_per_s']:.2f} "
          f"clips/s (decode in {min(a.num_workers, done['units'])} worker(s), backbones + model "
          f"{done['model_seconds']:.1f} s); {done['skipped']} skipped, {done['resumed']} of {done['units']} units "
          f"already done")
    if rank == 0:
        manifest = finish(model, units, out, a.merge_timeout)
        print(f"{manifest['total']} clips ({', '.join(model.modalities)}) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
