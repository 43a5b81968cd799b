"""A pretraining checkpoint -> a frozen encoder; labelled features -> frozen quantised codes.

    pretrained = load_pretrained("runs/demo")               # run dir, checkpoints dir, step dir or model.pt
    data = read_shard_features(data_cfg, backbones)         # clip shards (decoded + backbones) or feature shards
    data = read_public_features(PublicFeatureConfig(...))   # or the public AVE h5/npz layout
    split = encode_split(pretrained.model, data)            # trainer.eval.probes.CodeSplit
    encoded = encode_features(pretrained.model, features, ["video"])   # codes, code vectors, semantic vectors

Every downstream encoding goes through ``encode_segments`` (evaluation, ``trainer.pretrained.CMGModel`` and
``cmg encode``), so the codes of a clip are the same whichever of them produced them.

Any registered task's checkpoint works: ``meta.json["task"]`` (default "unicode") picks the model config
class and the task (``trainer.tasks.task_class``) that builds the model, and codes come from the model's
``segment_codes(features, modality)`` (``trainer.models.segment_coder``): Uni-Code quantises z^m per
segment, FCCID sends every segment through its coarse path (seed 003 §3.1), so both keep the time axis.

Frozen means: ``eval()`` (no dropout; the quantizer neither accumulates MM-EMA statistics nor counts usage,
and its ``step_`` refuses to run) and ``requires_grad_(False)`` on every parameter, and codes are computed
under ``torch.no_grad``. The codebook, EMA state and encoder weights are therefore exactly the checkpoint's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainer.checkpoint_format import META, MODEL_FILE, CheckpointMeta, read_meta, resolve_checkpoint
from trainer.checkpoint import read_model_state
from trainer.configs.load import ConfigError, build_config
from trainer.data.features import PublicFeatureConfig, PublicFeatureDataset, collate_feature_clips
from trainer.configs.data import DataConfig, FEATURE_MODALITIES
from trainer.data.sources import expand_shard_urls
from trainer.data.stream import feature_batches
from trainer.eval.probes import CodeSplit
from trainer.data.decode import BACKGROUND, TIMED_MODALITIES
from trainer.models.inputs import SEGMENT_MASK, mask_key
from trainer.models.segment_coder import SegmentEncoding
from trainer.configs.model import model_config_class
from trainer.tasks import task_class



def model_config_from_dict(data: Mapping[str, Any], source: str, task: str = "unicode") -> Any:
    """A resolved model config (``meta.json["model_config"]``) back into the typed, validated config of
    ``task`` (``UniCodeConfig`` for "unicode", ``FCCIDConfig`` for "fccid", ...)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: model_config must be a mapping, got {type(data).__name__}")
    try:
        config_class = model_config_class(task)
    except KeyError as err:
        raise ConfigError(f"{source}: {err.args[0]}") from None
    return build_config(config_class, data, "model_config", source)


@dataclass
class Pretrained:
    model: nn.Module                     # the task's model (with segment_codes), frozen: eval mode, no grads
    meta: CheckpointMeta                 # the checkpoint's meta.json
    checkpoint: Path

    @property
    def run_dir(self) -> Path:
        """``<run>`` of ``<run>/checkpoints/step_N``."""
        return self.checkpoint.parent.parent

    @property
    def step(self) -> int:
        return self.meta.step


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: what every downstream task sees."""
    model.eval()
    model.requires_grad_(False)
    return model


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model's encoders compute in, and take features in: their parameters' (float32 unless cast, as
    ``CMGModel.to(dtype)`` does). The quantizer holds buffers only, and its codebook and distances stay float32
    whatever this is (``MMEMAQuantizer.distances``)."""
    return next(model.parameters()).dtype


def frozen_model(task: str, model_config: Mapping[str, Any], state: Mapping[str, Tensor], config_source: str,
                 weights_source: str) -> nn.Module:
    """The model of ``task`` rebuilt from a resolved ``model_config`` (as meta.json holds it) through the task
    registry, with the weights ``state``, frozen. Errors name the files they came from (the ``*_source``)."""
    cfg = model_config_from_dict(model_config, config_source, task)
    model = task_class(task)(cfg).model
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{weights_source} does not fit the model of {config_source}: {err}") from err
    if not bool(model.quantizer.initialized):
        raise ValueError(f"{weights_source}: the codebook was never initialised (a checkpoint before any training "
                         "step)")
    return freeze(model)


def load_pretrained(path: str | Path) -> Pretrained:
    """Rebuild the model of ``meta.json["task"]`` (default "unicode") from ``meta.json["model_config"]``
    and load ``model.pt`` (weights only)."""
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    if meta.model_config is None:
        raise KeyError(f"{ckpt / META} has no model_config")
    model = frozen_model(meta.task, meta.model_config, read_model_state(ckpt), str(ckpt / META),
                         str(ckpt / MODEL_FILE))
    return Pretrained(model, meta, ckpt)



# ---------------------------------------------------------------------- labelled features

@dataclass
class LabelledFeatures:
    """Clips with features and labels, in memory (clips in the same order in every field)."""

    # modality -> (n t c) | (n t p c); text (n l c) + text_mask (n l); whole clips of several lengths: padded to the
    # longest, with segment_mask (n t) True on each clip's real seconds
    features: dict[str, Tensor]
    segment_labels: dict[str, Tensor]    # audio / video: (n t) int64 class per segment, −1 = background
    clip_label: Tensor                   # (n) int64
    keys: list[str] = field(default_factory=list)
    # whole clips: the seconds of the windows their video and audio are encoded in (the training's
    # data.decode.seconds; ``encode_segments``); None: every clip is one window
    window: int | None = None

    def __len__(self) -> int:
        return int(self.clip_label.shape[0])

    def subset(self, index: Tensor) -> LabelledFeatures:
        """The clips at ``index`` (1-d int64), in that order."""
        return LabelledFeatures({k: v[index] for k, v in self.features.items()},
                                {k: v[index] for k, v in self.segment_labels.items()}, self.clip_label[index],
                                [self.keys[i] for i in index.tolist()] if self.keys else [], self.window)


def split_indices(n: int, fractions: Sequence[float], seed: int) -> dict[str, Tensor]:
    """A seeded partition of ``range(n)`` into train/val/test with the given fractions (test takes the rest)."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three positive numbers summing to 1, got {list(fractions)}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = round(fractions[0] * n), round(fractions[1] * n)
    if min(n_train, n_val, n - n_train - n_val) < 1:
        raise ValueError(f"{n} clips are too few for split fractions {list(fractions)}")
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def _padded_cat(parts: list[Tensor], fill: float | bool = 0) -> Tensor:
    """``(b t ...)`` tensors concatenated along b, each padded with ``fill`` along t to the longest."""
    longest = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0) * (p.ndim - 2) + (0, longest - p.shape[1]), value=fill)
                      for p in parts])


def _concat(batches: list[dict[str, Any]], modalities: Sequence[str], window: int | None) -> LabelledFeatures:
    """Feature batches (trainer/data format) -> one ``LabelledFeatures``, sorted by clip key.

    Text tokens are zero-padded to the longest caption of all batches (each batch pads to its own), whole clips to
    the longest clip (``segment_mask`` False and labels background past a clip's end).
    """
    keys = [k for b in batches for k in b["key"]]
    order = torch.tensor(sorted(range(len(keys)), key=keys.__getitem__), dtype=torch.int64)
    features: dict[str, Tensor] = {}
    for name in [*modalities, *(mask_key(m) for m in modalities), SEGMENT_MASK]:
        parts = [b[name] for b in batches if name in b]
        if parts:
            features[name] = _padded_cat(parts, False if name == SEGMENT_MASK else 0)[order]
    labels = {m: _padded_cat([b[f"{m}_labels"] for b in batches], BACKGROUND)[order] for m in ("audio", "video")}
    return LabelledFeatures(features, labels, torch.cat([b["clip_label"] for b in batches])[order],
                            [keys[i] for i in order.tolist()], window if SEGMENT_MASK in features else None)


def _drop_pads(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch without the clips that only fill the epoch's last batches (``is_pad``)."""
    keep = ~batch["is_pad"]
    rows = keep.tolist()
    out = {}
    for name, value in batch.items():
        if isinstance(value, Tensor) and value.shape[:1] == keep.shape:
            out[name] = value[keep]
        elif isinstance(value, list):
            out[name] = [v for v, k in zip(value, rows) if k]
    return out


def _require_labels(batch: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the shard and key of the batch's clips without a json member (no labels)."""
    flags = batch["labelled"].tolist()
    unlabelled = [f"{url}:{key}.json" for url, key, labelled in zip(batch["url"], batch["key"], flags) if not labelled]
    if unlabelled:
        shown = ", ".join(unlabelled[:3]) + (f" and {len(unlabelled) - 3} more" if len(unlabelled) > 3 else "")
        raise ValueError(f"clips without labels (no json member): {shown}; downstream evaluation needs labels, so "
                         "the downstream set must be labelled (--data <labelled shards>)")


def read_shard_features(cfg: DataConfig, modalities: Sequence[str], backbones=None) -> LabelledFeatures:
    """Every clip of one pass over clip shards (through ``backbones``) or feature shards, in key order.

    The stream runs in this process as rank 0 of 1, without shuffling; padded repeats are dropped. Every clip
    must have labels (a json member): the first batch with an unlabelled clip raises ``ValueError``. Clips are read
    whole, every second of any length (``feature_batches(..., whole_clips=True)``), and encoded later in windows of
    ``cfg.decode.seconds`` (``LabelledFeatures.window``), as ``CMGModel.encode`` codes them.
    """
    shards = expand_shard_urls(cfg.urls)
    cfg = dataclasses.replace(cfg, resampled=False, shuffle_buffer=0, shuffle_shards=False,
                              num_workers=min(cfg.num_workers, len(shards)))
    if cfg.kind == "features":
        cfg.feature_modalities = [m for m in modalities if m in FEATURE_MODALITIES]
    batches = []
    with torch.no_grad():
        for batch in feature_batches(cfg, backbones, rank=0, world_size=1, whole_clips=cfg.kind == "clips"):
            batch = _drop_pads(batch)
            _require_labels(batch)
            batches.append(batch)
    if not batches:
        raise ValueError(f"{cfg.urls}: no clips")
    return _concat(batches, modalities, cfg.decode.seconds)


def read_public_features(cfg: PublicFeatureConfig) -> LabelledFeatures:
    """One split (``cfg.split``; None = every clip) of the public AVE h5/npz layout."""
    dataset = PublicFeatureDataset(cfg)
    clips = [dataset[i] for i in range(len(dataset))]
    if not clips:
        raise ValueError(f"{cfg.root}: split {cfg.split!r} has no clips")
    return _concat([collate_feature_clips(clips)], ("audio", "video"), None)


# ---------------------------------------------------------------------- codes

@torch.no_grad()
def encode_segments(model: nn.Module, modality: str, x: Tensor, mask: Tensor | None = None,
                    batch_size: int = 256, real: Tensor | None = None, window: int | None = None) -> SegmentEncoding:
    """Frozen encoding of one modality, ``x (n t ...)`` -> codes ``(n t)``, code vectors ẑ and semantic vectors z
    ``(n t D)``: ``model.segment_encoding`` in batches (any task's model); ``mask (n t)`` is the modality's token
    mask. The model must be in eval mode (see ``freeze``).

    Whole clips (``real (n t)``: each clip's real seconds, padding after them; or clips longer than ``window``): each
    clip is encoded in consecutive windows of ``window`` seconds of its own (the last one shorter), each window on
    its own and windows of one length together, as ``CMGModel.encode_windows`` does; padded seconds get code -1 and
    zero vectors."""
    if model.training:
        raise RuntimeError("encoding needs a frozen model in eval mode (trainer.eval.frozen_codes.freeze)")
    dtype = compute_dtype(model)
    if real is None and (window is None or x.shape[1] <= window):
        parts = []
        for start in range(0, x.shape[0], batch_size):
            part = slice(start, start + batch_size)
            features = {modality: x[part].to(dtype)}
            if mask is not None:
                features[mask_key(modality)] = mask[part].bool()
            parts.append(model.segment_encoding(features, modality))
        return SegmentEncoding(*(torch.cat(column) for column in zip(*parts)))
    lengths = real.sum(1).tolist() if real is not None else [x.shape[1]] * x.shape[0]
    window = window or x.shape[1]
    by_length: dict[int, list[tuple[int, int]]] = {}
    for i, length in enumerate(lengths):
        for start in range(0, length, window):
            by_length.setdefault(min(window, length - start), []).append((i, start))
    codes = torch.full(x.shape[:2], -1, dtype=torch.int64)
    quantized = semantic = None
    for length, pieces in by_length.items():
        for first in range(0, len(pieces), batch_size):
            chunk = pieces[first:first + batch_size]
            windows = torch.stack([x[i, start:start + length] for i, start in chunk]).to(dtype)
            encoded = model.segment_encoding({modality: windows}, modality)
            if quantized is None:
                quantized = encoded.quantized.new_zeros(*x.shape[:2], encoded.quantized.shape[-1])
                semantic = encoded.semantic.new_zeros(*x.shape[:2], encoded.semantic.shape[-1])
            for j, (i, start) in enumerate(chunk):
                codes[i, start:start + length] = encoded.codes[j]
                quantized[i, start:start + length] = encoded.quantized[j]
                semantic[i, start:start + length] = encoded.semantic[j]
    return SegmentEncoding(codes.to(quantized.device), quantized, semantic)


def encode_modality(model: nn.Module, modality: str, x: Tensor, mask: Tensor | None = None,
                    batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Frozen codes of one modality: ``x (n t ...)`` -> (ẑ ``(n t D)`` code vectors, ``(n t)`` code indices)."""
    encoded = encode_segments(model, modality, x, mask, batch_size)
    return encoded.quantized, encoded.codes


def encode_features(model: nn.Module, features: Mapping[str, Tensor], modalities: Sequence[str],
                    window: int | None = None) -> dict[str, SegmentEncoding]:
    """Frozen encodings of ``modalities`` from ``features`` keyed by the model's modality names (with each one's
    ``<modality>_mask`` where the features have it; video and audio of whole clips with their ``segment_mask`` and
    in windows of ``window`` seconds: ``encode_segments``)."""
    missing = [m for m in modalities if m not in features]
    if missing:
        raise KeyError(f"the data have no {missing} features (have {sorted(features)})")
    return {m: encode_segments(model, m, features[m], features.get(mask_key(m)),
                               real=features.get(SEGMENT_MASK) if m in TIMED_MODALITIES else None,
                               window=window if m in TIMED_MODALITIES else None)
            for m in modalities}


def encode_split(model: nn.Module, data: LabelledFeatures, modalities: Sequence[str] | None = None) -> CodeSplit:
    """Frozen codes of every (or the given) modality of ``data``, with its labels, as a probe split."""
    if modalities is None:
        modalities = [m for m in model.downstream_modalities if m in data.features]
    encoded = encode_features(model, data.features, modalities, data.window)
    return CodeSplit({m: e.quantized for m, e in encoded.items()}, {m: e.codes for m, e in encoded.items()},
                     {m: data.segment_labels[m] for m in modalities if m in data.segment_labels}, data.clip_label,
                     data.features.get(SEGMENT_MASK))
