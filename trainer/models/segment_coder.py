"""The contract every codebook model keeps with the rest of the trainer (``UniCodeModel``, ``FCCIDModel``,
``COMETModel``).

A ``SegmentCoder`` is an ``nn.Module`` with
- ``modalities``: the names of the modalities its training forward takes (``features`` keys);
- ``downstream_modalities``: every modality it gives codes for downstream; the training ones unless a model
  carries more (COMET keeps the modalities of earlier phases);
- ``trained_pairs``: the modality pairs it was pretrained on, seed 004 §4.3's "seen" pairs (the others are "unseen");
- ``quantizer``: the shared ``MMEMAQuantizer`` submodule (buffers only; its ``quantizer.*`` entries of the
  model's state dict are the codebook and its EMA statistics);
- ``segment_semantic(features, modality)``: the ``(b t D)`` vectors a modality's code sequence is chosen for;
- ``segment_codes(features, modality)``: their nearest codes (CMG eq. 2);
- ``segment_encoding(features, modality)``: codes, code vectors and the semantic vectors together (one pass).

Evaluation (``trainer.eval.frozen_codes``), the TOC relabelling (``trainer.eval.toc``) and the checkpoint format
(``trainer.checkpoint``) rely on these names and nothing else of a model.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from itertools import combinations
from typing import NamedTuple

from torch import Tensor


class SegmentEncoding(NamedTuple):
    """One modality's downstream encoding, per segment."""

    codes: Tensor       # (b t) int64: index of the nearest code
    quantized: Tensor   # (b t D) e[codes], detached
    semantic: Tensor    # (b t D) z^m, the vectors the codes were chosen for


class SegmentCoder(abc.ABC):
    """Mixin of the downstream contract; a model class lists it before ``nn.Module``."""

    modalities: tuple[str, ...]

    @property
    def downstream_modalities(self) -> tuple[str, ...]:
        """Every modality this model encodes downstream (a continual model adds the carried ones)."""
        return self.modalities

    @property
    def trained_pairs(self) -> set[frozenset[str]]:
        """Every pair of the modalities one job trains together (a continual model adds those of earlier phases)."""
        return {frozenset(p) for p in combinations(self.downstream_modalities, 2)}

    @abc.abstractmethod
    def segment_semantic(self, features: Mapping[str, Tensor], modality: str) -> Tensor:
        """The ``(b t D)`` semantic vectors of one modality that ``segment_codes`` quantises."""

    def segment_encoding(self, features: Mapping[str, Tensor], modality: str) -> SegmentEncoding:
        """Codes, code vectors and semantic vectors of one modality (see ``SegmentEncoding``).

        No state changes in any mode; for downstream use call it on a frozen model (eval mode, no_grad).
        """
        semantic = self.segment_semantic(features, modality)
        quantized = self.quantizer.quantize(semantic)
        return SegmentEncoding(quantized.codes, quantized.codewords, semantic)

    def segment_codes(self, features: Mapping[str, Tensor], modality: str) -> tuple[Tensor, Tensor]:
        """``codes (b t)`` int64 and ``quantized (b t D)`` = e[codes] (detached) of one modality."""
        encoding = self.segment_encoding(features, modality)
        return encoding.codes, encoding.quantized
