"""Toy COMET sizes, config, batches and a trained quantizer shared by the COMET tests (tests/unit/test_comet.py,
tests/dist/test_comet_dist.py)."""

from __future__ import annotations

import torch

from trainer.configs.model import (
    AdapterConfig, CLUBConfig, COMETConfig, EWCConfig, EncoderConfig, QuantizerConfig, ReplayConfig
)
from trainer.models.quantizer import MMEMAQuantizer

T, D = 5, 16
DIMS = {"video": 12, "audio": 8, "text": 10, "image": 6}


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


def comet_config(modalities=("video", "text"), new_codes: int = 0, protect: bool = False, **overrides) -> COMETConfig:
    fields = dict(
        modalities=modalities, feature_dims={m: DIMS[m] for m in modalities}, spatial_patches={},
        encoder=EncoderConfig(semantic_dim=D, specific_dim=8, ff_dim=32, dropout=0.0, specific_hidden=16,
                              decoder_hidden=16),
        quantizer=QuantizerConfig(num_codes=8, dim=D, reset_steps=3), club=CLUBConfig(hidden_dim=16, inner_steps=1),
        adapter=AdapterConfig(experts=3), replay=ReplayConfig(new_codes=new_codes, protect_inherited=protect),
        ewc=EWCConfig(fisher_batches=1))
    return COMETConfig(**fields | overrides)


def comet_batch(modalities, b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, T, DIMS[m], generator=g) for m in modalities}


def trained_quantizer(all_reduce=identity, local_rows: slice = slice(None)) -> MMEMAQuantizer:
    """Two MM-EMA steps (with a reset) on seeded data; ``local_rows`` picks this rank's clips."""
    q = MMEMAQuantizer(QuantizerConfig(num_codes=6, dim=4, reset_steps=1), ("audio", "video"), all_reduce,
                       identity).train()
    g = torch.Generator().manual_seed(0)
    q.codebook.copy_(torch.randn(6, 4, generator=g))
    q.ema_sum.copy_(q.codebook)
    q.ema_count.fill_(1.0)
    q.initialized.fill_(True)
    for _ in range(2):
        semantic = {m: torch.randn(4, 3, 4, generator=g)[local_rows] for m in ("audio", "video")}
        q.accumulate_(semantic, {m: q.quantize(z).codes for m, z in semantic.items()})
        q.step_()
    return q
