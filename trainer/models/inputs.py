"""Feature inputs shared by every model: the per-modality shape check, token masks, default feature shapes.

A model receives a dict keyed by modality name: ``(b t c)`` vectors, or for a modality listed in
``spatial_patches`` a map ``(b t h w c)`` / ``(b t p c)`` (e.g. VGG-19 pool5, 7×7×512), and optionally
``"<modality>_mask"`` ``(b t)`` bool, True = real token (text), and ``"segment_mask"`` ``(b t)`` bool, True = a real
second of the clip, False = padding past the end of a clip shorter than the window (``data.decode.min_seconds``).
The two differ on purpose: a token mask only hides padding tokens from attention (every position is still a
segment for the losses and the codebook, as in the paper's fixed 10-token captions), while a padded second is
nothing at all: it is hidden from attention and left out of every loss term, the codebook statistics and the code
counts, so a clip padded to the window trains as the same clip unpadded (tests/unit/test_padded_windows.py).
Uni-Code, FCCID and the downstream encoding all check their inputs here, so a bad tensor gets the same message
naming its key wherever it enters.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


SEGMENT_MASK = "segment_mask"


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


def real_segments(features: Mapping[str, Tensor], segments: tuple[int, int]) -> Tensor | None:
    """``features["segment_mask"]`` checked to be ``segments`` = (b t); None if absent (every segment is real)."""
    mask = features.get(SEGMENT_MASK)
    if mask is not None and tuple(mask.shape) != tuple(segments):
        raise ValueError(f"features['{SEGMENT_MASK}'] must be {tuple(segments)}, got {tuple(mask.shape)}")
    return mask


def attention_mask(token_mask: Tensor | None, real: Tensor | None) -> Tensor | None:
    """The key-padding mask of an encoder: the real tokens of the real segments (either mask may be None)."""
    if token_mask is None or real is None:
        return real if token_mask is None else token_mask
    return token_mask & real


def repeat_single_segments(features: Mapping[str, Tensor], modalities: tuple[str, ...]) -> dict[str, Tensor]:
    """``features`` with each modality of one segment (an image: ``(b 1 ...)``) repeated along the segments of the
    others, where those share one length T > 1 (a caption's T tokens): the terms that pair segments across
    modalities (CMCM, the CLUB bound's negatives, Cross-CPC) then pair the image with each token, as an image is
    as true of every word of its caption. Other inputs are returned as given."""
    lengths = {m: features[m].shape[1] for m in modalities}
    longer = {t for t in lengths.values() if t > 1}
    if len(longer) != 1 or 1 not in lengths.values():
        return dict(features)
    segments = longer.pop()
    out = dict(features)
    for m, t in lengths.items():
        if t == 1:
            x = features[m]
            out[m] = x.expand(x.shape[0], segments, *x.shape[2:]).contiguous()
    return out
