"""The main job's typed config, and the checks that make a bad config fail before any work starts.

    run        where the run lives, how long it trains, checkpoint cadence, resume / init
    data       the shard stream (trainer.data.DataConfig): clip shards (decoded + backbones) or feature shards
    backbones  path of a backbones YAML (launch/configs/backbones/*.yaml), used with data.kind = clips
    task       which task trains ("unicode"; see trainer.tasks.TASKS): it fixes the schema of `model`
    model      the task's model and losses, typed by the task (for "unicode": trainer.models.unicode.UniCodeConfig)
               as soon as the config is built, so a bad key fails before any work; its feature_dims and
               spatial_patches are *derived* from the data source (backbone output shapes or the feature shards'
               manifest) by ``resolve_job``, so they never disagree with what the stream delivers
    optim      AdamW + schedule of the trainable model (the CLUB estimators have their own optimiser)
    tracking   MLflow (trainer.tracking.TrackingConfig)

Global batch = data.batch_size (per rank) x world size x run.grad_accum.

``resolve_job`` turns a ``JobConfig`` into the one object the job runs from (``ResolvedJob``): the config with
the model section completed, the source's feature shapes and the backbones that produce them. The loop, the
run directory's config.yaml, MLflow's params and ``trainer/main.py --print-config`` all read that object.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from trainer.backbones import BackbonesConfig, load_backbones_config
from trainer.config import ConfigError, build_config, load_config, to_dict
from trainer.data.stream import DataConfig, expand_shard_urls, read_manifest
from trainer.models.comet import COMETConfig
from trainer.models.fccid import FCCIDConfig
from trainer.models.unicode import UniCodeConfig
from trainer.tasks import TASKS, task_spec
from trainer.tracking import TrackingConfig

ModelConfig = UniCodeConfig | FCCIDConfig | COMETConfig   # the `model` section of each task in TASKS


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
    # typed by the task: TASKS[task].config (a mapping given to the constructor is typed in __post_init__)
    model: ModelConfig = field(default_factory=dict, metadata={"schema": lambda job: task_spec(job["task"]).config})
    optim: OptimConfig = field(default_factory=OptimConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"config key 'task': {self.task!r} is not one of {sorted(TASKS)}")
        schema = task_spec(self.task).config
        if not isinstance(self.model, schema):
            data = self.model if isinstance(self.model, Mapping) else to_dict(self.model)
            self.model = build_config(schema, data, "model", f"the model section of task {self.task!r}")


RESOLVED_CONFIG_FILE = "config.yaml"   # in the run directory: the resolved job config (``ResolvedJob.write``)


def read_run_config(run_dir: str | Path) -> JobConfig:
    """The job config a run resolved and saved (``ResolvedJob.write``); the defaults if it has none."""
    path = Path(run_dir) / RESOLVED_CONFIG_FILE
    return load_config(JobConfig, path if path.is_file() else None)


@dataclass
class ResolvedJob:
    """The job as it runs, resolved once (``resolve_job``)."""

    config: JobConfig                               # ``model`` with feature_dims / spatial_patches from the source
    feature_shapes: dict[str, tuple[int, ...]]      # per-segment feature shape of every modality the source gives
    backbones: BackbonesConfig | None               # the frozen backbones of the trained modalities (clip shards)

    @property
    def model(self) -> ModelConfig:
        return self.config.model

    def to_dict(self) -> dict[str, Any]:
        """The resolved job config (defaults included): config.yaml of the run directory, MLflow's params."""
        return to_dict(self.config)

    def write(self, run_dir: str | Path) -> None:
        """``<run_dir>/config.yaml``, which ``read_run_config`` (and ``--config``) loads back."""
        (Path(run_dir) / RESOLVED_CONFIG_FILE).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def describe(self) -> str:
        """``--print-config``: the resolved config as YAML, then what the data source delivers, as comments."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        shapes = ", ".join(f"{m} {tuple(s)}" for m, s in self.feature_shapes.items())
        lines = [f"# feature shapes per segment: {shapes}"]
        if self.backbones is not None:
            lines += [f"# backbone {m}: {spec['family']} {spec['name_or_path'] or '(random weights from its config)'}, "
                      f"pooling {spec['pooling']}" for m, spec in to_dict(self.backbones).items() if spec]
        return text + "\n".join(lines) + "\n"


def job_backbones(cfg: JobConfig) -> BackbonesConfig:
    """The backbones YAML restricted to the modalities the model trains (others are never loaded or run)."""
    try:
        return load_backbones_config(cfg.backbones).only(cfg.model.modalities)
    except ValueError as err:
        raise ConfigError(f"backbones ({cfg.backbones}): {err}") from err


def source_feature_shapes(cfg: JobConfig, backbones: BackbonesConfig | None) -> dict[str, tuple[int, ...]]:
    """Per-segment feature shape of each modality the data source delivers.

    Feature shards: from the manifest ``shards.extract`` wrote. Clip shards: what the backbones report once
    built (``FrozenBackbones.feature_shapes``; the loop asks the instance it trains with instead).
    """
    if cfg.data.kind == "features":
        manifest = read_manifest(expand_shard_urls(cfg.data.urls), cfg.data.manifest)[1]
        if "feature_shapes" not in manifest:
            raise ConfigError(f"data.urls: the manifest of {cfg.data.urls!r} has no feature_shapes "
                              "(is it a clip-shard manifest? set data.kind=clips)")
        return {m: tuple(s) for m, s in manifest["feature_shapes"].items()}
    if backbones is None:
        raise ConfigError(f"data.kind={cfg.data.kind!r}: give the feature shapes of an in-memory source")
    from trainer.backbones import FrozenBackbones

    return FrozenBackbones(backbones).feature_shapes()


def resolve_job(cfg: JobConfig, feature_shapes: Mapping[str, tuple[int, ...]] | None = None) -> ResolvedJob:
    """``cfg`` resolved against its data source (``feature_shapes`` when the caller already knows them)."""
    backbones = job_backbones(cfg) if cfg.data.kind == "clips" else None
    shapes = dict(feature_shapes) if feature_shapes is not None else source_feature_shapes(cfg, backbones)
    model = cfg.model
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
        model = dataclasses.replace(model, feature_dims=dims, spatial_patches=patches)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from err
    return ResolvedJob(dataclasses.replace(cfg, model=model), {m: tuple(s) for m, s in shapes.items()}, backbones)


def validate_job(cfg: JobConfig) -> None:
    """Checks that need the filesystem but no model: run them before any process group or model exists."""
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
