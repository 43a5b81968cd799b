"""Synthetic "paper tables": do Uni-Code and FCCID give cross-modal generalisation on data with known structure,
and do the papers' claims hold on more than one world?

    python -m trainer.programs.bench.fidelity [--steps 600] [--rows all|table1|table2|claims|NAME,...]
                                              [--seeds 0] [--worlds all|NAME,...] [--set KEY=VALUE] [--jobs 2]
                                              [--threads 1] [--runs DIR] [--mlflow DIR] [--json out.json]

Each row is one pretraining through the main job's loop (``trainer.programs.bench.jobs``: a ``JobConfig`` with
``data.kind = "memory"`` run by ``trainer.loop.train_in_memory``; the registered task of the row's model:
``UniCodeTask`` or ``FCCIDTask``) on the features of ``trainer.programs.bench.synthetic_features`` (a pretraining
corpus). Its checkpoint is read back frozen (``trainer.eval.frozen_codes.load_pretrained``) and probed with
``trainer.eval.probes`` on a separate labelled corpus of the same world (train / val / test clips): AVE-style
classification (accuracy) and AVVP-style localisation (micro F1), V→A and A→V, with the epoch chosen on the
source modality's validation split and the in-modality score of the same heads. Codes come from
``model.segment_codes`` (Uni-Code: z^m per segment; FCCID: every segment through the coarse path), exactly as
``python -m trainer.programs.evaluate`` gets them.

Two tables per world:
- seed 001 Table 2 (``--rows table2``): the rows of Table 2 plus the §4.1 baseline, audio-visual Uni-Code
  with components switched off;
- seed 003 Table 1 (``--rows table1``): Uni-Code (DCID) and FCCID, each with and without TOC. FCCID needs
  text, so the comparison row ``unicode_avt`` pretrains Uni-Code on the same audio, video and text (the
  generator's prompts, zero-padded to T tokens: Uni-Code pairs token l with segment l, seed 001's AVT
  setting); ``full`` (audio-visual Uni-Code) is shown for reference. A "+TOC" row trains nothing: it reads
  the codes of its base row's model, keeping the Q = D/2 dimensions TOC selects (``trainer.eval.toc``; the paper
  keeps 128 of 256), and its heads are trained on those. Two FCCID variants show where FCCID's numbers come
  from: ``fccid_fine_club`` (the Table 5 row with A_CLUB and V_CLUB only) and ``fccid_tau1`` (InfoNCE τ = 1.0,
  the value seed 003's text gives; the default 0.1 is what the authors' code ran, docs/diagnosis.md §3).

Claims (``claims``; checked per world and, with ``--worlds``, on the mean over worlds): full ≥ baseline + 25,
full ≥ 0.8 × in-modality, w/o Cross-CPC < full, w/o CLUB ≤ full, FCCID ≥ Uni-Code (AVT), and with
``--worlds`` (unless ``--no-continual``) COMET > DCID on the unseen pair after phases 2 and 3, from
``trainer.programs.bench.continual_features`` run on the same world. ``--worlds`` sweeps the grid of ``WORLDS``.

Bench model (documented choice, smaller than the paper's D=256, M=400 so a row trains in about half a minute
on one CPU core): D = 64, M = 64 codes, d̄ = 32, the paper's 2-layer 4-head post-LN transformer with
feed-forward 128, CLUB hidden 64 with 5 inner steps at the encoders' lr, K = 2 CPC steps (1 for AVT
Uni-Code, as in seed 001); FCCID's coarse MLPs hidden 64, coarse specific 32; AdamW lr 1e-3, batch 64,
gradient clipping 1.0 (the main job's default); code reset after N_re = 50 steps (200 in the paper, whose
runs are far longer than this bench's 600 steps). Every row shares these settings and seeds.

Each pretraining runs in its own subprocess (``--jobs`` at a time, ``--threads`` torch threads each; a row
and its TOC row share one); runs are independent and seeded, so the numbers do not depend on ``--jobs``.
With several ``--seeds`` every cell is the mean over seeds ± half the range. Diagnostics per row, on the
downstream test split: "same code" = share of (clip, segment) cells where audio and video carry the same
event and chose the very same code; "nuisance R²" = how much of the true nuisance latent a linear map can
read from the per-segment vectors the codes are chosen for (``segment_semantic``: Uni-Code's z, FCCID's
coarse general vector of the segment; before quantisation; ridge fit on the train split, R² on test; lower
= more of the nuisance kept out of the semantic path, which is CLUB's job), mean of audio and video;
"codes" = codes used in the last logged pretraining step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainer.eval.frozen_codes import encode_split, split_indices
from trainer.eval.probes import CodeSplit, classification_probe, code_agreement, localisation_probe
from trainer.configs.eval import ProbeConfig, TOCConfig
from trainer.configs.model import CLUBConfig, CoarseConfig, EncoderConfig, FCCIDConfig, QuantizerConfig, UniCodeConfig
from trainer.programs.bench.parsers import fidelity_parser
from trainer.programs.bench.jobs import bench_job, pretrain, with_club_lr, with_overrides
from trainer.programs.bench.config import PretrainConfig, ROWS, ROW_GROUPS, Row, SyntheticFeatureConfig, TABLE1, WORLDS
from trainer.programs.bench.synthetic_features import SyntheticSet, SyntheticWorld, world_config
from trainer.programs.harness import Target, fan_out, half_range, mean, print_targets, run_json_child, verdict
from trainer.eval.toc import toc_scores

MODALITIES = ("audio", "video")     # the labelled modalities: the probes' sources and targets
TEXT = "text"
DIRECTIONS = (("video", "audio"), ("audio", "video"))
TASKS_PROBED = ("classification", "localisation")
ModelConfig = UniCodeConfig | FCCIDConfig


def select_rows(text: str) -> list[str]:
    """``--rows``: a comma list of row names and group names (``all``, ``table1``, ``table2``), in order,
    each row once."""
    names: list[str] = []
    for item in (part for part in text.split(",") if part):
        if item not in ROWS and item not in ROW_GROUPS:
            raise ValueError(f"unknown row {item!r}; choose from {list(ROW_GROUPS)} or {list(ROWS)}")
        names += [n for n in ROW_GROUPS.get(item, (item,)) if n not in names]
    if not names:
        raise ValueError("--rows selects no row")
    return names


def pretraining_jobs(names: list[str]) -> dict[str, list[str]]:
    """Selected rows grouped by the pretraining they read: {trained row: [selected rows reading it]}.

    A TOC row shares its base row's pretraining, which runs even when only the TOC row is selected.
    """
    jobs: dict[str, list[str]] = {}
    for name in names:
        jobs.setdefault(ROWS[name].pretrained, []).append(name)
    return jobs


def _bench_encoder() -> EncoderConfig:
    return EncoderConfig(semantic_dim=64, specific_dim=32, ff_dim=128, specific_hidden=64, decoder_hidden=64)


def _bench_quantizer() -> QuantizerConfig:
    return QuantizerConfig(num_codes=64, dim=64, reset_steps=50)


def _feature_dims(world: SyntheticFeatureConfig, modalities: tuple[str, ...]) -> dict[str, int]:
    dims = {"audio": world.audio_dim, "video": world.video_dim, TEXT: world.text_dim}
    return {m: dims[m] for m in modalities}


def bench_model_config(world: SyntheticFeatureConfig, text: bool = False) -> UniCodeConfig:
    """The bench's Uni-Code model, audio-visual or with text (see the module docstring for why these sizes)."""
    modalities = (*MODALITIES, TEXT) if text else MODALITIES
    return UniCodeConfig(modalities=modalities, feature_dims=_feature_dims(world, modalities), spatial_patches={},
                         encoder=_bench_encoder(), quantizer=_bench_quantizer(), club=CLUBConfig(hidden_dim=64))


def bench_fccid_config(world: SyntheticFeatureConfig) -> FCCIDConfig:
    """The bench's FCCID model: Uni-Code's widths, coarse hidden 64 / specific 32, τ = 0.1 (the authors' code)."""
    return FCCIDConfig(feature_dims=_feature_dims(world, (*MODALITIES, TEXT)), spatial_patches={},
                       encoder=_bench_encoder(), coarse=CoarseConfig(hidden_dim=64, specific_dim=32),
                       quantizer=_bench_quantizer(), club=CLUBConfig(hidden_dim=64))


def row_model_config(row: Row, cfg: FidelityConfig) -> ModelConfig:
    """The model a row's codes come from (a TOC row: its base row's), its CLUB estimators learning at
    ``cfg.pretrain.club_lr``."""
    row = ROWS[row.pretrained]
    if row.task == "fccid":
        model = bench_fccid_config(cfg.world)
        model = dataclasses.replace(model, av_club=row.coarse_club, te_club=row.coarse_club,
                                    coarse=dataclasses.replace(model.coarse, temperature=row.temperature))
    else:
        model = row.model_config(bench_model_config(cfg.world, text=row.text))
    return with_club_lr(with_overrides(model, cfg.model_overrides), cfg.pretrain)


def _bench_world() -> SyntheticFeatureConfig:
    # captions padded to T tokens: AVT Uni-Code pairs token l with segment l
    return SyntheticFeatureConfig(text=True, text_length=SyntheticFeatureConfig.segments)


def _bench_toc() -> TOCConfig:
    return TOCConfig(dims=_bench_quantizer().dim // 2)


@dataclass
class FidelityConfig:
    world: SyntheticFeatureConfig = field(default_factory=_bench_world)
    pretrain_clips: int = 2048
    downstream_clips: int = 1200
    split: tuple[float, float, float] = (0.5, 0.25, 0.25)
    pretrain_seed: int = 1          # clip seeds of the two corpora (same world, different clips)
    downstream_seed: int = 2
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    toc: TOCConfig = field(default_factory=_bench_toc)
    model_overrides: tuple[str, ...] = ()   # key=value on every row's model config, e.g. loss.mi=1.0


def probe_all(splits: dict[str, CodeSplit], num_classes: int, cfg: ProbeConfig) -> dict[str, dict[str, Any]]:
    """Both tasks in both directions: ``{"classification/V→A": {cross, in_modality, val, epoch}, ...}``
    (localisation cells also carry the cross-modal ``precision`` and ``recall``)."""
    results = {}
    for task, probe in (("classification", classification_probe), ("localisation", localisation_probe)):
        for source, target in DIRECTIONS:
            r = probe(splits, source, target, num_classes, cfg)
            results[f"{task}/{r.direction}"] = {"cross": r.cross, "in_modality": r.in_modality, "val": r.val,
                                                "epoch": r.epoch, **r.details}
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
def semantic_features(model: nn.Module, data: SyntheticSet) -> dict[str, Tensor]:
    """``(n t D)`` per labelled modality: the frozen model's per-segment vectors before quantisation
    (``segment_semantic``: Uni-Code's z^m, FCCID's coarse general vector of each segment)."""
    return {m: model.segment_semantic(data.features, m) for m in MODALITIES}


def run_rows(names: list[str], cfg: FidelityConfig, run_dir: Path, mlflow_uri: str = "") -> list[dict[str, Any]]:
    """Pretrain the model that the rows ``names`` read (one row and/or its TOC row) as a main job in ``run_dir``,
    load its checkpoint frozen, probe it once per row; a JSON-able dict of results and timings per row."""
    rows = [ROWS[name] for name in names]
    if len({row.pretrained for row in rows}) != 1:
        raise ValueError(f"rows {names} do not read one pretraining (see pretraining_jobs)")
    start = time.perf_counter()
    world = SyntheticWorld(cfg.world)
    corpus = world.sample(cfg.pretrain_clips, cfg.pretrain_seed)
    downstream = world.sample(cfg.downstream_clips, cfg.downstream_seed)
    job = bench_job(row_model_config(rows[0], cfg), cfg.pretrain, run_dir, mlflow_uri=mlflow_uri,
                    experiment="cmg-fidelity-bench", run_name=run_dir.name)
    pretrained, stats = pretrain(job, corpus.features)
    model = pretrained.model
    trained = time.perf_counter()
    parts = split_indices(len(downstream), cfg.split, cfg.probe.seed)
    subsets = {name: downstream.subset(index) for name, index in parts.items()}
    splits = {name: encode_split(model, data, MODALITIES) for name, data in subsets.items()}
    per_class, overall = code_agreement(splits["test"], "audio", "video", cfg.world.classes)
    semantic = {name: semantic_features(model, subsets[name]) for name in ("train", "test")}
    r2 = nuisance_r2(semantic["train"], semantic["test"], subsets["train"].nuisance, subsets["test"].nuisance)
    raw = {name: {m: subsets[name].features[m] for m in MODALITIES} for name in ("train", "test")}
    raw_r2 = nuisance_r2(raw["train"], raw["test"], subsets["train"].nuisance, subsets["test"].nuisance)
    shared = {"seed": cfg.pretrain.seed, "same_code": overall, "same_code_per_class": per_class,
              "nuisance_r2": r2, "raw_nuisance_r2": raw_r2, "codebook": stats, "pretrain_s": trained - start,
              "threads": torch.get_num_threads()}
    toc_dims = toc_scores(model.quantizer.codebook, cfg.toc).selected if any(r.toc_of for r in rows) else None
    out = []
    for row in rows:
        probe_start = time.perf_counter()
        read = {name: s.select_dims(toc_dims) for name, s in splits.items()} if row.toc_of else splits
        out.append({"row": row.name, **shared, "results": probe_all(read, cfg.world.classes, cfg.probe),
                    "toc_dims": toc_dims.tolist() if row.toc_of else None,
                    "probe_s": time.perf_counter() - probe_start})
    return out


# ---------------------------------------------------------------------- table

def _mark(on: bool) -> str:
    return "✓" if on else "-"


CELLS = tuple(f"{task}/{d}" for task in TASKS_PROBED for d in ("V→A", "A→V"))


def _cells(result: dict[str, Any], key: str = "cross") -> list[float]:
    """The four table cells (AVE V→A, A→V, AVVP V→A, A→V) in percent."""
    return [100.0 * result["results"][c][key] for c in CELLS]


def merge_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from its runs with different seeds: the mean of every number, and per cell the half range
    ``(max − min) / 2`` of the cross-modal scores (``spread``, 0 for one seed)."""
    def nanmean(values) -> float:
        values = [v for v in values if v == v]            # NaN: a class without cells in that run
        return sum(values) / len(values) if values else math.nan

    cells = runs[0]["results"]
    return {
        "row": runs[0]["row"], "seeds": [r["seed"] for r in runs],
        "results": {c: {k: nanmean(r["results"][c][k] for r in runs) for k in ("cross", "in_modality", "val")}
                    for c in cells},
        "spread": {c: half_range(r["results"][c]["cross"] for r in runs) for c in cells},
        "same_code": nanmean(r["same_code"] for r in runs),
        "same_code_per_class": [nanmean(values) for values in zip(*(r["same_code_per_class"] for r in runs))],
        "nuisance_r2": {m: nanmean(r["nuisance_r2"][m] for r in runs) for m in MODALITIES},
        "raw_nuisance_r2": runs[0]["raw_nuisance_r2"],
        "active_codes": nanmean(r["codebook"]["codebook/active_codes"] for r in runs),
        "pretrain_s": nanmean(r["pretrain_s"] for r in runs),
    }


def _cell_width(rows: list[dict[str, Any]]) -> int:
    return 12 if len(rows[0]["seeds"]) > 1 else 8


def _cell(value: float, width: int, spread: float | None = None) -> str:
    """A table cell: the value, and ± its half range over seeds when the table has several seeds (wide cells)."""
    text = f"{value:.1f}" + (f"±{spread:.1f}" if spread is not None and width > 8 else "")
    return f"{text:>{width}}"


def _cross_cells(r: dict[str, Any], width: int) -> list[str]:
    return [_cell(v, width, 100 * r["spread"][c]) for v, c in zip(_cells(r), CELLS)]


def format_table(rows: list[dict[str, Any]], cfg: FidelityConfig) -> str:
    """``rows`` from ``merge_seeds``. Cells are means over the seeds (± half range with several seeds)."""
    w, p = cfg.world, cfg.pretrain
    n_train = round(cfg.split[0] * cfg.downstream_clips)
    n_val = round(cfg.split[1] * cfg.downstream_clips)
    seeds = rows[0]["seeds"]
    width = _cell_width(rows)

    lines = [f"Synthetic Table 2 (seed 001): world K={w.classes} classes, T={w.segments}, audio {w.audio_dim}-d / "
             f"video {w.video_dim}-d, nuisance x{w.nuisance_scale}; pretrain {cfg.pretrain_clips} clips x "
             f"{p.steps} steps (B={p.batch_size}, CLUB lr {p.estimator_lr:g}); downstream {n_train}/{n_val}/"
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
        values = _cross_cells(r, width)
        lines.append(f"{r['row']:<16}{flags} |{values[0]}{values[1]} |{values[2]}{values[3]} |"
                     f"{100 * r['same_code']:>9.1f}%{sum(r['nuisance_r2'].values()) / 2:>9.2f}"
                     f"{r['active_codes']:>6.0f}{r['pretrain_s']:>8.0f}")
    full = next((r for r in rows if r["row"] == "full"), None)
    if full is not None:
        values = [_cell(v, width) for v in _cells(full, "in_modality")]
        lines.append(f"{'labeled modality (full, in-modality)':<41} |{values[0]}{values[1]} |{values[2]}{values[3]} |")
    return "\n".join(lines)


METHOD_NAMES = {"unicode": "Uni-Code", "fccid": "FCCID"}


def _method(row: Row) -> str:
    """Table 1's method column: the task, FCCID's switches that differ from the paper's, "+TOC"."""
    base = ROWS[row.pretrained]
    name = METHOD_NAMES[base.task] + ("" if base.coarse_club else " fine CLUB")
    if base.temperature != CoarseConfig.temperature:
        name += f" τ={base.temperature:g}"
    return name + ("+TOC" if row.toc_of else "")


def format_table1(rows: list[dict[str, Any]], cfg: FidelityConfig) -> str:
    """Seed 003 Table 1 shape: ``rows`` from ``merge_seeds`` (any of ``TABLE1``); "Avg" = mean of the four
    cross-modal cells, a TOC row's "(±x)" its change against its base row when that row is shown."""
    w, p = cfg.world, cfg.pretrain
    width = _cell_width(rows)
    by_name = {r["row"]: r for r in rows}
    lines = [f"Synthetic Table 1 (seed 003): the world above with text prompts (≤ {w.text_length or 'longest'} "
             f"tokens, {w.text_dim}-d word vectors); {cfg.pretrain_clips} clips x {p.steps} steps, CLUB lr "
             f"{p.estimator_lr:g}; seeds {rows[0]['seeds']}; +TOC = heads read Q={cfg.toc.dims} of the "
             f"D={_bench_quantizer().dim} code dims TOC keeps (λ={cfg.toc.balance}) of the base row's model",
             f"{'row':<16}{'method':<18}{'text':>4} |{'AVE V→A':>{width}}{'A→V':>{width}} |{'AVVP V→A':>{width}}"
             f"{'A→V':>{width}} |{'Avg':>15}{'in-mod.':>8} |{'same code':>10}{'nuis. R²':>9}{'codes':>6}{'train s':>8}"]
    lines.append("-" * len(lines[-1]))
    for r in rows:
        row = ROWS[r["row"]]
        values, average = _cross_cells(r, width), mean(_cells(r))
        delta = (f"({average - mean(_cells(by_name[row.toc_of])):+.2f})" if row.toc_of in by_name else "")
        lines.append(f"{r['row']:<16}{_method(row):<18}{_mark(ROWS[row.pretrained].text):>4} |{values[0]}{values[1]} |"
                     f"{values[2]}{values[3]} |{f'{average:.2f}{delta}':>15}{mean(_cells(r, 'in_modality')):>8.1f} |"
                     f"{100 * r['same_code']:>9.1f}%{sum(r['nuisance_r2'].values()) / 2:>9.2f}"
                     f"{r['active_codes']:>6.0f}{r['pretrain_s']:>8.0f}")
    lines.append("Avg: mean of the four cross-modal cells; in-mod.: the same heads on their own modality's test split; "
                 "FCCID fine CLUB: A_CLUB and V_CLUB only (seed 003 Table 5 row ✓✓--); τ: InfoNCE temperature "
                 "(0.1 as the authors' code ran it; seed 003's text says 1)")
    return "\n".join(lines)


def compare_methods(rows: list[dict[str, Any]]) -> list[str]:
    """Cell-by-cell differences (points) of FCCID against AVT Uni-Code (and of text added to Uni-Code)."""
    by_name = {r["row"]: r for r in rows}
    lines = []
    for better, worse in (("fccid", "unicode_avt"), ("fccid_toc", "unicode_avt_toc"), ("fccid_tau1", "unicode_avt"),
                          ("unicode_avt", "full")):
        if better in by_name and worse in by_name:
            diff = [a - b for a, b in zip(_cells(by_name[better]), _cells(by_name[worse]))]
            own = [a - b for a, b in zip(_cells(by_name[better], "in_modality"), _cells(by_name[worse], "in_modality"))]
            lines.append(f"{better} − {worse}: AVE V→A {diff[0]:+.1f}, A→V {diff[1]:+.1f}, AVVP V→A {diff[2]:+.1f}, "
                         f"A→V {diff[3]:+.1f}; mean {mean(diff):+.1f} cross-modal, {mean(own):+.1f} in-modality")
    return lines


def claims(rows: list[dict[str, Any]], continual: dict[str, dict[str, float]] | None = None) -> list[Target]:
    """The claims the selected ``rows`` (from ``merge_seeds``) and ``continual`` numbers can check, one ``Target``
    each (its value in points, a ratio for the in-modality claim).

    ``continual``: {method: ``trainer.programs.bench.continual_features.target_numbers`` averaged over seeds} with
    "dcid" and "comet". Cells are the four cross-modal scores (AVE and AVVP, both directions); "mean" is over them.
    """
    by_name = {r["row"]: r for r in rows}
    out = []
    if {"full", "baseline"} <= set(by_name):
        gaps = [f - b for f, b in zip(_cells(by_name["full"]), _cells(by_name["baseline"]))]
        out.append(Target("full >= baseline + 25 (smallest cell gap)", min(gaps), 25.0, False,
                         "gaps " + ", ".join(f"{g:+.1f}" for g in gaps)))
    if "full" in by_name:
        full, own = _cells(by_name["full"]), _cells(by_name["full"], "in_modality")
        ratios = [f / o if o else math.nan for f, o in zip(full, own)]
        out.append(Target("full >= 0.8 x in-modality (smallest cell ratio)", min(ratios), 0.8, False,
                         "ratios " + ", ".join(f"{r:.2f}" for r in ratios)))
    for row, text, strict in (("no_cpc", "w/o Cross-CPC < full", True), ("no_club", "w/o CLUB <= full", False)):
        if {"full", row} <= set(by_name):
            cost = mean(_cells(by_name["full"])) - mean(_cells(by_name[row]))
            out.append(Target(f"{text} (mean cell cost of removing it)", cost, 0.0, strict,
                             f"full {mean(_cells(by_name['full'])):.1f} vs {mean(_cells(by_name[row])):.1f}"))
    if {"fccid", "unicode_avt"} <= set(by_name):
        fccid, uni = mean(_cells(by_name["fccid"])), mean(_cells(by_name["unicode_avt"]))
        out.append(Target("FCCID >= Uni-Code (AVT) (Avg difference)", fccid - uni, 0.0, False,
                         f"{fccid:.1f} vs {uni:.1f}"))
    if continual and {"dcid", "comet"} <= set(continual):
        for key in (k for k in continual["comet"] if k.startswith("unseen")):
            ours, theirs = continual["comet"][key], continual["dcid"][key]
            out.append(Target(f"COMET > DCID, {key}", ours - theirs, 0.0, True, f"{ours:.1f} vs {theirs:.1f}"))
    return out


def mean_claims(per_world: list[list[Target]]) -> list[Target]:
    """Every claim on the mean of its values over the worlds (with how many worlds meet it on their own)."""
    merged = []
    for same in zip(*per_world):
        value = mean([c.value for c in same])
        merged.append(dataclasses.replace(same[0], value=value,
                                          detail=f"met in {sum(c.met for c in same)} of {len(same)} worlds"))
    return merged


def format_claims(claims_of: dict[str, list[Target]]) -> str:
    """One line per claim: its value per world (✓ met / ✗ not), then on the mean over worlds."""
    worlds = list(claims_of)
    width = max(10, *(len(w) + 2 for w in worlds))
    lines = [f"{'claim':<52}" + "".join(f"{w:>{width}}" for w in worlds),]
    lines.append("-" * len(lines[0]))
    for i, first in enumerate(next(iter(claims_of.values()))):
        cells = []
        for w in worlds:
            c = claims_of[w][i]
            number = f"{c.value:.2f}" if abs(c.bound) < 1 and c.bound else f"{c.value:+.1f}"
            cells.append(f"{number + (' ✓' if c.met else ' ✗'):>{width}}")
        lines.append(f"{first.text:<52}" + "".join(cells))
    return "\n".join(lines)


def per_class_agreement(rows: list[dict[str, Any]], classes: int) -> str:
    lines = ["same-code share per event class (downstream test; cells where audio and video carry the event)",
             f"{'row':<16}" + "".join(f"{c:>6}" for c in range(classes))]
    for r in rows:
        lines.append(f"{r['row']:<16}" + "".join(f"{100 * v:>6.0f}" if v == v else f"{'n/a':>6}"
                                                 for v in r["same_code_per_class"]))
    return "\n".join(lines)


# ---------------------------------------------------------------------- command

def _config(args: argparse.Namespace, seed: int, world: str = "default") -> FidelityConfig:
    return FidelityConfig(world=world_config(world, _bench_world()),
                          pretrain=PretrainConfig(steps=args.steps, club_lr=args.club_lr, seed=seed),
                          probe=ProbeConfig(epochs=args.probe_epochs, seed=seed), model_overrides=tuple(args.set))


def _common(args: argparse.Namespace, world: str, seed: int) -> list[str]:
    return (["--world", world, "--seeds", str(seed), "--threads", str(args.threads), "--probe-epochs",
             str(args.probe_epochs)] + [f"--set={text}" for text in args.set]
            + (["--mlflow", args.mlflow] if args.mlflow else []))


def _fidelity_child(names: list[str], world: str, seed: int, args: argparse.Namespace, runs: Path) -> Any:
    """One pretraining (the rows ``names`` read) in a subprocess; its rows' results."""
    cmd = [sys.executable, "-m", "trainer.programs.bench.fidelity", "--child", ",".join(names), "--steps",
           str(args.steps), "--club-lr", str(args.club_lr), "--runs", str(runs)] + _common(args, world, seed)
    return run_json_child(cmd, f"fidelity rows {names} (world {world}, seed {seed})")


def _continual_child(method: str, world: str, seed: int, args: argparse.Namespace) -> Any:
    """One continual method (phases VT -> AT -> IT) in a subprocess of ``trainer.programs.bench.continual_features``."""
    cmd = [sys.executable, "-m", "trainer.programs.bench.continual_features", "--child", method, "--steps",
           str(args.continual_steps)]
    return run_json_child(cmd + _common(args, world, seed), f"continual method {method} (world {world}, seed {seed})")


def main(argv: list[str] | None = None) -> int:
    parser = fidelity_parser()   # torch-free, for `cmg bench fidelity --help`
    args = parser.parse_args(argv)
    if args.mlflow:
        args.mlflow = str(Path(args.mlflow).resolve())
    torch.set_num_threads(args.threads)
    seeds = [int(v) for v in args.seeds.split(",")]
    if args.child:
        names = args.child.split(",")
        run_dir = Path(args.runs) / f"{args.world}-{names[0]}-seed{seeds[0]}"
        mlflow_uri = f"sqlite:///{args.mlflow}/mlflow.db" if args.mlflow else ""
        print(json.dumps(run_rows(names, _config(args, seeds[0], args.world), run_dir, mlflow_uri)))
        return 0
    worlds = list(WORLDS) if args.worlds == "all" else [w for w in args.worlds.split(",") if w] or ["default"]
    try:
        for world in worlds:
            world_config(world)
        names = select_rows(args.rows or ("claims" if args.worlds else "all"))
    except ValueError as err:
        parser.error(str(err))
    sweep = bool(args.worlds)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cmg-fidelity-") as scratch:
        runs_root = Path(args.runs).resolve() if args.runs else Path(scratch)
        jobs = [(_fidelity_child, (group, w, seed, args, runs_root))
                for w in worlds for seed in seeds for group in pretraining_jobs(names).values()]
        if sweep and not args.no_continual:
            jobs += [(_continual_child, (method, w, seed, args)) for w in worlds for seed in seeds
                     for method in ("dcid", "comet")]
        done = fan_out([partial(fn, *fn_args) for fn, fn_args in jobs], args.jobs)
    wall = time.perf_counter() - start
    results: dict[str, Any] = {"worlds": {}, "wall_s": wall, "seeds": seeds}
    claims_of = {}
    for w in worlds:
        cfg = _config(args, seeds[0], w)
        runs = [r for (fn, job_args), out in zip(jobs, done) if fn is _fidelity_child and job_args[1] == w for r in out]
        rows = [merge_seeds([r for r in runs if r["row"] == name]) for name in names]
        print(f"======== world '{w}': {WORLDS[w] or 'the defaults'}")
        print_tables(rows, cfg)
        continual, method_runs = {}, []
        if sweep and not args.no_continual:
            from trainer.programs.bench.continual_features import mean_target_numbers
            from trainer.programs.bench.config import ContinualConfig

            method_runs = [(job_args[0], out) for (fn, job_args), out in zip(jobs, done)
                           if fn is _continual_child and job_args[1] == w]
            continual = mean_target_numbers(method_runs, ContinualConfig())
            for method, numbers in continual.items():
                print(f"continual {method:<6} (mean of {len(seeds)} seed(s)): " +
                      ", ".join(f"{key} {value:.1f}" for key, value in numbers.items()))
        claims_of[w] = claims(rows, continual)
        print_targets(claims_of[w])
        print()
        results["worlds"][w] = {"runs": runs, "rows": rows, "continual": continual, "continual_runs": method_runs,
                                "claims": [c.as_dict() for c in claims_of[w]]}
    if sweep:
        claims_of["mean"] = mean_claims([claims_of[w] for w in worlds])
        print(f"Claims per world and on the mean over the {len(worlds)} worlds (seeds {seeds}; points, or the "
              "ratio; ✓ met)")
        print(format_claims(claims_of))
        for claim in claims_of["mean"]:
            print(verdict(claim.text, claim.met, f"{claim.value:+.2f} ({claim.detail})", " on the mean"))
    print(f"\nwall time {wall:.0f} s for {len(jobs)} runs ({len(worlds)} world(s) x {len(seeds)} seed(s), "
          f"{args.jobs} at a time, {args.threads} thread(s) each)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def print_tables(rows: list[dict[str, Any]], cfg: FidelityConfig) -> None:
    """The tables of one world: seed 001 Table 2 and seed 003 Table 1 (the rows of each that were run)."""
    table2 = [r for r in rows if ROWS[r["row"]].in_table2]
    table1 = [r for r in rows if r["row"] in TABLE1]
    if table2:
        print(format_table(table2, cfg))
        print()
    if table1:
        print(format_table1(table1, cfg))
        print("\n".join(compare_methods(table1)))
        print()
    print(per_class_agreement([r for r in rows if not ROWS[r["row"]].toc_of], cfg.world.classes))
    print()


if __name__ == "__main__":
    sys.exit(main())
