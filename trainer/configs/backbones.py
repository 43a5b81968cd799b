"""Typed configuration of the frozen backbones (one ``BackboneConfig`` per modality).

A backbone is either loaded with ``from_pretrained`` (``name_or_path``: a hub id or a local directory,
``revision`` pins the hub commit; ``HF_HUB_OFFLINE=1`` is honoured by transformers itself) or built
with random weights from ``config`` (a transformers config dict, seeded so every rank and every run
gets the same weights; nothing is downloaded). Exactly one of the two must be given.

The paper's own extractors, VGG-19 and VGGish (``NATIVE_FAMILIES``, trainer/backbones/vgg.py), are not
transformers models: ``name_or_path`` is a local ``.pth`` state dict (torchvision's / torchvggish's files,
read with ``torch.load(weights_only=True)``) and ``config`` holds the fields of ``VGGConfig`` /
``VGGishConfig`` (``{}``: the full-size architecture).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# family -> modality; the family picks the transformers class and the preprocessing recipe. A video family also
# encodes the image modality (one image as one segment of one frame: trainer/backbones/video.py, ImageBackbone).
FAMILY_MODALITY: dict[str, str] = {
    "clip_vision": "video",
    "vit": "video",
    "vgg19": "video",
    "ast": "audio",
    "wav2vec2": "audio",
    "hubert": "audio",
    "whisper": "audio",
    "vggish": "audio",
    "bert": "text",
    "clip_text": "text",
}

POOLINGS: dict[str, tuple[str, ...]] = {
    # video: one vector per frame from the CLS token or the mean of patch tokens, or keep the patch grid
    "video": ("cls", "mean", "patch"),
    # audio: mean of the tokens that fall inside each 1-s segment, or the CLS token (AST, segment window)
    "audio": ("mean", "cls"),
    # text: token features (b l d), or one sentence vector kept as a length-1 sequence (b 1 d)
    "text": ("tokens", "mean", "cls"),
}

# built from trainer/backbones/vgg.py, weights from a local .pth file (no transformers class, no hub)
NATIVE_FAMILIES = ("vgg19", "vggish")
# a family whose model has no CLS token defaults to its spatial map instead of the modality's first pooling
_DEFAULT_POOLING = {"vgg19": "patch"}

DTYPES = ("auto", "float32", "bfloat16", "float16")
AUDIO_WINDOWS = ("segment", "clip")


@dataclass
class BackboneConfig:
    family: str = ""
    name_or_path: str | None = None   # hub id or local dir; "package:<module>" calls <module>.get_model_path()
    config: dict[str, Any] | None = None   # transformers config dict -> random-init model (no download)
    revision: str | None = None       # hub revision (branch, tag or commit) for name_or_path
    seed: int = 0                     # seed of the random init when built from ``config``
    layer: int | None = None          # None: the model's final output; k: hidden_states[k] (0 = embeddings)
    pooling: str = ""                 # "" -> the modality's first entry in POOLINGS (vgg19: patch)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"   # auto: bfloat16 on CUDA, float32 on CPU
    # overrides of the model's processor settings; vggish also takes pca_params: torchvggish's PCA .pth
    processor: dict[str, Any] = field(default_factory=dict)
    max_batch: int = 256              # most images / audio windows / captions per encoder forward
    # video
    frames_per_segment: int | None = None   # frames encoded per 1-s segment (evenly picked); None: all decoded
    # audio
    sample_rate: int = 16000          # rate of the decoded audio; must match the feature extractor's
    # segment: encode each 1-s segment alone; clip: encode the whole clip once, split tokens by time
    audio_window: Literal["segment", "clip"] = "segment"
    # text
    tokenizer: str | None = None      # dir / hub id (AutoTokenizer) or a WordPiece vocab .txt; None: name_or_path
    max_text_length: int = 64
    # "longest": pad to the batch's longest caption; "max_length": always max_text_length tokens, so text
    # has a fixed time axis (the AVT setting pairs 10 tokens with 10 one-second segments)
    text_padding: Literal["longest", "max_length"] = "longest"

    @property
    def modality(self) -> str:
        return FAMILY_MODALITY[self.family]

    @property
    def resolved_pooling(self) -> str:
        return self.pooling or _DEFAULT_POOLING.get(self.family) or POOLINGS[self.modality][0]

    def validate(self, where: str = "backbone") -> None:
        if self.family not in FAMILY_MODALITY:
            raise ValueError(f"{where}: unknown family {self.family!r}; known: {sorted(FAMILY_MODALITY)}")
        if (self.name_or_path is None) == (self.config is None):
            raise ValueError(f"{where}: give exactly one of name_or_path (pretrained) or config (random init)")
        if self.resolved_pooling not in POOLINGS[self.modality]:
            raise ValueError(f"{where}: pooling {self.pooling!r} is not one of {POOLINGS[self.modality]} "
                             f"for a {self.modality} backbone")
        if self.dtype not in DTYPES:
            raise ValueError(f"{where}: dtype {self.dtype!r} is not one of {DTYPES}")
        if self.audio_window not in AUDIO_WINDOWS:
            raise ValueError(f"{where}: audio_window {self.audio_window!r} is not one of {AUDIO_WINDOWS}")
        if self.modality == "audio" and self.audio_window == "clip" and self.resolved_pooling == "cls":
            raise ValueError(f"{where}: pooling 'cls' needs audio_window 'segment' (one CLS per segment)")
        if self.frames_per_segment is not None and self.frames_per_segment < 1:
            raise ValueError(f"{where}: frames_per_segment must be >= 1 or null")
        if self.family in NATIVE_FAMILIES:
            self._validate_native(where)
        elif "pca_params" in self.processor:
            raise ValueError(f"{where}: processor.pca_params is a vggish setting, not {self.family}'s")
        if self.max_batch < 1 or self.max_text_length < 2:
            raise ValueError(f"{where}: max_batch must be >= 1 and max_text_length >= 2")

    def _validate_native(self, where: str) -> None:
        if self.revision is not None or self.layer is not None:
            raise ValueError(f"{where}: {self.family} loads a local .pth file and returns its final output: "
                             f"revision and layer must be null")
        if self.resolved_pooling == "cls":
            raise ValueError(f"{where}: pooling 'cls' needs a CLS token, which {self.family} has not")
        if self.family == "vggish" and set(self.processor) - {"pca_params"}:
            raise ValueError(f"{where}: vggish's front end is fixed (vggish_params.py); processor takes only "
                             f"pca_params, got {sorted(self.processor)}")


# the modalities a run can encode (the keys of a backbones YAML); the family of each must encode this one
BACKBONE_MODALITIES = ("video", "audio", "image", "text")
FAMILY_KIND = {"video": "video", "audio": "audio", "image": "video", "text": "text"}


@dataclass
class BackbonesConfig:
    """The frozen encoders of a run, keyed by modality; a missing modality is not encoded."""

    video: BackboneConfig | None = None
    audio: BackboneConfig | None = None
    image: BackboneConfig | None = None   # a video family (clip_vision, vit, vgg19) applied to one image
    text: BackboneConfig | None = None

    def items(self) -> list[tuple[str, BackboneConfig]]:
        return [(m, c) for m in BACKBONE_MODALITIES if (c := getattr(self, m)) is not None]

    def only(self, modalities: Sequence[str]) -> BackbonesConfig:
        """The same config without the encoders of modalities outside ``modalities`` (never run them)."""
        missing = [m for m in modalities if m in BACKBONE_MODALITIES and getattr(self, m) is None]
        if missing:
            raise ValueError(f"backbones: no encoder configured for modalities {missing}")
        return dataclasses.replace(self, **{m: None for m in BACKBONE_MODALITIES if m not in modalities})

    def validate(self, where: str = "backbones") -> None:
        for modality, cfg in self.items():
            cfg.validate(f"{where}.{modality}")
            if cfg.modality != FAMILY_KIND[modality]:
                raise ValueError(f"{where}.{modality}: family {cfg.family!r} encodes {cfg.modality}, "
                                 f"not {modality}")
        if self.image is not None and self.image.frames_per_segment is not None:
            raise ValueError(f"{where}.image: frames_per_segment must be null (an image is one frame)")


def resolve_model_path(name_or_path: str) -> str:
    """``package:<module>`` -> ``<module>.get_model_path()`` (models shipped inside a PyPI package)."""
    if name_or_path.startswith("package:"):
        module = importlib.import_module(name_or_path.removeprefix("package:"))
        return str(module.get_model_path())
    return name_or_path


def backbone_config_from_dict(d: dict[str, Any], where: str, base_dir: Path | None = None) -> BackboneConfig:
    known = {f.name for f in dataclasses.fields(BackboneConfig)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    cfg = BackboneConfig(**d)
    if base_dir is not None:
        # "./x" and "../x" are relative to the YAML file; anything else is a hub id or an absolute path
        def resolve(value: Any) -> Any:
            if isinstance(value, str) and value.startswith(("./", "../")):
                return str((base_dir / value).resolve())
            return value

        cfg.name_or_path, cfg.tokenizer = resolve(cfg.name_or_path), resolve(cfg.tokenizer)
        cfg.processor = {key: resolve(value) for key, value in cfg.processor.items()}
    cfg.validate(where)
    return cfg


def backbones_config_from_dict(d: dict[str, Any], where: str = "backbones",
                               base_dir: Path | None = None) -> BackbonesConfig:
    unknown = set(d) - set(BACKBONE_MODALITIES)
    if unknown:
        raise ValueError(f"{where}: unknown modalities {sorted(unknown)}; known: {', '.join(BACKBONE_MODALITIES)}")
    cfg = BackbonesConfig(**{m: backbone_config_from_dict(v, f"{where}.{m}", base_dir)
                             for m, v in d.items() if v is not None})
    cfg.validate(where)
    return cfg


def load_backbones_config(path: str | Path) -> BackbonesConfig:
    """Read a backbones YAML file (top-level keys: video, audio, image, text)."""
    path = Path(path)
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with keys video/audio/image/text, got {type(data).__name__}")
    return backbones_config_from_dict(data, where=str(path), base_dir=path.parent)


def config_to_dict(cfg: BackbonesConfig) -> dict[str, Any]:
    return {m: dataclasses.asdict(c) for m, c in cfg.items()}
