"""Benchmark of one Uni-Code training step at the paper's shapes (CPU fp32, or a GPU in bf16). Prints a table.

    python -m trainer.programs.bench.core [--steps 5] [--warmup 2] [--threads 0] [--configs av,avt,av-baseline]
                                          [--compile] [--default-malloc] [--device cpu|cuda]
                                          [--json out.json] [--markdown page.md]

Shapes (seed 001 / appendix B.1): B=80 clips, T=10 segments, M=400 codes, D=256; audio 128-d, video a
7×7×512 VGG-19 pool5 map per segment, text 10 BERT tokens × 768 (AVT). One step =
``task.compute_loss`` (forward, every loss term, the 5 CLUB estimator inner updates) + ``loss.backward()``
+ Adam step + ``task.after_optimizer_step_()`` (MM-EMA update, usage, code reset), in one process
(collectives are the identity). Each configuration runs in its own subprocess so that its peak memory
is its own; the child reports JSON on stdout.

Columns: median milliseconds per phase over ``--steps`` steps after ``--warmup``; peak RSS (VmHWM, reset
after the model and inputs are built, so it is the training step's high-water mark) and the RSS before
the steps; the quantizer-step / bare-nearest-neighbour ratio from ``trainer.programs.bench.quantizer_timing``,
measured in the same process right after the steps (target <= 2.0).

Achieved FLOP/s: the FLOPs of one step (forward, every loss term and the CLUB inner updates, backward;
``torch.utils.flop_counter.FlopCounterMode`` on one extra, untimed step) divided by the median step time, and
its ratio to what a large fp32 matmul (2048³, ``--matmul-size``) reaches in the same process right after the
steps: how close the step comes to the machine's own matmul speed (issue target >= 0.6).

``--compile`` adds a row per configuration with ``run.compile`` (``CodebookTask.compile_``: ``torch.compile`` of the
forward and the loss terms), timed after ``--warmup`` + 3 steps (the compilations and the recompilation once the
codebook is initialised happen there); its FLOPs are counted on an eager step first, since the counter cannot see
inside compiled kernels.

Every row keeps freed memory in the process as the job does (``run.keep_freed_host_memory``, on by default:
``trainer.runtime.keep_freed_host_memory``); ``--default-malloc`` adds a row per configuration with glibc's
default malloc, which unmaps the step's large freed blocks so that the next step page-faults them in again.

``--device cuda`` runs the step on the GPU under bf16 autocast (``trainer.runtime.training_precision``), times it with
the device synchronised, reports the peak GPU memory of the steps (``torch.cuda.max_memory_allocated``, reset after the
model and inputs are built) and compares the achieved FLOP/s with a bf16 matmul of ``--matmul-size``³ on the same GPU;
the quantizer ratio (a CPU measurement) is left out there.

``--json`` writes every row with the command and the load; ``--markdown`` writes the table as a generated docs page
(docs/performance/core.md); ``--from-json FILE --markdown PAGE`` renders a saved JSON again without measuring.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from trainer.programs.bench.parsers import core_parser
from trainer.programs.bench.config import CORE_CONFIGS
from trainer.programs.harness import run_json_child
from trainer.runtime import keep_freed_host_memory, synchronize, training_precision

BATCH, SEGMENTS, TEXT_TOKENS = 80, 10, 10


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _paper_features(modalities: tuple[str, ...], generator: torch.Generator) -> dict[str, torch.Tensor]:
    shapes = {"audio": (BATCH, SEGMENTS, 128), "video": (BATCH, SEGMENTS, 7, 7, 512),
              "text": (BATCH, TEXT_TOKENS, 768)}
    return {m: torch.randn(shapes[m], generator=generator) for m in modalities}


def counted_flops(fn) -> int:
    """FLOPs of ``fn()`` as torch's FLOP counter counts them (matmuls, convolutions, attention; forward and any
    backward run inside ``fn``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_flops_per_s(size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """FLOP/s of a ``size``³ matmul in this process (best of ``repeats``, after one warm-up): fp32 on the CPU, bf16 on
    a GPU (the precision the step runs at there)."""
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b), device) for _ in range(repeats))
    return 2 * size ** 3 / best


def _timed(fn, device: str = "cpu") -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def run_one(name: str, steps: int, warmup: int, matmul_size: int = 2048, mode: str = "eager",
            device: str = "cpu") -> dict:
    """Build the configuration ``name``, time ``warmup + steps`` training steps and the quantizer ratio (CPU only).

    ``mode``: "eager" as the job runs by default; "compiled" with ``run.compile``; "default malloc"
    with ``run.keep_freed_host_memory=false`` (every other mode keeps freed memory, as the job does).
    ``device``: "cpu" (fp32) or "cuda" (bf16 autocast, ``trainer.runtime.training_precision``)."""
    from trainer.programs.bench.quantizer_timing import time_quantizer_step
    from trainer.configs.model import UniCodeConfig
    from trainer.tasks import UniCodeTask

    compiled = mode == "compiled"
    if mode != "default malloc":
        keep_freed_host_memory()
    modalities, variant = CORE_CONFIGS[name]
    torch.manual_seed(0)
    on_gpu = torch.device(device).type == "cuda"
    task = UniCodeTask(UniCodeConfig(modalities=modalities, variant=variant)).to(device)
    optimizer = torch.optim.Adam(task.model.parameters(), lr=4e-4)
    generator = torch.Generator().manual_seed(0)
    batches = [{m: x.to(device) for m, x in _paper_features(modalities, generator).items()} for _ in range(2)]

    def one_step(step: int) -> None:
        with training_precision(device):
            loss, _ = task.compute_loss(batches[0], step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

    if compiled:   # the counter cannot see inside compiled kernels: count an eager step, then compile
        step_flops = counted_flops(lambda: one_step(0))
        task.compile_()
        warmup += 3
    rss_before_kib = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")                                   # reset VmHWM to the current RSS
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)

    phases = {"forward+losses": [], "backward": [], "optimizer": [], "ema+reset": [], "step": []}
    last_stats = {}
    for i in range(warmup + steps):
        features = batches[i % len(batches)]
        synchronize(device)
        t0 = time.perf_counter()
        with training_precision(device):
            loss, _ = task.compute_loss(features, i)
        synchronize(device)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        synchronize(device)
        t2 = time.perf_counter()
        optimizer.step()
        synchronize(device)
        t3 = time.perf_counter()
        last_stats = task.after_optimizer_step_()
        synchronize(device)
        t4 = time.perf_counter()
        if i >= warmup:
            for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                phases[key].append(value * 1e3)
    peak_kib = _status_kib("VmHWM")
    peak_gpu_mib = torch.cuda.max_memory_allocated(device) / 2**20 if on_gpu else None
    if not compiled:   # untimed; the optimizer does not step, the next timing does not follow
        step_flops = counted_flops(lambda: one_step(warmup + steps))
    matmul = matmul_flops_per_s(matmul_size, device=device)
    row = {"device": torch.cuda.get_device_name(device) if on_gpu else "cpu", "peak_gpu_mib": peak_gpu_mib}
    if not on_gpu:
        timing = time_quantizer_step(BATCH, SEGMENTS, task.cfg.quantizer.num_codes, task.cfg.quantizer.dim,
                                     modalities, task.cfg.quantizer)
        row |= {"quantizer_step_ms": timing.quantizer_step_ms, "nearest_neighbour_ms": timing.nearest_neighbour_ms,
                "ratio": timing.ratio, "ratio_matmul_argmin": timing.ratio_matmul_argmin}
    return row | {
        "name": name + ("" if mode == "eager" else f" {mode}"),
        "model_params": sum(p.numel() for p in task.model.parameters()),
        "club_params": sum(p.numel() for p in task.club.parameters()) if task.club is not None else 0,
        **{f"{k}_ms": statistics.median(v) for k, v in phases.items()},
        "rss_before_mib": rss_before_kib / 1024,
        "peak_rss_mib": peak_kib / 1024,
        "resets_last_step": int(last_stats["codebook/resets"]),
        "step_gflop": step_flops / 1e9,
        "step_gflops": step_flops / 1e9 / (statistics.median(phases["step"]) / 1e3),
        "matmul_gflops": matmul / 1e9,
        "threads": torch.get_num_threads(),
    }


def gpu_markdown(result: dict) -> str:
    """The page of a ``--device cuda`` result: step time, achieved TFLOP/s against a bf16 matmul, peak GPU memory."""
    rows = result["rows"]
    out = [f"<!-- written by `{result['command']}`; re-run it to update this page, do not edit by hand -->",
           "# One Uni-Code training step at the paper's shapes on a GPU", "", f"Command: `{result['command']}`", "",
           f"{rows[0]['device']}, bf16 autocast, median of {result['steps']} steps after {result['warmup']} warm-up. "
           "The FLOPs are torch's FLOP counter on one untimed eager step; the matmul is a "
           f"{result['matmul_size']}³ bf16 matmul in the same process right after the steps; peak GPU memory is "
           "torch.cuda.max_memory_allocated over the steps.", "",
           "| config | step ms | fwd+loss ms | backward ms | adam ms | ema+reset ms | GFLOP per step | step TFLOP/s | "
           "bf16 matmul TFLOP/s | step / matmul | peak GPU MiB |", "|---" * 11 + "|"]
    for r in rows:
        out.append(f"| {r['name']} | {r['step_ms']:.1f} | {r['forward+losses_ms']:.1f} | {r['backward_ms']:.1f} | "
                   f"{r['optimizer_ms']:.1f} | {r['ema+reset_ms']:.1f} | {r['step_gflop']:.1f} | "
                   f"{r['step_gflops'] / 1e3:.2f} | {r['matmul_gflops'] / 1e3:.1f} | "
                   f"{r['step_gflops'] / r['matmul_gflops']:.3f} | {r['peak_gpu_mib']:.0f} |")
    return "\n".join(out) + "\n"


def markdown(result: dict) -> str:
    """The generated docs page of a result as ``--json`` writes it: one row per configuration and mode."""
    command, load = result["command"], result["load"]
    rows = result["rows"]
    if rows[0].get("device", "cpu") != "cpu":    # pages written before --device existed hold CPU rows
        return gpu_markdown(result)
    out = [f"<!-- written by `{command}`; re-run it to update this page, do not edit by hand -->",
           "# One Uni-Code training step at the paper's shapes", "", f"Command: `{command}`", "",
           f"B={BATCH}, T={SEGMENTS}, M=400, D=256, audio 128-d, video 7×7×512, AVT text {TEXT_TOKENS}×768; CPU fp32, "
           f"{rows[0]['threads']} threads, median of {result['steps']} steps after {result['warmup']} warm-up; every "
           f"row from this one invocation, load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end. "
           "Step = forward, every loss term, the 5 CLUB inner updates, backward, Adam, MM-EMA and reset. Quantizer "
           "ratios: the quantizer step over the bare nearest-neighbour search (addmm + min), and over (z@eᵀ).argmin. "
           "The FLOPs are torch's FLOP counter on one untimed eager step; the matmul is a "
           f"{result['matmul_size']}³ fp32 matmul in the same process right after the steps, which itself varies by "
           "a few % between children: compare step ms within a configuration, and ratios across runs.", "",
           "| config | params | step ms | peak RSS MiB | quantizer step / bare NN | same / (z@eᵀ).argmin | "
           "GFLOP per step | step GFLOP/s | matmul GFLOP/s | step / matmul |", "|---" * 10 + "|"]
    for r in rows:
        club = f" + {r['club_params'] / 1e3:.0f} k CLUB" if r["club_params"] else ""
        params = f"{r['model_params'] / 1e6:.2f} M{club}"
        out.append(f"| {r['name']} | {params} | {r['step_ms']:.0f} | {r['peak_rss_mib']:.0f} | {r['ratio']:.2f} | "
                   f"{r['ratio_matmul_argmin']:.2f} | {r['step_gflop']:.1f} | {r['step_gflops']:.1f} | "
                   f"{r['matmul_gflops']:.1f} | {r['step_gflops'] / r['matmul_gflops']:.2f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = core_parser()   # torch-free, for `cmg bench core --help`
    args = parser.parse_args(argv)
    if args.from_json:
        if not args.markdown:
            parser.error("--from-json needs --markdown")
        Path(args.markdown).write_text(markdown(json.loads(Path(args.from_json).read_text())))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_one(args.child, args.steps, args.warmup, args.matmul_size, args.child_mode,
                                 args.device)))
        return

    names = args.configs.split(",")
    unknown = [n for n in names if n not in CORE_CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {list(CORE_CONFIGS)}")
    load_start = os.getloadavg()[0]
    rows = []
    modes = ["eager", *(["compiled"] if args.compile else []), *(["default malloc"] if args.default_malloc else [])]
    for name in names:
        for mode in modes:
            cmd = [sys.executable, "-m", "trainer.programs.bench.core", "--child", name, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads), "--matmul-size", str(args.matmul_size),
                   "--child-mode", mode, "--device", args.device]
            rows.append(run_json_child(cmd, f"benchmark child '{name}' ({mode})"))

    command = "python -m trainer.programs.bench.core " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {"command": command, "load": [load_start, os.getloadavg()[0]], "steps": args.steps, "warmup": args.warmup,
              "matmul_size": args.matmul_size, "rows": rows}
    if args.device != "cpu":
        print(gpu_markdown(result))
    else:
        print_cpu_tables(args, rows)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown(result))


def print_cpu_tables(args, rows: list[dict]) -> None:
    """The two tables of a CPU run on stdout: the phases and the quantizer ratio, then the achieved FLOP/s."""
    print(f"Uni-Code training step, B={BATCH} T={SEGMENTS} M=400 D=256, audio 128, video 7x7x512, "
          f"text {TEXT_TOKENS}x768; CPU fp32, {rows[0]['threads']} threads, median of {args.steps} steps "
          f"after {args.warmup} warm-up")
    header = (f"{'config':<26}{'params':>10}{'CLUB':>9}{'fwd+loss':>10}{'backward':>10}{'adam':>8}"
              f"{'ema+reset':>10}{'step ms':>9}{'rss MiB':>9}{'peak MiB':>10}{'q-step ms':>10}{'NN ms':>8}"
              f"{'ratio':>7}{'vs mm+am':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['name']:<26}{r['model_params'] / 1e6:>9.2f}M{r['club_params'] / 1e3:>8.0f}k"
              f"{r['forward+losses_ms']:>10.1f}{r['backward_ms']:>10.1f}{r['optimizer_ms']:>8.1f}"
              f"{r['ema+reset_ms']:>10.2f}{r['step_ms']:>9.1f}{r['rss_before_mib']:>9.0f}{r['peak_rss_mib']:>10.0f}"
              f"{r['quantizer_step_ms']:>10.3f}{r['nearest_neighbour_ms']:>8.3f}{r['ratio']:>7.2f}"
              f"{r['ratio_matmul_argmin']:>9.2f}")
    print("fwd+loss includes the 5 CLUB inner updates; ema+reset = after_optimizer_step_ (MM-EMA, usage, reset);"
          " rss = before the steps, peak = VmHWM during them;\nratio = quantizer step (quantize + accumulate_ +"
          " step_) / bare nearest-neighbour search (addmm + min), same shapes and process (target <= 2.0);\nvs mm+am ="
          " the same quantizer step / (z @ eᵀ).argmin, the baseline of earlier tables"
          " (trainer/programs/bench/quantizer_timing.py).")
    print(f"\nAchieved FLOP/s (torch's FLOP counter on one untimed step / median step time) against a "
          f"{args.matmul_size}³ fp32 matmul in the same process (target >= 0.6); load average {os.getloadavg()[0]:.2f}")
    header = f"{'config':<26}{'GFLOP/step':>11}{'step GFLOP/s':>13}{'matmul GFLOP/s':>15}{'ratio':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['name']:<26}{r['step_gflop']:>11.1f}{r['step_gflops']:>13.1f}{r['matmul_gflops']:>15.1f}"
              f"{r['step_gflops'] / r['matmul_gflops']:>7.2f}")


if __name__ == "__main__":
    main()
