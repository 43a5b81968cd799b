"""Downstream heads on frozen quantised codes (seed 000 §B.2; ALGORITHMS.md §5).

Both are the appendix's "two Linear layers" (with a ReLU between them, else they would collapse into
one linear map) applied to every segment's code vector:
- ``EventClassifier`` (AVE, cross-modal event classification): per-segment class scores, max over T
  -> one score vector per clip, trained with softmax cross-entropy on the clip label (or, for the
  weakly supervised cross-dataset task, with sigmoid BCE on the clip's multi-hot label);
- ``SegmentTagger`` (AVVP, cross-modal event localisation): per-segment multi-label scores (sigmoid).
"""

from __future__ import annotations


import torch
from torch import Tensor, nn
from trainer.configs.eval import HeadConfig


class SegmentTagger(nn.Module):
    """``(b t d)`` codes -> ``(b t c)`` per-segment logits: Linear -> ReLU -> Linear (AVVP head). ``real`` ``(b t)``
    (whole clips padded to the longest; None: all real) is for the caller's loss and metrics: a segment's logits do
    not depend on the others."""

    def __init__(self, in_dim: int, num_classes: int, cfg: HeadConfig):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, cfg.hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout),
                                    nn.Linear(cfg.hidden_dim, num_classes))

    def forward(self, codes: Tensor, real: Tensor | None = None) -> Tensor:
        del real
        return self.layers(codes)


class EventClassifier(SegmentTagger):
    """``(b t d)`` codes -> ``(b c)`` clip logits: the tagger's per-segment logits, max over T (AVE head), over the
    real segments ``real`` ``(b t)`` marks (None: all).

    ``segment_logits`` exposes the scores before the max, which the cross-dataset task reads per segment.
    """

    def segment_logits(self, codes: Tensor) -> Tensor:
        return super().forward(codes)

    def forward(self, codes: Tensor, real: Tensor | None = None) -> Tensor:
        logits = self.segment_logits(codes)
        if real is not None:
            logits = logits.masked_fill(~real.unsqueeze(-1), -torch.inf)
        return logits.amax(dim=1)
