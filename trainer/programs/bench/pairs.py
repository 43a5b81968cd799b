"""The product path on pair corpora, as a table: does the main job learn codes shared by the two modalities of
video-text, audio-text and image-text pairs?

    python -m trainer.programs.bench.pairs [--pairs video+text,audio+text,image+text] [--seed 0]
                                           [--data-dir pairs_data] [--runs runs/pairs] [--json out.json]
                                           [--markdown docs/x.md] [key=value ...]

For each pair kind, ``shards.synth --pairs`` writes a pretraining corpus (256 items, unlabelled: media and captions)
and a labelled downstream corpus (120 other items) of the demo's world (its 5 events: the clip world's colours and
chords), ``shards.write --modalities`` packs both, ``trainer/main.py`` pretrains on the first with the demo's job
config (``launch/configs/demo.yaml``, 2 processes, DeepSpeed ZeRO-2) on the pair's two modalities (``PAIR_JOBS``),
and ``python -m trainer.programs.evaluate`` probes the checkpoint on the second: a classifier of the events trained on
one modality's codes and tested on the other's (AVE's protocol between the pair), and zero-shot class retrieval between
them (class-level precision@1: a hit is an item of the query's event).

Targets, per pair kind: cross-modal accuracy and precision@1 above chance (1/5) by 20 points in both directions.
``--markdown`` writes the table, the targets and the command as a generated page of docs/.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from shards.synth import SynthConfig, synthesise
from shards.write import write_shards
from trainer.data.manifest import MANIFEST_NAME, ShardManifest
from trainer.programs.bench.parsers import pairs_parser
from trainer.programs.demo import SHARD_PATTERN, launch_training, run_evaluation
from trainer.programs.config import DemoConfig
from trainer.programs.harness import Target, print_targets

# job overrides per pair kind: the two modalities; an image is one segment, so its captions are one sentence vector
# each (launch/configs/backbones/tiny_image_text.yaml) and Cross-CPC, which predicts later segments, has none to predict
PAIR_JOBS = {
    "video+text": ("model.modalities=[video,text]",),
    "audio+text": ("model.modalities=[audio,text]",),
    "image+text": ("model.modalities=[image,text]", "model.use_cpc=false",
                   "backbones=launch/configs/backbones/tiny_image_text.yaml"),
}
ABOVE_CHANCE = 20.0   # points above chance every cross-modal number must reach


def pair_corpus(kind: str, synth: SynthConfig, folder: Path, max_count: int) -> str:
    """Synthesise ``synth`` as ``kind`` pairs into ``folder/items`` and pack them into ``folder/shards`` (both kept
    and reused while their manifest says so); returns the shard URLs."""
    items, shards = folder / "items", folder / "shards"
    manifest = ShardManifest.read(shards) if (shards / MANIFEST_NAME).is_file() else None
    if manifest is None or manifest.total != synth.num_clips or \
            manifest.details.get("synth") != dataclasses.asdict(synth):
        shutil.rmtree(folder, ignore_errors=True)
        synthesise(synth, items, progress=False)
        manifest = write_shards(items, str(shards / SHARD_PATTERN), max_count=max_count, progress=False,
                                modalities=tuple(kind.split("+")))
        manifest.details["synth"] = dataclasses.asdict(synth)   # what the reuse check compares
        manifest.write(shards)
    return str(shards / f"train-{{000000..{len(manifest.shards) - 1:06d}}}.tar")


def run_pair(kind: str, demo: DemoConfig, data_dir: Path, run_dir: Path, overrides: tuple[str, ...]) -> dict[str, Any]:
    """Pretrain on ``kind`` pairs and evaluate on held-out labelled pairs; the numbers of its table line."""
    pretrain = dataclasses.replace(demo.pretrain, pairs=kind, unlabelled=True)
    downstream = dataclasses.replace(demo.downstream, pairs=kind)
    urls = [pair_corpus(kind, synth, data_dir / kind.replace("+", "_") / name, demo.shard_max_count)
            for synth, name in ((pretrain, "pretrain"), (downstream, "eval"))]
    if run_dir.exists():
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    code = launch_training(demo.job_config, urls[0], str(run_dir), demo.processes, demo.accelerate_config,
                           (*PAIR_JOBS[kind], *overrides), quiet=True)
    if code != 0:
        raise SystemExit(f"pairs: training on {kind} failed with exit code {code} (run dir {run_dir})")
    trained = time.perf_counter()
    report = run_evaluation(str(run_dir), urls[1], quiet=True)
    if report is None:
        raise SystemExit(f"pairs: evaluating {run_dir} failed")
    first, second = kind.split("+")
    a, b = first[0].upper(), second[0].upper()
    probes = {p["direction"]: p for p in report["probes"] if p["task"] == "classification"}
    retrieval = report["class_retrieval"][f"{first}↔{second}"]["precision"]
    return {"kind": kind, "classes": report["classes"],
            "accuracy": {d: 100 * probes[d]["cross"] for d in (f"{a}→{b}", f"{b}→{a}")},
            "in_modality": {d: 100 * probes[d]["in_modality"] for d in (f"{a}→{b}", f"{b}→{a}")},
            "precision_at_1": {f"{a}→{b}": 100 * retrieval[f"{first}→{second}"]["P@1"],
                               f"{b}→{a}": 100 * retrieval[f"{second}→{first}"]["P@1"]},
            "train_s": trained - start, "eval_s": time.perf_counter() - trained}


def targets(results: list[dict[str, Any]]) -> list[Target]:
    checks = []
    for r in results:
        chance = 100.0 / r["classes"]
        for metric, name in (("accuracy", "classification accuracy"), ("precision_at_1", "class retrieval P@1")):
            for direction, value in r[metric].items():
                checks.append(Target(f"{r['kind']} {direction} {name} >= chance + {ABOVE_CHANCE:g} points", value,
                                     chance + ABOVE_CHANCE))
    return checks


def format_table(results: list[dict[str, Any]], title: str) -> str:
    lines = [title, f"{'pairs':<12}{'accuracy A→B / B→A':>22}{'in-modality A / B':>20}{'P@1 A→B / B→A':>18}"
             f"{'chance':>8}{'train s':>9}", "-" * 89]
    for r in results:
        (ab, ba) = r["accuracy"]
        lines.append(f"{r['kind']:<12}{r['accuracy'][ab]:>13.1f} / {r['accuracy'][ba]:<6.1f}"
                     f"{r['in_modality'][ab]:>11.1f} / {r['in_modality'][ba]:<6.1f}"
                     f"{r['precision_at_1'][ab]:>9.1f} / {r['precision_at_1'][ba]:<6.1f}"
                     f"{100.0 / r['classes']:>8.1f}{r['train_s']:>9.0f}")
    return "\n".join(lines)


def markdown(results: list[dict[str, Any]], title: str, command: str) -> str:
    out = [f"<!-- written by `{command}`; re-run it to update this page, do not edit by hand -->", f"# {title}", "",
           f"Command: `{command}`", "", "A = the pair's first modality, B = its second. Accuracy: a classifier of the "
           "events trained on one modality's codes, tested on the other's (in-modality: tested on its own); P@1: "
           "zero-shot class retrieval, a hit is an item of the query's event.", "",
           "| pairs | accuracy A→B | accuracy B→A | in-modality A | in-modality B | P@1 A→B | P@1 B→A | chance | "
           "train s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        (ab, ba) = r["accuracy"]
        cells = [r["accuracy"][ab], r["accuracy"][ba], r["in_modality"][ab], r["in_modality"][ba],
                 r["precision_at_1"][ab], r["precision_at_1"][ba], 100.0 / r["classes"]]
        out.append(f"| {r['kind']} | " + " | ".join(f"{v:.1f}" for v in cells) + f" | {r['train_s']:.0f} |")
    out += ["", "## Targets", ""] + [f"- {'MET' if t.met else 'NOT MET'}: {t.text}: {t.value:.1f}"
                                     for t in targets(results)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = pairs_parser()   # torch-free, for `cmg bench pairs --help`
    args = parser.parse_args(argv)
    kinds = args.pairs.split(",")
    unknown = [k for k in kinds if k not in PAIR_JOBS]
    if unknown:
        parser.error(f"unknown pair kinds {unknown}; choose from {list(PAIR_JOBS)}")
    demo = DemoConfig()
    start = time.perf_counter()
    results = []
    for kind in kinds:
        results.append(run_pair(kind, demo, Path(args.data_dir), Path(args.runs) / kind.replace("+", "_"),
                                (f"run.seed={args.seed}", f"data.seed={args.seed}", *args.overrides)))
        print(f"{kind}: accuracy {results[-1]['accuracy']}, P@1 {results[-1]['precision_at_1']}", flush=True)
    title = (f"Pair corpora of the demo's world (seed {args.seed}): shards.synth --pairs -> shards.write -> "
             "trainer/main.py -> trainer.programs.evaluate on held-out labelled pairs")
    print(format_table(results, title))
    checks = targets(results)
    print_targets(checks)
    print(f"\nwall time {time.perf_counter() - start:.0f} s (synthesis included)")
    command = "python -m trainer.programs.bench.pairs " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "results": results}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown(results, title, command))
    return 0 if all(t.met for t in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
