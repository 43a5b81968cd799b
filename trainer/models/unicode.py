"""The Uni-Code model (CMG seed 001 §4): Φ^m, Ψ^m, the shared MM-EMA codebook, D^m and Cross-CPC.

``UniCodeModel`` is the module a DeepSpeed engine wraps: every trainable parameter of the main loss is
in it (encoders, decoders, the CPC LSTMs and W_k), and the quantizer is a submodule holding buffers only.
The CLUB estimators are deliberately NOT part of it: they have their own optimiser and are owned by the
task (``trainer.tasks.unicode``).

Features come as a dict keyed by modality name (layouts and checks: ``trainer.models.inputs``); the
optional ``"<modality>_mask"`` ``(b t)`` bool marks real tokens (text) and only masks attention keys: every
position, padding included, is a segment for the losses and the codebook, as in the paper's AVT setting
where a caption is a fixed 10-token sequence. The optional ``"segment_mask"`` ``(b t)`` marks the real seconds of
clips padded to the window: padded seconds are hidden from attention and from the codebook statistics here, and
from every loss term in the task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor, nn

from trainer import distributed
from trainer.models.cpc import CrossCPC
from trainer.models.encoders import Decoder, SemanticEncoder, SpecificEncoder
from trainer.models.inputs import SEGMENT_MASK, attention_mask, feature_input, feature_mask, mask_key, real_segments
from trainer.models.quantizer import MMEMAQuantizer
from trainer.models.segment_coder import SegmentCoder
from trainer.configs.model import UniCodeConfig


class UniCodeModel(SegmentCoder, nn.Module):
    """Encoders, shared codebook, decoders and Cross-CPC, keyed by modality name.

    ``forward(features)`` returns a dict of modality-keyed dicts:
        semantic        z^m        (b t D)
        specific        z̄^m        (b t d̄)
        quantized       ẑ^m        (b t D), straight-through
        codes                      (b t) int64
        codewords       sg e^m     (b t D), pre-update codebook
        distances                  (b t M) squared distances to every code (carry z's gradient)
        reconstruction  x̂^m        shape of features[m]
        cpc_predictions W_k c_t    (b s K D), s = T − K   (only with use_cpc)
    In training mode it also initialises the codebook on the first call and accumulates this
    micro-batch's MM-EMA statistics; the codebook itself changes only in ``quantizer.step_()``.
    Downstream, ``segment_codes(features, m)`` quantises z^m segment by segment (``trainer.models.segment_coder``).
    """

    def __init__(
        self,
        cfg: UniCodeConfig,
        all_reduce_fn: Callable[[Tensor], Tensor] = distributed.all_reduce_sum_,
        all_gather_fn: Callable[[Tensor], Tensor] = distributed.all_gather_cat,
    ):
        super().__init__()
        cfg = cfg.effective()
        self.cfg = cfg
        self.modalities = cfg.modalities
        enc = cfg.encoder
        self.semantic = nn.ModuleDict(
            {m: SemanticEncoder(cfg.feature_dims[m], enc, self._patches(m) > 0) for m in cfg.modalities})
        self.specific = nn.ModuleDict(
            {m: SpecificEncoder(cfg.feature_dims[m], enc, self._patches(m) > 0) for m in cfg.modalities})
        self.decoder = nn.ModuleDict(
            {m: Decoder(cfg.feature_dims[m], enc, self._patches(m)) for m in cfg.modalities})
        self.quantizer = MMEMAQuantizer(cfg.quantizer, cfg.modalities, all_reduce_fn, all_gather_fn)
        self.cpc_steps = cfg.cpc.steps_for(len(cfg.modalities))
        if cfg.use_cpc:
            self.cpc = CrossCPC(cfg.modalities, enc.semantic_dim, self.cpc_steps, cfg.cpc.lstm_layers)
        else:
            self.cpc = None

    def _patches(self, modality: str) -> int:
        return self.cfg.spatial_patches.get(modality, 0)

    def _input(self, features: Mapping[str, Tensor], modality: str) -> Tensor:
        """features[modality] checked and viewed as ``(b t c)`` or ``(b t p c)``."""
        return feature_input(features, modality, self.cfg.feature_dims, self.cfg.spatial_patches)

    def segment_semantic(self, features: Mapping[str, Tensor], modality: str) -> Tensor:
        """z^m ``(b t D)`` of one modality (CMG eq. 1), from ``features[modality]`` and its optional mask;
        other keys are ignored."""
        if modality not in self.modalities:
            raise KeyError(f"the model has no '{modality}' encoder (modalities {list(self.modalities)})")
        x = self._input(features, modality)
        return self.semantic[modality](x, attention_mask(feature_mask(features, modality, x.shape[:2]),
                                                         real_segments(features, x.shape[:2])))

    def _check_keys(self, features: Mapping[str, Tensor]) -> None:
        masks = [mask_key(m) for m in self.modalities] + [SEGMENT_MASK]
        unexpected = sorted(set(features) - set(self.modalities) - set(masks))
        if unexpected:
            raise KeyError(f"unexpected feature keys {unexpected}; expected modalities {list(self.modalities)} "
                           f"and optional masks {masks}")

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        self._check_keys(features)
        inputs = {m: self._input(features, m) for m in self.modalities}
        lengths = {m: x.shape[:2] for m, x in inputs.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"modalities must share (batch, segments); got {dict(lengths)}")
        real = real_segments(features, next(iter(lengths.values())))
        masks = {m: attention_mask(feature_mask(features, m, lengths[m]), real) for m in self.modalities}

        semantic = {m: self.semantic[m](inputs[m], masks[m]) for m in self.modalities}   # CMG eq. 1
        specific = {m: self.specific[m](inputs[m]) for m in self.modalities}
        if self.training:
            self.quantizer.maybe_init_(semantic, real)
        quantized = {m: self.quantizer.quantize(semantic[m]) for m in self.modalities}     # CMG eq. 2
        codes = {m: q.codes for m, q in quantized.items()}
        if self.training:
            self.quantizer.accumulate_(semantic, codes, real)
        out = {
            "semantic": semantic,
            "specific": specific,
            "quantized": {m: q.quantized for m, q in quantized.items()},
            "codes": codes,
            "codewords": {m: q.codewords for m, q in quantized.items()},
            "distances": {m: q.distances for m, q in quantized.items()},
            "reconstruction": {
                m: self.decoder[m](quantized[m].quantized, specific[m]).reshape(features[m].shape)
                for m in self.modalities},
        }
        if self.cpc is not None:
            out["cpc_predictions"] = self.cpc(semantic)
        return out
