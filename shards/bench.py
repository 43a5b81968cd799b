"""Decode throughput of the data path, relative to a full PyAV decode of the same files in the same run.

    python -m shards.bench [--clips 48 --seconds 10 --fps 8 --size 96 --workers 2 --repeats 3]

Synthesises clips into a temporary directory, packs them into shards, loads the raw samples into memory
and times, single-threaded, each stage on the same bytes: decord video at the default DecodeConfig
(T one-second segments x F frames, resized), decord audio (AAC -> 16 kHz mono), the whole
``decode_sample`` (what one DataLoader worker does per clip), the same for image-text and audio-text pairs
(``shards.synth --pairs``: a JPEG of the clips' frame size and its captions, a 16-bit PCM wav of the clips' length
and its captions; per item), a full PyAV decode (every frame to RGB at
native size + all audio resampled to 16 kHz mono), and the ClipStream end to end (tar reading, shuffle,
decode, collate, DataLoader transfer) with ``--workers`` processes, over the whole epoch and in its steady state
(from the moment every worker has delivered a batch: ``steady_rate``). Each figure is the median of
``--repeats`` interleaved rounds; the ratio column divides by the PyAV row, so the table means something
on any machine. Below the table, the stream's clips/s per worker against ``decode_sample``'s, the figure the
stream is held to (docs/performance.md).

A second table sets the decoders' supply against what training consumes, per workload (``--workloads``):
``demo`` (launch/configs/demo.yaml: its decode settings, tiny backbones and model, clips like ``make demo``'s) and
``paper`` (launch/configs/paper/av_vggsound24k.yaml's model and batch at the seeds' feature shapes, clips decoded as
launch/configs/backbones/paper.yaml says, AVE's 16 frames per second at 224 px, from 25 fps 224 px sources).
Demand = the job's per-rank batch / the main process's time per step: the training step (forward, every loss term,
backward, AdamW, the codebook update; all torch threads, median of ``--steps`` after one warm-up) plus, for clip
shards, the frozen backbones on the decoded batch (they run in the training process). Supply = ``decode_sample``
clips/s on one core (one DataLoader worker), and a full PyAV decode of the same clips for reference (median of 3
rounds that interleave the two). Their
quotient is the number of decoding cores one training process needs. The paper's backbones are not in its demand:
VGG-19 and VGGish run once, offline, in ``shards.extract`` (their cost: ``trainer.programs.bench.backbones``).
``--device cuda`` runs the demand's training step under bf16 autocast and the backbones at their ``dtype`` (auto: bf16)
on the GPU, as a GPU training process does; the supply stays one CPU core's.

``--json FILE`` writes every figure, with the command and the machine's load; ``--markdown FILE`` writes both tables
as a generated docs page (docs/performance/decode.md), and ``--from-json FILE --markdown PAGE`` renders a saved JSON
again without measuring.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
import torch
import webdataset as wds

from shards.synth import SynthConfig, synthesise
from shards.write import write_shards
from trainer.backbones.frozen import FrozenBackbones
from trainer.configs.load import load_config
from trainer.data.stream import ClipStream
from trainer.data.decode import decode_sample
from trainer.configs.data import DataConfig, DecodeConfig
from trainer.data.collate import collate_samples
from trainer.data.media_decoders import decode_audio, decode_video
from trainer.job import job_backbones, resolve_job
from trainer.configs.job import JobConfig
from trainer.runtime import synchronize, training_precision
from trainer.tasks import task_class

REPO = Path(__file__).resolve().parent.parent

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


STREAM_BATCH = 4   # clips per batch of the bench's ClipStream


def default_workers() -> int:
    """Two workers where each of them and the main process has a usable core of its own, else as many as do (at least
    one): workers that share cores with each other measure the sharing, not the stream, per worker."""
    return max(1, min(2, len(os.sched_getaffinity(0)) - 1))


def steady_row(workers: int) -> str:
    return f"ClipStream steady state, {workers} workers (after every worker's first batch)"


def steady_rate(arrivals: list[tuple[float, int]], workers: int) -> float | None:
    """Clips/s of a stream epoch once every worker is up: from the arrival of the ``workers``-th batch (the DataLoader
    hands batches out round-robin, so by then each worker has delivered one) to that of the last, over the clips
    delivered in between. ``arrivals``: (time, clips) per batch. The whole epoch's rate also counts what each epoch
    pays once (the collection before the fork, forking the workers, filling their shuffle buffers, shutting them down),
    which a short epoch's few batches cannot amortise. None when a worker delivers fewer than two batches."""
    if len(arrivals) < 2 * workers:
        return None
    start = arrivals[workers - 1][0]
    return sum(clips for _, clips in arrivals[workers:]) / (arrivals[-1][0] - start)


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


@dataclass(frozen=True)
class Workload:
    """A training setup whose data supply and demand ``supply_and_demand`` measures."""

    job_config: Path                   # the job YAML: model, per-rank batch, decode settings, backbones
    source: SynthConfig                # clips like the ones the setup decodes
    decode: DecodeConfig | None        # None: the job's data.decode
    feature_shapes: dict[str, tuple[int, ...]] | None   # per-segment feature shapes; None: the job's backbones'


WORKLOADS = {
    "demo": Workload(REPO / "launch/configs/demo.yaml",
                     SynthConfig(num_clips=16, classes=5, seconds=10, size=64, seed=0), None, None),
    "paper": Workload(REPO / "launch/configs/paper/av_vggsound24k.yaml",
                      SynthConfig(num_clips=6, classes=5, seconds=10, fps=25, size=224, seed=0),
                      DecodeConfig(seconds=10, frames_per_segment=16, frame_size=224),
                      {"audio": (128,), "video": (49, 512)}),
}


def _median_seconds(work: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    work()                                                     # warm-up (allocations, first-call paths)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        work()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_demand(job: JobConfig, feature_shapes: dict[str, tuple[int, ...]], segments: int, steps: int,
                    device: str = "cpu") -> float:
    """Seconds of one training step of ``job``'s task and model on a per-rank batch of random features: forward,
    every loss term, backward, AdamW step and ``after_optimizer_step_``, in this process, one process; on ``device``
    at its training precision (``trainer.runtime.training_precision``: bf16 autocast on a GPU)."""
    torch.manual_seed(0)
    task = task_class(job.task)(resolve_job(job, feature_shapes).model).to(device)
    optimizer = torch.optim.AdamW(task.model.parameters(), lr=job.optim.lr)
    generator = torch.Generator().manual_seed(0)
    features = {m: torch.randn(job.data.batch_size, segments, *shape, generator=generator).to(device)
                for m, shape in feature_shapes.items()}
    counter = iter(range(1 << 30))

    def step() -> None:
        with training_precision(device):
            loss, _ = task.compute_loss(features, next(counter))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        task.after_optimizer_step_()

    return _median_seconds(step, steps, device)


def supply_and_demand(name: str, workload: Workload, tmp: Path, steps: int, threads: int, device: str = "cpu") -> dict:
    """One row of the supply/demand table (see the module docstring)."""
    job = load_config(JobConfig, workload.job_config)
    decode_cfg = workload.decode or job.data.decode
    clips = tmp / f"{name}-clips"
    synthesise(workload.source, clips, progress=False)
    manifest = write_shards(clips, f"{tmp}/{name}-shards/train-%06d.tar", max_count=workload.source.num_clips,
                            progress=False)
    urls = [f"{tmp}/{name}-shards/{s.name}" for s in manifest.shards]
    samples = list(wds.tarfile_to_samples()(iter([{"url": u} for u in urls])))
    torch.set_num_threads(1)                                   # supply: one DataLoader worker's core
    decode_sample(samples[0], decode_cfg)                      # warm-up (decord's first open)
    supply = _median_rates(len(samples), {   # interleaved rounds: a change of load lands on both alike
        "decode": lambda: [decode_sample(s, decode_cfg) for s in samples],
        "pyav": lambda: [pyav_full_decode(s["mp4"], decode_cfg.sample_rate) for s in samples]}, 3)
    decode_s, pyav_s = 1 / supply["decode"], 1 / supply["pyav"]
    torch.set_num_threads(threads)                             # demand: the training process, all its threads
    backbones_s = 0.0
    shapes = workload.feature_shapes
    if shapes is None:                                         # clip shards: the backbones run in the trainer
        backbones = FrozenBackbones(job_backbones(job), device)
        shapes = backbones.feature_shapes()
        decoded = [decode_sample(samples[i % len(samples)], decode_cfg) for i in range(job.data.batch_size)]
        batch = collate_samples(decoded, [False] * len(decoded))
        backbones_s = _median_seconds(lambda: backbones.encode(batch), steps, device)
    step_s = training_demand(job, shapes, decode_cfg.seconds, steps, device)
    demand = job.data.batch_size / (step_s + backbones_s)
    src = workload.source
    return {"name": name, "device": torch.cuda.get_device_name(device) if device == "cuda" else "cpu",
            "source": f"{src.seconds} s {src.fps} fps {src.size} px",
            "decode": f"{decode_cfg.seconds} x {decode_cfg.frames_per_segment} @ {decode_cfg.frame_size}",
            "batch": job.data.batch_size, "step_s": step_s, "backbones_s": backbones_s, "demand": demand,
            "decode_per_core": 1 / decode_s, "pyav_per_core": 1 / pyav_s, "cores": demand * decode_s}


def decode_table(result: dict) -> list[str]:
    """The decode table (markdown lines) of a result as ``--json`` writes it."""
    reference = result["rates"][PYAV_ROW]
    lines = [result["setting"], "", "| path | clips/s | ms/clip | vs PyAV full decode |", "|---|---|---|---|"]
    lines += [f"| {name} | {rate:.1f} | {1000 / rate:.1f} | {rate / reference:.2f}x |"
              for name, rate in result["rates"].items()]
    lines += [""] + stream_per_worker(result)
    return lines


def stream_per_worker(result: dict) -> list[str]:
    """The stream's clips/s per worker against ``decode_sample``'s (one worker's work on one core), whole epoch and
    steady state (``steady_rate``; absent from a JSON written before it was measured, or from too short an epoch)."""
    workers = max(1, result["workers"])
    decode = result["rates"]["decode_sample (one worker's work)"]
    lines = []
    for what, row in (("whole epoch", result["stream_row"]), ("steady state", result.get("steady_row"))):
        if row in result["rates"]:
            per_worker = result["rates"][row] / workers
            lines.append(f"ClipStream per worker, {what}: {per_worker:.1f} clips/s = {per_worker / decode:.2f} x "
                         f"decode_sample's {decode:.1f}")
        elif row is not None:
            lines.append(f"ClipStream per worker, {what}: not measured (every worker needs two batches of "
                         f"{STREAM_BATCH} clips: --clips >= {2 * STREAM_BATCH * workers})")
    shared = " (sharing cores: per worker, this measures the sharing too)" if workers + 1 > result["cores"] else ""
    return lines + [f"{workers} workers and the main process on {result['cores']} usable cores{shared}"]


def supply_table(result: dict) -> list[str]:
    """The supply/demand table (markdown lines); none when no workload ran."""
    if not result["supply"]:
        return []
    # a JSON written before --device existed trained on the CPU
    on = ", ".join(sorted({r.get("device", "cpu") for r in result["supply"]}))
    lines = [f"Supply and demand: clips/s one training process on {on} consumes (per-rank batch / main-process time "
             f"per step, {result['threads']} torch threads) vs clips/s one core decodes", "",
             "| workload | source clips | decode T x F @ px | batch | step s | backbones s | consumes clips/s | "
             "decode clips/s per core | PyAV full decode per core | decoding cores per training process |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['source']} | {r['decode']} | {r['batch']} | {r['step_s']:.3f} | "
              f"{r['backbones_s']:.3f} | {r['demand']:.1f} | {r['decode_per_core']:.1f} | {r['pyav_per_core']:.1f} | "
              f"{r['cores']:.2f} |" for r in result["supply"]]
    return lines + ["", "consumes = clips/s; cores = decoding cores (decode_sample, one per DataLoader worker) one "
                    "training process needs to never wait for data"]


def markdown(result: dict) -> str:
    """The generated docs page: the command, the load it ran under, both tables."""
    command = result["command"]
    load = result["load"]
    return "\n".join([
        f"<!-- written by `{command}`; re-run it to update this page, do not edit by hand -->",
        "# Decode throughput, and decoding supply against training demand", "", f"Command: `{command}`", "",
        f"Load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end; ratios compare rows of this "
        "run, so they mean something on any machine, absolute rates only on this one.", "",
        *decode_table(result), "", *supply_table(result)]) + "\n"


def pair_samples(synth: SynthConfig, folder: Path) -> list[dict[str, bytes | str]]:
    """Raw samples (member -> bytes) of ``synth``'s pair items, written into ``folder``."""
    keys = synthesise(synth, folder, progress=False)
    return [{"__key__": key, **{p.suffix[1:]: p.read_bytes() for p in sorted(folder.glob(f"{key}.*"))}}
            for key in keys]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shards.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="DataLoader workers for the end-to-end rows (default: 2, fewer where the machine has no core "
                        "for each of them and the main process)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma list of {list(WORKLOADS)} for the supply/demand table ('' = none)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per workload (after one warm-up)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the training step and backbones of the demand run (cuda: bf16)")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    p.add_argument("--markdown", default=None, help="also write both tables as a generated docs page")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="measure nothing: render FILE (written by --json) again, to --markdown")
    a = p.parse_args(argv)
    if a.from_json:
        if not a.markdown:
            p.error("--from-json needs --markdown")
        Path(a.markdown).write_text(markdown(json.loads(Path(a.from_json).read_text())))
        return 0
    workloads = [w for w in a.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    load_start = os.getloadavg()[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    decode_cfg = replace(DecodeConfig(), seconds=a.seconds)
    with tempfile.TemporaryDirectory(prefix="cmg-bench-") as tmp:
        synth = SynthConfig(num_clips=a.clips, classes=5, seconds=a.seconds, fps=a.fps, size=a.size, seed=0)
        synthesise(synth, Path(tmp) / "clips", progress=False)
        shard_count = max(1, a.workers)
        manifest = write_shards(Path(tmp) / "clips", f"{tmp}/shards/train-%06d.tar",
                                max_count=-(-a.clips // shard_count), progress=False)
        urls = f"{tmp}/shards/train-{{000000..{len(manifest.shards) - 1:06d}}}.tar"
        samples = list(wds.tarfile_to_samples()(iter([{"url": u} for u in wds.shardlists.expand_urls(urls)])))
        n = len(samples)
        pairs = {kind: pair_samples(replace(synth, pairs=kind), Path(tmp) / kind) for kind in ("image+text",
                                                                                                 "audio+text")}

        steady: list[float] = []   # each round's steady-state clips/s of the stream (stream_epoch)

        def stream_epoch() -> None:
            cfg = DataConfig(urls=urls, batch_size=STREAM_BATCH, num_workers=a.workers, decode=decode_cfg)
            arrivals = [(time.perf_counter(), len(batch["key"])) for batch in ClipStream(cfg)]
            rate = steady_rate(arrivals, max(1, a.workers))
            if rate is not None:
                steady.append(rate)

        stream_name = f"ClipStream end to end, {a.workers} workers"
        rows = {
            "decord video: T x F frames, resized": lambda: [decode_video(s["mp4"], decode_cfg, "") for s in samples],
            "decord audio: AAC -> 16 kHz mono": lambda: [decode_audio(s["mp4"], decode_cfg, "") for s in samples],
            "decode_sample (one worker's work)": lambda: [decode_sample(s, decode_cfg) for s in samples],
            "decode_sample, image+text pairs (jpg + txt)": lambda: [
                decode_sample(s, decode_cfg, ("image", "text")) for s in pairs["image+text"]],
            "decode_sample, audio+text pairs (wav + txt)": lambda: [
                decode_sample(s, decode_cfg, ("audio", "text")) for s in pairs["audio+text"]],
            PYAV_ROW: lambda: [pyav_full_decode(s["mp4"], decode_cfg.sample_rate) for s in samples],
            stream_name: stream_epoch,
        }
        rates = _median_rates(n, rows, a.repeats)
        if steady:
            rates[steady_row(a.workers)] = statistics.median(steady)
    supply = []
    if workloads:
        with tempfile.TemporaryDirectory(prefix="cmg-bench-") as tmp:
            supply = [supply_and_demand(w, WORKLOADS[w], Path(tmp), a.steps, threads, a.device) for w in workloads]
    command = "python -m shards.bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {"command": command, "load": [load_start, os.getloadavg()[0]], "threads": threads,
              "cores": len(os.sched_getaffinity(0)), "workers": a.workers, "stream_row": stream_name,
              "steady_row": steady_row(a.workers),
              "setting": f"clips: {n} x {a.seconds} s, {a.fps} fps, {a.size}x{a.size}, AAC 16 kHz; decode "
                         f"T={decode_cfg.seconds} F={decode_cfg.frames_per_segment} size={decode_cfg.frame_size} "
                         f"sr={decode_cfg.sample_rate}; median of {a.repeats} interleaved rounds; 1 thread per process",
              "rates": rates, "supply": supply}
    print("\n".join(decode_table(result)))
    if supply:
        print("\n" + "\n".join(supply_table(result)))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    if a.markdown:
        Path(a.markdown).write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
