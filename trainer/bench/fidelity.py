"""Synthetic "paper tables": do Uni-Code and FCCID give cross-modal generalisation on data with known structure?

    python -m trainer.bench.fidelity [--steps 600] [--rows all|table1|table2|NAME,...] [--seeds 0] [--jobs 2]
                                     [--threads 1] [--json out.json]

Pretrains one model per row in-process with the registered task (``trainer.tasks``: ``UniCodeTask`` or
``FCCIDTask``) and plain ``torch.optim.AdamW`` on the features of ``trainer.bench.synthetic_features`` (a
pretraining corpus), freezes it, and runs the downstream protocol of ``trainer.eval.probes`` on a separate
labelled corpus of the same world (train / val / test clips): AVE-style classification (accuracy) and
AVVP-style localisation (micro F1), V→A and A→V, with the epoch chosen on the source modality's validation
split and the in-modality score of the same heads. Codes come from ``model.segment_codes`` (Uni-Code: z^m per
segment; FCCID: every segment through the coarse path), exactly as ``python -m trainer.evaluate`` gets them.

Two tables:
- seed 001 Table 2 (``--rows table2``): the rows of Table 2 plus the §4.1 baseline, audio-visual Uni-Code
  with components switched off, and the issue's targets:
  1. full ≥ baseline + 25 points in both directions (each task);
  2. full ≥ 80 % of the in-modality score (each task and direction);
  3. removing Cross-CPC costs more than removing CLUB (mean over the four cells);
- seed 003 Table 1 (``--rows table1``): Uni-Code (DCID) and FCCID, each with and without TOC. FCCID needs
  text, so the comparison row ``unicode_avt`` pretrains Uni-Code on the same audio, video and text (the
  generator's prompts, zero-padded to T tokens: Uni-Code pairs token l with segment l, seed 001's AVT
  setting); ``full`` (audio-visual Uni-Code) is shown for reference. A "+TOC" row trains nothing: it reads
  the codes of its base row's model, keeping the Q = D/2 dimensions TOC selects (``trainer.toc``; the paper
  keeps 128 of 256), and its heads are trained on those. Two FCCID variants show where FCCID's numbers come
  from: ``fccid_fine_club`` (the Table 5 row with A_CLUB and V_CLUB only) and ``fccid_tau0.1`` (InfoNCE
  τ = 0.1 instead of the paper's 1.0: not the paper's setting). Per-cell differences of the methods follow.

Bench model (documented choice, smaller than the paper's D=256, M=400 so a row trains in about a minute on
one CPU core): D = 64, M = 64 codes, d̄ = 32, the paper's 2-layer 4-head post-LN transformer with
feed-forward 128, CLUB hidden 64 with 5 inner steps at the encoders' lr, K = 2 CPC steps (1 for AVT
Uni-Code, as in seed 001); FCCID's coarse MLPs hidden 64, coarse specific 32, InfoNCE τ = 1 (seed 003);
AdamW lr 1e-3, batch 64, gradient clipping 1.0 (the main job's default); code reset after N_re = 50 steps
(200 in the paper, whose runs are far longer than this bench's 600 steps). Every row shares these settings
and seeds.

Each pretraining runs in its own subprocess (``--jobs`` at a time, ``--threads`` torch threads each; a row
and its TOC row share one); runs are independent and seeded, so the numbers do not depend on ``--jobs``.
With several ``--seeds`` every cell is the mean over seeds ± half the range. Diagnostics per row, on the
downstream test split: "same code" = share of (clip, segment) cells where audio and video carry the same
event and chose the very same code; "nuisance R²" = how much of the true nuisance latent a linear map can
read from the per-segment vectors the codes are chosen for (``segment_semantic``: Uni-Code's z, FCCID's
coarse general vector of the segment; before quantisation; ridge fit on the train split, R² on test; lower
= more of the nuisance kept out of the semantic path, which is CLUB's job), mean of audio and video;
"codes" = codes used in the last pretraining step.
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
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trainer.bench.synthetic_features import SyntheticFeatureConfig, SyntheticSet, SyntheticWorld
from trainer.config import to_dict
from trainer.eval.encode import encode_split, freeze, split_indices
from trainer.eval.probes import CodeSplit, ProbeConfig, classification_probe, code_agreement, localisation_probe
from trainer.models.club import CLUBConfig
from trainer.models.encoders import EncoderConfig
from trainer.models.fccid import CoarseConfig, FCCIDConfig
from trainer.models.quantizer import QuantizerConfig
from trainer.models.unicode import UniCodeConfig
from trainer.tasks import TASKS
from trainer.toc import TOCConfig, toc_scores

MODALITIES = ("audio", "video")     # the labelled modalities: the probes' sources and targets
TEXT = "text"
DIRECTIONS = (("video", "audio"), ("audio", "video"))
TASKS_PROBED = ("classification", "localisation")
ModelConfig = UniCodeConfig | FCCIDConfig


@dataclass(frozen=True)
class Row:
    """One line of the synthetic tables.

    Seed 001 Table 2 rows switch Uni-Code components off (the baseline is §4.1's own variant); seed 003
    Table 1 rows choose the method (``task``), add the text modality (``text``), switch FCCID's coarse CLUB
    terms or its InfoNCE temperature, or read another row's model through TOC (``toc_of``: the name of that
    row; such a row pretrains nothing itself).
    """

    name: str
    club: bool = True
    cpc: bool = True
    mm_ema: bool = True
    reset: bool = True
    cmcm: bool = True
    baseline: bool = False
    task: Literal["unicode", "fccid"] = "unicode"
    text: bool = False
    toc_of: str = ""
    coarse_club: bool = True      # FCCID's AV_CLUB and TE_CLUB (seed 003 Table 5 columns 3-4)
    temperature: float = CoarseConfig.temperature   # FCCID's InfoNCE τ (seed 003: 1.0)

    @property
    def in_table2(self) -> bool:
        """A seed 001 Table 2 row: audio-visual Uni-Code, codes read in full."""
        return self.task == "unicode" and not self.text and not self.toc_of

    @property
    def pretrained(self) -> str:
        """The row whose pretraining this row's codes come from (itself, or its TOC base)."""
        return self.toc_of or self.name

    def model_config(self, base: UniCodeConfig) -> UniCodeConfig:
        """``base`` with this row's Table 2 components switched off."""
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
    Row("unicode_avt", text=True),
    Row("fccid", task="fccid", text=True),
    Row("fccid_fine_club", task="fccid", text=True, coarse_club=False),
    Row("fccid_tau0.1", task="fccid", text=True, temperature=0.1),
    Row("unicode_avt_toc", toc_of="unicode_avt"),
    Row("fccid_toc", toc_of="fccid"),
)}
TABLE1 = ("full", "unicode_avt", "fccid", "fccid_fine_club", "fccid_tau0.1", "unicode_avt_toc", "fccid_toc")
ROW_GROUPS = {"all": tuple(ROWS), "table1": TABLE1, "table2": tuple(n for n, r in ROWS.items() if r.in_table2)}


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
    """The bench's FCCID model: Uni-Code's widths, coarse hidden 64 / specific 32, τ = 1 (seed 003)."""
    return FCCIDConfig(feature_dims=_feature_dims(world, (*MODALITIES, TEXT)), spatial_patches={},
                       encoder=_bench_encoder(), coarse=CoarseConfig(hidden_dim=64, specific_dim=32, temperature=1.0),
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
    return dataclasses.replace(model, club=dataclasses.replace(model.club, lr=cfg.pretrain.estimator_lr))


def _bench_world() -> SyntheticFeatureConfig:
    # captions padded to T tokens: AVT Uni-Code pairs token l with segment l
    return SyntheticFeatureConfig(text=True, text_length=SyntheticFeatureConfig.segments)


def _bench_toc() -> TOCConfig:
    return TOCConfig(dims=_bench_quantizer().dim // 2)


@dataclass
class PretrainConfig:
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    # CLUB estimators' Adam lr; 0 = ``lr``: the paper trains encoders and estimators at one rate (4e-4, seed 000
    # App. B.1). An estimator slower than the encoders lags and the encoders exploit it: FCCID's clip-level CLUB
    # bound (64 pairs per step) can then run off to large negative values (``--club-lr 4e-4`` shows it).
    club_lr: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0

    @property
    def estimator_lr(self) -> float:
        return self.club_lr or self.lr


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


def task_class(cfg: ModelConfig) -> type:
    """The registered task (``trainer.tasks.TASKS``) whose model config ``cfg`` is."""
    for spec in TASKS.values():
        if type(cfg) is spec.config:
            return spec.task
    raise TypeError(f"no registered task takes a {type(cfg).__name__}")


def pretrain(cfg: ModelConfig, features: dict[str, Tensor], train: PretrainConfig) -> tuple[nn.Module, dict]:
    """Pretraining of ``cfg``'s task on in-memory features, epochs of shuffled batches.

    ``features``: ``(n t ...)`` per modality and optional ``"<modality>_mask"`` ``(n t)`` (the task picks
    its own keys). Returns the frozen model and the codebook statistics of the last step. Runs under
    ``train.seed`` (model init, dropout, batch order) and leaves the caller's global RNG state as it was.
    """
    n = next(iter(features.values())).shape[0]
    if n < train.batch_size:
        raise ValueError(f"{n} pretraining clips are fewer than one batch of {train.batch_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.seed)
        return _pretrain(cfg, features, train, n)


def _pretrain(cfg: ModelConfig, features: dict[str, Tensor], train: PretrainConfig, n: int) -> tuple[nn.Module, dict]:
    task = task_class(cfg)(cfg)
    _, stats = train_task(task, features, train.lr, train.batch_size, train.steps, train.grad_clip, train.seed)
    return freeze(task.model), stats


def train_task(task, features: dict[str, Tensor], lr: float, batch_size: int, steps: int, grad_clip: float,
               seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """AdamW on epochs of shuffled batches of in-memory ``features`` (batch order from ``seed``).

    Returns the last step's loss metrics and its codebook statistics (``after_optimizer_step_``).
    """
    n = next(iter(features.values())).shape[0]
    optimizer = torch.optim.AdamW(task.model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    order, cursor, metrics, stats = torch.randperm(n, generator=generator), 0, {}, {}
    for step in range(steps):
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        batch = order[cursor:cursor + batch_size]
        cursor += batch_size
        loss, metrics = task.compute_loss(task.prepare_batch({k: v[batch] for k, v in features.items()}), step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(task.model.parameters(), grad_clip)
        optimizer.step()
        stats = task.after_optimizer_step_()
    return {k: float(v) for k, v in metrics.items()}, {k: float(v) for k, v in stats.items()}


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


def run_rows(names: list[str], cfg: FidelityConfig) -> list[dict[str, Any]]:
    """Pretrain the model that the rows ``names`` read (one row and/or its TOC row), freeze it, probe it once
    per row; a JSON-able dict of results and timings per row."""
    rows = [ROWS[name] for name in names]
    if len({row.pretrained for row in rows}) != 1:
        raise ValueError(f"rows {names} do not read one pretraining (see pretraining_jobs)")
    start = time.perf_counter()
    world = SyntheticWorld(cfg.world)
    corpus = world.sample(cfg.pretrain_clips, cfg.pretrain_seed)
    downstream = world.sample(cfg.downstream_clips, cfg.downstream_seed)
    model, stats = pretrain(row_model_config(rows[0], cfg), corpus.features, cfg.pretrain)
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


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


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
        values, average = _cross_cells(r, width), _mean(_cells(r))
        delta = (f"({average - _mean(_cells(by_name[row.toc_of])):+.2f})" if row.toc_of in by_name else "")
        lines.append(f"{r['row']:<16}{_method(row):<18}{_mark(ROWS[row.pretrained].text):>4} |{values[0]}{values[1]} |"
                     f"{values[2]}{values[3]} |{f'{average:.2f}{delta}':>15}{_mean(_cells(r, 'in_modality')):>8.1f} |"
                     f"{100 * r['same_code']:>9.1f}%{sum(r['nuisance_r2'].values()) / 2:>9.2f}"
                     f"{r['active_codes']:>6.0f}{r['pretrain_s']:>8.0f}")
    lines.append("Avg: mean of the four cross-modal cells; in-mod.: the same heads on their own modality's test split; "
                 "FCCID fine CLUB: A_CLUB and V_CLUB only (seed 003 Table 5 row ✓✓--); τ: InfoNCE temperature "
                 "(the paper's is 1)")
    return "\n".join(lines)


def compare_methods(rows: list[dict[str, Any]]) -> list[str]:
    """Cell-by-cell differences (points) of FCCID against AVT Uni-Code (and of text added to Uni-Code)."""
    by_name = {r["row"]: r for r in rows}
    lines = []
    for better, worse in (("fccid", "unicode_avt"), ("fccid_toc", "unicode_avt_toc"), ("fccid_tau0.1", "unicode_avt"),
                          ("unicode_avt", "full")):
        if better in by_name and worse in by_name:
            diff = [a - b for a, b in zip(_cells(by_name[better]), _cells(by_name[worse]))]
            own = [a - b for a, b in zip(_cells(by_name[better], "in_modality"), _cells(by_name[worse], "in_modality"))]
            lines.append(f"{better} − {worse}: AVE V→A {diff[0]:+.1f}, A→V {diff[1]:+.1f}, AVVP V→A {diff[2]:+.1f}, "
                         f"A→V {diff[3]:+.1f}; mean {_mean(diff):+.1f} cross-modal, {_mean(own):+.1f} in-modality")
    return lines


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

def _config(args: argparse.Namespace, seed: int) -> FidelityConfig:
    return FidelityConfig(pretrain=PretrainConfig(steps=args.steps, club_lr=args.club_lr, seed=seed),
                          probe=ProbeConfig(epochs=args.probe_epochs, seed=seed))


def _run_child(names: list[str], seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One pretraining (the rows ``names`` read) in a subprocess; its rows' results."""
    cmd = [sys.executable, "-m", "trainer.bench.fidelity", "--child", ",".join(names), "--seeds", str(seed),
           "--steps", str(args.steps), "--club-lr", str(args.club_lr), "--probe-epochs", str(args.probe_epochs),
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fidelity rows {names} (seed {seed}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.bench.fidelity",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps, help="pretraining steps per row")
    parser.add_argument("--rows", default="all", help=f"comma list of groups {list(ROW_GROUPS)} and rows "
                        f"{list(ROWS)} (default: all)")
    parser.add_argument("--club-lr", type=float, default=PretrainConfig.club_lr,
                        help="CLUB estimators' learning rate (default 0: the pretraining lr, as in the paper)")
    parser.add_argument("--jobs", type=int, default=2, help="pretrainings run at the same time (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per pretraining process")
    parser.add_argument("--probe-epochs", type=int, default=ProbeConfig.epochs)
    parser.add_argument("--seeds", default="0", help="comma list of seeds (model init, batch order, probe); "
                        "the table shows the mean and ± half range")
    parser.add_argument("--json", default=None, help="also write all results to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(v) for v in args.seeds.split(",")]
    cfg = _config(args, seeds[0])
    if args.child:
        print(json.dumps(run_rows(args.child.split(","), cfg)))
        return 0
    try:
        names = select_rows(args.rows)
    except ValueError as err:
        parser.error(str(err))
    start = time.perf_counter()
    jobs = [(group, seed) for group in pretraining_jobs(names).values() for seed in seeds]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = [r for results in pool.map(lambda job: _run_child(*job, args), jobs) for r in results]
    wall = time.perf_counter() - start
    rows = [merge_seeds([r for r in runs if r["row"] == name]) for name in names]
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
    for description, met, numbers in check_targets(rows):
        print(f"[{'MET' if met else 'NOT MET'}] {description}: {numbers}")
    pretrain_s = [r["pretrain_s"] for r in runs]
    print(f"\nwall time {wall:.0f} s for {len(jobs)} pretraining runs ({len(rows)} rows x {len(seeds)} seeds, "
          f"{args.jobs} at a time, {args.threads} thread(s) each); one run's pretraining took "
          f"{min(pretrain_s):.0f}-{max(pretrain_s):.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": to_dict(cfg), "seeds": seeds, "runs": runs, "rows": rows, "wall_s": wall}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
