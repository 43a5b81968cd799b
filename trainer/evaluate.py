"""Downstream cross-modal generalisation of a pretraining checkpoint (ALGORITHMS.md §5).

    python -m trainer.evaluate CHECKPOINT [--data URLS] [--kind clips|features] [--backbones YAML]
                               [--public ROOT] [--tasks classification,localisation,retrieval]
                               [--cross-data URLS | --cross-public ROOT] [--class-map 0:0,3:1]
                               [--toc Q] [--toc-lambda 0.3] [--epochs 30] [--json PATH] [--no-tracking]

CHECKPOINT: a run directory (its latest checkpoint), a checkpoints directory, ``step_N`` or its model.pt,
of any registered task (``meta.json["task"]``: Uni-Code, FCCID, ...; every model gives per-segment codes
through its ``segment_codes``, FCCID through its coarse path). The encoder and codebook are frozen (eval
mode, no gradients; see ``trainer.eval.encode``). Features come from clip shards (decoded and passed
through the frozen backbones the pretraining used, checked against the checkpoint's fingerprint), feature
shards (``shards.extract``), or the public AVE h5/npz layout (``--public``: its train/val/test order files
when present). Shards are split into train/val/test by a seeded permutation of the clips in key order
(``--split``).

Tasks (trainer/eval/probes.py): AVE-style classification, AVVP-style localisation (micro P/R/F1), X→audio
zero-shot retrieval (recall@1/5/10; video per segment, text by clip-mean codes), and with a second dataset
cross-dataset localisation (train on this data's clip labels, test per segment on the other's shared
classes). ``--toc Q`` keeps the Q codebook dimensions TOC selects (closed form, trainer/toc.py) and every
head reads only those.

Defaults come from the pretraining run's ``config.yaml`` (shard URLs, decoding, backbones, MLflow store and
experiment). Results are printed as a table and logged as a child MLflow run of the pretraining run (tag
``mlflow.parentRunId`` = ``meta.json["mlflow_run_id"]``) in the run's own tracking store, with the table
and a JSON of every number written to ``<run>/evaluation/<checkpoint>[-toc<Q>]/`` and logged as artifacts.
Exit codes: 0 done, 2 bad arguments or data (nothing evaluated).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


from trainer.config import ConfigError, to_dict
from trainer.data.features import FeatureError, PublicFeatureConfig
from trainer.eval.encode import (
    LabelledFeatures, Pretrained, encode_split, load_pretrained, read_public_features,
    read_shard_features, split_indices,
)
from trainer.eval.probes import (
    SPLITS, CodeSplit, ProbeConfig, ProbeResult, classification_probe, code_agreement, cross_dataset_probe,
    localisation_probe, zero_shot_retrieval,
)
from trainer.job import JobConfig, read_run_config
from trainer.toc import TOCConfig, toc_scores
from trainer.tracking import Tracker

TASKS = ("classification", "localisation", "retrieval")
LABELLED_MODALITIES = ("audio", "video")   # the modalities that carry per-segment event labels


@dataclass
class SourceConfig:
    """Where the labelled downstream features come from ("" = the pretraining run's setting)."""

    urls: str = ""                                        # clip or feature shards
    kind: Literal["", "clips", "features"] = ""
    backbones: str = ""                                   # backbones YAML for clip shards
    public: str = ""                                      # public AVE layout root (dir of h5 files or a .npz)
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)   # train/val/test fractions when no official split
    split_seed: int = 0


@dataclass
class EvaluateConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    cross: SourceConfig | None = None                     # the second dataset of the cross-dataset task
    class_map: dict[str, int] = field(default_factory=dict)   # {this data's class: the cross data's class}
    tasks: tuple[str, ...] = TASKS
    classes: int = 0                                      # 0 = largest label + 1
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    toc: TOCConfig | None = None
    tracking: bool = True


# ---------------------------------------------------------------------- data

def run_config(pretrained: Pretrained) -> JobConfig:
    """The pretraining job's resolved config (defaults if the run directory has no config.yaml)."""
    return read_run_config(pretrained.run_dir)


def read_source(src: SourceConfig, job: JobConfig, pretrained: Pretrained) -> dict[str, LabelledFeatures]:
    """train/val/test ``LabelledFeatures`` of one source (official public splits, else a seeded split)."""
    modalities = pretrained.model.downstream_modalities
    if src.public:
        root = Path(src.public)
        official = root.is_dir() and all((root / PublicFeatureConfig.order_file.format(split=s)).is_file()
                                         for s in SPLITS)
        if official:
            return {s: read_public_features(PublicFeatureConfig(root=str(root), split=s)) for s in SPLITS}
        data = read_public_features(PublicFeatureConfig(root=str(root), split=None))
    else:
        data_cfg = dataclasses.replace(job.data, urls=src.urls or job.data.urls, kind=src.kind or job.data.kind)
        backbones = None
        if data_cfg.kind == "clips":
            backbones = _backbones(src.backbones or job.backbones, pretrained)
        data = read_shard_features(data_cfg, modalities, backbones)
    parts = split_indices(len(data), src.split, src.split_seed)
    return {name: data.subset(index) for name, index in parts.items()}


def _backbones(path: str, pretrained: Pretrained):
    """The frozen backbones of ``path``, refused unless they are the ones the checkpoint was trained on."""
    from trainer.backbones import FrozenBackbones, load_backbones_config

    if not Path(path).is_file():
        raise FileNotFoundError(f"backbones file not found: {path} (pass --backbones)")
    modalities = pretrained.model.downstream_modalities
    backbones = FrozenBackbones(load_backbones_config(path).only(modalities))
    trained_on = pretrained.meta.get("backbones")
    if trained_on:   # older runs also list backbones of modalities the model never used: compare the model's
        backbones.load_state_dict({"backbones": {m: d for m, d in trained_on.items() if m in modalities}})
    return backbones


def number_of_classes(parts: list[LabelledFeatures]) -> int:
    top = max(max(int(p.clip_label.max()), *(int(v.max()) for v in p.segment_labels.values())) for p in parts)
    if top < 0:
        raise ValueError("the data carry no event label at all")
    return top + 1


# ---------------------------------------------------------------------- the run

def directions(modalities: tuple[str, ...]) -> list[tuple[str, str]]:
    labelled = [m for m in modalities if m in LABELLED_MODALITIES]
    return [(a, b) for a in labelled for b in labelled if a != b]


def evaluate(pretrained: Pretrained, cfg: EvaluateConfig, job: JobConfig) -> dict[str, Any]:
    """Encode, optionally apply TOC, run every task; a JSON-able dict of the results."""
    model = pretrained.model
    start = time.perf_counter()
    data = read_source(cfg.source, job, pretrained)
    splits: dict[str, CodeSplit] = {name: encode_split(model, part) for name, part in data.items()}
    # cross-dataset: scored on the held-out (test) split of the second dataset
    cross_test = encode_split(model, read_source(cfg.cross, job, pretrained)["test"]) if cfg.cross else None
    encoded = time.perf_counter()
    classes = cfg.classes or number_of_classes(list(data.values()))
    toc = None
    if cfg.toc is not None:
        toc = toc_scores(model.quantizer.codebook, cfg.toc)
        splits = {name: split.select_dims(toc.selected) for name, split in splits.items()}
        cross_test = cross_test.select_dims(toc.selected) if cross_test is not None else None

    results: list[ProbeResult] = []
    modalities = model.downstream_modalities        # a continual model's carried modalities included
    pairs = directions(modalities)
    for source, target in pairs:
        if "classification" in cfg.tasks:
            results.append(classification_probe(splits, source, target, classes, cfg.probe))
        if "localisation" in cfg.tasks:
            results.append(localisation_probe(splits, source, target, classes, cfg.probe))
        if cross_test is not None:
            class_map = {int(k): v for k, v in cfg.class_map.items()} or {c: c for c in range(classes)}
            results.append(cross_dataset_probe(splits, cross_test, source, target, classes, class_map, cfg.probe))
    retrieval = {}
    if "retrieval" in cfg.tasks and "audio" in modalities:
        # audio-visual pairs share the time axis; text tokens do not, so text retrieves by clip-mean codes
        retrieval = {m: zero_shot_retrieval(splits["test"], m, "audio", aligned=m in LABELLED_MODALITIES)
                     for m in modalities
                     if m != "audio" and m in splits["test"].vectors}
    test_labels = [labels for m, labels in splits["test"].segment_labels.items() if m in LABELLED_MODALITIES]
    # micro F1 of random per-segment tags drawn at the labels' own rate: precision = recall = that rate
    tags = classes * sum(y.numel() for y in test_labels)
    positive_rate = sum(int((y >= 0).sum()) for y in test_labels) / max(1, tags)
    agreement = None
    if {"audio", "video"} <= set(splits["test"].indices):
        agreement = code_agreement(splits["test"], "audio", "video", classes)[1]
    return {
        "checkpoint": str(pretrained.checkpoint), "task": pretrained.meta.get("task", "unicode"),
        "step": pretrained.step, "classes": classes,
        "clips": {name: len(part) for name, part in data.items()},
        "toc": None if toc is None else {"dims": toc.selected.tolist(), "lambda": cfg.toc.balance,
                                         "normalize": cfg.toc.normalize},
        "probes": [dataclasses.asdict(r) | {"direction": r.direction} for r in results],
        "retrieval": {m: {f"R@{k}": v for k, v in scores.items()} for m, scores in retrieval.items()},
        "same_code_share": agreement, "positive_rate": positive_rate,
        "encode_s": encoded - start, "probe_s": time.perf_counter() - encoded,
    }


def format_table(report: dict[str, Any]) -> str:
    clips = report["clips"]
    toc = report["toc"]
    toc_text = "off" if toc is None else f"{len(toc['dims'])} dims (λ={toc['lambda']})"
    lines = [f"cross-modal generalisation of {report['checkpoint']} ({report['task']}, "
             f"step {report['step']}): "
             f"{report['classes']} classes, train/val/test = {clips['train']}/{clips['val']}/{clips['test']} clips, "
             f"TOC: {toc_text}",
             "epoch chosen on the source modality's val split; 'cross' = target modality's test split, "
             "'in-modality' = source modality's test split (same head)",
             f"{'task':<16}{'dir':<6}{'metric':<10}{'cross':>8}{'in-modality':>13}{'val':>8}{'epoch':>7}"
             f"{'precision':>11}{'recall':>8}"]
    lines.append("-" * len(lines[-1]))
    for p in report["probes"]:
        extra = (f"{100 * p['details']['precision']:>11.1f}{100 * p['details']['recall']:>8.1f}"
                 if "precision" in p["details"] else "")
        lines.append(f"{p['task']:<16}{p['direction']:<6}{p['metric']:<10}{100 * p['cross']:>8.1f}"
                     f"{100 * p['in_modality']:>13.1f}{100 * p['val']:>8.1f}{p['epoch']:>7}{extra}")
    for query, scores in report["retrieval"].items():
        ranks = "  ".join(f"{k} {100 * v:.1f}" for k, v in scores.items())
        lines.append(f"{'retrieval':<16}{query[0].upper() + '→A':<6}{'zero-shot':<10}{ranks:>30}  (test split)")
    if report["same_code_share"] is not None:
        lines.append(f"same code at (clip, segment) cells where audio and video carry the same event: "
                     f"{100 * report['same_code_share']:.1f}%")
    lines.append(f"encoding {report['encode_s']:.1f} s, heads {report['probe_s']:.1f} s")
    return "\n".join(lines)


def _metric_key(direction: str) -> str:
    return direction.replace("→", "_to_")


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics: ``eval/<task>/<V_to_A>/<cross|in_modality|val>`` and retrieval ``R@k``."""
    metrics = {}
    for p in report["probes"]:
        for key in ("cross", "in_modality", "val"):
            metrics[f"eval/{p['task']}/{_metric_key(p['direction'])}/{key}"] = p[key]
    for query, scores in report["retrieval"].items():
        metrics.update({f"eval/retrieval/{query}_to_audio/{k}": v for k, v in scores.items()})
    if report["same_code_share"] is not None:
        metrics["eval/same_code_share"] = report["same_code_share"]
    return metrics


def log_to_mlflow(pretrained: Pretrained, job: JobConfig, cfg: EvaluateConfig, report: dict[str, Any],
                  files: list[Path]) -> str | None:
    """A child run of the pretraining run in the run's tracking store; returns its id (None if not created)."""
    tracking = dataclasses.replace(job.tracking, run_name=f"evaluate-{files[0].parent.name}", flush_interval_s=0.0)
    tracker = Tracker(tracking, pretrained.run_dir)
    parent = pretrained.meta.get("mlflow_run_id")
    tags = {"phase": "evaluate", "checkpoint": str(pretrained.checkpoint), "checkpoint_step": pretrained.step}
    if parent:
        tags |= {"mlflow.parentRunId": parent, "pretrain_run_id": parent}
    tracker.start(tags=tags)
    tracker.log_params(to_dict(cfg))
    tracker.log_metrics(report_metrics(report), pretrained.step)
    for path in files:
        tracker.log_artifact(path, "evaluation")
    tracker.end("FINISHED")
    return tracker.run_id


# ---------------------------------------------------------------------- command line

def _fractions(text: str) -> tuple[float, float, float]:
    parts = tuple(float(v) for v in text.split(","))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--split needs three fractions like 0.6,0.2,0.2, got {text!r}")
    return parts


def _class_map(text: str) -> dict[str, int]:
    try:
        return {str(int(a)): int(b) for a, b in (pair.split(":") for pair in text.split(",") if pair)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--class-map needs pairs like 0:0,3:1, got {text!r}") from None


def parse_args(argv: list[str] | None) -> tuple[str, EvaluateConfig, str | None]:
    p = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data", default="", help="clip or feature shard URLs (default: the pretraining data)")
    p.add_argument("--kind", default="", choices=["", "clips", "features"])
    p.add_argument("--backbones", default="", help="backbones YAML for clip shards (default: the run's)")
    p.add_argument("--public", default="", help="public AVE layout: directory of h5 files or one .npz")
    p.add_argument("--split", type=_fractions, default=SourceConfig.split, help="train,val,test fractions")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--cross-data", default="", help="shards of the second dataset (cross-dataset task)")
    p.add_argument("--cross-kind", default="", choices=["", "clips", "features"])
    p.add_argument("--cross-public", default="", help="second dataset in the public layout")
    p.add_argument("--class-map", type=_class_map, default={}, help="shared classes: this:cross,... "
                   "(default: identity)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {list(TASKS)}")
    p.add_argument("--classes", type=int, default=0, help="number of event classes (default: largest label + 1)")
    p.add_argument("--epochs", type=int, default=ProbeConfig.epochs)
    p.add_argument("--lr", type=float, default=ProbeConfig.lr)
    p.add_argument("--batch-size", type=int, default=ProbeConfig.batch_size)
    p.add_argument("--hidden", type=int, default=128, help="hidden width of the two-layer heads")
    p.add_argument("--seed", type=int, default=0, help="head init and batch order")
    p.add_argument("--toc", type=int, default=None, metavar="Q", help="keep the Q dimensions TOC selects")
    p.add_argument("--toc-lambda", type=float, default=TOCConfig.balance)
    p.add_argument("--toc-raw", action="store_true", help="TOC on the raw (not L2-normalised) codebook")
    p.add_argument("--json", default=None, help="also write the report to this file")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    a = p.parse_args(argv)
    tasks = tuple(t for t in a.tasks.split(",") if t)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    if a.cross_data and a.cross_public:
        p.error("give --cross-data or --cross-public, not both")
    source = SourceConfig(a.data, a.kind, a.backbones, a.public, a.split, a.split_seed)
    cross = None
    if a.cross_data or a.cross_public:
        cross = SourceConfig(a.cross_data, a.cross_kind, a.backbones, a.cross_public, a.split, a.split_seed)
    probe = ProbeConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                        head=dataclasses.replace(ProbeConfig().head, hidden_dim=a.hidden))
    toc = TOCConfig(a.toc, a.toc_lambda, not a.toc_raw) if a.toc is not None else None
    return a.checkpoint, EvaluateConfig(source, cross, a.class_map, tasks, a.classes, probe, toc,
                                        not a.no_tracking), a.json


def main(argv: list[str] | None = None) -> int:
    try:
        checkpoint, cfg, json_path = parse_args(argv)
        pretrained = load_pretrained(checkpoint)
        job = run_config(pretrained)
        report = evaluate(pretrained, cfg, job)
    except (ConfigError, FeatureError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = format_table(report)
    print(table)
    out_dir = pretrained.run_dir / "evaluation" / (pretrained.checkpoint.name +
                                                   (f"-toc{cfg.toc.dims}" if cfg.toc is not None else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "report.json", out_dir / "table.txt"]
    files[0].write_text(json.dumps(report, indent=1))
    files[1].write_text(table + "\n")
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))
    if cfg.tracking:
        run_id = log_to_mlflow(pretrained, job, cfg, report, files)
        print(f"MLflow run {run_id} (parent {pretrained.meta.get('mlflow_run_id')}) in "
              f"{Tracker(job.tracking, pretrained.run_dir).tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
