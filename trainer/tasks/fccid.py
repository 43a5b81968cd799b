"""FCCID pretraining as a task object (seed 003 §3.1): the interface and loop of ``UniCodeTask``.

Loss, seed 003 eq. 10 (weights: ``FCCIDConfig.loss``), metric names in brackets:
    recon   Σ_m MSE(x̂^m, x^m): audio and video per segment, text against its mean token   [recon_<m>]
    commit  CMG eq. 8 on the clip codes of audio, video and text                           [commit_<m>]
    cmcm    CMCM on the clip code distributions, every pair of audio, video, text         [cmcm_<a>_<b>]
    cpc     fine Cross-CPC between f^a and f^v (eq. 4)                                     [cpc_<a>2<b>]
    nce     symmetric InfoNCE c^a ↔ c^te plus c^v ↔ c^te, cosine / τ (eq. 7)             [nce_<m>_text]
    mi      L_MImin = CLUB_fine + CLUB_coarse (eqs. 3, 6)                       [mi_fine, mi_coarse, mi_<bound>]
The CLUB estimators that the Table 5 switches leave on: ``fine_audio`` q(f̄^a | f^a) (A_CLUB), ``fine_video``
(V_CLUB), ``coarse_audiovisual`` q(c̄ | c) (AV_CLUB: one estimator for audio's and video's clip pairs, as their
coarse encoders are shared; its bound is the sum of the two) and ``coarse_text`` (TE_CLUB). They train, and
their bounds enter the loss, exactly as Uni-Code's do (``CodebookTask``, trainer/tasks/base.py); the coarse
bound's negatives are the other clips of the batch ``negatives`` names, like every in-batch term's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from trainer import distributed
from trainer.models.club import CLUBEstimator
from trainer.models.fccid import FCCIDModel
from trainer.configs.model import COARSE_SIDE, FINE_MODALITIES, TEXT, FCCIDConfig
from trainer.models.inputs import SEGMENT_MASK
from trainer.models.losses import commitment_losses, reconstruction_loss, symmetric_info_nce
from trainer.tasks.base import ClubPairs, CodebookTask, cmcm_terms, rank_share


class FCCIDTask(CodebookTask):
    def __init__(
        self,
        cfg: FCCIDConfig,
        all_reduce_fn: Callable[[Tensor], Tensor] = distributed.all_reduce_sum_,
        all_gather_fn: Callable[[Tensor], Tensor] = distributed.all_gather_cat,
        average_gradients_fn: Callable[[Iterable[nn.Parameter]], None] = distributed.average_gradients_,
        gather_rows_fn: Callable[[list[Tensor]], list[Tensor]] = distributed.gather_rows,
    ):
        model = FCCIDModel(cfg, all_reduce_fn, all_gather_fn)
        club = None
        if cfg.club_estimators:
            general = cfg.encoder.semantic_dim
            club = nn.ModuleDict({
                name: CLUBEstimator(general, cfg.encoder.specific_dim if name.startswith("fine_") else
                                    cfg.coarse.specific_dim, cfg.club.hidden_dim)
                for name in cfg.club_estimators})
        super().__init__(cfg, model, cfg.modalities, club, cfg.club, cfg.cpc, average_gradients_fn, gather_rows_fn)

    def _club_pairs(self, out: Mapping[str, Mapping[str, Tensor]], real: Tensor | None) -> ClubPairs:
        """Bound name -> (estimator, general, specific, real) for every switched-on estimator: fine pairs over the
        real seconds ``real`` ``(b t)`` marks (None: all), clip vectors as length-1 sequences ``(b 1 d)`` (eq. 6 with
        T = 1: negatives are the other clips)."""
        pairs = {}
        for m in FINE_MODALITIES:
            if self.club is not None and f"fine_{m}" in self.club:
                pairs[f"fine_{m}"] = (f"fine_{m}", out["fine_semantic"][m], out["fine_specific"][m], real)
        for m in self.modalities:
            estimator = f"coarse_{COARSE_SIDE[m]}"
            if self.club is not None and estimator in self.club:
                pairs[f"coarse_{m}"] = (estimator, out["coarse_general"][m].unsqueeze(1),
                                        out["coarse_specific"][m].unsqueeze(1), None)
        return pairs

    def loss_terms(self, features: Mapping[str, Tensor], out: Mapping[str, Any], step: int
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every term of eq. 10 of the forward's output ``out``, unweighted, and their parts.

        ``step`` is part of the generic task interface; no FCCID term is scheduled by it.
        """
        del step
        weights = self.cfg.loss
        general = out["coarse_general"]
        metrics: dict[str, Tensor] = {}
        terms: dict[str, Tensor] = {}

        # padded seconds of short clips (None: none) are left out of the per-second terms (trainer/models/inputs.py)
        real = features.get(SEGMENT_MASK)
        recon = {m: reconstruction_loss(out["reconstruction"][m], out["reconstruction_target"][m],
                                        real if m in FINE_MODALITIES else None)
                 for m in self.modalities}
        commit = commitment_losses(general, out["codewords"], weights.commit_self, weights.commit_partner)

        # what the in-batch terms compare across clips, over the batch their negatives come from
        contrastive = ["distances", "cpc_predictions", "fine_semantic", "coarse_general"]
        if self.club is not None:
            contrastive += ["fine_specific", "coarse_specific"]
        groups = {key: out[key] for key in contrastive} | ({"segments": {"real": real}} if real is not None else {})
        batch = self._negatives_batch(groups)
        batch_real = batch["segments"]["real"] if real is not None else None
        if real is not None:   # per-second means over real seconds, weighted to the mean over the batch's
            share = rank_share(real, batch_real)
            recon = {m: share * v if m in FINE_MODALITIES else v for m, v in recon.items()}
        terms["recon"] = sum(recon.values())
        terms["commit"] = sum(commit.values())
        metrics.update({f"recon_{m}": v for m, v in recon.items()})
        metrics.update({f"commit_{m}": v for m, v in commit.items()})

        cmcm = cmcm_terms({m: d.unsqueeze(1) for m, d in batch["distances"].items()})   # one "segment" per clip
        terms["cmcm"] = sum(cmcm.values())
        metrics.update({f"cmcm_{a}_{b}": v for (a, b), v in cmcm.items()})

        terms["cpc"], cpc = self._cpc_terms(batch["cpc_predictions"], batch["fine_semantic"], self.cfg.cpc,
                                            batch_real)
        metrics.update({f"cpc_{a}2{n}": v for (a, n), v in cpc.items()})

        coarse = batch["coarse_general"]
        nce = {m: symmetric_info_nce(coarse[m], coarse[TEXT], self.cfg.coarse.temperature) for m in FINE_MODALITIES}
        terms["nce"] = sum(nce.values())
        metrics.update({f"nce_{m}_{TEXT}": v for m, v in nce.items()})

        pairs = self._club_pairs(out, real)
        if pairs:
            mi = self._club_terms(pairs, self._club_pairs(batch, batch_real), metrics)
            for level in ("fine", "coarse"):
                bounds = [v for name, v in mi.items() if name.startswith(f"{level}_")]
                if bounds:
                    metrics[f"mi_{level}"] = sum(bounds)
            terms["mi"] = sum(mi.values())
            metrics.update({f"mi_{name}": v for name, v in mi.items()})

        return terms, metrics
