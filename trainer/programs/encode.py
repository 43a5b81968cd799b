"""Encode clips into codes with a trained model (``cmg encode``, ``python -m trainer.programs.encode``).

    cmg encode MODEL INPUT [INPUT ...] --out OUT [--batch-size 16] [--num-workers 2] [--device cuda]
    cmg encode runs/demo 'my_clips/*.mp4' --out codes.npz               # one table
    cmg encode exports/demo 'clips/train-{000000..000015}.tar' --out codes/     # WebDataset shards
    accelerate launch --num_processes 2 -m trainer.programs.encode MODEL INPUT --out OUT
                                                  # or torchrun: ranks split the input

MODEL: a run directory (its latest checkpoint), a checkpoints directory, step_N, a model.pt, or an export directory
(``CMGModel.save_pretrained``). Clips are decoded as the model's training decoded them and go through the frozen
backbones it names, fingerprints checked (trainer/pretrained.py). No labels are needed: a sample is what it has of
the model's media streams (``KEY.mp4`` video, ``KEY.wav``/``KEY.flac`` or the mp4's track for the audio,
``KEY.jpg``/``.png``/``.webp`` for an image: one segment) and, when the model encodes text, its caption
(``KEY.txt``); audio+text and image+text shards (``shards.write --modalities``) encode as they are, a modality a
sample lacks is listed under ``absent``.
Every second of a clip of any length is coded (a 3-s clip gives 3 codes per modality, a 95-s one 95; longer than the
training's ``data.decode.seconds``, in consecutive windows: trainer/pretrained.py). An mp4 without an audio track is
coded without audio: its sample has no audio members, and the manifest lists it under ``absent``.

INPUT: clip shards (a brace pattern, or a glob, of .tar files, as ``shards.write`` packs them), or media files
(``KEY.mp4``, ``KEY.wav``/``.flac``, ``KEY.jpg``/``.jpeg``/``.png``/``.webp``): a glob, a directory of them, or the
files themselves; the files of one KEY in one folder (with its ``KEY.txt``/``.json``) are one sample, as
``shards.write`` packs them. Give shards or media files, not both.

OUT, one of:
- a directory: WebDataset shards ``OUT/codes-%06d.tar`` whose clip ``KEY`` has, for every modality m the model
  encodes and the clip has, ``KEY.<m>.codes.npy`` ``(t)`` int64 (the code of each second; text: of each real token) and
  ``KEY.<m>.z.npy`` ``(t D)`` float32 (the semantic vectors the codes were chosen for), plus the clip's ``json`` /
  ``txt`` where it has them; ``OUT/codebook.npy`` ``(M D)`` (a code's vector: ``codebook[code]``) and
  ``OUT/manifest.json`` (shards and counts, the model's task, source and backbone fingerprints). ``.npy`` members are
  written with ``allow_pickle=False`` (read them with ``trainer.data.features.decode_npy``);
- ``OUT.npz``: one table, a row per clip in input order: ``key`` (n), ``<m>.codes`` (n t) int64, ``<m>.z``
  (n t D) float32, padded to the longest clip (text: caption), code -1 and zero vectors past a clip's end (all -1 for
  a modality the clip lacks), ``codebook``;
- ``OUT.parquet`` (needs pyarrow, which MLflow installs; without it, write ``.npz``): columns ``key``, ``<m>.codes``
  (list of int64) and ``<m>.z`` (list of D-float32 lists), real seconds and tokens only (empty for a modality the clip
  lacks); the codebook in ``OUT.codebook.npy``.
A table's manifest is ``OUT.manifest.json`` next to it.

Work: a unit is an input shard, or ``--clips-per-shard`` samples of media files in sorted order; unit i becomes
``codes-<i>.tar``.
Rank r of a launch (RANK / WORLD_SIZE, as accelerate launch and torchrun set them; no process group is formed) takes
units ``[r::world]``; its ``--num-workers`` DataLoader processes decode them (worker w: its units ``[w::W]``) while the
backbones and the model run in the rank's process, on its device. Resumable: a unit's shard is written under a
temporary name and renamed when complete, so a rerun skips the units whose shard exists (and refuses an ``OUT``
written from other inputs). Rank 0 waits for every unit, then writes the manifest, or assembles the table from the
shards (kept in ``OUT.parts/`` until then). Prints each rank's throughput in clips/s (decode, backbones and model).

Bad inputs: a clip that does not decode is skipped, never fatal. Each skipped clip is named with its reason as it
happens (``[cmg] skipping shard:key.member: reason: detail``), listed under ``skipped_inputs`` (``where``, ``reason``
one of ``trainer.data.media_decoders.SKIP_REASONS``, ``detail``) in the manifest (a directory's ``manifest.json``; a
table's ``OUT.manifest.json`` next to it) and counted by reason in the last line. Exit codes (``EXIT_*``):
- 0: every input was encoded;
- 3: the output is written, and some inputs were skipped (the manifest lists them);
- 2: nothing was written: a bad argument or model, or every input skipped; one line on stderr says why, and no
  ``OUT.parts`` or unit shard of this run is left behind. A leftover ``OUT.parts`` of an interrupted run of the same
  inputs is resumed; one of other inputs is refused with the command that clears it.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from shards.extract import default_device, launch_rank, wait_for_files
from trainer.data.raw_batches import ClipFiles, ShardBatches, decoding_loader, raw_samples
from shards.inspect import expand_shard_args
from shards.write import collect_clips
from trainer.programs.cmg import encode_parser
from trainer.atomic_write import write_atomic
from trainer.data.decode import AUDIO_MEMBERS, IMAGE_MEMBERS, VIDEO_MEMBER, WholeClip, decode_whole_sample
from trainer.data.features import decode_npy, encode_npy
from trainer.data.manifest import CODES_FORMAT, MANIFEST_NAME, ShardEntry, ShardManifest
from trainer.pretrained import CMGModel, Codes

EXIT_OK, EXIT_ERROR, EXIT_SKIPPED = 0, 2, 3   # module docstring, "Exit codes"
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
MEDIA_SUFFIXES = (VIDEO_MEMBER, *AUDIO_MEMBERS, *IMAGE_MEMBERS)   # the files that make a sample: KEY.mp4, KEY.jpg, ...


def _media_suffix(path: Path) -> str:
    return path.name.partition(".")[2].lower()


def _clip_files(paths: list[Path]) -> list[tuple[str, dict[str, Path]]]:
    """The sample of each media file with the files of its key next to it (``shards.write.collect_clips``: KEY.mp4
    with KEY.wav, KEY.txt, KEY.json, ...; a KEY.jpg with its KEY.txt), once per key, keys unique across folders."""
    clips, seen, folders = [], {}, {}
    for path in paths:
        key = path.name.partition(".")[0]
        folder = folders.setdefault(path.parent, collect_clips(path.parent))
        if folder.get(key, {}).get(_media_suffix(path)) != path:
            raise ValueError(f"{path}: not a media file KEY.{'|'.join(MEDIA_SUFFIXES)} (a key holds no dot)")
        if key in seen:
            if seen[key].parent == path.parent:    # KEY.mp4 and KEY.wav of one sample
                continue
            raise ValueError(f"two samples have the key {key!r}: {seen[key]} and {path}")
        seen[key] = path
        clips.append((key, dict(folder[key])))
    return clips


def input_units(inputs: Sequence[str], clips_per_shard: int) -> list[Unit]:
    """The units of work of ``inputs`` (module docstring), in order."""
    shards: list[str] = []
    files: list[Path] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            found = [member for sample in collect_clips(path).values() for suffix, member in sample.items()
                     if suffix in MEDIA_SUFFIXES]
            if not found:
                raise ValueError(f"{spec}: no media file (KEY.{'|'.join(MEDIA_SUFFIXES)}) in this directory")
            files += found
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
            files += [Path(m) for m in matched if _media_suffix(Path(m)) in MEDIA_SUFFIXES]
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{spec}: not found")
    if shards and files:
        raise ValueError("give clip shards or media files, not both")
    if shards:
        return [Unit(i, url) for i, url in enumerate(shards)]
    if not files:
        raise ValueError(f"{list(inputs)}: no media file ({', '.join(MEDIA_SUFFIXES)})")
    clips = _clip_files(files)
    return [Unit(i, clips[start:start + clips_per_shard])
            for i, start in enumerate(range(0, len(clips), clips_per_shard))]


def _expected_clips(units: list[Unit]) -> int | None:
    """Clips in ``units`` (shards: from their manifest, if it is next to them; else unknown)."""
    shards = [u.source for u in units if isinstance(u.source, str)]
    try:
        counted = sum(ShardManifest.of_shards(shards).counts(shards)) if shards else 0
    except ValueError:
        return None
    return counted + sum(len(u.source) for u in units if not isinstance(u.source, str))


# ---------------------------------------------------------------------- outputs
def work_dir(out: Path) -> Path:
    """Where the unit shards go: ``OUT`` itself, or ``OUT.parts`` for a table."""
    return out.with_name(out.name + ".parts") if out.suffix in TABLES else out


def code_samples(clips: list[WholeClip], encoded: dict[str, list[Codes | None]]) -> Iterator[dict]:
    """One output sample per clip: its codes and semantic vectors per modality it has (text: real tokens only; a
    modality the clip lacks, such as the audio of an mp4 without a track, has no members), and its json (labels of
    its seconds) / txt where it has them."""
    for i, clip in enumerate(clips):
        sample = {"__key__": clip.key}
        for m, per_clip in encoded.items():
            if per_clip[i] is not None:
                sample[f"{m}.codes.npy"] = encode_npy(per_clip[i].codes.numpy())
                sample[f"{m}.z.npy"] = encode_npy(per_clip[i].semantic.numpy().astype(np.float32))
        if clip.labels.labelled:
            sample["json"] = json.dumps({"clip_label": clip.labels.clip, "video_labels": clip.labels.video.tolist(),
                                         "audio_labels": clip.labels.audio.tolist()}).encode()
        if clip.caption is not None:
            sample["txt"] = clip.caption.encode()
        yield sample


def absent_records(clips: list[WholeClip], encoded: dict[str, list[Codes | None]]) -> list[dict[str, str]]:
    """What a manifest says of the modalities clips lack (coded without them): ``{"where", "modality", "detail"}``."""
    return [{"where": f"{clip.url}:{clip.key}" if clip.url else clip.key, "modality": m,
             "detail": "the mp4 has no audio track" if m == "audio" and clip.video is not None else
             f"the sample has no {m} member"}
            for m, per_clip in encoded.items() for clip, codes in zip(clips, per_clip) if codes is None]


class NothingEncoded(ValueError):
    """Every input was skipped: there is nothing to write (exit 2)."""


def _record(work: Path, unit: Unit) -> dict[str, Any] | None:
    """The record of a finished unit (None if it is not finished); refuses one of other inputs."""
    if not (work / unit.name).is_file():
        return None
    record = json.loads((work / UNITS_DIR / f"{unit.index:06d}.json").read_text())
    if record["source"] != unit.describe():
        raise ValueError(f"{work / unit.name} was encoded from {record['source']!r}, not {unit.describe()!r}: "
                         f"these inputs need another --out, or remove the earlier output first (rm -r {work})")
    return record


def skip_summary(skips: list[dict[str, str]]) -> str:
    """``"3 skipped (2 bad_video, 1 bad_audio)"``, or ``"0 skipped"``."""
    reasons = collections.Counter(s["reason"] for s in skips)
    by_reason = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items(), key=lambda r: (-r[1], r[0])))
    return f"{len(skips)} skipped" + (f" ({by_reason})" if skips else "")


def _remove_outputs(work: Path, units: list[Unit]) -> None:
    """What the units wrote into ``work``: their shards and records (and ``work`` itself if that leaves it empty)."""
    for unit in units:
        (work / unit.name).unlink(missing_ok=True)
        (work / UNITS_DIR / f"{unit.index:06d}.json").unlink(missing_ok=True)
    for folder in (work / UNITS_DIR, work):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


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
    clips = 0
    skips: list[dict[str, str]] = []
    model_s = 0.0
    if todo:
        streams = sorted({model.streams[m] for m in model.modalities})   # with text, captions are encoded
        batches = ShardBatches([(u.index, u.source) for u in todo], model.decode, batch_size, streams,
                               decoder=decode_whole_sample, collate=list)
        loader = decoding_loader(batches, min(num_workers, len(todo)))
        bar = tqdm(total=_expected_clips(todo), desc=f"encode rank {rank}/{world_size}", unit="clip",
                   disable=not progress)
        # per unit in progress: its writer, temporary file, clip count, skipped inputs and absent modalities
        writers: dict[int, tuple[wds.TarWriter, Path, list[int], list[dict[str, str]], list[dict[str, str]]]] = {}
        for index, batch, skipped, last in loader:
            skips += skipped
            unit = by_index[index]
            if index not in writers:
                tmp = work / f".{unit.name}.tmp-{os.getpid()}"
                writers[index] = (wds.TarWriter(str(tmp)), tmp, [0], [], [])
            writer, tmp, counts, unit_skips, unit_absent = writers[index]
            unit_skips += skipped
            if batch is not None:     # whole clips of any length (decode_whole_sample)
                began = time.perf_counter()
                encoded = model.encode_whole_clips(batch, batch_size)
                model_s += time.perf_counter() - began
                for sample in code_samples(batch, encoded):
                    writer.write(sample)
                unit_absent += absent_records(batch, encoded)
                counts[0] += len(batch)
                clips += len(batch)
                bar.update(len(batch))
            if last:
                writer.close()
                record = {"name": unit.name, "samples": counts[0], "skipped": len(unit_skips),
                          "skipped_inputs": unit_skips, "absent": unit_absent, "source": unit.describe()}
                write_atomic(work / UNITS_DIR / f"{index:06d}.json", json.dumps(record).encode())
                os.replace(tmp, work / unit.name)   # the unit is done once its shard has its name
                del writers[index]
        bar.close()
    seconds = time.perf_counter() - start
    return {"rank": rank, "world_size": world_size, "units": len(mine), "resumed": len(mine) - len(todo),
            "clips": clips, "skipped_inputs": skips, "seconds": seconds, "model_seconds": model_s,
            "clips_per_s": clips / seconds if clips else 0.0}


def finish(model: CMGModel, units: list[Unit], out: Path, timeout_s: float = 3600.0) -> ShardManifest:
    """Rank 0, once every unit's shard exists: the manifest and codebook of a directory, or the table (and its
    manifest). Raises ``NothingEncoded``, having removed the units' shards, when every input was skipped."""
    work = work_dir(out)
    wait_for_files([work / u.name for u in units], timeout_s, "the units' shards")
    records = [_record(work, u) for u in units]
    skipped = [s for r in records for s in r.get("skipped_inputs", [])]   # none in an older version's records
    manifest = ShardManifest(
        CODES_FORMAT, [ShardEntry(r["name"], r["samples"], {k: v for k, v in r.items() if k not in ("name", "samples")})
                       for r in records], sum(r["samples"] for r in records),
        modalities={m: {"stream": model.streams[m], "dim": model.codebook.shape[1]} for m in model.modalities},
        details={"model": model.describe(), "codebook": "codebook.npy", "skipped": len(skipped),
                 "skipped_inputs": skipped, "absent": [a for r in records for a in r.get("absent", [])]})
    if manifest.total == 0:
        _remove_outputs(work, units)
        first = f"; the first: {skipped[0]['where']}: {skipped[0]['reason']}: {skipped[0]['detail']}" if skipped else ""
        raise NothingEncoded(f"no clip could be encoded, nothing was written to {out}: {skip_summary(skipped)}{first}")
    if out.suffix not in TABLES:
        np.save(out / "codebook.npy", model.codebook.numpy(), allow_pickle=False)
        manifest.write(out)
        return manifest
    rows = list(read_codes([str(work / u.name) for u in units], model.modalities))
    table = manifest.to_json() | {"shards": None}   # a table's manifest: no shards
    write_atomic(table_manifest(out), (json.dumps(table, indent=1) + "\n").encode())
    write_table(rows, out, model.modalities, model.codebook.numpy(), table)
    shutil.rmtree(work)
    return manifest


def table_manifest(out: Path) -> Path:
    """``OUT.manifest.json``: the manifest of a table ``OUT.npz`` / ``OUT.parquet`` (its skipped inputs included)."""
    return out.with_name(out.stem + ".manifest.json")


# ---------------------------------------------------------------------- tables
def read_codes(urls: list[str], modalities: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The clips of code shards: ``{"key", "<m>.codes", "<m>.z"}`` arrays (never unpickled), in order; a modality
    the clip lacks (the manifest's ``absent``) has no entry."""
    for url in urls:
        for sample in raw_samples(url):
            row = {"key": sample["__key__"]}
            for m in modalities:
                for name in ("codes", "z"):
                    member = f"{m}.{name}.npy"
                    if member in sample:
                        row[f"{m}.{name}"] = decode_npy(sample[member], f"{url}:{row['key']}.{member}")
            yield row


def _padded(arrays: list[np.ndarray], fill: float) -> np.ndarray:
    longest = max(a.shape[0] for a in arrays)
    return np.stack([np.pad(a, [(0, longest - a.shape[0])] + [(0, 0)] * (a.ndim - 1), constant_values=fill)
                     for a in arrays])


def write_table(rows: list[dict[str, Any]], out: Path, modalities: Sequence[str], codebook: np.ndarray,
                manifest: Mapping[str, Any]) -> None:
    """``rows`` as ``OUT.npz`` or ``OUT.parquet`` (module docstring), written under a temporary name first."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}{out.suffix}")
    none = {"codes": np.zeros(0, np.int64), "z": np.zeros((0, codebook.shape[1]), np.float32)}   # a modality absent
    rows = [{f"{m}.{name}": r.get(f"{m}.{name}", empty) for m in modalities for name, empty in none.items()}
            | {"key": r["key"]} for r in rows]
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
        table = pa.table(columns).replace_schema_metadata({"cmg": json.dumps(dict(manifest))})
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
        model = CMGModel.from_pretrained(a.model, a.device or default_device(), a.backbones)   # checks the device
        done = encode_units(model, units, out, a.batch_size, a.num_workers, rank, world_size, not a.no_progress)
        print(f"rank {rank}/{world_size}: {done['clips']} clips in {done['seconds']:.1f} s = "
              f"{done['clips_per_s']:.2f} clips/s (decode in {min(a.num_workers, done['units'])} worker(s), backbones "
              f"+ model {done['model_seconds']:.1f} s); {skip_summary(done['skipped_inputs'])}, {done['resumed']} of "
              f"{done['units']} units already done" + (f" (an earlier run's, resumed from {work_dir(out)}; remove it "
                                                       "to start over)" if done["resumed"] else ""))
        if rank != 0:
            return EXIT_SKIPPED if done["skipped_inputs"] else EXIT_OK
        manifest = finish(model, units, out, a.merge_timeout)
    except (FileNotFoundError, ValueError, KeyError) as err:   # NothingEncoded included
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    listed = out / MANIFEST_NAME if out.suffix not in TABLES else table_manifest(out)
    skipped = manifest.details["skipped_inputs"]
    print(f"{manifest.total} clips ({', '.join(model.modalities)}) in {out}; {skip_summary(skipped)}"
          + (f", listed under 'skipped_inputs' in {listed}" if skipped else ""))
    return EXIT_SKIPPED if skipped else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
