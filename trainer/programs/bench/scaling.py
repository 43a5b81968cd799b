"""Scaling benchmark of the main job: 1 vs 2 ranks at a fixed per-rank batch, and its collectives. Prints tables.

    python -m trainer.programs.bench.scaling [--ranks 1,2] [--negatives global,local] [--batch 64] [--steps 16]
                                             [--log-every 4] [--threads 1] [--config launch/configs/pretrain_av.yaml]
                                             [--accelerate-config launch/accelerate/cpu_zero2.yaml] [--workdir DIR]

Everything runs through the product: ``accelerate launch --config_file <cpu_zero2.yaml> --num_processes N
trainer/main.py --config <pretrain_av.yaml> key=value...`` (DeepSpeed ZeRO-2, gloo on CPU): the Uni-Code AV
pretraining job with the seeds' model and optimiser (M=400, D=256, CLUB with 5 inner steps, Cross-CPC K=2,
CMCM; per-rank batch from the config unless ``--batch``), its run, data and tracking sections replaced: the
data are feature shards this command writes once:
Gaussian features of the paper's per-clip shapes (audio ``(10 128)``, video a VGG-19 pool5 map per second
``(10 49 512)``, stored fp16), read by the real stream (resampled, one DataLoader worker per rank, one epoch
covers the run, so no epoch restarts). MLflow tracking is off (``tracking.enabled=false``): rank 0 still
writes ``metrics.jsonl``. Each rank computes with ``--threads`` threads (OMP_NUM_THREADS), so on this 2-core
machine 2 ranks can at best double clips/s. The machine is shared: every launch's row shows the 1-minute
load average at its end (its own processes included). On a GPU node pass ``--accelerate-config
launch/accelerate/gpu_zero2.yaml`` (nccl, bf16) and e.g. ``--ranks 1,8``.

Table 1 (throughput): one plain launch per entry of ``--ranks`` and of ``--negatives`` (``model.negatives``:
where Cross-CPC, CMCM and the CLUB bound take their in-batch negatives; "global" gathers every rank's rows); steps/s
and clips/s from ``metrics.jsonl`` (``perf/step_s`` of every log window but the first, which holds start-up and
the codebook's data init), and each run's ratios to the first rank count's run with the same negatives
(scaling efficiency = clips/s ratio / ranks).

Table 2 (collectives, measured in one more launch per ``--negatives`` with the largest rank count; the "in-batch
negatives all_gather" row is what "global" costs: its bytes per step and share of the step): the same command with
``-m trainer.programs.bench.scaling --instrumented-trainer`` in place of ``trainer/main.py``. That worker wraps
every ``torch.distributed`` collective in its own process before anything binds them, then runs the main job's own
pieces (``load_config``, ``create_accelerator``, ``trainer.loop.train``, ``shutdown``). Each call is timed and
attributed to the code that issued it by walking the caller's frames: the quantizer's MM-EMA all_reduce
(``MMEMAQuantizer.step_``), CLUB gradient averaging (``average_gradients_``), the stop flag
(``StopRequest.agreed_or_file``), the log-step metric reductions, and DeepSpeed's engine collectives by the
DeepSpeed function that issued them. A step is the span between two stop-flag all_reduces (the loop's last
collective of every step); the measured steps are those after the first log window, as in Table 1. Time in a
blocking collective includes waiting for the slower rank to arrive. After training, every rank times each
all_reduce of the steps alone (same byte size, after a barrier, median of ``--probe-repeats``): the transfer cost
without that wait. On CUDA tensors the recorder synchronises the device around each call. """

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.programs.bench.parsers import scaling_parser
from trainer.programs.harness import REPO, free_port, run_child

MAIN_SCRIPT = REPO / "trainer" / "main.py"
SEGMENTS = 10                                              # seconds per clip (seed 001: 10 one-second segments)
FEATURE_SHAPES = {"audio": (128,), "video": (49, 512)}     # per segment: VGGish 128-d, VGG-19 pool5 7x7x512
RECORD_NAME = "collectives.rank{rank}.json"

# Roles of collectives issued by this project's code: (file under the repo, function) -> role. The innermost
# calling frame that matches names the role (frames that match nothing, e.g. all_reduce_sum_, are passed).
QUANTIZER = "quantizer MM-EMA all_reduce"
STOP_FLAG = "stop flag all_reduce"
NEGATIVES = "in-batch negatives all_gather"
PROJECT_ROLES = {
    ("trainer/models/quantizer.py", "step_"): QUANTIZER,
    ("trainer/models/quantizer.py", "maybe_init_"): "quantizer codebook init all_gather",
    ("trainer/distributed.py", "average_gradients_"): "CLUB gradient averaging",
    ("trainer/distributed.py", "forward"): NEGATIVES,     # _GatherRows.forward: model.negatives=global
    ("trainer/runtime.py", "agreed_or_file"): STOP_FLAG,
    ("trainer/loop.py", "pack_mean"): "logged metrics mean (log steps)",
    ("trainer/data/stream.py", "skip_totals"): "data skip counters (log steps)",
}
# DeepSpeed's own plumbing between its ZeRO code and torch.distributed; the frame above it names the role.
DEEPSPEED_PLUMBING = ("/deepspeed/comm/", "/deepspeed/utils/")
# What the DeepSpeed 0.19 functions seen issuing the engine's per-step collectives on CPU (ZeRO-2, ZeRO-3) do;
# others are shown as "DeepSpeed <file>:<function>".
DEEPSPEED_ROLES = {
    "allreduce_bucket": "engine gradient reduce",                     # ZeRO-2
    "_torch_reduce_scatter_fn": "engine gradient reduce-scatter",     # ZeRO-3
    "get_grad_norm_direct": "engine grad-norm all_reduce",
    "all_gather_into_tensor_dp_groups": "engine parameter all_gather",  # ZeRO-2, after the optimizer step
    "_dist_allgather_fn": "engine parameter all_gather",                # ZeRO-3
    "_allgather_params_coalesced": "engine parameter all_gather",       # ZeRO-3, per module on the fly
}
# Collectives of torch.distributed (p2p send/recv excluded). Wrapped in both namespaces that callers use.
COLLECTIVES = (
    "all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_into_tensor", "_all_gather_base",
    "all_gather_object", "reduce", "reduce_scatter", "reduce_scatter_tensor", "_reduce_scatter_base",
    "broadcast", "broadcast_object_list", "barrier", "monitored_barrier", "all_to_all", "all_to_all_single",
    "gather", "gather_object", "scatter", "scatter_object_list",
)


# ---------------------------------------------------------------------------------------------- synthetic data
def write_feature_shards(out_dir: Path, clips: int, clips_per_shard: int, seed: int = 0,
                         shapes: dict[str, tuple[int, ...]] = FEATURE_SHAPES, segments: int = SEGMENTS) -> str:
    """Feature shards of ``clips`` Gaussian clips of ``segments`` segments + their manifest; returns the brace URL.
    ``shapes``: per-segment feature shape by modality (default: the paper's).

    The members and manifest are what ``python -m shards.extract`` writes (its ``output_samples``), so the
    main job reads them with ``data.kind=features`` like extracted features.
    """
    import webdataset as wds

    from shards.extract import output_samples
    from trainer.configs.data import DecodeConfig
    from trainer.data.manifest import FEATURE_FORMAT, ShardEntry, ShardManifest

    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shards = []
    for index, start in enumerate(range(0, clips, clips_per_shard)):
        count = min(clips_per_shard, clips - start)
        labels = torch.randint(0, 28, (count,), generator=gen)          # 28 AVE event classes
        per_second = labels[:, None].expand(count, segments)
        batch = {"key": [f"clip{start + i:06d}" for i in range(count)], "clip_label": labels,
                 "video_labels": per_second, "audio_labels": per_second, "caption": ["synthetic clip"] * count,
                 "labelled": torch.ones(count, dtype=torch.bool)}
        feats = {m: torch.randn(count, segments, *shape, generator=gen) for m, shape in shapes.items()}
        name = f"train-{index:06d}.tar"
        with wds.TarWriter(str(out_dir / name)) as sink:
            for sample in output_samples(batch, feats, np.dtype(np.float16)):
                sink.write(sample)
        shards.append(ShardEntry(name, count))
    ShardManifest(FEATURE_FORMAT, shards, clips, feature_shapes={m: list(s) for m, s in shapes.items()},
                  decode=dataclasses.asdict(DecodeConfig(seconds=segments)),
                  backbones="none: Gaussian features written by trainer.programs.bench.scaling",
                  details={"skipped": 0, "dtype": "float16"}).write(out_dir)
    return str(out_dir / f"train-{{000000..{len(shards) - 1:06d}}}.tar")


# ---------------------------------------------------------------------------------------------- launching
def job_args(config: str, run_dir: Path, urls: str, batch: int, steps: int, log_every: int,
             workers: int, negatives: str) -> list[str]:
    """trainer/main.py's arguments for a benchmark run: ``config`` with its run, data and tracking replaced."""
    return ["--config", config, f"model.negatives={negatives}",
            f"run.dir={run_dir}", f"run.max_steps={steps}", f"run.ckpt_every={steps}", "run.progress=false",
            f"data.urls={urls}", "data.kind=features", "data.feature_modalities=[audio,video]",
            f"data.batch_size={batch}", f"data.num_workers={workers}", "data.resampled=true",
            f"data.epoch_batches={steps}", "data.shuffle_buffer=16",
            "tracking.enabled=false", f"tracking.log_every={log_every}"]


def launch(ranks: int, accelerate_config: str, run_dir: Path, main_args: list[str], threads: int,
           timeout: float, probe_repeats: int = 0) -> float:
    """``accelerate launch`` the main job with ``ranks`` processes; returns the wall seconds.

    ``probe_repeats`` > 0: the instrumented trainer instead of trainer/main.py (see the module docstring).
    """
    if probe_repeats:
        target = ["-m", "trainer.programs.bench.scaling", "--instrumented-trainer", str(run_dir), str(probe_repeats)]
    else:
        target = [str(MAIN_SCRIPT)]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
           "--num_processes", str(ranks), "--main_process_port", str(free_port()), *target, *main_args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    start = time.perf_counter()
    run_child(cmd, "benchmark launch", cwd=REPO, env=env, timeout=timeout)
    return time.perf_counter() - start


@dataclasses.dataclass
class Throughput:
    negatives: str        # model.negatives of the run
    ranks: int
    steps: int            # measured optimizer steps (every log window but the first)
    step_s: float         # mean seconds per step over them
    clips_per_s: float    # global clips per second over them
    wall_s: float         # whole launch, start-up and final checkpoint included
    load: float           # 1-minute load average when the launch ended


def read_throughput(run_dir: Path, negatives: str, ranks: int, global_batch: int, wall_s: float,
                    load: float) -> Throughput:
    """Steps/s and clips/s from rank 0's ``metrics.jsonl``, first log window dropped."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if len(rows) < 2:
        raise SystemExit(f"{path}: {len(rows)} log windows; need 2 or more (raise --steps or lower --log-every)")
    previous = [row["step"] for row in rows[:-1]]
    windows = [(row["step"] - before, row["perf/step_s"]) for row, before in zip(rows[1:], previous)]
    steps = sum(n for n, _ in windows)
    seconds = sum(n * step_s for n, step_s in windows)
    return Throughput(negatives, ranks, steps, seconds / steps, steps * global_batch / seconds, wall_s, load)


# ---------------------------------------------------------------------------------------------- instrumentation
def _payload_bytes(args: tuple, kwargs: dict) -> tuple[int, torch.Tensor | None]:
    """Bytes of a collective's largest tensor argument (a tensor list counts as one) and a tensor of it.

    That is the reduced tensor of an all_reduce and the gathered result of an all_gather; (0, None) if the
    call has no tensor (barrier, object collectives).
    """
    best: tuple[int, torch.Tensor | None] = (0, None)
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found = (value.numel() * value.element_size(), value)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            found = (sum(v.numel() * v.element_size() for v in value), value[0])
        else:
            continue
        if found[0] >= best[0]:
            best = found
    return best


def collective_role(frame) -> str:
    """Who issued a collective: the innermost calling frame that is a known project role or DeepSpeed/accelerate."""
    while frame is not None:
        path = frame.f_code.co_filename.replace(os.sep, "/")
        func = frame.f_code.co_name
        for (suffix, name), role in PROJECT_ROLES.items():
            if func == name and path.endswith(suffix):
                return role
        if "/deepspeed/" in path and not any(part in path for part in DEEPSPEED_PLUMBING):
            if func in DEEPSPEED_ROLES:
                return f"{DEEPSPEED_ROLES[func]} ({func})"
            return f"DeepSpeed {Path(path).name}:{func}"
        if "/accelerate/" in path:
            return f"accelerate {func}"
        if path.endswith("trainer/checkpoint.py") or path.endswith("trainer/engine.py"):
            return f"checkpoint {func}"
        frame = frame.f_back
    return "other"


class CollectiveRecorder:
    """Times and attributes every ``torch.distributed`` collective of this process (benchmark processes only).

    Installed before DeepSpeed or accelerate import the functions, so references they bind are the wrappers.
    Collectives that torch.distributed issues inside another (``all_gather_object`` -> ``all_gather``) count
    once, as the outer call. On CUDA tensors the device is synchronised around the call, so the time is the
    collective's own and not only its launch.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._originals: dict[tuple[Any, str], Any] = {}
        self._depth = threading.local()

    def install(self) -> CollectiveRecorder:
        from trainer.distributed import collective_namespaces

        wrapped: dict[int, Any] = {}
        for module in collective_namespaces():
            for name in COLLECTIVES:
                original = getattr(module, name, None)
                if original is None:
                    continue
                if id(original) not in wrapped:
                    wrapped[id(original)] = self._wrap(name, original)
                self._originals[(module, name)] = original
                setattr(module, name, wrapped[id(original)])
        return self

    def uninstall(self) -> None:
        for (module, name), original in self._originals.items():
            setattr(module, name, original)
        self._originals.clear()

    def _wrap(self, op: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            depth = getattr(self._depth, "value", 0)
            if depth:
                return fn(*args, **kwargs)
            nbytes, tensor = _payload_bytes(args, kwargs)
            on_cuda = tensor is not None and tensor.is_cuda
            self._depth.value = 1
            try:
                if on_cuda:
                    torch.cuda.synchronize(tensor.device)
                start = time.perf_counter()
                result = fn(*args, **kwargs)
                if on_cuda:
                    torch.cuda.synchronize(tensor.device)
                seconds = time.perf_counter() - start
            finally:
                self._depth.value = 0
            self.events.append({"op": op, "role": collective_role(sys._getframe(1)), "start": start,
                                "seconds": seconds, "bytes": nbytes,
                                "async": bool(kwargs.get("async_op", False))})
            return result

        return timed


def probe_all_reduce(numel: int, repeats: int) -> list[float]:
    """Seconds of ``repeats`` all_reduces of ``numel`` fp32 values, each started right after a barrier."""
    from trainer import distributed

    tensor = torch.zeros(numel)
    seconds = []
    for _ in range(repeats):
        distributed.barrier()
        start = time.perf_counter()
        distributed.all_reduce_sum_(tensor)
        seconds.append(time.perf_counter() - start)
    return seconds


def probe_step_all_reduces(events: list[dict[str, Any]], repeats: int) -> dict[str, list[float]]:
    """For every role that issued all_reduces during the training steps, time that all_reduce alone.

    The training steps are the events between the first and the last stop flag. Each role's most frequent
    payload is reduced as fp32 values of the same byte size (every rank passes the same events, so all
    ranks probe the same sizes in the same order).
    """
    flags = [i for i, e in enumerate(events) if e["role"] == STOP_FLAG]
    sizes: dict[str, list[int]] = defaultdict(list)
    for e in events[flags[0]:flags[-1] + 1] if flags else []:
        if e["op"] == "all_reduce":
            sizes[e["role"]].append(e["bytes"])
    return {role: probe_all_reduce(max(1, statistics.mode(found) // 4), repeats)
            for role, found in sorted(sizes.items())}


def instrumented_trainer(record_dir: Path, main_args: list[str], probe_repeats: int) -> None:
    """The main job with every collective recorded; writes ``record_dir/collectives.rank<R>.json``.

    Same pieces and order as ``trainer/main.py``'s ``main`` (config, environment, accelerator, ``train``,
    ``shutdown``); launched by ``accelerate launch -m trainer.programs.bench.scaling --instrumented-trainer DIR ...``.
    """
    recorder = CollectiveRecorder().install()
    # Imported only now: DeepSpeed and accelerate must find the recorder's wrappers when they bind collectives.
    from trainer import distributed
    from trainer.configs.load import load_config
    from trainer.job import validate_job
    from trainer.configs.job import JobConfig
    from trainer.loop import train
    from trainer.main import parse_args
    from trainer.runtime import create_accelerator, prepare_process_environment, shutdown

    args = parse_args(main_args)
    cfg = load_config(JobConfig, args.config, args.overrides)
    validate_job(cfg)
    prepare_process_environment(cfg)
    accelerator = create_accelerator(cfg)
    try:
        code = train(cfg, accelerator)
        recorder.uninstall()
        record = {"rank": distributed.rank(), "world_size": distributed.world_size(), "exit_code": code,
                  "threads": torch.get_num_threads(), "events": recorder.events,
                  "probe_s": probe_step_all_reduces(recorder.events, probe_repeats)}
        (record_dir / RECORD_NAME.format(rank=distributed.rank())).write_text(json.dumps(record))
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    shutdown(accelerator, code)


# ---------------------------------------------------------------------------------------------- analysis
@dataclasses.dataclass
class RoleStats:
    calls_per_step: float         # mean over the measured steps
    calls_range: tuple[int, int]  # fewest and most calls in one measured step
    bytes_per_call: float
    ms_per_step: float            # mean time inside the role's collectives per measured step
    share: float                  # of the measured steps' time, 0..1
    alone_ms: float               # median of one such all_reduce alone after a barrier (nan: not probed)


@dataclasses.dataclass
class RankCollectives:
    rank: int
    steps: int
    step_ms: float
    roles: dict[str, RoleStats]


def analyse_rank(record: dict[str, Any], first_measured_step: int) -> RankCollectives:
    """Per-role collective statistics over the steps ``first_measured_step..`` (1-based) of one rank's record.

    Step k ends with the k-th stop-flag all_reduce; its collectives are those after the (k-1)-th one, up to
    and including the k-th, and its time runs from the end of the one to the end of the other. Step 1 has no
    start (set-up collectives precede it), hence ``first_measured_step >= 2``; collectives after the last
    stop flag (final checkpoint, shutdown) belong to no step.
    """
    events = record["events"]
    ends = [i for i, e in enumerate(events) if e["role"] == STOP_FLAG]
    if first_measured_step < 2 or len(ends) < first_measured_step:
        raise ValueError(f"rank {record['rank']}: {len(ends)} steps recorded, cannot measure from step "
                         f"{first_measured_step} (the first measured step must be >= 2)")
    per_step: list[dict[str, list[dict]]] = []
    durations = []
    for k in range(first_measured_step, len(ends) + 1):
        previous, last = events[ends[k - 2]], events[ends[k - 1]]
        durations.append(last["start"] + last["seconds"] - previous["start"] - previous["seconds"])
        grouped: dict[str, list[dict]] = defaultdict(list)
        for e in events[ends[k - 2] + 1: ends[k - 1] + 1]:
            grouped[e["role"]].append(e)
        per_step.append(grouped)
    total = sum(durations)
    roles = {}
    for role in sorted({r for step in per_step for r in step}):
        counts = [len(step.get(role, [])) for step in per_step]
        calls = [e for step in per_step for e in step.get(role, [])]
        seconds = sum(e["seconds"] for e in calls)
        probe = record["probe_s"].get(role)
        roles[role] = RoleStats(sum(counts) / len(per_step), (min(counts), max(counts)),
                                sum(e["bytes"] for e in calls) / len(calls), 1e3 * seconds / len(per_step),
                                seconds / total, 1e3 * statistics.median(probe) if probe else float("nan"))
    return RankCollectives(record["rank"], len(per_step), 1e3 * total / len(per_step), roles)


def _bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def print_throughput(results: list[Throughput], batch: int) -> None:
    bases = {}
    for r in results:
        bases.setdefault(r.negatives, r)
    print(f"\nTable 1: throughput at {batch} clips per rank per step (global batch = {batch} x ranks); ratios "
          f"to the {results[0].ranks}-rank run with the same negatives, of this invocation; efficiency = clips/s "
          "ratio / rank ratio")
    header = (f"{'negatives':>9} {'ranks':>5} {'steps':>6} {'s/step':>8} {'steps/s':>8} {'clips/s':>8} "
              f"{'steps/s ratio':>14} {'clips/s ratio':>14} {'efficiency':>11} {'launch wall s':>14} {'load 1m':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        base = bases[r.negatives]
        clip_ratio = r.clips_per_s / base.clips_per_s
        print(f"{r.negatives:>9} {r.ranks:>5} {r.steps:>6} {r.step_s:>8.3f} {1 / r.step_s:>8.3f} {r.clips_per_s:>8.1f} "
              f"{base.step_s / r.step_s:>14.2f} {clip_ratio:>14.2f} {clip_ratio * base.ranks / r.ranks:>11.2f} "
              f"{r.wall_s:>14.1f} {r.load:>8.2f}")


def _role_order(role: str) -> tuple[int, str]:
    primary = [NEGATIVES, QUANTIZER, "CLUB gradient averaging", STOP_FLAG]
    if role in primary:
        return primary.index(role), ""
    return (len(primary), role) if role.startswith("engine") else (len(primary) + 1, role)


def print_collectives(ranks: list[RankCollectives], log_every: int, instrumented: Throughput) -> None:
    """Table 2 from every rank's analysis (columns "a / b" are rank 0 / rank 1 ...)."""
    per_rank = " / ".join(f"r{r.rank}" for r in ranks)
    print(f"\nTable 2 (model.negatives={instrumented.negatives}): torch.distributed collectives per training "
          f"step, {len(ranks)} ranks, {ranks[0].steps} "
          f"measured steps, log every {log_every}; 'in call' = time inside the call incl. waiting for the other "
          f"ranks ({per_rank}); 'alone' = the same all_reduce after a barrier (mean of the ranks' medians)")
    header = (f"{'issued by':<64} {'calls/step':>10} {'range':>5} {'bytes/call':>10} {'in call ms/step':>16} "
              f"{'% of step':>11} {'alone ms':>9} {'alone %':>8}")
    print(header)
    print("-" * len(header))
    step_ms = statistics.fmean(r.step_ms for r in ranks)
    for role in sorted({role for r in ranks for role in r.roles}, key=_role_order):
        stats = [r.roles.get(role) for r in ranks]
        first = next(s for s in stats if s is not None)
        low, high = first.calls_range
        in_call = " / ".join(f"{s.ms_per_step:.2f}" if s else "-" for s in stats)
        share = " / ".join(f"{100 * s.share:.1f}" if s else "-" for s in stats)
        alone = statistics.fmean(s.alone_ms for s in stats if s)
        alone_share = 100 * first.calls_per_step * alone / step_ms
        print(f"{role:<64} {first.calls_per_step:>10.2f} {str(low) if low == high else f'{low}-{high}':>5} "
              f"{_bytes(first.bytes_per_call):>10} {in_call:>16} {share:>11} "
              f"{'-' if alone != alone else f'{alone:.3f}':>9} {'-' if alone != alone else f'{alone_share:.2f}':>8}")
    print("-" * len(header))
    total_calls = sum(s.calls_per_step for s in ranks[0].roles.values())
    in_call = " / ".join(f"{sum(s.ms_per_step for s in r.roles.values()):.1f}" for r in ranks)
    share = " / ".join(f"{100 * sum(s.share for s in r.roles.values()):.1f}" for r in ranks)
    print(f"{'all collectives':<64} {total_calls:>10.2f} {'':>5} {'':>10} {in_call:>16} {share:>11}")
    print(f"step time (stop flag to stop flag), ms per rank: {' / '.join(f'{r.step_ms:.0f}' for r in ranks)}; "
          f"instrumented launch: {1 / instrumented.step_s:.3f} steps/s, {instrumented.clips_per_s:.1f} clips/s "
          f"(metrics.jsonl, windows as in Table 1)")


# ---------------------------------------------------------------------------------------------- command
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--instrumented-trainer"]:
        # accelerate launch -m trainer.programs.bench.scaling --instrumented-trainer RECORD_DIR PROBE_REPEATS
        #     [main.py args]
        instrumented_trainer(Path(argv[1]), argv[3:], int(argv[2]))
        return 1   # not reached: shutdown leaves through os._exit
    p = scaling_parser()   # torch-free, for `cmg bench scaling --help`
    a = p.parse_args(argv)
    ranks = [int(n) for n in a.ranks.split(",")]
    negatives = a.negatives.split(",")
    if not set(negatives) <= {"global", "local"}:
        p.error(f"--negatives {a.negatives}: each must be 'global' or 'local'")
    if a.steps < 2 * a.log_every:
        p.error(f"--steps {a.steps} must be >= 2 x --log-every {a.log_every} (the first window is dropped)")
    if any(n < 1 for n in ranks):
        p.error(f"--ranks {a.ranks}: every count must be >= 1")
    from trainer.configs.load import load_config
    from trainer.configs.job import JobConfig

    batch = a.batch or load_config(JobConfig, REPO / a.config).data.batch_size

    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="cmg-scaling-"))
    try:
        start = time.perf_counter()
        urls = write_feature_shards(workdir / "features", a.clips, clips_per_shard=20)
        print(f"# {a.clips} synthetic feature clips (audio 10x128, video 10x49x512, fp16) in "
              f"{time.perf_counter() - start:.1f} s; per-rank batch {batch}, {a.steps} steps, first "
              f"{a.log_every} = warm-up; {a.threads} thread(s)/rank, {a.workers} loader worker(s)/rank; "
              f"{a.config}; {a.accelerate_config}; cpu count {os.cpu_count()}; "
              f"load average {os.getloadavg()[0]:.2f}")
        results = []
        for neg in negatives:
            for n in ranks:
                run_dir = workdir / f"run-{neg}-{n}"
                wall = launch(n, a.accelerate_config, run_dir,
                              job_args(a.config, run_dir, urls, batch, a.steps, a.log_every, a.workers, neg),
                              a.threads, a.timeout)
                results.append(read_throughput(run_dir, neg, n, batch * n, wall, os.getloadavg()[0]))
        print_throughput(results, batch)
        if max(ranks) == 1:
            print("\nNo Table 2: in one process trainer.distributed skips its collectives, the stop flag included, "
                  "so there are no step boundaries to measure between.")
        elif not a.no_collectives:
            n = max(ranks)
            for neg in negatives:
                run_dir = workdir / f"run-{neg}-{n}-instrumented"
                run_dir.mkdir(parents=True)
                wall = launch(n, a.accelerate_config, run_dir,
                              job_args(a.config, run_dir, urls, batch, a.steps, a.log_every, a.workers, neg),
                              a.threads, a.timeout, probe_repeats=a.probe_repeats)
                records = [json.loads((run_dir / RECORD_NAME.format(rank=r)).read_text()) for r in range(n)]
                analysed = [analyse_rank(record, a.log_every + 1) for record in records]
                if len({tuple((k, v.calls_per_step) for k, v in r.roles.items()) for r in analysed}) != 1:
                    print(f"WARNING: the ranks issued different collectives per step (a bug: a collective every "
                          f"rank does not call hangs); records in {run_dir}")
                instrumented = read_throughput(run_dir, neg, n, batch * n, wall, os.getloadavg()[0])
                print_collectives(analysed, a.log_every, instrumented)
        print(f"\n# total {time.perf_counter() - start:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        if not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
