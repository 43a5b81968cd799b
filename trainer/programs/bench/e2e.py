"""The whole product path on raw synthetic clips, as a table: does the main job learn a unified codebook?

    python -m trainer.programs.bench.e2e [--seeds 0,1] [--classes 5] [--processes 1,2] [--rows full,baseline]
                                         [--data-dir e2e_data] [--runs runs/e2e] [--json out.json] [key=value ...]

For every seed: ``shards.synth`` writes an unlabelled pretraining corpus (mp4 only) and a labelled
downstream corpus of the same world (other clips), ``shards.write`` packs both, ``trainer/main.py`` pretrains
on the unlabelled shards with the demo's job config (``launch/configs/demo.yaml``: decord decoding and tiny
frozen backbones on the fly) in one plain process and in two processes (``accelerate launch``, DeepSpeed
ZeRO-2 over gloo), both at the demo's global batch (32 clips: 32 on one rank, 16 on each of two), and
``python -m trainer.evaluate`` probes the checkpoint on the labelled clips. Rows: full
Uni-Code and the seed 001 §4.1 baseline (``model.variant=baseline``: reconstruction + EMA VQ + commitment).
The table has the fidelity table's cells (AVE = classification accuracy, AVVP = localisation micro F1, V→A
and A→V, in %), each the mean over seeds ± half the range, then the same-code share, the in-modality
accuracy and the training time. Targets (checked on the mean): full >= baseline + 25 points in both
directions of both tasks, and the demo's (cross-modal accuracy >= chance + 40 points and >= 80 % of the
in-modality accuracy, same-code share >= 30 %) for the full rows.

Runs go one at a time (each already uses both cores); ``key=value`` arguments override every job's config.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from trainer.config import load_config
from trainer.job import JobConfig
from trainer.programs.bench.cli import e2e_parser
from trainer.programs.demo import DemoConfig, launch_training, prepare_clips, prepare_shards, run_evaluation, summary
from trainer.programs.harness import Target, half_range, mean, print_targets

ROWS = {"full": (), "baseline": ("model.variant=baseline",)}
CELLS = (("classification", "V→A"), ("classification", "A→V"), ("localisation", "V→A"), ("localisation", "A→V"))


def corpora(data_dir: Path, classes: int, seed: int, demo: DemoConfig) -> tuple[str, str]:
    """Shard URLs of the (unlabelled pretraining, labelled downstream) corpora of world (classes, seed)."""
    root = data_dir / f"k{classes}-seed{seed}"
    # synth seeds 10 + 2·seed and 11 + 2·seed: never the demo's corpora (synth seeds 0 and 1)
    pretrain = dataclasses.replace(demo.pretrain, classes=classes, seed=10 + 2 * seed)
    downstream = dataclasses.replace(demo.downstream, classes=classes, seed=11 + 2 * seed)
    return (prepare_shards(prepare_clips(pretrain, root / "pretrain_clips"), root / "pretrain_shards",
                           pretrain.num_clips, demo.shard_max_count),
            prepare_shards(prepare_clips(downstream, root / "eval_clips"), root / "eval_shards",
                           downstream.num_clips, demo.shard_max_count))


def global_batch(demo: DemoConfig) -> int:
    """Clips per step of the demo's job (its per-rank batch on its process count)."""
    return load_config(JobConfig, demo.job_config).data.batch_size * demo.processes


def run_one(row: str, processes: int, urls: tuple[str, str], run_dir: Path, overrides: tuple[str, ...],
            demo: DemoConfig) -> dict[str, Any]:
    """Pretrain one row from scratch at the demo's global batch (split over ``processes``) and evaluate it; the
    numbers of its table line."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    per_rank = global_batch(demo) // processes
    start = time.perf_counter()
    code = launch_training(demo.job_config, urls[0], str(run_dir), processes, demo.accelerate_config,
                           (*ROWS[row], f"data.batch_size={per_rank}", *overrides), quiet=True)
    if code != 0:
        raise SystemExit(f"e2e: training {row} on {processes} process(es) failed with exit code {code}")
    trained = time.perf_counter()
    report = run_evaluation(str(run_dir), urls[1], quiet=True)
    if report is None:
        raise SystemExit(f"e2e: evaluating {run_dir} failed")
    probes = {(p["task"], p["direction"]): p for p in report["probes"]}
    _, targets = summary(report)
    return {"cells": [100 * probes[c]["cross"] for c in CELLS],
            "in_modality": [100 * probes[c]["in_modality"] for c in CELLS],
            "same_code": 100 * report["same_code_share"], "classes": report["classes"],
            "targets": [t.as_dict() for t in targets],
            "train_s": trained - start, "eval_s": time.perf_counter() - trained}


def format_table(results: dict[tuple[str, int], list[dict[str, Any]]], seeds: list[int], classes: int) -> str:
    lines = [f"End to end on raw clips ({classes} event classes; seeds {seeds}): synth -> shards -> trainer/main.py "
             "(decord + tiny frozen backbones) -> trainer.evaluate on held-out labelled clips",
             "AVE = classification accuracy (%), AVVP = localisation micro F1 (%); mean over seeds ± half range",
             f"{'row':<10}{'procs':>6} |{'AVE V→A':>13}{'A→V':>13} |{'AVVP V→A':>13}{'A→V':>13} |{'same code':>10}"
             f"{'in-mod. acc':>13}{'train s':>9}"]
    lines.append("-" * len(lines[-1]))
    for (row, processes), runs in results.items():
        cells = []
        for i in range(len(CELLS)):
            values = [r["cells"][i] for r in runs]
            cells.append(f"{f'{mean(values):.1f}±{half_range(values):.1f}':>13}")
        own = mean([mean(r["in_modality"][:2]) for r in runs])
        lines.append(f"{row:<10}{processes:>6} |{cells[0]}{cells[1]} |{cells[2]}{cells[3]} |"
                     f"{mean([r['same_code'] for r in runs]):>9.1f}%{own:>13.1f}"
                     f"{mean([r['train_s'] for r in runs]):>9.0f}")
    return "\n".join(lines)


def check_targets(results: dict[tuple[str, int], list[dict[str, Any]]]) -> list[Target]:
    """Full vs baseline per process count (gap of the seed-mean cells), and the demo's targets of every full row."""
    checks = []
    for (row, processes), runs in results.items():
        if row != "full":
            continue
        full = [mean([r["cells"][i] for r in runs]) for i in range(len(CELLS))]
        if ("baseline", processes) in results:
            base = [mean([r["cells"][i] for r in results[("baseline", processes)]]) for i in range(len(CELLS))]
            gaps = [f - b for f, b in zip(full, base)]
            checks.append(Target(f"full >= baseline + 25 points ({processes} process(es))", min(gaps), 25.0,
                                 detail="gaps " + ", ".join(f"{g:+.1f}" for g in gaps)))
        for i, target in enumerate(runs[0]["targets"]):
            value = mean([r["targets"][i]["value"] for r in runs])
            checks.append(Target(f"{target['text']} ({processes} process(es), mean over seeds)", value,
                                 target["bound"], detail=f"{value:.2f}, needs {target['bound']:.2f}; met in "
                                 f"{sum(r['targets'][i]['met'] for r in runs)} of {len(runs)} seeds"))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = e2e_parser()   # torch-free, for `cmg bench e2e --help`
    args = parser.parse_args(argv)
    seeds = [int(v) for v in args.seeds.split(",")]
    processes = [int(v) for v in args.processes.split(",")]
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    demo = DemoConfig()
    start = time.perf_counter()
    results: dict[tuple[str, int], list[dict[str, Any]]] = {(r, p): [] for r in rows for p in processes}
    for seed in seeds:
        urls = corpora(Path(args.data_dir), args.classes, seed, demo)
        for (row, procs), runs in results.items():
            run_dir = Path(args.runs) / f"k{args.classes}-seed{seed}-{row}-{procs}p"
            runs.append(run_one(row, procs, urls, run_dir, (f"run.seed={seed}", f"data.seed={seed}",
                                                            *args.overrides), demo))
    wall = time.perf_counter() - start
    print(format_table(results, seeds, args.classes))
    print_targets(check_targets(results))
    print(f"\nwall time {wall:.0f} s for {len(seeds) * len(results)} runs (one at a time; synthesis included)")
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": seeds, "classes": args.classes, "wall_s": wall,
                                               "results": {f"{r}/{p}": v for (r, p), v in results.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
