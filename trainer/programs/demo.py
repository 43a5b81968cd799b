"""``make demo`` / ``python -m trainer.programs.demo``: the product on its embedded default, from raw clips to codes
that transfer across modalities.

1. synthesise an **unlabelled** pretraining corpus (``demo_data/pretrain_clips``: mp4 only, as users have it)
   and a separate **labelled** downstream corpus (``demo_data/eval_clips``: mp4 + per-second labels), both
   kept if already complete, and pack each into WebDataset shards;
2. pretrain Uni-Code on the unlabelled shards: 2 CPU processes, DeepSpeed ZeRO-2 over gloo, clips decoded
   on the fly (each clip once: later epochs read its decoded arrays from ``demo_data/decode_cache``,
   ``data.decode_cache``) and encoded by tiny random-init frozen backbones (``accelerate launch --config_file
   launch/accelerate/cpu_zero2.yaml trainer/main.py --config launch/configs/demo.yaml``), logging to MLflow;
3. evaluate the checkpoint on the held-out labelled clips (``python -m trainer.programs.evaluate``): heads trained on
   one modality's codes, tested on the other's;
4. print one table (V→A and A→V classification and localisation, the in-modality scores, chance, the
   same-code share) with the demo's targets, and where the code-usage figure and the MLflow run are.

A second ``make demo`` resumes the finished run (nothing to train) and evaluates it again, unless ``--fresh``.
Exit code 0 when training and evaluation ran (the targets are reported, not enforced: ``--check`` makes a
missed target exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shards.synth import SynthConfig, clip_key, synthesise
from shards.write import write_shards
from trainer.data.manifest import MANIFEST_NAME, ShardManifest
from trainer.programs.harness import REPO, Target, free_port, print_targets
from trainer.programs.config import DemoConfig

SHARD_PATTERN = "train-%06d.tar"


def prepare_clips(synth: SynthConfig, clips: Path) -> Path:
    """Synthesise ``synth`` into ``clips`` unless every clip is already there."""
    members = ("mp4",) if synth.unlabelled else ("mp4", "json", "txt")
    expected = [clips / f"{clip_key(synth.seed, i)}.{m}" for i in range(synth.num_clips) for m in members]
    if all(p.is_file() for p in expected):
        print(f"clips: reusing {synth.num_clips} clips in {clips}")
    else:
        synthesise(synth, clips)
        kind = "unlabelled (mp4 only)" if synth.unlabelled else "labelled (mp4 + json + txt)"
        print(f"clips: wrote {synth.num_clips} {kind} clips to {clips}")
    return clips


def prepare_shards(clips: Path, out: Path, total: int, max_count: int) -> str:
    """Write shards unless a manifest of this source with the right total exists; returns the shard URLs."""
    manifest = ShardManifest.read(out) if (out / MANIFEST_NAME).is_file() else None
    # the same folder however it is named (relative or absolute): rewriting shards that a run reads would break it
    source = manifest.details.get("source") if manifest is not None else None
    if source is not None and Path(source).resolve() == clips.resolve() and manifest.total == total:
        print(f"shards: reusing {len(manifest.shards)} shards in {out}")
    else:
        manifest = write_shards(clips, str(out / SHARD_PATTERN), max_count=max_count)
        print(f"shards: wrote {manifest.total} samples into {len(manifest.shards)} shards in {out}")
    return str(out / f"train-{{000000..{len(manifest.shards) - 1:06d}}}.tar")


def run_product_command(what: str, cmd: list[str], quiet: bool, env: Mapping[str, str] | None = None) -> int:
    """Run a product command (one torch thread per process: two processes share the 2 cores) in ``env`` (default:
    this process's environment); its exit code."""
    print(f"{what}:", " ".join(cmd[1:]), flush=True)
    code = subprocess.call(cmd, env={**(os.environ if env is None else env), "OMP_NUM_THREADS": "1"},
                           stdout=subprocess.DEVNULL if quiet else None)
    if code != 0:
        print(f"{what} failed with exit code {code}: {' '.join(cmd[1:])}", file=sys.stderr)
    return code


def decode_cache(urls: str) -> str:
    """Where the programs keep the decoded clips of the shards ``urls`` (``data.decode_cache``, trainer/data/cache.py):
    ``decode_cache`` next to the shards' folder, so that every run on the same corpus decodes each clip once."""
    return str(Path(urls).parent.parent / "decode_cache")


def launch_training(job_config: str, urls: str, run_dir: str, processes: int, accelerate_config: str,
                    overrides: tuple[str, ...] = (), quiet: bool = False, env: Mapping[str, str] | None = None) -> int:
    """``trainer/main.py`` on ``urls`` (their clips decoded once, ``decode_cache``): one plain process, or
    ``processes`` under ``accelerate launch`` (``accelerate_config``: DeepSpeed ZeRO-2 over gloo here). Returns its
    exit code."""
    job = [str(REPO / "trainer" / "main.py"), "--config", job_config, f"data.urls={urls}", f"run.dir={run_dir}",
           f"data.decode_cache={decode_cache(urls)}", *overrides]
    launcher = ["-m", "accelerate.commands.launch", "--config_file", accelerate_config, "--num_processes",
                str(processes), "--main_process_port", str(free_port())] if processes > 1 else []
    return run_product_command("train", [sys.executable, *launcher, *job] + (["run.progress=false"] if quiet else []),
                               quiet, env)


def run_evaluation(run_dir: str, urls: str, quiet: bool = False,
                   env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """``python -m trainer.programs.evaluate`` of ``run_dir`` on labelled shards; its JSON report (None if it
    failed)."""
    report = Path(run_dir) / "evaluation" / "report-heldout.json"
    # the project's head settings (ProbeConfig's defaults), not the seeds' (trainer/eval/paper.py PAPER_HEADS): seed
    # 000 §B.2's batch of 256 would be a single step per epoch on the demo's 72 training clips
    cmd = [sys.executable, "-m", "trainer.programs.evaluate", run_dir, "--data", urls, "--epochs", "30", "--lr", "1e-3",
           "--batch-size", "64", "--json", str(report)]
    return json.loads(report.read_text()) if run_product_command("evaluate", cmd, quiet, env) == 0 else None


@dataclass(frozen=True)
class DemoBounds:
    """The demo's targets: cross-modal accuracy >= chance + ``chance_points`` and >= ``of_in_modality`` × the
    in-modality accuracy (both directions), and the same-code share >= ``same_code`` %."""

    chance_points: float = 40.0
    of_in_modality: float = 0.8
    same_code: float = 30.0


TARGETS = DemoBounds()
# What a recipe must keep in every run of its sweep (seeds × CPU kernel levels on the demo's world and on the e2e
# test's: docs/recipe_sweep.md), so that rounding on another CPU cannot move a run below TARGETS
MARGIN = DemoBounds(chance_points=50.0, of_in_modality=0.9, same_code=35.0)


def summary(report: dict[str, Any], bounds: DemoBounds = TARGETS) -> tuple[str, list[Target]]:
    """The demo's table and its targets (``bounds``), from a ``trainer.programs.evaluate`` report."""
    probes = {(p["task"], p["direction"]): p for p in report["probes"]}
    classes = report["classes"]
    chance = {"classification": 100.0 / classes, "localisation": 100.0 * report["positive_rate"]}
    clips = report["clips"]
    lines = [f"Cross-modal generalisation of the demo model on held-out labelled clips "
             f"({clips['train']}/{clips['val']}/{clips['test']} train/val/test, {classes} event classes): "
             "heads trained on one modality's codes, tested on the other's",
             f"{'task':<28}{'V→A':>8}{'A→V':>8}{'in-modality V / A':>20}{'chance':>9}",
             "-" * 73]
    names = {"classification": "classification (accuracy %)", "localisation": "localisation (micro F1 %)"}
    for task in ("classification", "localisation"):
        va, av = probes[(task, "V→A")], probes[(task, "A→V")]
        own = f"{100 * va['in_modality']:.1f} / {100 * av['in_modality']:.1f}"
        lines.append(f"{names[task]:<28}{100 * va['cross']:>8.1f}{100 * av['cross']:>8.1f}{own:>20}"
                     f"{chance[task]:>9.1f}")
    same = 100 * report["same_code_share"]
    lines.append(f"same code where audio and video carry the same event (all {sum(clips.values())} clips): "
                 f"{same:.1f} %")
    targets = []
    for direction in ("V→A", "A→V"):
        p = probes[("classification", direction)]
        targets.append(Target(f"{direction} accuracy >= chance + {bounds.chance_points:g} points", 100 * p["cross"],
                              chance["classification"] + bounds.chance_points))
        targets.append(Target(f"{direction} accuracy >= {100 * bounds.of_in_modality:g} % of in-modality",
                              p["cross"] / max(p["in_modality"], 1e-9), bounds.of_in_modality))
    targets.append(Target(f"same-code share >= {bounds.same_code:g} %", same, bounds.same_code))
    return "\n".join(lines), targets


def print_pointers(run_dir: Path) -> None:
    """Where the code-usage figures, the checkpoint and the MLflow run are."""
    figures = sorted((run_dir / "tracking" / "code_usage").glob("*.png"))
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    print(f"checkpoint:        {run_dir / 'checkpoints' / latest}")
    if figures:
        print(f"code-usage figure: {figures[-1]}  (seed 001 Fig. 4: purple = codes both modalities use)")
    # trainer/programs/mlflow_ui.py prints the run page's address in MLflow's "Model training" mode and runs
    # `mlflow ui` on the store, serving its artifacts from the run directory
    print(f"MLflow UI:         {sys.executable} -m trainer.programs.mlflow_ui {run_dir} --port 5000   # prints the run "
          "page to open (experiment cmg-demo: the training run, with the evaluation's numbers, and its child run)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.programs.demo", description=__doc__.split("\n\n")[0])
    d = DemoConfig()
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--run-dir", default=d.run_dir)
    p.add_argument("--processes", type=int, default=d.processes)
    p.add_argument("--pretrain-clips", type=int, default=d.pretrain.num_clips,
                   help="unlabelled clips to synthesise and pretrain on (a quick look: fewer)")
    p.add_argument("--eval-clips", type=int, default=d.downstream.num_clips,
                   help="labelled clips to synthesise for the evaluation (split 60/20/20 into train/val/test)")
    p.add_argument("--fresh", action="store_true", help="delete the run directory first (else resume it)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="job config overrides, e.g. run.max_steps=100")
    a = p.parse_args(argv)
    cfg = DemoConfig(data_dir=a.data_dir, run_dir=a.run_dir, processes=a.processes, overrides=tuple(a.overrides),
                     pretrain=replace(d.pretrain, num_clips=a.pretrain_clips),
                     downstream=replace(d.downstream, num_clips=a.eval_clips))
    data = Path(cfg.data_dir)
    pretrain_urls = prepare_shards(prepare_clips(cfg.pretrain, data / "pretrain_clips"), data / "pretrain_shards",
                                   cfg.pretrain.num_clips, cfg.shard_max_count)
    eval_urls = prepare_shards(prepare_clips(cfg.downstream, data / "eval_clips"), data / "eval_shards",
                               cfg.downstream.num_clips, cfg.shard_max_count)
    if a.fresh and Path(cfg.run_dir).exists():
        shutil.rmtree(cfg.run_dir)
    start = time.perf_counter()
    code = launch_training(cfg.job_config, pretrain_urls, cfg.run_dir, cfg.processes, cfg.accelerate_config,
                           cfg.overrides)
    if code != 0:
        return code
    trained = time.perf_counter()
    report = run_evaluation(cfg.run_dir, eval_urls)
    if report is None:
        return 1
    table, targets = summary(report)
    print()
    print(table)
    print_targets(targets)
    print(f"training {trained - start:.0f} s, evaluation {time.perf_counter() - trained:.0f} s")
    print_pointers(Path(cfg.run_dir))
    return 1 if a.check and not all(t.met for t in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
