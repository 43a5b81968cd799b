"""The checks that make a bad job config fail before any work starts, and the job resolved against its data.

The config itself (``JobConfig`` and its sections, documented there) is trainer/configs/job.py, torch-free, so
that a bad key or value fails at once (trainer/configs/load.py); the checks here read the filesystem (shard manifests,
backbones file, checkpoints) and import the modules that own those formats only when they run.

``resolve_job`` turns a ``JobConfig`` into the one object the job runs from (``ResolvedJob``): the config with
the model section completed, the source's feature shapes and the backbones that produce them. The loop, the
run directory's config.yaml, MLflow's params and ``trainer/main.py --print-config`` all read that object.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from trainer.configs.load import ConfigError, flatten, load_config, to_dict
from trainer.configs.backbones import BackbonesConfig, load_backbones_config
from trainer.configs.job import JobConfig
from trainer.configs.model import ModelConfig
from trainer.eval.during_training import probe_metric_names


if TYPE_CHECKING:
    from trainer.checkpoint_format import CheckpointMeta

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
    # where model.feature_dims / spatial_patches came from; "" = not resolved (the data cannot be read here), with
    # ``unresolved`` saying why (``resolve_job(need_data=False)``, for --print-config)
    derived_from: str = ""
    unresolved: str = ""

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
        """``--print-config``: the config the run uses as YAML, then, as comments, which values come from the data
        (and from where) and which keys this kind of data does not read."""
        cfg = self.config
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if self.derived_from:
            shapes = ", ".join(f"{m} {tuple(self.feature_shapes[m])}" for m in self.model.modalities)
            lines = [f"# model.feature_dims and model.spatial_patches: derived from {self.derived_from}",
                     f"# feature shapes per segment of the trained modalities: {shapes}"]
            unused = sorted(set(self.feature_shapes) - set(self.model.modalities))
            if unused:
                lines.append(f"# the source also delivers {unused}: not used by this model")
        else:
            lines = [f"# model.feature_dims and model.spatial_patches: derived from the data when the run starts; "
                     f"not readable here ({self.unresolved}), so the values above are the defaults"]
        if self.backbones is not None:
            lines += [f"# backbone {m}: {spec['family']} {spec['name_or_path'] or '(random weights from its config)'}, "
                      f"pooling {spec['pooling']}" for m, spec in to_dict(self.backbones).items() if spec]
        if cfg.data.kind == "clips":
            lines.append("# not read with data.kind=clips: data.feature_modalities")
        else:
            lines.append(f"# not read with data.kind={cfg.data.kind}: backbones, data.decode")
        return text + "\n".join(lines) + "\n"


def job_backbones(cfg: JobConfig) -> BackbonesConfig:
    """The backbones YAML restricted to the modalities the model trains (others are never loaded or run)."""
    try:
        backbones = load_backbones_config(cfg.backbones).only(cfg.model.modalities)
    except ValueError as err:
        raise ConfigError(f"backbones ({cfg.backbones}): {err}") from err
    check_segments(cfg, backbones)
    check_window(cfg)
    return backbones


def check_window(cfg: JobConfig) -> None:
    """A job that pads clips shorter than the window (``data.decode.min_seconds`` below ``data.decode.seconds``) needs
    a task that trains on padded seconds, and clips long enough for Cross-CPC to have a context end (more seconds than
    its K prediction steps). ``ConfigError`` naming the keys otherwise."""
    decode = cfg.data.decode
    if not decode.pads or not any(m in ("video", "audio") for m in cfg.model.modalities):
        return
    if not cfg.model.pads:
        raise ConfigError(f"data.decode.min_seconds={decode.min_seconds}: task {cfg.task!r} trains on whole windows "
                          f"only (set data.decode.min_seconds: null, or cut the clips to data.decode.seconds="
                          f"{decode.seconds})")
    steps = cfg.model.cpc_steps()
    if decode.min_seconds <= steps:
        raise ConfigError(f"data.decode.min_seconds={decode.min_seconds}: Cross-CPC predicts {steps} seconds ahead "
                          f"(model.cpc.prediction_steps), so a clip needs at least {steps + 1} s to have a context "
                          f"end; set data.decode.min_seconds >= {steps + 1}")


def check_segments(cfg: JobConfig, backbones: BackbonesConfig) -> None:
    """The modalities the model pairs segment by segment (``ModelConfig.aligned_modalities``) must come with as many
    segments: ``data.decode.seconds`` for video and audio, ``max_text_length`` tokens for a caption (``text_padding:
    max_length``); an image, or a caption pooled to one vector, is one segment, repeated along its partners'
    (``trainer.models.inputs.repeat_single_segments``). ``ConfigError`` naming the keys otherwise."""
    counts: dict[str, int | None] = {}
    for m in cfg.model.aligned_modalities():
        if m in ("video", "audio"):
            counts[f"{m} (data.decode.seconds)"] = cfg.data.decode.seconds
        elif m == "text" and backbones.text is not None and backbones.text.resolved_pooling == "tokens":
            padded = backbones.text.text_padding == "max_length"
            counts["text (max_text_length)"] = backbones.text.max_text_length if padded else None
    if len(set(counts.values())) > 1:
        given = ", ".join(f"{name}: {'each batch its longest caption' if n is None else n}"
                          for name, n in counts.items())
        raise ConfigError(f"model.modalities {list(cfg.model.modalities)}: the model pairs them segment by segment, "
                          f"but they come with different numbers of segments ({given}); in the backbones file "
                          f"{cfg.backbones}, set text_padding: max_length and max_text_length: "
                          f"{cfg.data.decode.seconds} (or pooling: mean), or change data.decode.seconds")


def source_feature_shapes(cfg: JobConfig, backbones: BackbonesConfig | None) -> dict[str, tuple[int, ...]]:
    """Per-segment feature shape of each modality the data source delivers.

    Feature shards: from the manifest ``shards.extract`` wrote. Clip shards: what the backbones report once
    built (``FrozenBackbones.feature_shapes``; the loop asks the instance it trains with instead).
    """
    if cfg.data.kind == "features":
        from trainer.data.manifest import ShardManifest
        from trainer.data.sources import expand_shard_urls

        urls = expand_shard_urls(cfg.data.urls)
        if not urls:
            raise ConfigError(f"data.urls: {cfg.data.urls!r} expands to no shard")
        manifest = ShardManifest.of_shards(urls, cfg.data.manifest)
        if manifest.feature_shapes is None:
            raise ConfigError(f"data.urls: the manifest of {cfg.data.urls!r} has no feature_shapes "
                              "(is it a clip-shard manifest? set data.kind=clips)")
        return {m: tuple(s) for m, s in manifest.feature_shapes.items()}
    if backbones is None:
        raise ConfigError(f"data.kind={cfg.data.kind!r}: give the feature shapes of an in-memory source")
    from trainer.backbones import FrozenBackbones

    return FrozenBackbones(backbones).feature_shapes()


def resolve_job(cfg: JobConfig, feature_shapes: Mapping[str, tuple[int, ...]] | None = None,
                need_data: bool = True) -> ResolvedJob:
    """``cfg`` resolved against its data source (``feature_shapes`` when the caller already knows them).

    ``need_data=False`` (``--print-config``): a source that cannot be read here (shards or their manifest not there
    yet, backbones not downloadable) leaves the model section unresolved instead of failing."""
    backbones = job_backbones(cfg) if cfg.data.kind == "clips" else None
    derived_from = (f"the backbones' output shapes ({cfg.backbones})" if cfg.data.kind == "clips" else
                    f"the manifest of data.urls ({cfg.data.manifest or 'manifest.json next to the shards'})")
    if feature_shapes is not None:
        shapes = dict(feature_shapes)
        derived_from = f"the {cfg.data.kind} source"
    else:
        try:
            shapes = source_feature_shapes(cfg, backbones)
        except (ConfigError, OSError, ValueError) as err:
            if need_data:
                raise
            return ResolvedJob(cfg, {}, backbones, derived_from="", unresolved=str(err).splitlines()[0])
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
    return ResolvedJob(dataclasses.replace(cfg, model=model), {m: tuple(s) for m, s in shapes.items()}, backbones,
                       derived_from=derived_from)


def check_batch_size(cfg: JobConfig) -> None:
    """``data.batch_size`` (per rank) must give the in-batch negatives at least one other clip."""
    terms = cfg.model.in_batch_negative_terms()
    if terms and cfg.data.batch_size < 2:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size}: task {cfg.task!r} takes the negatives of "
                          f"{', '.join(terms)} from the other clips of each rank's batch (the CLUB bound cannot "
                          "be formed from one clip, and a contrastive term over one clip is a constant 0): set "
                          "data.batch_size >= 2 (clips per rank)")


def check_resume_data(cfg: JobConfig, ckpt: Path) -> None:
    """``cfg`` must read the data that ``ckpt``'s stream position refers to (meta.json's ``data_source``): the same
    shards, shuffled the same way. Another world size, number of workers or batch size per rank is fine: that
    resume is elastic (trainer/checkpoint.py, rule 6)."""
    from trainer.checkpoint_format import CheckpointError, read_meta
    from trainer.data.sources import data_source

    try:
        saved = read_meta(ckpt).data_source
    except CheckpointError:
        return   # the resume reports it (run.resume=auto falls back to an older checkpoint)
    if not saved:   # an in-memory source, or a checkpoint written before meta.json recorded it
        return
    for key, value in data_source(cfg.data).items():
        if saved.get(key) != value:
            what = "the shard list (sha256 " + value + ")" if key == "urls" else repr(value)
            raise ConfigError(f"data.{key}: {what} is not what checkpoint {ckpt} was trained on ({saved.get(key)!r}): "
                              f"its data position refers to those data; resume with the same data.{key}, or start a "
                              "new run from its model (run.resume='' run.init_from=<checkpoint>)")


def check_checkpoint_paths(cfg: JobConfig, init_from: bool = True, data_files: bool = True) -> RunStart:
    """An explicit ``run.resume`` path and (``init_from``) ``run.init_from`` must name checkpoints that exist; the
    checkpoint a resume takes must be of the data ``cfg`` reads (``check_resume_data``) and of its model's shapes
    (``run_start``, which says what this start does with it)."""
    from trainer.checkpoint_format import MODEL_FILE, CheckpointManager, resolve_checkpoint

    resume, found = cfg.run.resume, None
    if resume == "auto":
        found = CheckpointManager(Path(cfg.run.dir) / "checkpoints").named_latest()
    elif resume:
        try:
            found = CheckpointManager(Path(cfg.run.dir) / "checkpoints").resolve(resume)
        except (FileNotFoundError, ValueError) as err:   # missing, or (trainer.checkpoint.CheckpointError) damaged
            reason = str(err)
            for prefix in (f"run.resume={resume!r}: ", f"resume={resume!r}: "):
                reason = reason.removeprefix(prefix)
            hint = "" if "run.resume" in reason else (" (give a step_N directory or a checkpoints directory, 'auto' "
                                                      "for this run's latest checkpoint, or '' to start fresh)")
            raise ConfigError(f"run.resume={resume!r}: {reason}{hint}") from None
        if found is None:
            raise ConfigError(f"run.resume={resume!r}: no complete checkpoint under {resume} (its 'latest' names "
                              "none); give a step_N directory, 'auto' or ''")
    if found is not None:
        check_resume_data(cfg, found)
    if init_from and cfg.run.init_from:
        try:
            ckpt = resolve_checkpoint(cfg.run.init_from)
        except (FileNotFoundError, ValueError) as err:   # missing, or (trainer.checkpoint.CheckpointError) damaged
            raise ConfigError(f"run.init_from={cfg.run.init_from!r}: {err}") from None
        if not (ckpt / MODEL_FILE).is_file():
            raise ConfigError(f"run.init_from={cfg.run.init_from!r}: checkpoint {ckpt} has no {MODEL_FILE} "
                              "(the model state a run starts from)")
    return run_start(cfg, found, data_files=data_files)


# ---------------------------------------------------------------------- what a start does with its run directory
# Keys a resume does not compare: where the run lives (a moved run directory is the same run) and how this start found
# the checkpoint, and what resolve_job derives from the data (compared as shapes instead, ``check_resume_shapes``).
NOT_COMPARED = ("run.dir", "run.resume", "model.feature_dims", "model.spatial_patches")


@dataclass(frozen=True)
class RunStart:
    """What a start of the job does with the run directory it finds (``run_start``; docs/training.md, "New run,
    resume, extension or nothing to do")."""

    run_dir: str
    max_steps: int                                # run.max_steps of this start
    checkpoint: Path | None = None                # the checkpoint it continues from (None: a new run)
    step: int = 0                                 # that checkpoint's step

    @property
    def nothing_to_do(self) -> bool:
        """The run already reached run.max_steps: the start exits 0 at once."""
        return self.checkpoint is not None and self.step >= self.max_steps

    def done_line(self) -> str:
        return (f"{self.run_dir}: finished at step {self.step} (run.max_steps={self.max_steps}; checkpoint "
                f"{self.checkpoint}): nothing to do")

    def describe(self) -> str:
        """One line: what the start does (``cmg launch --check``)."""
        if self.nothing_to_do:
            return self.done_line()
        if self.checkpoint is None:
            return f"{self.run_dir}: a new run to step {self.max_steps}"
        return f"{self.run_dir}: resumes from step {self.step} (checkpoint {self.checkpoint}) to step {self.max_steps}"


def config_changes(saved: Mapping[str, Any] | None, cfg: JobConfig) -> dict[str, tuple[Any, Any]]:
    """The keys of ``cfg`` whose values differ from ``saved`` (a checkpoint's ``job_config``; {} if it has none),
    as ``key -> (saved value, cfg's value)``, but those in ``NOT_COMPARED`` and those only one of them has (a key
    that the trainer which wrote the checkpoint did not have yet, or no longer has)."""
    if not saved:
        return {}
    old, new = flatten(dict(saved)), flatten(to_dict(cfg))
    return {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys())
            if old[k] != new[k] and not k.startswith(NOT_COMPARED)}


def describe_changes(changes: Mapping[str, tuple[Any, Any]]) -> str:
    """``optim.lr 0.001 -> 0.0002, ...``"""
    return ", ".join(f"{k} {old!r} -> {new!r}" if isinstance(old, str) or isinstance(new, str) else
                     f"{k} {old} -> {new}" for k, (old, new) in changes.items())


def resume_line(cfg: JobConfig, ckpt: Path, world_size: int) -> str:
    """Rank 0's one line when a job resumes from ``ckpt`` on ``world_size`` ranks: its step, the ranks that wrote
    it, an extension of a finished run, and the keys changed since the checkpoint."""
    from trainer.checkpoint_format import read_meta

    meta = read_meta(ckpt)
    line = f"resumed from step {meta.step} (checkpoint {ckpt}), {meta.world_size}->{world_size} ranks"
    changes = config_changes(meta.job_config, cfg)
    finished_at = (meta.job_config or {}).get("run", {}).get("max_steps")
    if finished_at == meta.step:
        line += f"; extends the run that finished at step {meta.step} to run.max_steps={cfg.run.max_steps}"
        changes.pop("run.max_steps", None)
    return line + (f"; changed since the checkpoint: {describe_changes(changes)}" if changes else "")


def run_start(cfg: JobConfig, ckpt: Path | None, data_files: bool = True) -> RunStart:
    """What this start does with the checkpoint ``ckpt`` that its ``run.resume`` takes (None: a new run).

    A checkpoint at ``run.max_steps``: nothing to do. Past it: a ``ConfigError`` (a resume cannot train a run back
    to fewer steps; a new run needs a new ``run.dir``). Before it: a resume (of a run stopped early, or an extension
    of a finished one), which ``check_resume_shapes`` refuses when the model's shapes changed."""
    from trainer.checkpoint_format import CheckpointError, read_meta

    start = RunStart(cfg.run.dir, cfg.run.max_steps)
    if ckpt is None:
        return start
    try:
        meta = read_meta(ckpt)
    except CheckpointError:
        return start   # the resume reports it (run.resume=auto falls back to an older checkpoint)
    if meta.step > cfg.run.max_steps:
        raise ConfigError(f"run.max_steps={cfg.run.max_steps}: {cfg.run.dir} holds a run at step {meta.step} "
                          f"(checkpoint {ckpt}), past it, and a resume cannot go back. For a new run give a new "
                          f"run.dir (to start it from this run's weights: run.init_from={ckpt}); to continue this one "
                          f"give run.max_steps >= {meta.step}")
    if meta.step < cfg.run.max_steps:
        check_resume_shapes(cfg, ckpt, meta, config_changes(meta.job_config, cfg), data_files)
    return dataclasses.replace(start, checkpoint=ckpt, step=meta.step)


def check_resume_shapes(cfg: JobConfig, ckpt: Path, meta: CheckpointMeta, changes: Mapping[str, tuple[Any, Any]],
                        data_files: bool) -> None:
    """A ``ConfigError`` naming every changed key of the model (and backbones) sections with both values when the
    model of ``cfg`` has other tensor shapes than the one checkpoint ``ckpt`` (meta.json ``meta``) holds.

    Only when something that could change them did: a key of ``model`` or ``task``, the feature shapes of the data
    (feature shards: their manifest, unless ``data_files`` is off) or the backbones of the trained modalities (clip
    shards: then the backbones are built, as for ``--print-config``, for their output shapes). Both models are built
    on the meta device (no memory, no weights) and their state dicts compared."""
    if meta.job_config is None:
        return   # written before meta.json recorded the job config: the resume reports what does not load
    saved_model = meta.job_config["model"]
    suspects = {k: v for k, v in changes.items() if k.startswith("model.") or k == "task"}
    backbone_changes = {}
    if cfg.data.kind == "clips" and meta.backbones:
        current = job_backbones(cfg)
        for m, record in meta.backbones.items():
            spec = getattr(current, m, None)
            old, new = flatten(record.get("backbone_config") or {}), flatten(to_dict(spec) if spec else {})
            backbone_changes |= {f"{m}.{k}": (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
                                 if old.get(k) != new.get(k)}
    derived = {"feature_dims": saved_model.get("feature_dims"), "spatial_patches": saved_model.get("spatial_patches")}
    if backbone_changes or (data_files and cfg.data.kind == "features"):
        resolved = resolve_job(cfg).model
        for key in derived:
            new = dict(getattr(resolved, key))
            if new != derived[key]:
                suspects[f"model.{key} (derived from the data)"] = (derived[key], new)
                derived[key] = new
    if not suspects and not backbone_changes:
        return
    try:
        old_shapes = model_shapes(meta.job_config["task"], saved_model)
    except (ConfigError, ValueError):
        return   # a model config of another trainer version: the resume reports what does not load
    new_shapes = model_shapes(cfg.task, to_dict(cfg.model) | derived)
    differ = sorted(k for k in old_shapes.keys() | new_shapes.keys() if old_shapes.get(k) != new_shapes.get(k))
    if not differ:
        return
    keys = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} here" for k, (old, new) in
                     {**suspects, **{f"{cfg.backbones}: {k}": v for k, v in backbone_changes.items()}}.items())
    tensors = ", ".join(f"{k} {old_shapes.get(k)} -> {new_shapes.get(k)}" for k in differ[:3])
    raise ConfigError(f"{cfg.run.dir}: this config's model has other shapes than checkpoint {ckpt}'s, which a resume "
                      f"continues: {keys} ({len(differ)} tensors differ, e.g. {tensors}). Resume with the "
                      "checkpoint's values, or give a new run.dir for a new run")


def model_shapes(task: str, model: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of the model (and CLUB estimators) that ``task`` builds from the resolved ``model``
    section, built on the meta device (no memory, no weights)."""
    import torch

    from trainer.tasks import task_class

    built = JobConfig(task=task, model=dict(model)).model
    with torch.device("meta"):
        trained = task_class(task)(built)
    modules = {"": trained.model} | ({"club.": trained.club} if getattr(trained, "club", None) is not None else {})
    return {prefix + k: tuple(v.shape) for prefix, module in modules.items() for k, v in module.state_dict().items()}


def validate_job(cfg: JobConfig, *, data_files: bool = True, init_from: bool = True) -> RunStart:
    """Checks that need the filesystem but no model: run them before any process group or model exists. Returns what
    this start does with the run directory (``RunStart``: a new run, a resume, or nothing to do).

    ``data_files=False`` skips the shards' manifest; ``init_from=False`` skips ``run.init_from``. The continual
    launcher passes both for a phase whose data the compute nodes read later, or whose ``init_from`` is a
    checkpoint the previous phase has yet to write (``trainer/programs/continual.py``).
    """
    from trainer.data.manifest import ShardManifest
    from trainer.data.sources import expand_shard_urls

    try:
        cfg.data.validate()
    except ValueError as err:
        raise ConfigError(f"data: {err}") from err
    check_batch_size(cfg)
    if cfg.data.kind == "clips":
        if not Path(cfg.backbones).is_file():
            raise ConfigError(f"backbones: file not found: {cfg.backbones}")
        job_backbones(cfg)
    # resampled clip shards need no manifest: the stream draws shards without counting their samples
    if data_files and (not cfg.data.resampled or cfg.data.kind == "features"):
        try:
            urls = expand_shard_urls(cfg.data.urls)
        except ValueError as err:
            raise ConfigError(f"data.urls: {cfg.data.urls!r} does not expand: {err}") from None
        if not urls:
            raise ConfigError(f"data.urls: {cfg.data.urls!r} expands to no shard")
        try:
            manifest = ShardManifest.of_shards(urls, cfg.data.manifest)
        except ValueError as err:
            raise ConfigError(f"data: {err}") from err
        if not cfg.data.resampled:   # the epoch plan counts every shard's samples from the manifest
            try:
                manifest.counts(urls)
            except ValueError as err:
                raise ConfigError(f"data.urls: {err} (every shard of data.urls must be listed in the manifest "
                                  "written with the shards: check the brace range, or data.manifest)") from None
    start = check_checkpoint_paths(cfg, init_from=init_from, data_files=data_files)
    check_training_probe(cfg, data_files=data_files)
    json.dumps(dataclasses.asdict(cfg))  # every value must be serialisable for the run directory and MLflow
    return start


def check_training_probe(cfg: JobConfig, data_files: bool = True) -> None:
    """``eval`` (the probe during pretraining) and ``run.keep_best``, which ranks checkpoints by its metrics."""
    probe = cfg.eval
    if probe.every:
        if not probe.urls:
            raise ConfigError("eval.urls: eval.every > 0 needs labelled validation shards")
        if probe.kind != cfg.data.kind:
            raise ConfigError(f"eval.kind: {probe.kind!r} must be data.kind ({cfg.data.kind!r}): validation clips go "
                              "through the job's own frozen backbones, validation features must match the job's")
        if data_files:
            from trainer.data.manifest import ShardManifest
            from trainer.data.sources import expand_shard_urls

            try:
                urls = expand_shard_urls(probe.urls)
                if not urls:
                    raise ValueError("expands to no shard")
                ShardManifest.of_shards(urls, probe.manifest)
            except ValueError as err:
                raise ConfigError(f"eval.urls: {probe.urls!r}: {err}") from None
    if cfg.run.keep_best:
        names = probe_metric_names(tuple(getattr(cfg.model, "modalities", ())))
        if not probe.every:
            raise ConfigError(f"run.keep_best: {cfg.run.keep_best!r} ranks checkpoints by a probe metric, but the "
                              "probe is off: set eval.every and eval.urls")
        if cfg.run.keep_best not in names:
            raise ConfigError(f"run.keep_best: {cfg.run.keep_best!r} is not a metric the probe logs for this model "
                              f"(one of {names})")
