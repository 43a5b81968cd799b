"""A toy Uni-Code config and seeded global batches shared by the multi-process tests (tests/dist/), and the toy encoder
widths that fccid_utils.py builds on."""

from __future__ import annotations

import torch

from trainer.configs.model import CLUBConfig, EncoderConfig, QuantizerConfig, UniCodeConfig

T = 4


def small_encoder_config() -> EncoderConfig:
    """The toy encoder widths of the Uni-Code and the FCCID test configs (FCCID's ``encoder``: its fine encoders)."""
    return EncoderConfig(semantic_dim=16, specific_dim=8, ff_dim=32, dropout=0.0, se_reduction=4, pool_hidden=8,
                         specific_hidden=16, spatial_specific_channels=8, decoder_hidden=16)


def small_unicode_config(r_source: str = "cross_attention", **overrides) -> UniCodeConfig:
    """Audio ``(b T 12)`` and a spatial video map ``(b T 2 2 16)``, every term on, codes reset after 2 idle steps."""
    fields = dict(
        modalities=("audio", "video"),
        feature_dims={"audio": 12, "video": 16},
        spatial_patches={"video": 4},
        encoder=small_encoder_config(),
        quantizer=QuantizerConfig(num_codes=16, dim=16, r_source=r_source, reset_steps=2),
        club=CLUBConfig(hidden_dim=16, inner_steps=3, lr=1e-2),
    )
    return UniCodeConfig(**fields | overrides)


def unicode_batch(step: int, clips: int, padded: bool = False) -> dict[str, torch.Tensor]:
    """The global batch of ``step``: ``clips`` clips of audio and video features (seeded by the step); ``padded``:
    every third clip has 3 real segments, the others 4 (the rest padding), and their ``segment_mask`` — so the two
    halves of a batch of 8 hold 14 and 15 real segments, and each rank weighs its mean by its share.

    The lengths are fixed, and were run at native, avx2 and default kernels (about 4 ulps used of the 1024 allowed).
    With lengths drawn per step, at ``ATEN_CPU_CAPABILITY=default`` only, the video encoder's gradient of step 5 on
    2 ranks parted from one process's by 1.5 % while every code, loss term and codebook statistic agreed: not
    explained yet (docs/diagnosis.md §6 has the reproduction)."""
    g = torch.Generator().manual_seed(1000 + step)
    audio = torch.randn(clips, T, 12, generator=g)
    video = torch.randn(clips, T, 2, 2, 16, generator=g)
    batch = {"audio": audio, "video": video}
    if padded:
        lengths = T - (torch.arange(clips) % 3 == 0).long()
        batch["segment_mask"] = torch.arange(T) < lengths.unsqueeze(1)
    return batch
