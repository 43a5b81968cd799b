"""The whole product path on raw synthetic clips, as a table: does the main job learn a unified codebook, on every
seed and every CPU kernel level?

    python -m trainer.programs.bench.e2e [--world per-seed|demo|e2e] [--seeds 0,1] [--kernels native,default]
                                         [--classes 5] [--processes 1,2] [--rows full,baseline] [--data-dir e2e_data]
                                         [--runs runs/e2e] [--json out.json] [--markdown docs/x.md] [key=value ...]

The world (the synthetic corpora): ``per-seed`` gives every seed a world of its own (synth seeds 10 + 2·seed and
11 + 2·seed, ``--classes`` events); ``demo`` is ``make demo``'s (its 256 unlabelled and 120 labelled clips, in
``demo_data``); ``e2e`` is the one tests/system/test_e2e.py trains on (``E2E_WORLD``). ``shards.synth`` writes an
unlabelled pretraining corpus (mp4 only) and a labelled downstream corpus of the same world (other clips),
``shards.write`` packs both, ``trainer/main.py`` pretrains on the unlabelled shards with the demo's job config
(``launch/configs/demo.yaml``, with the codebook size of the world's event count, ``world_codes``: decord decoding
and tiny frozen backbones on the fly) in one plain process or in two
(``accelerate launch``, DeepSpeed ZeRO-2 over gloo), both at the demo's global batch (32 clips), and
``python -m trainer.programs.evaluate`` probes the checkpoint on the labelled clips. Each seed sets ``run.seed`` and
``data.seed`` (model init, batch order); each kernel level (``trainer.programs.kernels``) runs every process of the
run with the CPU kernels of another kind of machine, which is how the same recipe rounds elsewhere. Rows: full
Uni-Code and the seed 001 §4.1 baseline (``model.variant=baseline``: reconstruction + EMA VQ + commitment).

The table has the fidelity table's cells (AVE = classification accuracy, AVVP = localisation micro F1, V→A and
A→V, in %), the same-code share, the ratio of cross-modal to in-modality accuracy and the training time, each as
min / median / max over the runs of a row. Targets, on the worst run of each full row: the demo's
(``trainer.programs.demo.TARGETS``) and the margin its recipe keeps (``MARGIN``); full >= baseline + 25 points in
every cell (medians). ``--markdown`` writes all of it, with the command, as a generated page of docs/.

Runs go one at a time (each already uses both cores); ``key=value`` arguments override every job's config.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.configs.load import load_config
from trainer.configs.job import JobConfig
from trainer.programs.bench.parsers import e2e_parser
from trainer.programs.bench.config import E2E_ROWS
from trainer.programs.demo import MARGIN, launch_training, prepare_clips, prepare_shards, run_evaluation, summary
from trainer.programs.config import DemoConfig
from trainer.programs.harness import Target, print_targets
from trainer.programs.kernels import kernel_env

CELLS = (("classification", "V→A"), ("classification", "A→V"), ("localisation", "V→A"), ("localisation", "A→V"))
E2E_WORLD = {"classes": 4, "seed": 3}     # tests/system/test_e2e.py's world: 4 events, synth seeds 16 / 17


def world_codes(classes: int) -> int:
    """The codebook size of the recipe for a world of ``classes`` events: 2·classes + 2, the codes a private pair
    per event and a background per modality would take and no more (12 for the demo's 5 events, as
    ``launch/configs/demo.yaml`` has it). With more, each modality kept codes of its own (docs/diagnosis.md §5)."""
    return 2 * classes + 2


def world_classes(world: str, classes: int, demo: DemoConfig) -> int:
    """The events of ``world`` (``classes``: those of a ``per-seed`` world)."""
    return {"demo": demo.pretrain.classes, "e2e": E2E_WORLD["classes"]}.get(world, classes)


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


def world_corpora(world: str, data_dir: Path, classes: int, seed: int, demo: DemoConfig) -> tuple[str, str]:
    """The corpora ``world`` (one of ``E2E_WORLDS``) trains and evaluates seed ``seed`` on."""
    if world == "demo":
        data = Path(demo.data_dir)
        return (prepare_shards(prepare_clips(demo.pretrain, data / "pretrain_clips"), data / "pretrain_shards",
                               demo.pretrain.num_clips, demo.shard_max_count),
                prepare_shards(prepare_clips(demo.downstream, data / "eval_clips"), data / "eval_shards",
                               demo.downstream.num_clips, demo.shard_max_count))
    if world == "e2e":
        return corpora(data_dir, E2E_WORLD["classes"], E2E_WORLD["seed"], demo)
    return corpora(data_dir, classes, seed, demo)


def global_batch(demo: DemoConfig) -> int:
    """Clips per step of the demo's job (its per-rank batch on its process count)."""
    return load_config(JobConfig, demo.job_config).data.batch_size * demo.processes


def run_one(row: str, processes: int, urls: tuple[str, str], run_dir: Path, overrides: tuple[str, ...],
            demo: DemoConfig, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Pretrain one row from scratch at the demo's global batch (split over ``processes``) in ``env`` (default:
    this process's environment) and evaluate it; the numbers of its table line and its targets."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    per_rank = global_batch(demo) // processes
    start = time.perf_counter()
    code = launch_training(demo.job_config, urls[0], str(run_dir), processes, demo.accelerate_config,
                           (*E2E_ROWS[row], f"data.batch_size={per_rank}", *overrides), quiet=True, env=env)
    if code != 0:
        raise SystemExit(f"e2e: training {row} on {processes} process(es) failed with exit code {code}")
    trained = time.perf_counter()
    report = run_evaluation(str(run_dir), urls[1], quiet=True, env=env)
    if report is None:
        raise SystemExit(f"e2e: evaluating {run_dir} failed")
    probes = {(p["task"], p["direction"]): p for p in report["probes"]}
    _, targets = summary(report)
    _, margin = summary(report, MARGIN)
    return {"cells": [100 * probes[c]["cross"] for c in CELLS],
            "in_modality": [100 * probes[c]["in_modality"] for c in CELLS],
            "ratio": min(probes[c]["cross"] / max(probes[c]["in_modality"], 1e-9) for c in CELLS[:2]),
            "same_code": 100 * report["same_code_share"], "classes": report["classes"],
            "targets": [t.as_dict() for t in targets], "margin": [t.as_dict() for t in margin],
            "train_s": trained - start, "eval_s": time.perf_counter() - trained}


def spread(values: list[float], digits: int = 1) -> str:
    """``min / median / max`` of a row's runs."""
    return " / ".join(f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values)))


COLUMNS = ("AVE V→A", "AVE A→V", "AVVP V→A", "AVVP A→V", "same code %", "cross / in-mod.", "train s")


def row_cells(runs: list[dict[str, Any]]) -> list[str]:
    """The table cells of one row (min / median / max over its runs)."""
    return ([spread([r["cells"][i] for r in runs]) for i in range(len(CELLS))]
            + [spread([r["same_code"] for r in runs]), spread([r["ratio"] for r in runs], 2),
               spread([r["train_s"] for r in runs], 0)])


def format_table(results: dict[tuple[str, int, str], list[dict[str, Any]]], title: str) -> str:
    lines = [title, "AVE = classification accuracy (%), AVVP = localisation micro F1 (%); min / median / max over the "
             "seeds of each row", f"{'row':<10}{'procs':>6}{'kernels':>9} | " + " | ".join(f"{c:^19}" for c in COLUMNS)]
    lines.append("-" * len(lines[-1]))
    for (row, processes, kernels), runs in results.items():
        lines.append(f"{row:<10}{processes:>6}{kernels:>9} | " + " | ".join(f"{c:^19}" for c in row_cells(runs)))
    return "\n".join(lines)


def check_targets(results: dict[tuple[str, int, str], list[dict[str, Any]]]) -> list[Target]:
    """Full vs baseline per process count and kernel level (gap of the median cells), and the demo's targets and
    margin of every full row, each on its worst run."""
    checks = []
    for (row, processes, kernels), runs in results.items():
        if row != "full":
            continue
        where = f"{processes} process(es), {kernels} kernels"
        if ("baseline", processes, kernels) in results:
            base = results[("baseline", processes, kernels)]
            gaps = [statistics.median(r["cells"][i] for r in runs) - statistics.median(r["cells"][i] for r in base)
                    for i in range(len(CELLS))]
            checks.append(Target(f"full >= baseline + 25 points ({where})", min(gaps), 25.0,
                                 detail="gaps " + ", ".join(f"{g:+.1f}" for g in gaps)))
        for kind in ("targets", "margin"):
            for i, target in enumerate(runs[0][kind]):
                worst = min(r[kind][i]["value"] for r in runs)
                met = sum(r[kind][i]["met"] for r in runs)
                checks.append(Target(f"{'margin: ' if kind == 'margin' else ''}{target['text']} ({where}, every run)",
                                     worst, target["bound"], detail=f"worst {worst:.2f}, needs {target['bound']:.2f}; "
                                     f"met in {met} of {len(runs)} runs"))
    return checks


def markdown(results: dict[tuple[str, int, str], list[dict[str, Any]]], title: str, command: str) -> str:
    """The generated docs page: the command, the table, the targets and every run."""
    out = [f"<!-- written by `{command}`; re-run it to update this page, do not edit by hand -->",
           f"# {title}", "", f"Command: `{command}`", "",
           "Each cell: min / median / max over the runs of the row. AVE = classification accuracy (%), AVVP = "
           "localisation micro F1 (%), both cross-modal; cross / in-mod. = the smaller of V→A and A→V accuracy over "
           "the accuracy of a head tested on its own modality.", "",
           "| row | procs | kernels | " + " | ".join(COLUMNS) + " |", "|---|---|---|" + "---|" * len(COLUMNS)]
    for (row, processes, kernels), runs in results.items():
        out.append(f"| {row} | {processes} | {kernels} | " + " | ".join(row_cells(runs)) + " |")
    out += ["", "## Targets (on the worst run)", ""]
    out += [f"- {'MET' if t.met else 'NOT MET'}: {t.text}: {t.detail}" for t in check_targets(results)]
    out += ["", "## Every run", "", "| row | procs | kernels | seed | " + " | ".join(COLUMNS[:6]) + " |",
            "|---|---|---|---|" + "---|" * 6]
    for (row, processes, kernels), runs in results.items():
        for r in runs:
            cells = [f"{v:.1f}" for v in r["cells"]] + [f"{r['same_code']:.1f}", f"{r['ratio']:.2f}"]
            out.append(f"| {row} | {processes} | {kernels} | {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = e2e_parser()   # torch-free, for `cmg bench e2e --help`
    args = parser.parse_args(argv)
    seeds = [int(v) for v in args.seeds.split(",")]
    processes = [int(v) for v in args.processes.split(",")]
    kernels = args.kernels.split(",")
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in E2E_ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(E2E_ROWS)}")
    envs = {level: kernel_env(level) for level in kernels}
    demo = DemoConfig()
    start = time.perf_counter()
    results: dict[tuple[str, int, str], list[dict[str, Any]]] = {
        (r, p, k): [] for r in rows for p in processes for k in kernels}
    classes = world_classes(args.world, args.classes, demo)
    codes = f"model.quantizer.num_codes={world_codes(classes)}"   # before the overrides, which win
    for seed in seeds:
        urls = world_corpora(args.world, Path(args.data_dir), args.classes, seed, demo)
        for (row, procs, level), runs in results.items():
            run_dir = Path(args.runs) / f"{args.world}-seed{seed}-{row}-{procs}p-{level}"
            runs.append({"seed": seed, **run_one(row, procs, urls, run_dir, (
                f"run.seed={seed}", f"data.seed={seed}", codes, *args.overrides), demo, envs[level])})
            classes = runs[-1]["classes"]
            print(f"{row} {procs}p {level} seed {seed}: " + ", ".join(
                f"{v:.1f}" for v in runs[-1]["cells"]) + f"; same code {runs[-1]['same_code']:.1f} %", flush=True)
    wall = time.perf_counter() - start
    title = (f"End to end on raw clips: world {args.world} ({classes} event classes), seeds {seeds}, kernels "
             f"{kernels}; synth -> shards -> trainer/main.py (decord + tiny frozen backbones) -> "
             "trainer.programs.evaluate on held-out labelled clips")
    print(format_table(results, title))
    print_targets(check_targets(results))
    print(f"\nwall time {wall:.0f} s for {len(seeds) * len(results)} runs (one at a time; synthesis included)")
    command = "python -m trainer.programs.bench.e2e " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "world": args.world, "seeds": seeds,
                                               "classes": classes, "wall_s": wall,
                                               "results": {f"{r}/{p}/{k}": v for (r, p, k), v in results.items()}},
                                              indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown(results, title, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
