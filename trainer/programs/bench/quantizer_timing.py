"""Micro-benchmark: one MM-EMA quantizer training step vs a bare nearest-neighbour matmul.

``time_quantizer_step`` times, on the same inputs and interleaved in one run,
  - quantizer step = ``quantize`` of every modality + ``accumulate_`` + ``step_`` (EMA, usage, reset draw);
  - bare nearest neighbour = ``addmm(||e||², z, codebook.T, alpha=-2).min(-1).indices`` for every modality: the
    nearest code by squared distance (||z||² does not change the argmin), one matmul and one reduction, with
    ||e||² computed once outside the timing,
  - and, for comparison with earlier tables, ``(z @ codebook.T).argmin(-1)``: what this benchmark called the bare
    search before (not a nearest-neighbour search without ||e||², and torch's CPU argmin is slower than min:
    docs/performance.md, "Training step"),
and returns the median times and their ratio (target <= 2.0 at B=80, T=10, M=400, D=256, 2 modalities).
The CPU is shared, so the ratio is taken per repeat from two adjacent measurements and its median is
reported; the ratio of the fastest repeats (``min_ratio``) is a second, load-insensitive estimate.
``python -m trainer.programs.bench.core`` prints the ratio; ``python -m trainer.programs.bench.quantizer_timing``
prints this benchmark's own table.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

import torch

from trainer.models.quantizer import MMEMAQuantizer
from trainer.configs.model import QuantizerConfig
from trainer.programs.bench.parsers import quantizer_timing_parser


@dataclass
class QuantizerTiming:
    quantize_ms: float          # medians over repeats, milliseconds
    accumulate_ms: float
    step_ms: float
    quantizer_step_ms: float    # median of the per-repeat total quantize + accumulate_ + step_
    nearest_neighbour_ms: float
    ratio: float                # median over repeats of (quantizer step / nearest neighbour), same repeat
    matmul_argmin_ms: float     # the earlier baseline, (z @ e.T).argmin
    ratio_matmul_argmin: float  # median over repeats of (quantizer step / matmul + argmin)
    min_ratio: float            # fastest quantizer step / fastest nearest neighbour
    repeats: int
    threads: int


def time_quantizer_step(
    batch: int = 80,
    segments: int = 10,
    num_codes: int = 400,
    dim: int = 256,
    modalities: tuple[str, ...] = ("audio", "video"),
    cfg: QuantizerConfig | None = None,
    repeats: int = 60,
    warmup: int = 20,
    seed: int = 0,
) -> QuantizerTiming:
    """Median timings of the quantizer step and the bare nearest-neighbour search, measured interleaved.

    ``cfg`` (default: the default ``QuantizerConfig``) is resized to ``num_codes``/``dim``. The inputs
    do not require grad: this is the quantizer's own cost, not the encoders' backward.
    """
    cfg = replace(cfg or QuantizerConfig(), num_codes=num_codes, dim=dim)
    gen = torch.Generator().manual_seed(seed)
    semantic = {m: torch.randn(batch, segments, dim, generator=gen) for m in modalities}
    quantizer = MMEMAQuantizer(cfg, modalities, all_reduce_fn=lambda t: t, all_gather_fn=lambda t: t).train()
    quantizer.maybe_init_(semantic)
    codebook = quantizer.codebook.clone()
    codebook_t, squared_norms = codebook.t(), codebook.pow(2).sum(1)
    flat = [z.reshape(-1, dim) for z in semantic.values()]

    def quantizer_step() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        codes = {m: quantizer.quantize(z).codes for m, z in semantic.items()}
        t1 = time.perf_counter()
        quantizer.accumulate_(semantic, codes)
        t2 = time.perf_counter()
        quantizer.step_()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    def nearest_neighbour() -> float:
        t0 = time.perf_counter()
        for z in flat:
            torch.addmm(squared_norms, z, codebook_t, alpha=-2.0).min(-1).indices
        return time.perf_counter() - t0

    def matmul_argmin() -> float:
        t0 = time.perf_counter()
        for z in flat:
            (z @ codebook_t).argmin(-1)
        return time.perf_counter() - t0

    for _ in range(warmup):
        quantizer_step()
        nearest_neighbour()
        matmul_argmin()
    phases, bare, earlier = [], [], []
    for _ in range(repeats):        # interleaved, so load from other jobs hits every side alike
        phases.append(quantizer_step())
        bare.append(nearest_neighbour())
        earlier.append(matmul_argmin())
    ms = 1e3
    totals = [sum(p) for p in phases]
    return QuantizerTiming(
        quantize_ms=statistics.median(p[0] for p in phases) * ms,
        accumulate_ms=statistics.median(p[1] for p in phases) * ms,
        step_ms=statistics.median(p[2] for p in phases) * ms,
        quantizer_step_ms=statistics.median(totals) * ms,
        nearest_neighbour_ms=statistics.median(bare) * ms,
        ratio=statistics.median(t / b for t, b in zip(totals, bare)),
        matmul_argmin_ms=statistics.median(earlier) * ms,
        ratio_matmul_argmin=statistics.median(t / b for t, b in zip(totals, earlier)),
        min_ratio=min(totals) / min(bare),
        repeats=repeats,
        threads=torch.get_num_threads(),
    )


def main(argv: list[str] | None = None) -> None:
    args = quantizer_timing_parser().parse_args(argv)   # torch-free, for `cmg bench quantizer_timing --help`
    if args.threads:
        torch.set_num_threads(args.threads)
    modalities = tuple(args.modalities.split(","))
    print(f"B={args.batch} T={args.segments} M={args.codes} D={args.dim} modalities={','.join(modalities)} "
          f"repeats={args.repeats} threads={torch.get_num_threads()} (fp32, CPU, medians)")
    print(f"{'config':<34}{'quantize':>10}{'accum':>9}{'step_':>9}{'total ms':>10}{'bare NN ms':>12}"
          f"{'ratio':>8}{'min ratio':>11}{'mm+argmin ms':>14}{'ratio':>8}")
    variants = {
        "joint, cross_attention, reset": QuantizerConfig(),
        "joint, paired, reset": QuantizerConfig(r_source="paired"),
        "sequential, paired, reset (compat)": QuantizerConfig(ema_mode="sequential", r_source="paired"),
        "plain EMA, no reset (ablation)": QuantizerConfig(ema_mode="plain", reset=False),
    }
    for name, cfg in variants.items():
        t = time_quantizer_step(args.batch, args.segments, args.codes, args.dim, modalities, cfg, args.repeats)
        print(f"{name:<34}{t.quantize_ms:>10.3f}{t.accumulate_ms:>9.3f}{t.step_ms:>9.3f}"
              f"{t.quantizer_step_ms:>10.3f}{t.nearest_neighbour_ms:>12.3f}{t.ratio:>8.2f}{t.min_ratio:>11.2f}"
              f"{t.matmul_argmin_ms:>14.3f}{t.ratio_matmul_argmin:>8.2f}")
    print("bare NN = addmm(||e||², z, eᵀ, α=−2).min(−1) per modality; mm+argmin = (z @ eᵀ).argmin(−1), the baseline of "
          "earlier tables")


if __name__ == "__main__":
    main()
