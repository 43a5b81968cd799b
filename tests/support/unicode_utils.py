"""A toy Uni-Code config and seeded global batches shared by the multi-process tests (tests/dist/)."""

from __future__ import annotations

import torch

from trainer.models.club import CLUBConfig
from trainer.models.encoders import EncoderConfig
from trainer.models.quantizer import QuantizerConfig
from trainer.models.unicode import UniCodeConfig

T = 4


def small_unicode_config(r_source: str = "cross_attention", **overrides) -> UniCodeConfig:
    """Audio ``(b T 12)`` and a spatial video map ``(b T 2 2 16)``, every term on, codes reset after 2 idle steps."""
    fields = dict(
        modalities=("audio", "video"),
        feature_dims={"audio": 12, "video": 16},
        spatial_patches={"video": 4},
        encoder=EncoderConfig(semantic_dim=16, specific_dim=8, ff_dim=32, dropout=0.0, se_reduction=4,
                              pool_hidden=8, specific_hidden=16, spatial_specific_channels=8, decoder_hidden=16),
        quantizer=QuantizerConfig(num_codes=16, dim=16, r_source=r_source, reset_steps=2),
        club=CLUBConfig(hidden_dim=16, inner_steps=3, lr=1e-2),
    )
    return UniCodeConfig(**fields | overrides)


def unicode_batch(step: int, clips: int, padded: bool = False) -> dict[str, torch.Tensor]:
    """The global batch of ``step``: ``clips`` clips of audio and video features (seeded by the step); ``padded``:
    clips of 3 or 4 real segments (the rest padding) and their ``segment_mask``."""
    g = torch.Generator().manual_seed(1000 + step)
    audio = torch.randn(clips, T, 12, generator=g)
    video = torch.randn(clips, T, 2, 2, 16, generator=g)
    batch = {"audio": audio, "video": video}
    if padded:
        lengths = torch.randint(T - 1, T + 1, (clips,), generator=g)
        batch["segment_mask"] = torch.arange(T) < lengths.unsqueeze(1)
    return batch
