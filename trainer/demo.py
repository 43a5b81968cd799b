"""``make demo`` / ``python -m trainer.demo``: the main job on its embedded default data.

For now the job is the data path end to end: synthesise demo clips into ``demo_data/clips`` (kept if
already complete), pack them into shards in ``demo_data/shards`` (kept if the manifest matches), stream
a few decoded batches and print their shapes. Each stage is a function of ``DemoConfig`` so that the
training issue can replace ``run`` without touching data preparation.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shards.synth import SynthConfig, clip_key, synthesise
from shards.write import write_shards
from trainer.data import ClipStream, DataConfig
from trainer.data.stream import MANIFEST_NAME

SHARD_PATTERN = "train-%06d.tar"


@dataclass
class DemoConfig:
    data_dir: str = "demo_data"
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(num_clips=32, classes=5, seconds=10, seed=0))
    shard_max_count: int = 8  # samples per shard: 32 clips -> 4 shards (2 ranks x 2 workers can split them)
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=4, num_workers=2))
    batches: int = 3  # batches to stream and print


def prepare_clips(cfg: DemoConfig) -> Path:
    clips = Path(cfg.data_dir) / "clips"
    expected = [clips / f"{clip_key(cfg.synth.seed, i)}.{member}"
                for i in range(cfg.synth.num_clips) for member in ("mp4", "json", "txt")]
    if all(p.is_file() for p in expected):
        print(f"clips: reusing {cfg.synth.num_clips} clips in {clips}")
    else:
        synthesise(cfg.synth, clips)
        print(f"clips: wrote {cfg.synth.num_clips} clips to {clips}")
    return clips


def prepare_shards(cfg: DemoConfig, clips: Path) -> str:
    """Write shards unless a manifest of this source with the right total exists; returns the shard URLs."""
    out = Path(cfg.data_dir) / "shards"
    manifest_path = out / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("source") == str(clips) and manifest.get("total") == cfg.synth.num_clips:
        print(f"shards: reusing {len(manifest['shards'])} shards in {out}")
    else:
        manifest = write_shards(clips, str(out / SHARD_PATTERN), max_count=cfg.shard_max_count)
        print(f"shards: wrote {manifest['total']} samples into {len(manifest['shards'])} shards in {out}")
    return str(out / f"train-{{000000..{len(manifest['shards']) - 1:06d}}}.tar")


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    return f"list[{type(value[0]).__name__}] x{len(value)}"


def run(cfg: DemoConfig) -> None:
    stream = ClipStream(cfg.data)
    print(f"stream: {len(stream)} batches per epoch of {cfg.data.batch_size} clips, {cfg.data.num_workers} workers")
    for i, batch in enumerate(stream):
        print(f"batch {i}:")
        for name, value in batch.items():
            print(f"  {name:13s} {_describe(value)}")
        print(f"  first clip: {batch['key'][0]} label {batch['clip_label'][0].item()} "
              f"video/audio seconds labelled {batch['video_labels'][0].tolist()} / {batch['audio_labels'][0].tolist()}")
        print(f"  caption: {batch['caption'][0]!r}")
        if i + 1 == cfg.batches:
            break
    print(f"skipped samples so far: {stream.skip_totals()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.demo", description=__doc__.split("\n\n")[0])
    d = DemoConfig()
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--batches", type=int, default=d.batches)
    p.add_argument("--num-workers", type=int, default=d.data.num_workers)
    a = p.parse_args(argv)
    cfg = DemoConfig(data_dir=a.data_dir, batches=a.batches)
    cfg.data.num_workers = a.num_workers
    clips = prepare_clips(cfg)
    cfg.data.urls = prepare_shards(cfg, clips)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
