"""The main job's typed config (torch-free): what ``--config`` YAML files and ``key=value`` overrides set.

    run        where the run lives, how long it trains, checkpoint cadence, resume / init
    data       the shard stream (trainer.configs.data.DataConfig): clip shards (decoded + backbones) or feature shards
    backbones  path of a backbones YAML (launch/configs/backbones/*.yaml), used with data.kind = clips
    task       which task trains ("unicode"; see trainer.configs.model.TASK_CONFIGS): it fixes the schema of `model`
    model      the task's model and losses, typed by the task (for "unicode": trainer.configs.model.UniCodeConfig)
               as soon as the config is built, so a bad key fails before any work; its feature_dims and
               spatial_patches are *derived* from the data source (backbone output shapes or the feature shards'
               manifest) by ``trainer.job.resolve_job``, so they never disagree with what the stream delivers
    optim      AdamW + schedule of the trainable model (the CLUB estimators have their own optimiser)
    tracking   MLflow (trainer.configs.tracking.TrackingConfig)
    eval       the downstream probe during pretraining (trainer.configs.eval.TrainingProbeConfig)

Global batch = data.batch_size (per rank) x world size x run.grad_accum.

Relative paths (the fields declared ``metadata={"path": True}``: run.dir, data.urls, backbones, ...) written in a
config file are read from the repository root, those given as ``key=value`` overrides from the current directory
(trainer/configs/load.py, "Relative paths"; docs/data.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from trainer.configs.load import build_config, to_dict
from trainer.configs.data import DataConfig
from trainer.configs.eval import TrainingProbeConfig
from trainer.configs.model import TASK_CONFIGS, ModelConfig, model_config_class
from trainer.configs.tracking import TrackingConfig


@dataclass
class RunConfig:
    # run directory: resolved config, checkpoints, MLflow sqlite store
    dir: str = field(default="runs/default", metadata={"path": True})
    phase: str = "pretrain"            # tag of this phase (continual chains name theirs)
    seed: int = 0                      # model init (same on every rank) and per-rank RNG streams (seed + rank)
    max_steps: int = 1000              # optimizer steps of the whole run (a resumed run continues to it)
    grad_accum: int = 1                # micro-batches per optimizer step
    ckpt_every: int = 500              # steps between checkpoints (also one at the end and on a stop request)
    keep_last: int = 2                 # complete checkpoints kept
    # "auto": latest complete checkpoint of this run if any | "" | a path. A checkpoint at max_steps: nothing to do
    # (exit 0); past it, or of a model with other shapes: refused (exit 2; docs/training.md, "New run, resume, ...")
    resume: str = field(default="auto", metadata={"path": True})
    # a checkpoint (or checkpoints dir) whose model.pt starts the model
    init_from: str = field(default="", metadata={"path": True})
    progress: bool = True              # tqdm bar on rank 0
    # a collective that waits longer than this for a rank (stalled, stopped, vanished) fails the job loudly;
    # it must exceed the longest legitimate wait: rank 0 writing and hashing a checkpoint, a slow first batch,
    # a downstream probe (eval.every)
    collective_timeout_s: float = 600.0
    # a probe metric (eval.every; e.g. eval/accuracy_cross_mean, higher is better): its best checkpoint is kept
    # apart from keep-last pruning and named in <run.dir>/checkpoints/best.json ("" = off)
    keep_best: str = ""
    # torch.compile the task's forward and loss terms (CodebookTask.compile_). Off by default: on the 2-core CPU at
    # the paper's shapes the compiled step was slower than eager's chunked spatial paths (README, Performance)
    compile: bool = False
    # glibc malloc keeps freed memory for the next step instead of unmapping it (runtime.keep_freed_host_memory):
    # 1.03-1.13x faster steps on the CPU at the paper's shapes, peak RSS 2-7 % higher
    keep_freed_host_memory: bool = True
    # torch's deterministic kernels (runtime.prepare_process_environment): on a GPU, scatter-adds such as the MM-EMA's
    # index_add_ otherwise sum in the order their atomics land, and a resumed run is not bit-identical to an
    # uninterrupted one (docs/training.md, "Devices and precision"); the CPU's kernels are deterministic already
    deterministic: bool = False

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum", "ckpt_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"run.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.collective_timeout_s < math.inf:
            raise ValueError(f"run.collective_timeout_s must be a finite number of seconds > 0, "
                             f"got {self.collective_timeout_s}")


@dataclass
class OptimConfig:
    lr: float = 4e-4                   # seed 000 §B.1
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.0          # cosine floor, as a fraction of lr
    grad_clip: float = 1.0             # max global gradient norm (0 = off)

    def __post_init__(self) -> None:
        # `not (a <= x)` rather than `x < a`: NaN fails every comparison and is refused too
        # lr 0 is allowed: a phase that must not move its weights (tests/system/test_slurm_jobs.py) trains at lr 0
        if not 0.0 <= self.lr < math.inf:
            raise ValueError(f"optim.lr must be a finite number >= 0, got {self.lr}")
        for i, beta in enumerate(self.betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"optim.betas[{i}] must be in [0, 1), got {beta}")
        if not 0.0 <= self.weight_decay < math.inf:
            raise ValueError(f"optim.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.grad_clip < math.inf:
            raise ValueError(f"optim.grad_clip must be a finite number >= 0 (0 = off), got {self.grad_clip}")


@dataclass
class JobConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    backbones: str = field(default="launch/configs/backbones/tiny.yaml", metadata={"path": True})
    # which task trains: it fixes the keys of the model section (its name is looked up in TASK_CONFIGS)
    task: str = field(default="unicode", metadata={"choices": TASK_CONFIGS})
    # typed by the task: TASK_CONFIGS[task] (a mapping given to the constructor is typed in __post_init__)
    model: ModelConfig = field(default_factory=dict, metadata={"schema": lambda job: model_config_class(job["task"])})
    optim: OptimConfig = field(default_factory=OptimConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: TrainingProbeConfig = field(default_factory=TrainingProbeConfig)   # downstream probe during pretraining

    def __post_init__(self) -> None:
        if self.task not in TASK_CONFIGS:
            raise ValueError(f"config key 'task': {self.task!r} is not one of {sorted(TASK_CONFIGS)}")
        schema = model_config_class(self.task)
        if not isinstance(self.model, schema):
            data = self.model if isinstance(self.model, Mapping) else to_dict(self.model)
            self.model = build_config(schema, data, "model", f"the model section of task {self.task!r}")
