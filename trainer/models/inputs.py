"""Feature inputs shared by every model: the per-modality shape check, token masks, default feature shapes.

A model receives a dict keyed by modality name: ``(b t c)`` vectors, or for a modality listed in
``spatial_patches`` a map ``(b t h w c)`` / ``(b t p c)`` (e.g. VGG-19 pool5, 7×7×512), and optionally
``"<modality>_mask"`` ``(b t)`` bool, True = real token (text). Uni-Code, FCCID and the downstream encoding
all check their inputs here, so a bad tensor gets the same message naming its key wherever it enters.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def default_feature_dims() -> dict[str, int]:
    """Channel dim c per modality of the paper's backbones: VGGish audio, VGG-19 video, BERT text."""
    return {"audio": 128, "video": 512, "text": 768}


def default_spatial_patches() -> dict[str, int]:
    """Patches p per segment of the modalities that keep a spatial map: VGG-19 pool5 is 7×7."""
    return {"video": 49}


def mask_key(modality: str) -> str:
    """Feature key of a modality's token mask, ``(b t)`` bool, True = real token."""
    return f"{modality}_mask"


def feature_input(features: Mapping[str, Tensor], modality: str, feature_dims: Mapping[str, int],
                  spatial_patches: Mapping[str, int]) -> Tensor:
    """``features[modality]`` checked against ``feature_dims`` / ``spatial_patches`` and viewed as
    ``(b t c)``, or ``(b t p c)`` for a spatial modality (a ``(b t h w c)`` grid is flattened to h·w = p)."""
    if modality not in features:
        raise KeyError(f"features lack modality '{modality}' (got keys {sorted(features)})")
    x = features[modality]
    channels, patches = feature_dims[modality], spatial_patches.get(modality, 0)
    if patches and x.ndim == 5:
        x = x.flatten(2, 3)
    expected = (patches, channels) if patches else (channels,)
    if x.ndim != 2 + len(expected) or tuple(x.shape[2:]) != expected:
        layout = (f"(b t {patches} {channels}) or (b t h w {channels}) with h·w = {patches}" if patches
                  else f"(b t {channels})")
        raise ValueError(f"features['{modality}'] must be {layout}, got {tuple(features[modality].shape)}")
    return x


def feature_mask(features: Mapping[str, Tensor], modality: str, segments: tuple[int, int]) -> Tensor | None:
    """``features["<modality>_mask"]`` checked to be ``segments`` = (b t) of its modality; None if absent."""
    key = mask_key(modality)
    mask = features.get(key)
    if mask is not None and tuple(mask.shape) != tuple(segments):
        raise ValueError(f"features['{key}'] must be {tuple(segments)}, got {tuple(mask.shape)}")
    return mask
