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
from typing import Any

import yaml

from trainer.configs.load import ConfigError, load_config, to_dict
from trainer.configs.backbones import BackbonesConfig, load_backbones_config
from trainer.configs.job import JobConfig
from trainer.configs.model import ModelConfig
from trainer.eval.during_training import probe_metric_names


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


def check_checkpoint_paths(cfg: JobConfig, init_from: bool = True) -> None:
    """An explicit ``run.resume`` path and (``init_from``) ``run.init_from`` must name checkpoints that exist; the
    checkpoint a resume takes must be of the data ``cfg`` reads (``check_resume_data``)."""
    from trainer.checkpoint_format import MODEL_FILE, CheckpointManager, resolve_checkpoint

    resume = cfg.run.resume
    if resume == "auto":
        latest = CheckpointManager(Path(cfg.run.dir) / "checkpoints").named_latest()
        if latest is not None:
            check_resume_data(cfg, latest)
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
        check_resume_data(cfg, found)
    if init_from and cfg.run.init_from:
        try:
            ckpt = resolve_checkpoint(cfg.run.init_from)
        except (FileNotFoundError, ValueError) as err:   # missing, or (trainer.checkpoint.CheckpointError) damaged
            raise ConfigError(f"run.init_from={cfg.run.init_from!r}: {err}") from None
        if not (ckpt / MODEL_FILE).is_file():
            raise ConfigError(f"run.init_from={cfg.run.init_from!r}: checkpoint {ckpt} has no {MODEL_FILE} "
                              "(the model state a run starts from)")


def validate_job(cfg: JobConfig, *, data_files: bool = True, init_from: bool = True) -> None:
    """Checks that need the filesystem but no model: run them before any process group or model exists.

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
    check_checkpoint_paths(cfg, init_from=init_from)
    check_training_probe(cfg, data_files=data_files)
    json.dumps(dataclasses.asdict(cfg))  # every value must be serialisable for the run directory and MLflow


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
