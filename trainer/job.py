"""The main job's typed config, and the checks that make a bad config fail before any work starts.

    run        where the run lives, how long it trains, checkpoint cadence, resume / init
    data       the shard stream (trainer.data.DataConfig): clip shards (decoded + backbones) or feature shards
    backbones  path of a backbones YAML (launch/configs/backbones/*.yaml), used with data.kind = clips
    task       which task trains ("unicode"; see trainer.tasks.TASKS): it fixes the schema of `model`
    model      the task's model and losses (for "unicode": trainer.models.unicode.UniCodeConfig), validated
               against that schema before any work; its feature_dims and spatial_patches are *derived* from
               the data source (backbone output shapes or the feature shards' manifest), so they never
               disagree with what the stream delivers
    optim      AdamW + schedule of the trainable model (the CLUB estimators have their own optimiser)
    tracking   MLflow (trainer.tracking.TrackingConfig)

Global batch = data.batch_size (per rank) x world size x run.grad_accum.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainer.backbones import load_backbones_config
from trainer.config import ConfigError, build_config, to_dict
from trainer.data.stream import DataConfig, expand_shard_urls, read_manifest
from trainer.tasks import TASKS, task_spec
from trainer.tracking import TrackingConfig


@dataclass
class RunConfig:
    dir: str = "runs/default"          # run directory: resolved config, checkpoints, MLflow sqlite store
    phase: str = "pretrain"            # tag of this phase (continual chains name theirs)
    seed: int = 0                      # model init (same on every rank) and per-rank RNG streams (seed + rank)
    max_steps: int = 1000              # optimizer steps of the whole run (a resumed run continues to it)
    grad_accum: int = 1                # micro-batches per optimizer step
    ckpt_every: int = 500              # steps between checkpoints (also one at the end and on a stop request)
    keep_last: int = 2                 # complete checkpoints kept
    resume: str = "auto"               # "auto": latest complete checkpoint of this run if any | "" | a path
    init_from: str = ""                # a checkpoint (or checkpoints dir) whose model.pt starts the model
    progress: bool = True              # tqdm bar on rank 0

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum", "ckpt_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"run.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class OptimConfig:
    lr: float = 4e-4                   # seed 000 §B.1
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.0          # cosine floor, as a fraction of lr
    grad_clip: float = 1.0             # max global gradient norm (0 = off)


@dataclass
class JobConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    backbones: str = "launch/configs/backbones/tiny.yaml"
    task: str = "unicode"
    model: dict[str, Any] = field(default_factory=dict)   # typed by the task: see model_config()
    optim: OptimConfig = field(default_factory=OptimConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def feature_shapes_of_source(cfg: JobConfig) -> dict[str, tuple[int, ...]]:
    """Per-segment feature shape of each modality the data source delivers, read without loading any model.

    Clip shards: from the backbones' transformers configs (a tiny probe forward is not needed: the shapes
    are what the backbone classes report once built, so this builds them — the same objects the job uses,
    cached per process). Feature shards: from the manifest ``shards.extract`` wrote.
    """
    if cfg.data.kind == "features":
        manifest = read_manifest(expand_shard_urls(cfg.data.urls), cfg.data.manifest)[1]
        if "feature_shapes" not in manifest:
            raise ConfigError(f"data.urls: the manifest of {cfg.data.urls!r} has no feature_shapes "
                              "(is it a clip-shard manifest? set data.kind=clips)")
        return {m: tuple(s) for m, s in manifest["feature_shapes"].items()}
    from trainer.backbones import FrozenBackbones

    return FrozenBackbones(job_backbones(cfg)).feature_shapes()


def job_backbones(cfg: JobConfig):
    """The backbones YAML restricted to the modalities the model trains (others are never loaded or run)."""
    try:
        return load_backbones_config(cfg.backbones).only(model_config(cfg).modalities)
    except ValueError as err:
        raise ConfigError(f"backbones ({cfg.backbones}): {err}") from err


def model_config(cfg: JobConfig) -> Any:
    """The ``model`` section as the task's typed config (an unknown/ill-typed key names ``model.<key>``)."""
    if cfg.task not in TASKS:
        raise ConfigError(f"config key 'task': {cfg.task!r} is not one of {sorted(TASKS)}")
    try:
        return build_config(task_spec(cfg.task).config, cfg.model, "model", "the config file or an override")
    except ValueError as err:
        raise ConfigError(str(err)) from err


def resolve_model_config(cfg: JobConfig, shapes: dict[str, tuple[int, ...]]) -> Any:
    """The typed ``model`` config with feature_dims / spatial_patches taken from the data source's shapes."""
    model = model_config(cfg)
    missing = [m for m in model.modalities if m not in shapes]
    if missing:
        raise ConfigError(f"model.modalities {list(model.modalities)}: the data source delivers only "
                          f"{sorted(shapes)} (missing {missing}; check data.kind, data.feature_modalities "
                          f"or the backbones file {cfg.backbones})")
    dims, patches = {}, {}
    for m in model.modalities:
        shape = shapes[m]
        dims[m] = shape[-1]
        if len(shape) == 2:   # (p d): a patch grid per segment -> the spatial path of the semantic encoder
            patches[m] = shape[0]
    try:
        return dataclasses.replace(model, feature_dims=dims, spatial_patches=patches)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from err


def resolved_dict(cfg: JobConfig, model: Any) -> dict[str, Any]:
    """The job config as saved and logged: the ``model`` section fully resolved (defaults included)."""
    return {**to_dict(cfg), "model": to_dict(model)}


def validate_job(cfg: JobConfig) -> None:
    """Checks that need the filesystem but no model: run them before any process group or model exists."""
    model_config(cfg)
    try:
        cfg.data.validate()
    except ValueError as err:
        raise ConfigError(f"data: {err}") from err
    if cfg.data.kind == "clips":
        if not Path(cfg.backbones).is_file():
            raise ConfigError(f"backbones: file not found: {cfg.backbones}")
        job_backbones(cfg)
    if not cfg.data.resampled or cfg.data.kind == "features":
        try:
            read_manifest(expand_shard_urls(cfg.data.urls), cfg.data.manifest)
        except ValueError as err:
            raise ConfigError(f"data: {err}") from err
    json.dumps(dataclasses.asdict(cfg))  # every value must be serialisable for the run directory and MLflow
