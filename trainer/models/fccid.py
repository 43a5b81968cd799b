"""FCCID: fine and coarse cross-modal information disentangling (seed 003 §3.1; ALGORITHMS.md §2).

Audio and video are aligned per 1-s segment; text is holistic. So the two kinds are disentangled and
aligned at two granularities, and only the coarse level is quantised:

Fine level (FCID; audio and video; per segment; continuous, no codebook):
    f^m = Φ_f^m(x^m)  (b t D),  f̄^m = Ψ_f^m(x^m)  (b t d̄)                              seed 003 eq. 1
    the task adds CLUB(f^m; f̄^m) (A_CLUB, V_CLUB; eq. 3) and Cross-CPC between f^a and f^v (eq. 4).
Coarse level (CCID; one vector per clip):
    h^a = P^{va→vat}(mean_t f^a), h^v = P^{va→vat}(mean_t f^v)   one projection shared by audio and video
    h^te = P^{te→vat}(mean over real tokens of x^te)              text's own projection
    c^m = Φ_c^s(h^m)  (b D),  c̄^m = Ψ_c^s(h^m)  (b d̄_c),  s = the side of m (audiovisual | text)   eq. 5
    ĉ^m = VQ(c^m) in the shared MM-EMA codebook (the core quantizer, unchanged; modalities audio, video,
    text, each contributing one vector per clip)                                          eq. 8
    the task adds CLUB(c^m; c̄^m) (AV_CLUB: one estimator for both audio-visual modalities, whose coarse
    encoders are shared; TE_CLUB; eq. 6), symmetric InfoNCE c^a ↔ c^te and c^v ↔ c^te (eq. 7),
    commitment and CMCM on the clip codes.

Reconstruction (eq. 9 "combines ĉ^m with c̄^m"; the decoder inputs are a detail the paper leaves open,
fixed here): x̂^m_t = D^m(ĉ^m, [c̄^m ; f̄^m_t]) for every segment t of audio and video, against the frozen
backbone features x^m (shape kept, spatial maps included); x̂^te = D^te(ĉ^te, c̄^te) against the mean
of the real text tokens. Every specific feature whose MI with its general feature is minimised feeds a
decoder: otherwise a constant Ψ would drive its CLUB term to zero for free and the Table 5 switches
would ablate nothing. The general path reaches the decoders only through the quantised ĉ, so, as in
Uni-Code, reconstruction trains the path into the codebook.

Downstream (ALGORITHMS.md §2, last point): ``segment_codes`` sends every segment's vector through the
coarse path, VQ(Φ_c^s(P^s(f^m_t))) for audio/video and VQ(Φ_c^te(P^te(x^te_l))) per text token, so
classification and localisation both get a code sequence with its time axis. P is linear, so the
training input P(mean_t f_t) is exactly the mean of the per-segment inputs P(f_t).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from trainer import distributed
from trainer.models.cpc import CrossCPC
from trainer.models.encoders import Decoder, SemanticEncoder, SpecificEncoder
from trainer.models.inputs import SEGMENT_MASK, feature_input, feature_mask, mask_key, real_segments
from trainer.models.quantizer import MMEMAQuantizer
from trainer.models.segment_coder import SegmentCoder
from trainer.configs.model import COARSE_SIDE, FCCIDConfig, FINE_MODALITIES, TEXT


def mean_over_time(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """``(b t c)`` -> ``(b c)``: the mean over segments, or over real tokens only (``mask (b t)``, True = real)."""
    if mask is None:
        return x.mean(1)
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class FCCIDModel(SegmentCoder, nn.Module):
    """Fine and coarse encoders, the shared MM-EMA codebook, decoders and the fine Cross-CPC.

    ``forward(features)`` takes ``audio (b t c)``, ``video (b t c)|(b t p c)|(b t h w c)``, ``text (b l c)`` and
    optional ``text_mask (b l)`` (True = real token) and ``segment_mask (b t)`` (True = a real second of audio and
    video: padded seconds are hidden from the fine encoders and from the clip means) and returns a dict of
    modality-keyed dicts:
        fine_semantic          f^m   (b t D)          audio, video
        fine_specific          f̄^m   (b t d̄)          audio, video
        coarse_general         c^m   (b D)            audio, video, text
        coarse_specific        c̄^m   (b d̄_c)          audio, video, text
        quantized              ĉ^m   (b D)            straight-through
        codes                        (b) int64
        codewords              sg e  (b D)            pre-update codebook
        distances                    (b M)            squared distances to every code (carry c's gradient)
        reconstruction         x̂^m   audio/video: shape of features[m]; text: (b c)
        reconstruction_target  x^m   the same shapes: the features, and the mean of the real text tokens
        cpc_predictions              (b s K D)        audio, video; s = T − K
    In training mode it also initialises the codebook on the first call and accumulates this micro-batch's
    MM-EMA statistics (one vector per clip and modality); the codebook changes only in ``quantizer.step_()``.
    """

    def __init__(
        self,
        cfg: FCCIDConfig,
        all_reduce_fn: Callable[[Tensor], Tensor] = distributed.all_reduce_sum_,
        all_gather_fn: Callable[[Tensor], Tensor] = distributed.all_gather_cat,
    ):
        super().__init__()
        self.cfg = cfg
        self.modalities = cfg.modalities
        enc, coarse, dims = cfg.encoder, cfg.coarse, cfg.feature_dims
        semantic_dim = enc.semantic_dim
        self.fine_semantic = nn.ModuleDict(
            {m: SemanticEncoder(dims[m], enc, self._patches(m) > 0) for m in FINE_MODALITIES})
        self.fine_specific = nn.ModuleDict(
            {m: SpecificEncoder(dims[m], enc, self._patches(m) > 0) for m in FINE_MODALITIES})
        self.project = nn.ModuleDict({"audiovisual": nn.Linear(semantic_dim, semantic_dim),     # P^{va→vat}
                                      "text": nn.Linear(dims[TEXT], semantic_dim)})          # P^{te→vat}
        sides = sorted(set(COARSE_SIDE.values()))
        self.coarse_general = nn.ModuleDict({s: _mlp(semantic_dim, coarse.hidden_dim, semantic_dim) for s in sides})
        self.coarse_specific = nn.ModuleDict(
            {s: _mlp(semantic_dim, coarse.hidden_dim, coarse.specific_dim) for s in sides})
        # Decoder concatenates its two inputs; its "specific" width is that of everything next to ĉ.
        av_decoder = dataclasses.replace(enc, specific_dim=coarse.specific_dim + enc.specific_dim)
        text_decoder = dataclasses.replace(enc, specific_dim=coarse.specific_dim)
        self.decoder = nn.ModuleDict({**{m: Decoder(dims[m], av_decoder, self._patches(m)) for m in FINE_MODALITIES},
                                      TEXT: Decoder(dims[TEXT], text_decoder, 0)})
        self.quantizer = MMEMAQuantizer(cfg.quantizer, cfg.modalities, all_reduce_fn, all_gather_fn)
        self.cpc_steps = cfg.cpc.steps_for(len(FINE_MODALITIES))
        self.cpc = CrossCPC(FINE_MODALITIES, semantic_dim, self.cpc_steps, cfg.cpc.lstm_layers)

    def _patches(self, modality: str) -> int:
        return self.cfg.spatial_patches.get(modality, 0)

    def _input(self, features: Mapping[str, Tensor], modality: str) -> Tensor:
        """features[modality] checked and viewed as ``(b t c)`` or ``(b t p c)``."""
        return feature_input(features, modality, self.cfg.feature_dims, self.cfg.spatial_patches)

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        unexpected = sorted(set(features) - {*self.modalities, mask_key(TEXT), SEGMENT_MASK})
        if unexpected:
            raise KeyError(f"unexpected feature keys {unexpected}; FCCID takes {list(self.modalities)} "
                           f"and optional '{mask_key(TEXT)}' and '{SEGMENT_MASK}'")
        x = {m: self._input(features, m) for m in self.modalities}
        audio_video = {m: tuple(x[m].shape[:2]) for m in FINE_MODALITIES}
        if len(set(audio_video.values())) != 1:
            raise ValueError(f"audio and video must share (batch, segments); got {audio_video}")
        if x[TEXT].shape[0] != x["audio"].shape[0]:
            raise ValueError(f"features['{TEXT}'] has {x[TEXT].shape[0]} clips, audio/video {x['audio'].shape[0]}")
        text_mask = feature_mask(features, TEXT, x[TEXT].shape[:2])
        real = real_segments(features, audio_video["audio"])    # audio's and video's seconds (None: all real)

        fine_semantic = {m: self.fine_semantic[m](x[m], real) for m in FINE_MODALITIES}    # seed 003 eq. 1
        fine_specific = {m: self.fine_specific[m](x[m]) for m in FINE_MODALITIES}
        pooled = {m: mean_over_time(fine_semantic[m], real) for m in FINE_MODALITIES}
        pooled[TEXT] = mean_over_time(x[TEXT], text_mask)
        projected = {m: self.project[COARSE_SIDE[m]](pooled[m]) for m in self.modalities}
        general = {m: self.coarse_general[COARSE_SIDE[m]](projected[m]) for m in self.modalities}   # eq. 5
        specific = {m: self.coarse_specific[COARSE_SIDE[m]](projected[m]) for m in self.modalities}

        # the quantizer's statistics take (b t D) sequences: a clip vector is a sequence of length 1
        as_sequence = {m: c.unsqueeze(1) for m, c in general.items()}
        if self.training:
            self.quantizer.maybe_init_(as_sequence)
        quantized = {m: self.quantizer.quantize(general[m]) for m in self.modalities}   # eq. 8
        if self.training:
            self.quantizer.accumulate_(as_sequence, {m: q.codes.unsqueeze(1) for m, q in quantized.items()})

        reconstruction = {}
        for m in FINE_MODALITIES:
            segments = x[m].shape[1]
            code = quantized[m].quantized.unsqueeze(1).expand(-1, segments, -1)
            clip_specific = specific[m].unsqueeze(1).expand(-1, segments, -1)
            reconstruction[m] = self.decoder[m](code, torch.cat([clip_specific, fine_specific[m]], dim=-1)
                                                ).reshape(features[m].shape)
        reconstruction[TEXT] = self.decoder[TEXT](quantized[TEXT].quantized, specific[TEXT])
        return {
            "fine_semantic": fine_semantic,
            "fine_specific": fine_specific,
            "coarse_general": general,
            "coarse_specific": specific,
            "quantized": {m: q.quantized for m, q in quantized.items()},
            "codes": {m: q.codes for m, q in quantized.items()},
            "codewords": {m: q.codewords for m, q in quantized.items()},
            "distances": {m: q.distances for m, q in quantized.items()},
            "reconstruction": reconstruction,
            "reconstruction_target": {**{m: features[m] for m in FINE_MODALITIES}, TEXT: pooled[TEXT]},
            "cpc_predictions": self.cpc(fine_semantic),
        }

    def segment_semantic(self, features: Mapping[str, Tensor], modality: str) -> Tensor:
        """The coarse general vector of every segment of one modality, ``(b t D)``, before quantisation:
        Φ_c^s(P^s(f^m_t)) for audio/video, Φ_c^te(P^te(x^te_l)) per text token (seed 003 eqs. 1, 5).

        ``features[modality]``: audio ``(b t c)``, video ``(b t c)|(b t p c)|(b t h w c)``, text ``(b l c)``
        (other keys are ignored; text padding tokens get vectors too, as every position does in Uni-Code).
        ``segment_codes`` (``SegmentCoder``) quantises them: the downstream code sequence.
        """
        if modality not in self.modalities:
            raise KeyError(f"FCCID has no '{modality}' path (modalities {list(self.modalities)})")
        x = self._input(features, modality)
        if modality in FINE_MODALITIES:
            x = self.fine_semantic[modality](x)
        side = COARSE_SIDE[modality]
        return self.coarse_general[side](self.project[side](x))
