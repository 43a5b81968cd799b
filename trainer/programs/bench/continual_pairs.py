"""COMET's continual chain from raw pair shards, through the product's path: DCID fine-tuned phase after phase vs
DCID+COMET, each stage evaluated by zero-shot retrieval on seen and unseen pairs (seed 004 Tables 1-4's protocol on
synthetic pairs).

    python -m trainer.programs.bench.continual_features --raw [--methods dcid,comet] [--steps 300] [--seeds 0]
                                                     [--data-dir pairs_data] [--runs runs/continual_pairs]
                                                     [--set KEY=VALUE] [--json out.json] [--markdown docs/x.md]

Data: the pair corpora of ``trainer.programs.bench.pairs`` (``shards.synth --pairs`` of the demo's 5-event world,
packed by ``shards.write``): video+text (mp4 + txt), audio+text (wav + txt) and image+text (jpg + txt) for the three
phases (256 unlabelled items each), and held-out sets of 120 items each of video+text, audio+text, image+text and
image+audio, plus the demo's labelled clips for video+audio (``make demo``'s eval shards, written if missing).

Each method trains the phases of ``launch/configs/continual_comet_demo.yaml`` (comet_demo_vt/at/it.yaml) as the chain
runs them: every phase is ``trainer/main.py`` under ``accelerate launch`` (2 processes, DeepSpeed ZeRO-2), from the
previous phase's final checkpoint (``run.init_from``). ``comet`` trains the configs as written (CMoE-Adapter, gate
loss, EWC, pseudo-modality replay of the text mediator); ``dcid`` turns the adapter, replay, gate and EWC off
(Uni-Code fine-tuned sequentially, carrying earlier encoders for evaluation). After every phase ``python -m
trainer.programs.evaluate --tasks zero_shot_retrieval`` ranks every held-out set whose two modalities the stage encodes:
R@1/5/10, each the mean of the two directions (docs/evaluation.md). A pair is seen when the model trained it together
or through the text mediator (``SegmentCoder.trained_pairs``).

Target: at the third stage, DCID+COMET's unseen image↔audio pair, never trained together, at least ``UNSEEN_MARGIN``
times chance in mean R@1/5/10. The world has 5 events and the held-out set 24 items of each, so the best an encoder
can do without telling items of one event apart is to rank the 24 first: R@k = k/24, a mean over k = 1, 5, 10 of
22.2 % against chance's 4.4 % (k/120). A random ranking's R@10 over the 240 queries of both directions has a standard
deviation of sqrt(p (1 - p) / 240) = 1.8 points (p = 1/12), and the mean of R@1/5/10 less: 1.5 × chance (6.7 %) is
more than two of them above chance.

The phase configs append no codes (``replay.new_codes: 0``): every phase of this world shows the same events, and
with 4 codes appended per phase the image phase made 10 codes its own (comet_demo_at.yaml).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from trainer.programs.bench.pairs import pair_corpus
from trainer.programs.demo import launch_training, prepare_clips, prepare_shards, run_product_command
from trainer.programs.config import DemoConfig
from trainer.programs.harness import REPO, Target, print_targets

CONFIGS = REPO / "launch" / "configs"
# (phase, pair kind of its shards, job config)
PHASES = (("video_text", "video+text", CONFIGS / "comet_demo_vt.yaml"),
          ("audio_text", "audio+text", CONFIGS / "comet_demo_at.yaml"),
          ("image_text", "image+text", CONFIGS / "comet_demo_it.yaml"))
EVAL_SETS = ("video_text", "audio_text", "image_text", "image_audio", "video_audio")
# DCID fine-tuned sequentially: COMET's components off (the in-memory bench's "dcid")
METHOD_OVERRIDES = {
    "dcid": ("model.use_adapter=false", "model.use_pseudo_modality=false", "model.use_gate_loss=false",
             "model.use_ewc=false"),
    "comet": (),
}
UNSEEN_PAIR, UNSEEN_MARGIN = "image_audio", 1.5


def eval_sets(demo: DemoConfig, data_dir: Path) -> dict[str, str]:
    """Held-out set name -> shard URLs: the pair corpora's eval shards and the demo's labelled audio-visual clips."""
    downstream = demo.downstream        # labelled, as the pairs bench writes them (retrieval reads no labels)
    sets = {}
    for name in EVAL_SETS[:4]:
        kind = name.replace("_", "+")
        sets[name] = pair_corpus(kind, dataclasses.replace(downstream, pairs=kind), data_dir / name / "eval",
                                 demo.shard_max_count)
    data = Path(demo.data_dir)
    sets["video_audio"] = prepare_shards(prepare_clips(demo.downstream, data / "eval_clips"), data / "eval_shards",
                                         demo.downstream.num_clips, demo.shard_max_count)
    return sets


def evaluate_stage(run_dir: Path, sets: dict[str, str]) -> dict[str, Any] | None:
    """``trainer.programs.evaluate --tasks zero_shot_retrieval`` of a phase's final checkpoint on every set; its
    report."""
    report = run_dir / "evaluation" / "report-retrieval.json"
    spec = "::".join(f"{name}={urls}" for name, urls in sets.items())
    cmd = [sys.executable, "-m", "trainer.programs.evaluate", str(run_dir), "--tasks", "zero_shot_retrieval",
           "--retrieval-data", spec, "--json", str(report)]
    return json.loads(report.read_text()) if run_product_command("evaluate", cmd, True) == 0 else None


def stage_numbers(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Set name -> {R@k: the mean of both directions (%), chance (%), seen} of the pair the set is named after
    ("video_audio": video↔audio, of the demo clips' three pairs) where the stage codes both."""
    out = {}
    for name, dataset in report["zero_shot_retrieval"]["datasets"].items():
        first, second = name.split("_")
        scores = dataset["pairs"].get(f"{first}↔{second}") or dataset["pairs"].get(f"{second}↔{first}")
        if scores is None:
            continue
        chance = {k: 50 * sum(c[k] for c in scores["chance"].values()) for k in scores["mean"]}
        out[name] = {"recall": {k: 100 * v for k, v in scores["mean"].items()}, "chance": chance,
                     "seen": scores["seen"]}
    return out


def run_method(method: str, demo: DemoConfig, data_dir: Path, runs: Path, overrides: tuple[str, ...],
               sets: dict[str, str]) -> list[dict[str, Any]]:
    """Train ``method``'s chain and evaluate every stage; one entry per stage."""
    stages, previous = [], None
    for phase, kind, config in PHASES:
        synth = dataclasses.replace(demo.pretrain, pairs=kind, unlabelled=True)
        urls = pair_corpus(kind, synth, data_dir / phase / "pretrain", demo.shard_max_count)
        run_dir = runs / method / phase
        if run_dir.exists():
            shutil.rmtree(run_dir)
        chain = (f"run.init_from={previous}/checkpoints",) if previous else ()
        start = time.perf_counter()
        code = launch_training(str(config), urls, str(run_dir), demo.processes, demo.accelerate_config,
                               (f"run.phase={phase}", *chain, *METHOD_OVERRIDES[method], *overrides), quiet=True)
        if code != 0:
            raise SystemExit(f"continual --raw: {method} phase {phase} failed with exit code {code} "
                             f"(run dir {run_dir})")
        trained = time.perf_counter()
        report = evaluate_stage(run_dir, sets)
        if report is None:
            raise SystemExit(f"continual --raw: evaluating {run_dir} failed")
        stages.append({"phase": phase, "sets": stage_numbers(report), "train_s": trained - start,
                       "eval_s": time.perf_counter() - trained})
        print(f"{method} after {phase}: " + ", ".join(f"{n} {_mean(s['recall']):.1f}" for n, s in
                                                    stages[-1]["sets"].items()), flush=True)
        previous = run_dir
    return stages


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values)


def targets(results: dict[str, list[dict[str, Any]]]) -> list[Target]:
    checks = []
    last = results.get("comet", [{}])[-1].get("sets", {})
    if UNSEEN_PAIR in last:
        unseen = last[UNSEEN_PAIR]
        checks.append(Target(f"DCID+COMET, third stage: unseen {UNSEEN_PAIR} mean R@1/5/10 >= {UNSEEN_MARGIN:g} x "
                             f"chance ({_mean(unseen['chance']):.1f} %)", _mean(unseen["recall"]),
                             UNSEEN_MARGIN * _mean(unseen["chance"])))
    return checks


def format_table(results: dict[str, list[dict[str, Any]]], title: str) -> list[str]:
    """Per method and stage, each set's R@1 / R@5 / R@10 (mean of both directions), seen or unseen."""
    header = f"{'method':<8}{'stage':<12}" + "".join(f"{name:>24}" for name in EVAL_SETS)
    lines = [title, "R@1 / R@5 / R@10 (%), each the mean of the two directions; s = seen pair, u = unseen; "
                    "— = a modality the stage does not encode", header, "-" * len(header)]
    for method, stages in results.items():
        for stage in stages:
            cells = []
            for name in EVAL_SETS:
                numbers = stage["sets"].get(name)
                cells.append("—" if numbers is None else
                             " / ".join(f"{v:.1f}" for v in numbers["recall"].values()) +
                             (" s" if numbers["seen"] else " u"))
            lines.append(f"{method:<8}{stage['phase']:<12}" + "".join(f"{c:>24}" for c in cells))
    chance = next((s["sets"] for stages in results.values() for s in stages[-1:]), {})
    lines.append(f"{'chance':<20}" + "".join(f"{' / '.join(f'{v:.1f}' for v in chance[n]['chance'].values()):>24}"
                                             if n in chance else f"{'':>24}" for n in EVAL_SETS))
    return lines


def markdown(results: dict[str, list[dict[str, Any]]], title: str, command: str, checks: list[Target]) -> str:
    out = [f"<!-- written by `{command}`; re-run it to update this page, do not edit by hand -->", f"# {title}", "",
           f"Command: `{command}`", "", "Each cell: R@1 / R@5 / R@10 (%) of zero-shot retrieval on the held-out set, "
           "each the mean of the two directions (docs/evaluation.md); s = a seen pair (trained together or through "
           "the text mediator), u = unseen; — = a modality the stage does not encode yet.", "",
           "| method | stage | " + " | ".join(EVAL_SETS) + " | train s |",
           "|---|---|" + "---|" * (len(EVAL_SETS) + 1)]
    for method, stages in results.items():
        for stage in stages:
            cells = ["—" if stage["sets"].get(n) is None else
                     " / ".join(f"{v:.1f}" for v in stage["sets"][n]["recall"].values()) +
                     (" s" if stage["sets"][n]["seen"] else " u") for n in EVAL_SETS]
            out.append(f"| {method} | {stage['phase']} | " + " | ".join(cells) + f" | {stage['train_s']:.0f} |")
    out += ["", "## Targets", ""] + [f"- {'MET' if t.met else 'NOT MET'}: {t.text}: {t.value:.1f}, needs "
                                     f"{t.bound:.1f}" for t in checks]
    return "\n".join(out) + "\n"


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """``python -m trainer.programs.bench.continual_features --raw ...``: ``args`` parsed by
    ``continual_features_parser``, ``argv`` the command line (for the pages it writes)."""
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHOD_OVERRIDES]
    if unknown:
        raise SystemExit(f"continual --raw: runs the methods {list(METHOD_OVERRIDES)}, not {unknown}")
    if args.order != "vt,at,it":
        raise SystemExit("continual --raw: trains the phases of launch/configs/continual_comet_demo.yaml: "
                         "video-text, audio-text, image-text (no --order)")
    seed = int(args.seeds.split(",")[0])
    demo = DemoConfig()
    data_dir, runs = Path(args.data_dir), Path(args.runs)
    start = time.perf_counter()
    sets = eval_sets(demo, data_dir)
    overrides = (f"run.seed={seed}", f"data.seed={seed}", *(f"model.{s}" for s in args.set),
                 *((f"run.max_steps={args.steps}",) if args.steps else ()))
    results = {m: run_method(m, demo, data_dir, runs, overrides, sets) for m in methods}
    steps = args.steps or "the configs'"
    title = (f"COMET's chain from raw pair shards (demo world, seed {seed}, {steps} steps per phase): "
             "shards -> trainer/main.py per phase -> trainer.programs.evaluate --tasks zero_shot_retrieval")
    print("\n".join(format_table(results, title)))
    checks = targets(results)
    print_targets(checks)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    command = "python -m trainer.programs.bench.continual_features " + shlex.join(argv)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "results": results}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown(results, title, command, checks))
    return 0 if all(t.met for t in checks) else 1
