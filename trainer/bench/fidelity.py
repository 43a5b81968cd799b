"""Synthetic "paper table": does Uni-Code give cross-modal generalisation on data with known structure?

    python -m trainer.bench.fidelity [--steps 600] [--rows all] [--seeds 0] [--jobs 2] [--threads 1]
                                     [--json out.json]

Pretrains one model per row of seed 001 Table 2 (plus the §4.1 baseline) in-process with
``trainer.tasks.UniCodeTask`` and plain ``torch.optim.AdamW`` on the features of
``trainer.bench.synthetic_features`` (a pretraining corpus), freezes it, and runs the downstream protocol of
``trainer.eval.probes`` on a separate labelled corpus of the same world (train / val / test clips):
AVE-style classification (accuracy) and AVVP-style localisation (micro F1), V→A and A→V, with the epoch
chosen on the source modality's validation split and the in-modality score of the same heads. Prints a
table shaped like Table 2, diagnostics, and checks the issue's targets:

1. full ≥ baseline + 25 points in both directions (each task);
2. full ≥ 80 % of the in-modality score (each task and direction);
3. removing Cross-CPC costs more than removing CLUB (mean over the four cells).

Bench model (documented choice, smaller than the paper's D=256, M=400 so a row trains in about a minute on
one CPU core): D = 64, M = 64 codes, d̄ = 32, the paper's 2-layer 4-head post-LN transformer with
feed-forward 128, CLUB hidden 64 with 5 inner steps, K = 2 CPC steps; AdamW lr 1e-3, batch 64, gradient
clipping 1.0 (the main job's default); code reset after N_re = 50 steps (200 in the paper, whose runs
are far longer than this bench's 600 steps). Every row shares these settings and seeds; a row only
switches its Table 2 components off.

Each (row, seed) pretraining runs in its own subprocess (``--jobs`` at a time, ``--threads`` torch threads
each); runs are independent and seeded, so the numbers do not depend on ``--jobs``. With several
``--seeds`` every cell is the mean over seeds ± half the range. Diagnostics per row, on the downstream test
split: "same code" = share of (clip, segment) cells where audio and video carry the same event and chose
the very same code; "nuisance R²" = how much of the true nuisance latent a linear map can read from the
semantic features z (before quantisation; ridge fit on the train split, R² on test; lower = more of the
nuisance kept out of the semantic path, which is CLUB's job), mean of audio and video; "codes" = codes
used in the last pretraining step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from trainer.bench.synthetic_features import SyntheticFeatureConfig, SyntheticSet, SyntheticWorld
from trainer.config import to_dict
from trainer.eval.encode import encode_split, freeze, split_indices
from trainer.eval.probes import CodeSplit, ProbeConfig, classification_probe, code_agreement, localisation_probe
from trainer.models.club import CLUBConfig
from trainer.models.encoders import EncoderConfig
from trainer.models.quantizer import QuantizerConfig
from trainer.models.unicode import UniCodeConfig, UniCodeModel
from trainer.tasks import UniCodeTask

MODALITIES = ("audio", "video")
DIRECTIONS = (("video", "audio"), ("audio", "video"))
TASKS = ("classification", "localisation")


@dataclass(frozen=True)
class Row:
    """One line of seed 001 Table 2: which components are on (the baseline is §4.1's own variant)."""

    name: str
    club: bool = True
    cpc: bool = True
    mm_ema: bool = True
    reset: bool = True
    cmcm: bool = True
    baseline: bool = False

    def model_config(self, base: UniCodeConfig) -> UniCodeConfig:
        if self.baseline:
            return dataclasses.replace(base, variant="baseline")
        quantizer, loss = base.quantizer, base.loss
        if not self.mm_ema:   # w/o MM-EMA: plain EMA of each modality's own z and the plain commitment (eq. 3)
            quantizer = dataclasses.replace(quantizer, ema_mode="plain")
            loss = dataclasses.replace(loss, commit_partner=0.0)
        quantizer = dataclasses.replace(quantizer, reset=self.reset and base.quantizer.reset)
        return dataclasses.replace(base, use_club=self.club, use_cpc=self.cpc, use_cmcm=self.cmcm,
                                   quantizer=quantizer, loss=loss)


ROWS = {row.name: row for row in (
    Row("baseline", baseline=True),
    Row("no_club", club=False),
    Row("no_cpc", cpc=False),
    Row("no_club_cpc", club=False, cpc=False),
    Row("no_mm_ema", mm_ema=False),
    Row("no_reset", reset=False),
    Row("no_cmcm", cmcm=False),
    Row("no_mm_ema_reset", mm_ema=False, reset=False),
    Row("full"),
)}


def bench_model_config(world: SyntheticFeatureConfig) -> UniCodeConfig:
    """The bench's Uni-Code model (see the module docstring for why these sizes)."""
    return UniCodeConfig(
        modalities=MODALITIES,
        feature_dims={"audio": world.audio_dim, "video": world.video_dim},
        spatial_patches={},
        encoder=EncoderConfig(semantic_dim=64, specific_dim=32, ff_dim=128, specific_hidden=64, decoder_hidden=64),
        quantizer=QuantizerConfig(num_codes=64, dim=64, reset_steps=50),
        club=CLUBConfig(hidden_dim=64),
    )


@dataclass
class PretrainConfig:
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    grad_clip: float = 1.0
    seed: int = 0


@dataclass
class FidelityConfig:
    world: SyntheticFeatureConfig = field(default_factory=SyntheticFeatureConfig)
    pretrain_clips: int = 2048
    downstream_clips: int = 1200
    split: tuple[float, float, float] = (0.5, 0.25, 0.25)
    pretrain_seed: int = 1          # clip seeds of the two corpora (same world, different clips)
    downstream_seed: int = 2
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


def pretrain(cfg: UniCodeConfig, features: dict[str, Tensor], train: PretrainConfig) -> tuple[UniCodeModel, dict]:
    """Uni-Code pretraining on in-memory features (``(n t ...)`` per modality), epochs of shuffled batches.

    Returns the frozen model and the codebook statistics of the last step. Runs under ``train.seed`` (model
    init, dropout, batch order) and leaves the caller's global RNG state as it was.
    """
    n = next(iter(features.values())).shape[0]
    if n < train.batch_size:
        raise ValueError(f"{n} pretraining clips are fewer than one batch of {train.batch_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.seed)
        return _pretrain(cfg, features, train, n)


def _pretrain(cfg: UniCodeConfig, features: dict[str, Tensor], train: PretrainConfig,
              n: int) -> tuple[UniCodeModel, dict]:
    task = UniCodeTask(cfg)
    optimizer = torch.optim.AdamW(task.model.parameters(), lr=train.lr)
    generator = torch.Generator().manual_seed(train.seed)
    order, cursor, stats = torch.randperm(n, generator=generator), 0, {}
    for step in range(train.steps):
        if cursor + train.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        batch = order[cursor:cursor + train.batch_size]
        cursor += train.batch_size
        loss, _ = task.compute_loss(task.prepare_batch({k: v[batch] for k, v in features.items()}), step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip:
            torch.nn.utils.clip_grad_norm_(task.model.parameters(), train.grad_clip)
        optimizer.step()
        stats = task.after_optimizer_step_()
    return freeze(task.model), {k: float(v) for k, v in stats.items()}


def probe_all(splits: dict[str, CodeSplit], num_classes: int, cfg: ProbeConfig) -> dict[str, dict[str, Any]]:
    """Both tasks in both directions: ``{"classification/V→A": {cross, in_modality, val, epoch}, ...}``."""
    results = {}
    for task, probe in (("classification", classification_probe), ("localisation", localisation_probe)):
        for source, target in DIRECTIONS:
            r = probe(splits, source, target, num_classes, cfg)
            results[f"{task}/{r.direction}"] = {"cross": r.cross, "in_modality": r.in_modality, "val": r.val,
                                                "epoch": r.epoch}
    return results


def nuisance_r2(train: dict[str, Tensor], test: dict[str, Tensor], train_nuisance: dict[str, Tensor],
                test_nuisance: dict[str, Tensor], ridge: float = 1e-3) -> dict[str, float]:
    """Share of the true nuisance latent's variance that a linear map reads from per-segment vectors.

    ``train[m]``, ``test[m]``: ``(n t d)`` (e.g. the semantic features z^m); ``*_nuisance[m]``: ``(n t k)``.
    Ridge regression fit on train, R² on test, per modality.
    """
    scores = {}
    for m in MODALITIES:
        x, y = train[m].flatten(0, 1).double(), train_nuisance[m].flatten(0, 1).double()
        x_mean, y_mean = x.mean(0), y.mean(0)
        xc = x - x_mean
        weights = torch.linalg.solve(xc.T @ xc + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype),
                                     xc.T @ (y - y_mean))
        xt, yt = test[m].flatten(0, 1).double(), test_nuisance[m].flatten(0, 1).double()
        residual = (yt - y_mean - (xt - x_mean) @ weights).square().sum()
        scores[m] = 1.0 - (residual / (yt - yt.mean(0)).square().sum()).item()
    return scores


@torch.no_grad()
def semantic_features(model: UniCodeModel, data: SyntheticSet) -> dict[str, Tensor]:
    """z^m ``(n t D)`` of the frozen model, before quantisation (where CLUB acts)."""
    return {m: model.semantic[m](data.features[m]) for m in MODALITIES}


def run_row(row: Row, cfg: FidelityConfig) -> dict[str, Any]:
    """Pretrain the row's model, freeze it, probe it; a JSON-able dict of results and timings."""
    start = time.perf_counter()
    world = SyntheticWorld(cfg.world)
    corpus = world.sample(cfg.pretrain_clips, cfg.pretrain_seed)
    downstream = world.sample(cfg.downstream_clips, cfg.downstream_seed)
    model_cfg = row.model_config(bench_model_config(cfg.world))
    model, stats = pretrain(model_cfg, {m: corpus.features[m] for m in MODALITIES}, cfg.pretrain)
    trained = time.perf_counter()
    parts = split_indices(len(downstream), cfg.split, cfg.probe.seed)
    subsets = {name: downstream.subset(index) for name, index in parts.items()}
    splits = {name: encode_split(model, data) for name, data in subsets.items()}
    results = probe_all(splits, cfg.world.classes, cfg.probe)
    per_class, overall = code_agreement(splits["test"], "audio", "video", cfg.world.classes)
    semantic = {name: semantic_features(model, subsets[name]) for name in ("train", "test")}
    r2 = nuisance_r2(semantic["train"], semantic["test"], subsets["train"].nuisance, subsets["test"].nuisance)
    raw = {name: {m: subsets[name].features[m] for m in MODALITIES} for name in ("train", "test")}
    raw_r2 = nuisance_r2(raw["train"], raw["test"], subsets["train"].nuisance, subsets["test"].nuisance)
    return {"row": row.name, "seed": cfg.pretrain.seed, "results": results, "same_code": overall, "same_code_per_class": per_class,
            "nuisance_r2": r2, "raw_nuisance_r2": raw_r2, "codebook": stats, "pretrain_s": trained - start,
            "probe_s": time.perf_counter() - trained, "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------- table

def _mark(on: bool) -> str:
    return "✓" if on else "-"


CELLS = tuple(f"{task}/{d}" for task in TASKS for d in ("V→A", "A→V"))


def _cells(result: dict[str, Any], key: str = "cross") -> list[float]:
    """The four table cells (AVE V→A, A→V, AVVP V→A, A→V) in percent."""
    return [100.0 * result["results"][c][key] for c in CELLS]


def merge_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from its runs with different seeds: the mean of every number, and per cell the half range
    ``(max − min) / 2`` of the cross-modal scores (``spread``, 0 for one seed)."""
    def mean(values) -> float:
        values = [v for v in values if v == v]            # NaN: a class without cells in that run
        return sum(values) / len(values) if values else math.nan

    cells = runs[0]["results"]
    return {
        "row": runs[0]["row"], "seeds": [r["seed"] for r in runs],
        "results": {c: {k: mean(r["results"][c][k] for r in runs) for k in ("cross", "in_modality", "val")}
                    for c in cells},
        "spread": {c: (max(r["results"][c]["cross"] for r in runs) - min(r["results"][c]["cross"] for r in runs)) / 2
                   for c in cells},
        "same_code": mean(r["same_code"] for r in runs),
        "same_code_per_class": [mean(values) for values in zip(*(r["same_code_per_class"] for r in runs))],
        "nuisance_r2": {m: mean(r["nuisance_r2"][m] for r in runs) for m in MODALITIES},
        "raw_nuisance_r2": runs[0]["raw_nuisance_r2"],
        "active_codes": mean(r["codebook"]["codebook/active_codes"] for r in runs),
        "pretrain_s": mean(r["pretrain_s"] for r in runs),
    }


def format_table(rows: list[dict[str, Any]], cfg: FidelityConfig) -> str:
    """``rows`` from ``merge_seeds``. Cells are means over the seeds (± half range with several seeds)."""
    w, p = cfg.world, cfg.pretrain
    n_train = round(cfg.split[0] * cfg.downstream_clips)
    n_val = round(cfg.split[1] * cfg.downstream_clips)
    seeds = rows[0]["seeds"]
    width = 12 if len(seeds) > 1 else 8

    def cell(value: float, spread: float | None = None) -> str:
        text = f"{value:.1f}" + (f"±{spread:.1f}" if spread is not None and len(seeds) > 1 else "")
        return f"{text:>{width}}"

    lines = [f"Synthetic Table 2 (seed 001): world K={w.classes} classes, T={w.segments}, audio {w.audio_dim}-d / "
             f"video {w.video_dim}-d, nuisance x{w.nuisance_scale}; pretrain {cfg.pretrain_clips} clips x "
             f"{p.steps} steps (B={p.batch_size}); downstream {n_train}/{n_val}/"
             f"{cfg.downstream_clips - n_train - n_val} train/val/test clips; seeds {seeds}",
             "AVE = classification accuracy (%), AVVP = localisation micro F1 (%); epoch chosen on the source "
             "modality's val split; cross-modal scores on the target modality's test split",
             f"nuisance R² of the raw features (linear read-out of the true nuisance): "
             f"{sum(rows[0]['raw_nuisance_r2'].values()) / 2:.2f}",
             f"{'row':<16}{'CLUB':>5}{'CPC':>5}{'EMA':>5}{'Rst':>5}{'CMCM':>5} |{'AVE V→A':>{width}}{'A→V':>{width}} |"
             f"{'AVVP V→A':>{width}}{'A→V':>{width}} |{'same code':>10}{'nuis. R²':>9}{'codes':>6}{'train s':>8}"]
    lines.append("-" * len(lines[-1]))
    for r in rows:
        row = ROWS[r["row"]]
        flags = (f"{'(seed 001 §4.1)':>25}" if row.baseline else
                 "".join(f"{_mark(on):>5}" for on in (row.club, row.cpc, row.mm_ema, row.reset, row.cmcm)))
        values = [cell(v, 100 * r["spread"][c]) for v, c in zip(_cells(r), CELLS)]
        lines.append(f"{r['row']:<16}{flags} |{values[0]}{values[1]} |{values[2]}{values[3]} |"
                     f"{100 * r['same_code']:>9.1f}%{sum(r['nuisance_r2'].values()) / 2:>9.2f}"
                     f"{r['active_codes']:>6.0f}{r['pretrain_s']:>8.0f}")
    full = next((r for r in rows if r["row"] == "full"), None)
    if full is not None:
        values = [cell(v) for v in _cells(full, "in_modality")]
        lines.append(f"{'labeled modality (full, in-modality)':<41} |{values[0]}{values[1]} |{values[2]}{values[3]} |")
    return "\n".join(lines)


def check_targets(rows: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """The issue's three targets: (description, met, the numbers)."""
    by_name = {r["row"]: r for r in rows}
    checks = []
    if "full" in by_name and "baseline" in by_name:
        full, base = _cells(by_name["full"]), _cells(by_name["baseline"])
        gaps = [f - b for f, b in zip(full, base)]
        checks.append(("full >= baseline + 25 points, both directions, AVE and AVVP", min(gaps) >= 25.0,
                       "gaps " + ", ".join(f"{g:+.1f}" for g in gaps)))
    if "full" in by_name:
        full, own = _cells(by_name["full"]), _cells(by_name["full"], "in_modality")
        ratios = [f / o if o else math.nan for f, o in zip(full, own)]
        checks.append(("full >= 80% of the in-modality score", all(r >= 0.8 for r in ratios),
                       "ratios " + ", ".join(f"{r:.2f}" for r in ratios)))
    if {"full", "no_cpc", "no_club"} <= set(by_name):
        full = _cells(by_name["full"])
        cost_cpc = sum(f - c for f, c in zip(full, _cells(by_name["no_cpc"]))) / 4
        cost_club = sum(f - c for f, c in zip(full, _cells(by_name["no_club"]))) / 4
        checks.append(("removing Cross-CPC hurts more than removing CLUB", cost_cpc > cost_club,
                       f"mean cost: w/o Cross-CPC {cost_cpc:+.1f}, w/o CLUB {cost_club:+.1f} points"))
    return checks


def per_class_agreement(rows: list[dict[str, Any]], classes: int) -> str:
    lines = ["same-code share per event class (downstream test; cells where audio and video carry the event)",
             f"{'row':<16}" + "".join(f"{c:>6}" for c in range(classes))]
    for r in rows:
        lines.append(f"{r['row']:<16}" + "".join(f"{100 * v:>6.0f}" if v == v else f"{'n/a':>6}"
                                                 for v in r["same_code_per_class"]))
    return "\n".join(lines)


# ---------------------------------------------------------------------- command

def _config(steps: int, probe_epochs: int, seed: int) -> FidelityConfig:
    return FidelityConfig(pretrain=PretrainConfig(steps=steps, seed=seed),
                          probe=ProbeConfig(epochs=probe_epochs, seed=seed))


def _run_child(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "trainer.bench.fidelity", "--child", name, "--seeds", str(seed), "--steps",
           str(args.steps), "--probe-epochs", str(args.probe_epochs), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fidelity row '{name}' (seed {seed}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.bench.fidelity",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps, help="pretraining steps per row")
    parser.add_argument("--rows", default="all", help=f"comma list of {list(ROWS)} (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="rows trained at the same time (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per row process")
    parser.add_argument("--probe-epochs", type=int, default=ProbeConfig.epochs)
    parser.add_argument("--seeds", default="0", help="comma list of seeds (model init, batch order, probe); "
                        "the table shows the mean and ± half range")
    parser.add_argument("--json", default=None, help="also write all results to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(v) for v in args.seeds.split(",")]
    cfg = _config(args.steps, args.probe_epochs, seeds[0])
    if args.child:
        print(json.dumps(run_row(ROWS[args.child], cfg)))
        return 0
    names = list(ROWS) if args.rows == "all" else args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    start = time.perf_counter()
    jobs = [(name, seed) for name in names for seed in seeds]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = list(pool.map(lambda job: _run_child(*job, args), jobs))
    wall = time.perf_counter() - start
    rows = [merge_seeds([r for r in runs if r["row"] == name]) for name in names]
    print(format_table(rows, cfg))
    print()
    print(per_class_agreement(rows, cfg.world.classes))
    print()
    for description, met, numbers in check_targets(rows):
        print(f"[{'MET' if met else 'NOT MET'}] {description}: {numbers}")
    print(f"\nwall time {wall:.0f} s for {len(runs)} pretraining runs ({len(rows)} rows x {len(seeds)} seeds, "
          f"{args.jobs} at a time, {args.threads} thread(s) each); one run's pretraining took "
          f"{min(r['pretrain_s'] for r in runs):.0f}-{max(r['pretrain_s'] for r in runs):.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": to_dict(cfg), "seeds": seeds, "runs": runs, "rows": rows, "wall_s": wall}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
