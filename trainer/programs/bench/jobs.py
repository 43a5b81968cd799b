"""The synthetic benchmarks' pretrainings as main jobs: a bench model config in, a frozen checkpoint out.

Every pretraining of ``trainer.programs.bench.fidelity`` and ``trainer.programs.bench.continual_features`` is a
``JobConfig`` with ``data.kind = "memory"`` run by ``trainer.loop.train_in_memory``: the loop of
``trainer/main.py`` (AdamW, LR schedule, gradient clipping, the task's post-step codebook update, checkpoints,
continual phase hooks), fed the generator's tensors instead of shards. The frozen model comes back through
``trainer.eval.frozen_codes.load_pretrained``, as ``python -m trainer.programs.evaluate`` reads a checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from trainer.configs.load import build_config, parse_override, to_dict
from trainer.configs.data import DataConfig
from trainer.eval.frozen_codes import Pretrained, load_pretrained
from trainer.configs.job import JobConfig, OptimConfig, RunConfig
from trainer.loop import last_logged, train_in_memory
from trainer.configs.model import TASK_CONFIGS
from trainer.configs.tracking import TrackingConfig
from trainer.programs.bench.config import PretrainConfig


def task_name(model: Any) -> str:
    """The registered task (``trainer.configs.model.TASK_CONFIGS``) whose model config ``model`` is."""
    for name, config in TASK_CONFIGS.items():
        if type(model) is config:
            return name
    raise TypeError(f"no registered task takes a {type(model).__name__}")


def bench_job(model: Any, train: PretrainConfig, run_dir: Path, *, mlflow_uri: str = "", experiment: str = "cmg-bench",
              run_name: str = "", phase: str = "bench", init_from: str = "") -> JobConfig:
    """The main-job config of one bench pretraining: ``model`` (a task's model config) trained for
    ``train.steps`` steps, one checkpoint at the end, logged to MLflow only with ``mlflow_uri``."""
    return JobConfig(
        run=RunConfig(dir=str(run_dir), phase=phase, seed=train.seed, max_steps=train.steps, ckpt_every=train.steps,
                      keep_last=1, resume="", init_from=init_from, progress=False),
        data=DataConfig(kind="memory", batch_size=train.batch_size, seed=train.seed, num_workers=0),
        task=task_name(model), model=to_dict(model),
        optim=OptimConfig(lr=train.lr, grad_clip=train.grad_clip),
        tracking=TrackingConfig(enabled=bool(mlflow_uri), tracking_uri=mlflow_uri or None, experiment=experiment,
                                run_name=run_name or None))


def pretrain(job: JobConfig, features: Mapping[str, Tensor]) -> tuple[Pretrained, dict[str, float]]:
    """Run ``job`` on in-memory ``features``; the frozen final checkpoint and its last logged codebook
    statistics (``codebook/*``)."""
    checkpoint = train_in_memory(job, features)
    last = last_logged(job.run.dir)
    return load_pretrained(checkpoint), {k: v for k, v in last.items() if k.startswith("codebook/")}


def with_overrides(model: Any, overrides: Sequence[str]) -> Any:
    """``model`` with ``key=value`` overrides of its fields (``loss.mi=0.1``), validated as a job's ``model``."""
    data = to_dict(model)
    for text in overrides:
        node, update = data, parse_override(text)
        while isinstance(next(iter(update.values())), dict):      # walk down to the overridden leaf
            key = next(iter(update))
            node, update = node[key], update[key]
        node.update(update)
    return build_config(type(model), data, "model", "--set")


def with_club_lr(model: Any, train: PretrainConfig) -> Any:
    """``model`` with its CLUB estimators learning at ``train.estimator_lr``."""
    return dataclasses.replace(model, club=dataclasses.replace(model.club, lr=train.estimator_lr))
