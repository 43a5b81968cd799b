"""Run the frozen backbones over clip shards once and write feature shards.

    python -m shards.extract --src 'clips/train-{000000..000009}.tar' \\
        --backbones launch/configs/backbones/tiny.yaml --out 'feats/train-%06d.tar' [--batch-size 16]
    accelerate launch --num_processes 2 -m shards.extract ...      # or torchrun: ranks split the shards

Input shard i becomes output shard ``--out % i`` with the same clips in the same order (corrupt clips
are skipped and counted, as the training stream does). Rank r of a launch (RANK / WORLD_SIZE from
torchrun or accelerate) takes input shards ``[r::world]``; no collective is needed. Each rank writes
``manifest.rank-R-of-W.json`` next to the outputs; rank 0 waits for all parts and writes
``manifest.json`` (shard names and sample counts, the backbones' description, feature shapes, decode
settings), which the training stream reads: ``ClipStream(DataConfig(urls=..., kind="features"))``.

Members per clip (see trainer/data/features.py): ``video.npy`` / ``audio.npy`` (t ...) and ``text.npy``
(real caption tokens) for the configured modalities, plus the clip's ``json`` labels and ``txt`` caption
where the clip has them: unlabelled clip shards give feature shards without json (and, without captions,
without txt). A caption is required only when the backbones encode text (a clip without one is skipped).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

from shards.parsers import extract_parser
from trainer.backbones import FrozenBackbones, config_to_dict, load_backbones_config
from trainer.configs.data import DecodeConfig
from trainer.data.features import encode_npy
from trainer.data.raw_batches import ShardBatches, decoding_loader
from trainer.data.manifest import FEATURE_FORMAT, ShardEntry, ShardManifest


def launch_rank() -> tuple[int, int]:
    """(rank, world size) of this process as torchrun / accelerate launch set them (1 process otherwise)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def annotation_members(batch: dict, i: int) -> dict[str, bytes]:
    """The json (labels, of the decoded seconds) and txt (caption) members of clip ``i`` of ``batch``, where it has
    them. ``batch["label_extra"]``, where present, gives each clip more json keys (``shards.convert``: ``num_classes``
    and AVVP's per-second event sets)."""
    members = {}
    if batch["labelled"][i]:
        labels = {"clip_label": int(batch["clip_label"][i]), "video_labels": batch["video_labels"][i].tolist(),
                  "audio_labels": batch["audio_labels"][i].tolist()}
        labels.update(batch["label_extra"][i] if "label_extra" in batch else {})
        members["json"] = json.dumps(labels).encode()
    if batch["caption"][i] is not None:
        members["txt"] = batch["caption"][i].encode()
    return members


def output_samples(batch: dict, feats: dict[str, torch.Tensor], dtype: np.dtype) -> Iterator[dict]:
    """One output sample per clip of ``batch`` (text keeps its real tokens only; json and txt only for the
    clips that had them, ``annotation_members``)."""
    for i, key in enumerate(batch["key"]):
        sample = {"__key__": key}
        for modality, value in feats.items():
            if modality == "text_mask":
                continue
            array = value[i]
            if modality == "text":
                array = array[feats["text_mask"][i]]
            sample[f"{modality}.npy"] = encode_npy(array.cpu().numpy().astype(dtype))
        yield sample | annotation_members(batch, i)


def extract(src: str, backbones_yaml: str, out: str, batch_size: int = 16, num_workers: int = 2,
            decode: DecodeConfig | None = None, dtype: str = "float32", device: torch.device | None = None,
            rank: int | None = None, world_size: int | None = None, merge_timeout_s: float = 3600.0,
            progress: bool = True) -> dict:
    """Extract this rank's shards; returns this rank's manifest part (rank 0 also merges the parts)."""
    if "%" not in Path(out).name:
        raise ValueError(f"--out {out!r} needs a shard-number placeholder such as feats-%06d.tar")
    launched = launch_rank()
    rank = launched[0] if rank is None else rank
    world_size = launched[1] if world_size is None else world_size
    decode = decode or DecodeConfig()
    urls = wds.shardlists.expand_urls(src)
    if not urls:
        raise ValueError(f"--src {src!r} expands to no shard")
    out_dir = Path(out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = [(i, url) for i, url in enumerate(urls)][rank::world_size]
    mine_urls = [url for _, url in mine]
    try:
        expected = sum(ShardManifest.of_shards(mine_urls).counts(mine_urls)) if mine else 0
    except ValueError:   # no manifest next to the clip shards: the bar runs without a total
        expected = None
    backbones = FrozenBackbones(load_backbones_config(backbones_yaml), device or default_device())
    shard_batches = ShardBatches(mine, decode, batch_size, backbones.modalities)
    loader = decoding_loader(shard_batches, min(num_workers, len(mine)))
    writers: dict[int, wds.TarWriter] = {}
    counts = {i: 0 for i, _ in mine}
    skipped = 0
    seconds = {"backbone": 0.0, "total": time.perf_counter()}
    bar = tqdm(total=expected, desc=f"extract rank {rank}/{world_size}", unit="clip", disable=not progress)
    for index, batch, skips, last in loader:
        skipped += len(skips)
        if index not in writers:
            writers[index] = wds.TarWriter(out % index)
        if batch is not None:
            start = time.perf_counter()
            feats = backbones.encode(batch)
            seconds["backbone"] += time.perf_counter() - start
            for sample in output_samples(batch, feats, np.dtype(dtype)):
                writers[index].write(sample)
            counts[index] += len(batch["key"])
            bar.update(len(batch["key"]))
        if last:
            writers.pop(index).close()
    bar.close()
    seconds["total"] = time.perf_counter() - seconds["total"]
    part = {
        "rank": rank, "world_size": world_size,
        "shards": [{"name": Path(out % i).name, "samples": counts[i], "source": urls[i]} for i, _ in mine],
        "skipped": skipped, "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "backbones": backbones.describe(),
        "feature_shapes": {m: list(s) for m, s in backbones.feature_shapes().items()},
        "backbones_config": config_to_dict(backbones.config),
        "decode": dataclasses.asdict(decode), "dtype": dtype,
    }
    (out_dir / f"manifest.rank-{rank}-of-{world_size}.json").write_text(json.dumps(part) + "\n")
    if rank == 0:
        merge_manifest_parts(out_dir, world_size, merge_timeout_s)
    return part


def wait_for_files(paths: list[Path], timeout_s: float, what: str) -> None:
    """Rank 0 waiting for the files the other ranks write (no collective: ranks share only the filesystem)."""
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            missing = [str(p) for p in paths if not p.exists()]
            raise TimeoutError(f"rank 0 waited {timeout_s} s for {what} {missing[:5]} ({len(missing)} missing)")
        time.sleep(0.5)


def merge_manifest_parts(out_dir: Path, world_size: int, timeout_s: float) -> ShardManifest:
    """Wait for every rank's part, then write ``manifest.json`` with all shards in input order."""
    paths = [out_dir / f"manifest.rank-{r}-of-{world_size}.json" for r in range(world_size)]
    wait_for_files(paths, timeout_s, "the manifest parts")
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    for part in parts[1:]:
        for key in ("backbones", "decode", "dtype"):
            if part[key] != first[key]:
                raise ValueError(f"rank {part['rank']} extracted with a different {key} than rank 0")
    shards = sorted((s for p in parts for s in p["shards"]), key=lambda s: s["name"])
    manifest = ShardManifest(
        FEATURE_FORMAT, [ShardEntry(s["name"], s["samples"], {"source": s["source"]}) for s in shards],
        sum(s["samples"] for s in shards), feature_shapes=first["feature_shapes"], decode=first["decode"],
        backbones=first["backbones"],
        details={"skipped": sum(p["skipped"] for p in parts), "backbones_config": first["backbones_config"],
                 "dtype": first["dtype"]})
    manifest.write(out_dir)
    return manifest


def main(argv: list[str] | None = None) -> int:
    a = extract_parser().parse_args(argv)   # torch-free, for `cmg shards extract --help`
    decode = DecodeConfig(seconds=a.seconds, frames_per_segment=a.frames_per_segment, frame_size=a.frame_size,
                          sample_rate=a.sample_rate)
    part = extract(a.src, a.backbones, a.out, a.batch_size, a.num_workers, decode, a.dtype,
                   torch.device(a.device) if a.device else None)
    clips = sum(s["samples"] for s in part["shards"])
    seconds = part["seconds"]
    print(f"rank {part['rank']}/{part['world_size']}: {clips} clips in {len(part['shards'])} shards, "
          f"{part['skipped']} skipped, {seconds['total']:.1f} s ({seconds['backbone']:.1f} s in the backbones)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
