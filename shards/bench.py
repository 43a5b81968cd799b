"""Decode throughput of the data path, relative to a full PyAV decode of the same files in the same run.

    python -m shards.bench [--clips 48 --seconds 10 --fps 8 --size 96 --workers 2 --repeats 3]

Synthesises clips into a temporary directory, packs them into shards, loads the raw samples into memory
and times, single-threaded, each stage on the same bytes: decord video at the default DecodeConfig
(T one-second segments x F frames, resized), decord audio (AAC -> 16 kHz mono), the whole
``decode_sample`` (what one DataLoader worker does per clip), a full PyAV decode (every frame to RGB at
native size + all audio resampled to 16 kHz mono), and the ClipStream end to end (tar reading, shuffle,
decode, collate, DataLoader transfer) with ``--workers`` processes. Each figure is the median of
``--repeats`` interleaved rounds; the ratio column divides by the PyAV row, so the table means something
on any machine.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import torch
import webdataset as wds

from shards.synth import SynthConfig, synthesise
from shards.write import write_shards
from trainer.data import ClipStream, DataConfig, DecodeConfig, decode_sample
from trainer.data.decode import decode_audio, decode_video

PYAV_ROW = "PyAV full decode (all frames + audio)"


def pyav_full_decode(data: bytes, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Every video frame as (n h w 3) uint8 RGB and the whole audio track as mono float32 at ``sample_rate``."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # single-threaded, like decord with num_threads=1
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    with av.open(io.BytesIO(data)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = [r.to_ndarray()[0] for f in container.decode(audio=0) for r in resampler.resample(f)]
        chunks += [r.to_ndarray()[0] for r in resampler.resample(None)]
    return frames, np.concatenate(chunks)


def _median_rates(n: int, rows: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Items per second of each row's work (``n`` items), median over ``repeats`` rounds.

    Rounds interleave the rows (row 1, row 2, ..., then again), so a change in machine load during the
    run lands on every row alike instead of on whichever row happened to be running.
    """
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(repeats):
        for name, work in rows.items():
            start = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - start)
    return {name: n / statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shards.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the end-to-end row")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    decode_cfg = replace(DecodeConfig(), seconds=a.seconds)
    with tempfile.TemporaryDirectory(prefix="cmg-bench-") as tmp:
        synth = SynthConfig(num_clips=a.clips, classes=5, seconds=a.seconds, fps=a.fps, size=a.size, seed=0)
        synthesise(synth, Path(tmp) / "clips", progress=False)
        shard_count = max(1, a.workers)
        manifest = write_shards(Path(tmp) / "clips", f"{tmp}/shards/train-%06d.tar",
                                max_count=-(-a.clips // shard_count), progress=False)
        urls = f"{tmp}/shards/train-{{000000..{len(manifest['shards']) - 1:06d}}}.tar"
        samples = list(wds.tarfile_to_samples()(iter([{"url": u} for u in wds.shardlists.expand_urls(urls)])))
        n = len(samples)

        def stream_epoch() -> None:
            cfg = DataConfig(urls=urls, batch_size=4, num_workers=a.workers, decode=decode_cfg)
            for _ in ClipStream(cfg):
                pass

        stream_name = f"ClipStream end to end, {a.workers} workers"
        rows = {
            "decord video: T x F frames, resized": lambda: [decode_video(s["mp4"], decode_cfg, "") for s in samples],
            "decord audio: AAC -> 16 kHz mono": lambda: [decode_audio(s["mp4"], decode_cfg, "") for s in samples],
            "decode_sample (one worker's work)": lambda: [decode_sample(s, decode_cfg) for s in samples],
            PYAV_ROW: lambda: [pyav_full_decode(s["mp4"], decode_cfg.sample_rate) for s in samples],
            stream_name: stream_epoch,
        }
        rates = _median_rates(n, rows, a.repeats)
    reference = rates[PYAV_ROW]
    print(f"clips: {n} x {a.seconds} s, {a.fps} fps, {a.size}x{a.size}, AAC 16 kHz; decode T={decode_cfg.seconds} "
          f"F={decode_cfg.frames_per_segment} size={decode_cfg.frame_size} sr={decode_cfg.sample_rate}; "
          f"median of {a.repeats}; 1 thread per process")
    print(f"| {'path':45s} | {'clips/s':>8s} | {'ms/clip':>8s} | {'vs PyAV full':>12s} |")
    print(f"|{'-' * 47}|{'-' * 10}|{'-' * 10}|{'-' * 14}|")
    for name, rate in rates.items():
        print(f"| {name:45s} | {rate:8.1f} | {1000 / rate:8.1f} | {rate / reference:11.2f}x |")
    per_worker = rates[stream_name] / max(1, a.workers)
    print(f"ClipStream per worker: {per_worker:.1f} clips/s ({per_worker / reference:.2f}x PyAV full decode), "
          f"{len(os.sched_getaffinity(0))} usable cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
