"""Uni-Code pretraining as a task (CMG seed 001 §4): ``UniCodeModel`` and its loss, CMG eq. 9.

Terms (metric names in brackets): recon [recon_<m>], commit (eq. 8) [commit_<m>], cpc (eq. 6)
[cpc_<a>2<b>], cmcm [cmcm_<a>_<b>], mi (eq. 5, one CLUB estimator per modality) [mi_<m>]; the plumbing and
its rules are ``CodebookTask``'s (trainer/tasks/base.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from trainer import distributed
from trainer.models.club import CLUBEstimator
from trainer.models.inputs import SEGMENT_MASK
from trainer.models.losses import commitment_losses, reconstruction_loss
from trainer.models.unicode import UniCodeModel
from trainer.configs.model import UniCodeConfig
from trainer.tasks.base import CodebookTask, cmcm_terms, rank_share


class UniCodeTask(CodebookTask):
    """The Uni-Code loss on a ``model_type`` model (UniCodeModel; a subclass may train a model that extends
    it, built from its own config, e.g. COMET's) with one CLUB estimator per trained modality."""

    model_type: type[UniCodeModel] = UniCodeModel

    def __init__(
        self,
        cfg: UniCodeConfig,
        all_reduce_fn: Callable[[Tensor], Tensor] = distributed.all_reduce_sum_,
        all_gather_fn: Callable[[Tensor], Tensor] = distributed.all_gather_cat,
        average_gradients_fn: Callable[[Iterable[nn.Parameter]], None] = distributed.average_gradients_,
        gather_rows_fn: Callable[[list[Tensor]], list[Tensor]] = distributed.gather_rows,
    ):
        self.cfg = cfg.effective()
        model = self.model_type(self.cfg, all_reduce_fn, all_gather_fn)
        modalities = model.modalities          # the model's names of the modalities it trains
        club = None
        if self.cfg.use_club:
            enc = self.cfg.encoder
            club = nn.ModuleDict({m: CLUBEstimator(enc.semantic_dim, enc.specific_dim, self.cfg.club.hidden_dim)
                                  for m in modalities})
        super().__init__(self.cfg, model, modalities, club, self.cfg.club,
                         self.cfg.cpc if self.cfg.use_cpc else None, average_gradients_fn, gather_rows_fn)

    def loss_terms(self, features: Mapping[str, Tensor], out: Mapping[str, Any], step: int
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every Uni-Code term of the forward's output ``out``, unweighted, and their parts.

        ``step`` is part of the generic task interface; no Uni-Code term is scheduled by it.
        """
        del step
        weights = self.cfg.loss
        metrics: dict[str, Tensor] = {}
        terms: dict[str, Tensor] = {}

        # padded seconds of short clips (None: none) are left out of every term (trainer/models/inputs.py)
        real = features.get(SEGMENT_MASK)
        recon = {m: reconstruction_loss(out["reconstruction"][m], features[m], real) for m in self.modalities}
        commit = commitment_losses(out["semantic"], out["codewords"], weights.commit_self, weights.commit_partner,
                                   real)

        # what the in-batch terms compare across clips, over the batch their negatives come from
        contrastive = {}
        if self.cfg.use_cpc:
            contrastive |= {"cpc_predictions": out["cpc_predictions"], "semantic": out["semantic"]}
        if self.cfg.use_cmcm:
            contrastive["distances"] = out["distances"]
        if self.cfg.use_club:
            contrastive |= {"semantic": out["semantic"], "specific": out["specific"]}
        if real is not None:
            contrastive["segments"] = {"real": real}
        batch = self._negatives_batch(contrastive)
        batch_real = batch["segments"]["real"] if real is not None else None
        if real is not None:   # per-sample means over real segments, weighted to the mean over the batch's
            share = rank_share(real, batch_real)
            recon, commit = ({m: share * v for m, v in part.items()} for part in (recon, commit))
        terms["recon"] = sum(recon.values())
        terms["commit"] = sum(commit.values())
        metrics.update({f"recon_{m}": v for m, v in recon.items()})
        metrics.update({f"commit_{m}": v for m, v in commit.items()})

        if self.cfg.use_cpc:
            terms["cpc"], pairs = self._cpc_terms(batch["cpc_predictions"], batch["semantic"], self.cfg.cpc,
                                                  batch_real)
            metrics.update({f"cpc_{a}2{n}": v for (a, n), v in pairs.items()})

        if self.cfg.use_cmcm:
            cmcm = cmcm_terms(batch["distances"], batch_real)
            terms["cmcm"] = sum(cmcm.values())
            metrics.update({f"cmcm_{a}_{b}": v for (a, b), v in cmcm.items()})

        if self.cfg.use_club:
            mi = self._club_terms({m: (m, out["semantic"][m], out["specific"][m], real) for m in self.modalities},
                                  {m: (m, batch["semantic"][m], batch["specific"][m], batch_real)
                                   for m in self.modalities},
                                  metrics)
            terms["mi"] = sum(mi.values())
            metrics.update({f"mi_{m}": v for m, v in mi.items()})

        return terms, metrics
