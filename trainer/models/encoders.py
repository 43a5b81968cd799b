"""Per-modality encoders and decoders of Uni-Code (CMG eq. 1 and the reconstruction of eq. 3).

- ``SemanticEncoder`` Φ^m: x^m -> z^m ``(b t D)``: linear projection + a small post-LN transformer
  (2 layers, 4 heads, no positional encoding by default, as in the authors' code). Inputs that keep a
  spatial map, ``(b t p c)``, are first squeezed to one vector per segment by channel (SE) gating and
  spatial attention pooling.
- ``SpecificEncoder`` Ψ^m: x^m -> z̄^m ``(b t d̄)``: an MLP; for spatial maps a per-patch projection, mean
  over patches, then a linear layer (small on purpose: the authors' 72M-parameter conv stack for the
  video-specific branch dominated their step time).
- ``Decoder`` D^m(ẑ^m, z̄^m) -> x̂^m in the feature's own shape; spatial maps are decoded per patch from
  the segment vector plus a learned patch embedding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trainer.models.spatial import gated_attention_pool, patch_decode
from trainer.configs.model import EncoderConfig


class ChannelGate(nn.Module):
    """Squeeze-and-excitation over channels: the gates sigmoid(W2 relu(W1 mean_p x)), ``(b t p c)`` -> ``(b t c)``;
    the gated map is x · gates (formed chunk by chunk inside ``AttentionPool``)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.excite = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return self.excite(x.mean(dim=-2))


class AttentionPool(nn.Module):
    """Spatial attention pooling of the gated map u = x · gates: Σ_p softmax_p(w·tanh(W u_p)) u_p.
    ``x`` ``(b t p c)`` (a frozen feature), ``gates`` ``(b t c)`` -> ``(b t c)`` (``trainer.models.spatial``)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(channels, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor, gates: Tensor) -> Tensor:
        first, _, last = self.score
        pooled = gated_attention_pool(x.flatten(0, -3), gates.flatten(0, -2),
                                      first.weight, first.bias, last.weight, last.bias)
        return pooled.view(*x.shape[:-2], x.shape[-1])


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """``(length dim)``: sin on even, cos on odd dims, wavelengths 2π … 10000·2π (Vaswani et al.)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class SemanticEncoder(nn.Module):
    """Φ^m. ``forward(x, mask)``: x ``(b t c)`` or, if ``spatial``, ``(b t p c)``; mask ``(b t)`` bool,
    True = real token (text), used as the attention key-padding mask. Returns z ``(b t D)``."""

    def __init__(self, in_dim: int, cfg: EncoderConfig, spatial: bool):
        super().__init__()
        self.spatial = spatial
        if spatial:
            self.gate = ChannelGate(in_dim, cfg.se_reduction)
            self.pool = AttentionPool(in_dim, cfg.pool_hidden)
        self.project = nn.Linear(in_dim, cfg.semantic_dim)
        self.positional = cfg.positional
        if cfg.positional == "learned":
            self.position_table = nn.Parameter(torch.randn(cfg.max_len, cfg.semantic_dim) * 0.02)
        elif cfg.positional == "sinusoidal":
            self.register_buffer("position_table", sinusoidal_table(cfg.max_len, cfg.semantic_dim), persistent=False)
        layer = nn.TransformerEncoderLayer(
            cfg.semantic_dim, cfg.heads, cfg.ff_dim, cfg.dropout, batch_first=True, norm_first=False)
        # nested tensors would zero the padded positions in eval mode only; keep train and eval identical
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.spatial:
            x = self.pool(x, self.gate(x))
        h = self.project(x)
        if self.positional != "none":
            if h.shape[1] > self.position_table.shape[0]:
                raise ValueError(f"sequence of {h.shape[1]} segments exceeds encoder max_len "
                                 f"{self.position_table.shape[0]}")
            h = h + self.position_table[: h.shape[1]]
        return self.transformer(h, src_key_padding_mask=None if mask is None else ~mask)


class SpecificEncoder(nn.Module):
    """Ψ^m. ``(b t c)`` or, if ``spatial``, ``(b t p c)`` -> z̄ ``(b t d̄)``."""

    def __init__(self, in_dim: int, cfg: EncoderConfig, spatial: bool):
        super().__init__()
        self.spatial = spatial
        if spatial:
            self.patch = nn.Sequential(nn.Linear(in_dim, cfg.spatial_specific_channels), nn.ReLU())
            self.out = nn.Linear(cfg.spatial_specific_channels, cfg.specific_dim)
        else:
            self.mlp = nn.Sequential(
                nn.Linear(in_dim, cfg.specific_hidden), nn.ReLU(), nn.Linear(cfg.specific_hidden, cfg.specific_dim))

    def forward(self, x: Tensor) -> Tensor:
        if self.spatial:
            return self.out(self.patch(x).mean(dim=-2))
        return self.mlp(x)


class Decoder(nn.Module):
    """D^m(ẑ, z̄): ``(b t D)``, ``(b t d̄)`` -> x̂ ``(b t c)``, or ``(b t p c)`` for ``patches`` > 0."""

    def __init__(self, out_dim: int, cfg: EncoderConfig, patches: int):
        super().__init__()
        self.hidden = nn.Linear(cfg.semantic_dim + cfg.specific_dim, cfg.decoder_hidden)
        if patches:
            self.patch_embedding = nn.Parameter(torch.randn(patches, cfg.decoder_hidden) * 0.02)
        else:
            self.register_parameter("patch_embedding", None)
        self.out = nn.Linear(cfg.decoder_hidden, out_dim)

    def forward(self, quantized: Tensor, specific: Tensor) -> Tensor:
        h = self.hidden(torch.cat([quantized, specific], dim=-1))  # (b t h)
        if self.patch_embedding is not None:   # one query per patch position: relu(h + embedding_p), decoded
            decoded = patch_decode(h.flatten(0, -2), self.patch_embedding, self.out.weight, self.out.bias)
            return decoded.view(*h.shape[:-1], *decoded.shape[1:])
        return self.out(torch.relu(h))
