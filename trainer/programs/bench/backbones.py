"""Benchmark of the frozen backbones on this machine: clips/s and decode vs backbone time. Prints tables.

    python -m trainer.programs.bench.backbones [--configs tiny,tiny-alt,base-random] [--clips 8] [--batch 4]
                                               [--repeats 3] [--threads 0]

A clip is what the training stream delivers: 10 one-second segments, 4 frames of 64x64 per segment,
16 kHz mono audio, one caption (``DecodeConfig`` defaults), decoded from synthetic H.264/AAC mp4 clips
(``shards.synth``) by the stream's own decoder. Decode time is the mean over ``--clips`` clips (one
process, one thread for decord). Backbone time is the median of ``--repeats`` timed forwards of a
``--batch``-clip batch after one warm-up, per modality, divided by the batch size. Each configuration
is a backbones YAML in launch/configs/backbones/ (random init, nothing downloaded).

Table 1: per backbone, ms per clip and clips/s of that encoder alone.
Table 2: per configuration, decode + all its backbones for one clip in one process: end-to-end clips/s
and the share of a clip's time spent decoding vs in the backbones (both measured in this run).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainer.programs.bench.parsers import backbones_parser
from trainer.programs.harness import REPO

CONFIG_DIR = REPO / "launch" / "configs" / "backbones"


def decoded_clips(num_clips: int) -> tuple[list, float]:
    """Synthesise ``num_clips`` clips, decode them with the stream's decoder; (clips, mean decode s/clip)."""
    from shards.synth import SynthConfig, synthesise
    from trainer.data.decode import decode_sample
    from trainer.configs.data import DecodeConfig

    with tempfile.TemporaryDirectory() as tmp:
        keys = synthesise(SynthConfig(num_clips=num_clips, seconds=10), Path(tmp), progress=False)
        raws = [{"__key__": k, **{m: (Path(tmp) / f"{k}.{m}").read_bytes() for m in ("mp4", "json", "txt")}}
                for k in keys]
    cfg = DecodeConfig()
    decode_sample(raws[0], cfg)                                   # warm-up: decord's first open
    start = time.perf_counter()
    clips = [decode_sample(raw, cfg) for raw in raws]
    return clips, (time.perf_counter() - start) / num_clips


def time_encoder(encoder, inputs, repeats: int) -> float:
    """Median seconds of one forward over ``inputs`` after a warm-up."""
    encoder(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder(inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    a = backbones_parser().parse_args(argv)   # torch-free, for `cmg bench backbones --help`
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.threads:
        torch.set_num_threads(a.threads)
    from trainer.backbones import FrozenBackbones, load_backbones_config
    from trainer.data.collate import collate_samples

    clips, decode_s = decoded_clips(a.clips)
    batch_clips = (clips * -(-a.batch // len(clips)))[:a.batch]
    batch = collate_samples(batch_clips, [False] * a.batch)
    print(f"# {a.batch}-clip batch: video {tuple(batch['video'].shape)} uint8, audio {tuple(batch['audio'].shape)}, "
          f"{len(batch['caption'])} captions; torch threads {torch.get_num_threads()}; cpu count {os.cpu_count()}")

    rows, totals = [], []
    for name in a.configs.split(","):
        backbones = FrozenBackbones(load_backbones_config(CONFIG_DIR / f"{name}.yaml"))
        config_s = 0.0
        for modality, encoder in backbones.encoders.items():
            seconds = time_encoder(encoder, batch["caption" if modality == "text" else modality], a.repeats) / a.batch
            config_s += seconds
            params = sum(p.numel() for p in encoder.parameters())
            rows.append((name, modality, encoder.cfg.family, params / 1e6, seconds * 1e3, 1 / seconds))
        totals.append((name, decode_s * 1e3, config_s * 1e3, 1 / (decode_s + config_s),
                       100 * decode_s / (decode_s + config_s), 100 * config_s / (decode_s + config_s)))

    print("\nTable 1: backbones alone (median of forwards over the batch, per clip)")
    print(f"{'config':<12} {'modality':<8} {'family':<12} {'params (M)':>10} {'ms/clip':>9} {'clips/s':>9}")
    for name, modality, family, params, ms, rate in rows:
        print(f"{name:<12} {modality:<8} {family:<12} {params:>10.2f} {ms:>9.2f} {rate:>9.1f}")
    print(f"\nTable 2: one clip = decode + every backbone of the config (decode: mean over {a.clips} clips)")
    print(f"{'config':<12} {'decode ms':>10} {'backbones ms':>13} {'clips/s':>8} {'decode %':>9} {'backbone %':>11}")
    for name, dec, bb, rate, dec_share, bb_share in totals:
        print(f"{name:<12} {dec:>10.1f} {bb:>13.1f} {rate:>8.2f} {dec_share:>9.1f} {bb_share:>11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
