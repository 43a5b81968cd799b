"""Downstream cross-modal generalisation of a pretraining checkpoint (ALGORITHMS.md §5).

    python -m trainer.programs.evaluate CHECKPOINT [--data URLS] [--kind clips|features] [--backbones YAML]
                               [--public ROOT] [--cross-data URLS | --cross-public ROOT] [--class-map 2:3,4:1]
                               [--ucf-data URLS --vgg-data URLS] [--ucf-vgg-map 0:0,1:1]
                               [--tasks classification,localisation,...] [--suite paper] [--pretrain-set 40K]
                               [--toc Q] [--toc-lambda 0.3] [--epochs N] [--lr LR] [--batch-size B] [--exact-head-batch]
                               [--json PATH] [--no-tracking]
    cmg eval CHECKPOINT [the same options]

CHECKPOINT: a run directory (its latest checkpoint), a checkpoints directory, ``step_N`` or its model.pt,
of any registered task (``meta.json["task"]``: Uni-Code, FCCID, COMET, ...; every model gives per-segment codes
through its ``segment_codes``, FCCID through its coarse path). The encoder and codebook are frozen (eval
mode, no gradients; see ``trainer.eval.frozen_codes``). Features come from clip shards (decoded and passed
through the frozen backbones the pretraining used, checked against the checkpoint's fingerprint), feature
shards (``shards.extract``, or the converted released feature sets), or the public AVE h5/npz layout (``--public``:
its train/val/test order files when present). Shards are split into train/val/test by a seeded permutation of
the clips in key order (``--split``). Labels are the manifest's per-clip ``clip_label`` and per-second
``audio_labels`` / ``video_labels``, indices into each dataset's own class list (a converted release's manifest
names it: ``released.classes``, shards.convert; else AVE's and AVVP's published orders, trainer/data/released.py).

Datasets and the protocols (``--tasks``; trainer/eval/probes.py) that read them:
- ``--data`` (AVE's role; default: the pretraining data): ``classification`` (AVE: accuracy, V→A and A→V),
  ``retrieval`` (X→audio and audio→X, recall@1/5/10), ``class_retrieval`` (every modality pair, both directions,
  class-level precision@1/5/10, grouped as seed 004's seen / unseen pairs), and the training side of
  ``cross_dataset``; ``localisation`` too when no second dataset is given;
- ``--retrieval-data`` (or ``--data`` when ``--tasks`` names the protocol): ``zero_shot_retrieval`` (seed 003 Table
  2 and seed 004's retrieval: every item of unlabelled clip shards of any pairs, several captions per item, every
  pair of the model's modalities present, R@1/5/10 both ways and their mean; trainer/eval/retrieval.py);
- ``--cross-data`` / ``--cross-public`` (AVVP's role: per-modality per-second labels): ``localisation`` (AVVP:
  micro P/R/F1) and the test side of ``cross_dataset`` (AVE→AVVP: weakly supervised on --data's clip labels,
  micro F1 per segment on this dataset's shared classes: the 12 of seed 000 §B.2 matched by name, or
  ``--class-map``);
- ``--ucf-data`` (video) and ``--vgg-data`` (audio): ``ucf_vgg`` (UCF(v)↔VGG(a): a classifier of the 16 shared
  classes, class i of one set being class i of the other as the authors pair them, trained on one dataset's
  modality and tested on the other dataset's other modality; accuracy; ``--ucf-vgg-map`` overrides).
Without ``--tasks``, every protocol whose data is given runs; a protocol named in ``--tasks`` without its data is
refused (exit 2, naming the option). Heads train as seed 000 §B.2 says (trainer/eval/paper.py ``PAPER_HEADS``:
lr 2.5e-4, batch 256, 30 or 50 epochs); ``--epochs/--lr/--batch-size`` override every protocol. A train split too
small for 10 steps an epoch at batch 256 (under 2,560 clips) trains at the batch that gives 10, and the table and the
report (``probes[].head``) say so; ``--exact-head-batch`` keeps 256 (the seeds' setting whatever the set's size) and
warns instead, as it does for a ``--batch-size`` that gives fewer than 10 steps an epoch.
``--toc Q`` keeps the Q codebook dimensions TOC selects (closed form, trainer/eval/toc.py) and every head reads
only those.

``--suite paper`` runs every protocol whose data is given and prints seed 001 Table 1 and Table 3, seed 003 Tables 1
and 2 and seed 004 Tables 2-4 (seen-pair retrieval, at the checkpoint's continual stage) with the papers' rows and
this checkpoint's numbers ("—" where a protocol's data was not given).

Defaults come from the pretraining run's ``config.yaml`` (shard URLs, decoding, backbones, MLflow store and
experiment). Results are printed as a table and logged as a child MLflow run of the pretraining run (tag
``mlflow.parentRunId`` = ``meta.json["mlflow_run_id"]``) in the run's own tracking store, with the tables and a
JSON of every number written to ``<run>/evaluation/<checkpoint>[-toc<Q>]/`` and logged as artifacts, and every number
as MLflow tables (``results_tables``); the pretraining run gets them as metrics at the checkpoint's step. A
re-evaluation replaces that directory whole (written beside it, then renamed into place), so it never mixes two
evaluations' files.
Exit codes: 0 done, 2 bad arguments or data (nothing evaluated).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from trainer.code_usage import SEED_THREE_MODALITIES, classify_code_usage, plot_code_usage
from trainer.configs.eval import ProbeConfig, SourceConfig, TOCConfig
from trainer.configs.job import JobConfig
from trainer.configs.load import ConfigError, to_dict
from trainer.data.features import FeatureError
from trainer.eval.downstream import EvaluateConfig, evaluate, format_table, report_metrics, run_config
from trainer.eval.frozen_codes import Pretrained, load_pretrained
from trainer.eval.paper import PAPER_HEADS, render_tables, table_metrics
from trainer.programs.cmg import evaluate_parser
from trainer.tracking import Tracker, mlflow_environment, resolve_tracking_uri


def code_usage_figures(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """``code_usage_<set>.png`` for each retrieval set coded in three or more modalities (VALOR32K: video, audio,
    text), as seed 003 Figs. 5-6 and seed 004 Fig. 3 draw it (trainer/code_usage.py ``SEED_THREE_MODALITIES``)."""
    figures = []
    for name, dataset in report["zero_shot_retrieval"].get("datasets", {}).items():
        counts = dataset.get("code_counts", {})
        if len(counts) >= 3:
            usage = classify_code_usage(counts, **SEED_THREE_MODALITIES)
            dataset["code_usage"] = usage.summary()
            title = f"{report['task']} step {report['step']}: codes chosen on {name} ({dataset['items']} items)"
            figures.append(plot_code_usage(usage, out_dir / f"code_usage_{name}.png", title=title, seed_colours=True))
    return figures


# The child run's numbers as MLflow table artifacts: (artifact file, metric-name prefix, columns of the name's parts)
RESULTS_TABLES = (("evaluation/results.json", "eval/", ("task", "direction", "measure")),
                  ("evaluation/paper_tables.json", "paper/", ("table", "row", "column")))


def results_tables(metrics: dict[str, float]) -> dict[str, dict[str, list]]:
    """The numbers of ``report_metrics`` (``eval/<task>/<direction>/<measure>``; task ``zero_shot_retrieval/<set>``)
    and ``table_metrics`` (``paper/<table>/<row>/<column>``; a column such as ``40K/AVVP/A_to_V``) as tables, artifact
    file -> columns, one row per number; ``eval/same_code_share`` has no direction or measure. Tables without
    rows are left out."""
    tables = {}
    for artifact_file, prefix, names in RESULTS_TABLES:
        rows = []
        for key, value in metrics.items():
            if key.startswith(prefix):
                name = key.removeprefix(prefix)
                parts = name.rsplit("/", 2) if prefix == "eval/" else name.split("/", 2)
                rows.append((*(parts if len(parts) == 3 else (name, "", "")), float(value)))
        if rows:
            tables[artifact_file] = {column: [row[i] for row in rows] for i, column in enumerate((*names, "value"))}
    return tables


def log_to_mlflow(pretrained: Pretrained, job: JobConfig, cfg: EvaluateConfig, metrics: dict[str, float],
                  files: list[Path]) -> str | None:
    """A child run of the pretraining run in the run's tracking store, its numbers as tables (``results_tables``),
    and the same numbers as metrics on the pretraining run itself at the checkpoint's step (``eval/toc<Q>/...`` with
    ``--toc Q``), where they sit beside its training curves and compare across its checkpoints and across runs; returns
    the child run's id (None if not created). The child run has no metrics: one value per name would be a page of
    single-point charts."""
    tracking = dataclasses.replace(job.tracking, tracking_uri=resolve_tracking_uri(job.tracking, pretrained.run_dir),
                                   run_name=f"evaluate-{files[0].parent.name}", system_metrics=False)
    tracker = Tracker(tracking, files[0].parent)
    parent = pretrained.meta.mlflow_run_id
    tags = {"phase": "evaluate", "checkpoint": str(pretrained.checkpoint), "checkpoint_step": pretrained.step}
    if parent:
        tags |= {"mlflow.parentRunId": parent, "pretrain_run_id": parent}
    tracker.start(tags=tags)
    tracker.log_params(to_dict(cfg))
    for artifact_file, columns in results_tables(metrics).items():
        tracker.log_table(columns, artifact_file)
    for path in files:
        tracker.log_artifact(path, "evaluation")
    if parent:
        variant = f"/toc{cfg.toc.dims}/" if cfg.toc is not None else "/"
        tracker.log_metrics({k.replace("/", variant, 1): v for k, v in metrics.items()}, pretrained.step, run_id=parent)
    tracker.end("FINISHED")
    return tracker.run_id


def replace_directory(staging: Path, out_dir: Path) -> None:
    """``staging`` (one evaluation's complete outputs) becomes ``out_dir``: the earlier evaluation's directory is
    renamed aside first and then removed, so ``out_dir`` holds one evaluation's files, never two runs' (a re-evaluation
    without ``--suite paper`` leaves no older ``paper_tables.txt``, one of fewer retrieval sets no older figure)."""
    replaced = out_dir.with_name(out_dir.name + ".replaced")
    shutil.rmtree(replaced, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, replaced)
    os.replace(staging, out_dir)
    shutil.rmtree(replaced, ignore_errors=True)


# ---------------------------------------------------------------------- command line

def head_settings(epochs: int | None, lr: float | None, batch_size: int | None, hidden: int,
                  seed: int, exact_batch: bool = False) -> dict[str, ProbeConfig]:
    """``PAPER_HEADS`` with the command line's overrides (None: the protocol's own setting). The seeds' batch is cut
    on a small train split (``ProbeConfig.min_steps_per_epoch``); a batch given on the command line, or any batch with
    ``exact_batch`` (``--exact-head-batch``), is kept, with a warning in the report where an epoch is that short."""
    return {task: dataclasses.replace(cfg, epochs=epochs or cfg.epochs, lr=lr or cfg.lr,
                                      batch_size=batch_size or cfg.batch_size, seed=seed,
                                      head=dataclasses.replace(cfg.head, hidden_dim=hidden),
                                      adapt_batch=not exact_batch and batch_size is None)
            for task, cfg in PAPER_HEADS.items()}


def parse_args(argv: list[str] | None) -> tuple[str, EvaluateConfig, str | None]:
    p = evaluate_parser()   # torch-free, for `cmg eval --help` (trainer/programs/cmg.py)
    a = p.parse_args(argv)
    tasks = tuple(t for t in a.tasks.split(",") if t)
    if tasks and a.suite:
        p.error("--suite paper runs every protocol whose data is given: give --tasks or --suite, not both")
    if a.cross_data and a.cross_public:
        p.error("give --cross-data or --cross-public, not both")

    def source(urls: str, kind: str, public: str = "") -> SourceConfig | None:
        return SourceConfig(urls, kind, a.backbones, public, a.split, a.split_seed) if urls or public else None

    toc = TOCConfig(a.toc, a.toc_lambda, not a.toc_raw) if a.toc is not None else None
    cfg = EvaluateConfig(
        SourceConfig(a.data, a.kind, a.backbones, a.public, a.split, a.split_seed),
        source(a.cross_data, a.cross_kind, a.cross_public), source(a.ucf_data, a.ucf_kind),
        source(a.vgg_data, a.vgg_kind), source(a.retrieval_data, "clips"), a.class_map, a.ucf_vgg_map, tasks,
        a.suite, a.pretrain_set, a.classes,
        head_settings(a.epochs, a.lr, a.batch_size, a.hidden, a.seed, a.exact_head_batch), toc, not a.no_tracking)
    return a.checkpoint, cfg, a.json


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
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)       # an evaluation that stopped while writing
    staging.mkdir(parents=True)
    figures = code_usage_figures(report, staging)
    files = [staging / "report.json", staging / "table.txt", *figures]
    files[0].write_text(json.dumps(report, indent=1))
    files[1].write_text(table + "\n")
    metrics = report_metrics(report)
    if cfg.suite == "paper":
        tables = render_tables(report, cfg.pretrain_set)
        print("\n" + tables)
        files.append(staging / "paper_tables.txt")
        files[-1].write_text(tables + "\n")
        metrics |= table_metrics(report, cfg.pretrain_set)
    replace_directory(staging, out_dir)
    files = [out_dir / path.name for path in files]
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))
    if cfg.tracking:
        os.environ.update(mlflow_environment(job.tracking, pretrained.run_dir))   # MLflow's settings, once
        run_id = log_to_mlflow(pretrained, job, cfg, metrics, files)
        print(f"MLflow run {run_id} (parent {pretrained.meta.mlflow_run_id}) in "
              f"{resolve_tracking_uri(job.tracking, pretrained.run_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
