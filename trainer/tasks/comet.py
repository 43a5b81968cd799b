"""COMET as a task object (seed 004 §3): Uni-Code's loss on ``COMETModel`` plus the continual-phase terms.

Loss (metric names in brackets): UniCodeTask's terms [recon, commit, cpc, cmcm, mi and their parts] plus
    gate   load balancing of the adapter's router over the batch's tokens (eq. 5; model.negatives) [gate]
    pm     position-weighted Cross-CPC with the mediator's pseudo-modality (§3.3)       [pm, pm_<a>2pseudo,
           (phases that inherited codes); share of mediator positions on inherited codes  pm_pseudo2<a>, pm_old_share]
    ewc    (λ/2) Σ F (θ − θ*)² with the Fisher and anchors handed over by earlier phases (eq. 6)   [ewc]
each weighted by ``COMETConfig.loss`` (gate, pm, ewc = λ).

Phase hooks (called by trainer/loop.py, documented in trainer/tasks/base.py):
- ``begin_phase_(init, model_cfg)`` after the previous phase's model.pt was loaded (``run.init_from``): builds
  the frozen semantic paths of the modalities that phase knew and this one does not train (weights from its
  model.pt), appends ``replay.new_codes`` codes to the adopted codebook, and takes EWC's Fisher and anchors from
  ``init.extra`` (the previous phase's ``extra_state``). Returns the model config as it now stands (carried
  modalities, codebook size), which the loop writes into every checkpoint's meta.json.
- ``end_phase_(batches, device)`` before the phase's final checkpoint: the diagonal Fisher of the EWC parameters
  on ``ewc.fisher_batches`` batches of this phase's data per rank, summed over ranks with ONE all_reduce of
  [Σ_n (∇ℓ_n)² | N], so every rank holds the same Fisher, equal to one process's on the global set of clips.
  It is normalised (``ewc.normalize``), added to the earlier phases' Fisher (online EWC), and handed over with
  the parameter snapshot θ* through ``extra_state`` (the loop writes it to the checkpoint as task_extra.pt).

The extra terms are added to ``UniCodeTask.loss_terms`` of the same forward output (``CodebookTask.compute_loss``
weights and sums them all).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from trainer import distributed
from trainer.checkpoint_format import META, MODEL_FILE
from trainer.checkpoint import InitSource
from trainer.configs.load import build_config
from trainer.models.comet import (
    COMETModel, cumulative_fisher, ewc_penalty, fisher_from_gradients, gate_balance_loss, normalized_fisher,
    pseudo_cpc_losses,
)
from trainer.configs.model import COMETConfig
from trainer.models.eager import eager_under_compile
from trainer.models.inputs import SEGMENT_MASK, mask_key
from trainer.tasks.unicode import UniCodeTask

if TYPE_CHECKING:
    from trainer.data.batch import Batch


class COMETTask(UniCodeTask):
    """UniCodeTask's loss and plumbing on a ``COMETModel``, plus gate, pseudo-modality and EWC terms and the
    phase hooks."""

    model_type = COMETModel

    def __init__(
        self,
        cfg: COMETConfig,
        all_reduce_fn: Callable[[Tensor], Tensor] = distributed.all_reduce_sum_,
        all_gather_fn: Callable[[Tensor], Tensor] = distributed.all_gather_cat,
        average_gradients_fn: Callable[[Iterable[nn.Parameter]], None] = distributed.average_gradients_,
        gather_rows_fn: Callable[[list[Tensor]], list[Tensor]] = distributed.gather_rows,
    ):
        self.all_reduce_fn = all_reduce_fn
        super().__init__(cfg, all_reduce_fn, all_gather_fn, average_gradients_fn, gather_rows_fn)
        self.ewc_anchor: dict[str, Tensor] = {}     # θ* of earlier phases (the penalty's centre)
        self.ewc_fisher: dict[str, Tensor] = {}     # their cumulative diagonal Fisher
        self.handover: dict[str, Any] = {}          # what end_phase_ computed for the next phase
        self._began_phase = False

    # ------------------------------------------------------------------ plumbing
    def to(self, device: torch.device | str) -> COMETTask:
        super().to(device)
        self.ewc_anchor = {n: v.to(device) for n, v in self.ewc_anchor.items()}
        self.ewc_fisher = {n: v.to(device) for n, v in self.ewc_fisher.items()}
        return self

    def prepare_batch(self, batch: Batch, device: torch.device | str | None = None) -> dict[str, Tensor]:
        """UniCodeTask's checks after renaming data streams to model modalities (``rename``, e.g. video -> image).
        Clips padded to the window are refused (the job refuses ``data.decode.min_seconds`` for COMET up front)."""
        if SEGMENT_MASK in batch:
            raise ValueError(f"COMET trains on whole windows: its gate balance, pseudo-modality Cross-CPC and Fisher "
                             f"take no padded seconds, and the batch has a '{SEGMENT_MASK}'")
        renamed: dict[str, Any] = dict(batch)   # data streams under the model's modality names
        for source, name in self.cfg.rename.items():
            for old, new in ((source, name), (mask_key(source), mask_key(name))):
                if old in renamed:
                    renamed[new] = renamed.pop(old)
        return super().prepare_batch(cast("Batch", renamed), device)

    # ------------------------------------------------------------------ loss
    def loss_terms(self, features: Mapping[str, Tensor], out: Mapping[str, Any], step: int
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """UniCodeTask's terms, then gate, pm and ewc (module docstring), all unweighted."""
        if self.model.training and self.cfg.replay.new_codes and not self._began_phase:
            raise RuntimeError(f"replay.new_codes={self.cfg.replay.new_codes} but this run did not start from a "
                               "previous phase (set run.init_from, or new_codes=0 for a first phase)")
        terms, metrics = super().loss_terms(features, out, step)
        # the gate loads and the pseudo-modality CPC's candidates are statistics of the whole batch: over the batch
        # the negatives come from, like Uni-Code's in-batch terms (a second packed gather: the parent's is its own)
        use_gate = self.cfg.use_gate_loss and self.model.adapter is not None and self.model.adapter.router is not None
        contrastive = {"gates": out["gates"]} if use_gate else {}
        if "pseudo" in out:
            pseudo = out["pseudo"]
            contrastive |= {"cpc_predictions": out["cpc_predictions"], "semantic": out["semantic"],
                            "pseudo": {"cpc_predictions": out["pseudo_cpc_predictions"], "sequence": pseudo.sequence,
                                       "weights": pseudo.weights}}
        batch = self._negatives_batch(contrastive)
        if use_gate:
            terms["gate"] = gate_balance_loss(list(batch["gates"].values()))
        if "pseudo" in out:
            pairs = self._pseudo_cpc_terms(batch)
            terms["pm"] = sum(pairs.values())
            metrics.update({f"pm_{a}2{n}": v for (a, n), v in pairs.items()})
            metrics["pm_old_share"] = pseudo.from_old.float().mean()
        if self.ewc_fisher:
            params = self._adapter_parameters()
            terms["ewc"] = 0.5 * ewc_penalty(params, self.ewc_anchor, self.ewc_fisher)   # (λ/2) Σ F (θ − θ*)²
        return terms, metrics

    @eager_under_compile     # a per-step context end t, as in CodebookTask._cpc_terms
    def _pseudo_cpc_terms(self, batch: Mapping[str, Any]) -> dict[tuple[str, str], Tensor]:
        """The pseudo-modality Cross-CPC pairs over the negatives' batch (``_negatives_batch``), at one random t."""
        pseudo = batch["pseudo"]
        t = self._draw_cpc_time(pseudo["sequence"].shape[1] - self.model.cpc_steps) if self.model.training else None
        return pseudo_cpc_losses(batch["cpc_predictions"], batch["semantic"], pseudo["cpc_predictions"],
                                 pseudo["sequence"], pseudo["weights"], t, self.cfg.cpc.normalize_over)

    def after_optimizer_step_(self) -> dict[str, Tensor]:
        """MM-EMA step, then (``replay.protect_inherited``) restart the inherited codes' reset clocks."""
        metrics = super().after_optimizer_step_()
        if self.cfg.replay.protect_inherited and self.model.inherited:
            self.model.quantizer.refresh_usage_(slice(0, self.model.inherited))
        return metrics

    # ------------------------------------------------------------------ phase hooks
    def begin_phase_(self, init: InitSource, model_cfg: Any) -> COMETConfig:
        """Continue from the previous phase's final checkpoint ``init`` (its model.pt is already loaded for
        the modalities both phases train, and its codebook adopted); see the module docstring. ``model_cfg``
        (the job's) is this task's config before the phase; the returned one adds the carried modalities."""
        del model_cfg
        meta, previous, extra = init.meta, init.checkpoint, init.extra
        source = str(previous / META)
        if meta.task != "comet":
            raise ValueError(f"{source}: task {meta.task!r}; a COMET phase continues a COMET phase "
                             "(train the first phase with task=comet too)")
        before = build_config(COMETConfig, meta.model_config, "model_config", source)
        if before.use_adapter != self.cfg.use_adapter:
            raise ValueError(f"{source}: use_adapter={before.use_adapter}, this phase {self.cfg.use_adapter}: "
                             "phases of one chain must agree")
        core = before.core()
        carried = tuple(m for m in before.known_modalities if m not in self.cfg.model_modalities)
        cfg = dataclasses.replace(self.cfg, carried=carried,
                                  carried_feature_dims={m: core.feature_dims[m] for m in carried},
                                  carried_spatial_patches={m: core.spatial_patches[m] for m in carried
                                                           if m in core.spatial_patches})
        self.model.carry_(cfg)
        self._load_carried_weights(init, carried)
        if cfg.replay.new_codes:
            self.model.expand_codebook_(cfg.replay.new_codes)
            cfg = dataclasses.replace(cfg, quantizer=self.model.quantizer.cfg)
            self.model.carry_(cfg)
            if cfg.replay.protect_inherited:
                self.model.quantizer.refresh_usage_(slice(0, self.model.inherited))
        if cfg.use_ewc and self.model.adapter is not None:
            if "ewc_fisher" not in extra:
                raise ValueError(f"{previous}: no EWC Fisher in its task_extra.pt (did that phase finish with "
                                 "use_ewc on?); set model.use_ewc=false to continue without EWC")
            device = self.model.inherited_codes.device
            own = dict(self.model.adapter.named_parameters())
            # a carried modality's specific layer lives in its frozen snapshot (freeze_carried): nothing to anchor
            snapshotted = {f"specific.{m}" for m in self.model.semantic.carried}
            self.ewc_anchor = {n: v.to(device) for n, v in extra["ewc_anchor"].items() if n not in snapshotted}
            self.ewc_fisher = {n: v.to(device) for n, v in extra["ewc_fisher"].items() if n not in snapshotted}
            unknown = sorted(set(self.ewc_fisher) - set(own))
            if unknown:
                raise ValueError(f"{previous}: EWC Fisher names adapter parameters this model lacks: {unknown}")
        self.cfg = cfg
        self._began_phase = True
        return cfg

    def _load_carried_weights(self, init: InitSource, carried: tuple[str, ...]) -> None:
        """The carried modalities' Φ^m and adapter S^m (or adapter snapshot) from the previous phase's model.pt.

        A snapshot (``adapter.freeze_carried``) is the previous phase's own snapshot of a modality it carried
        too, else its live adapter (common layers, router, S^m), which trained that modality last."""
        state = init.model_state
        own = self.model.state_dict()
        prefixes = tuple(p for m in carried for p in (f"semantic.encoders.{m}.", f"semantic.{m}.",
                                                      f"semantic.adapter.specific.{m}"))
        wanted = {k: v for k, v in state.items() if k.startswith(prefixes) and k in own}
        live, shared = "semantic.adapter.", ("common.", "router.")
        for m in carried:
            snapshot = f"semantic.carried.{m}."
            if not any(k.startswith(snapshot) for k in own):
                continue
            taken = {k: v for k, v in state.items() if k.startswith(snapshot)} or {
                snapshot + k[len(live):]: v for k, v in state.items()
                if k.startswith(live) and (k[len(live):].startswith(shared) or k == f"{live}specific.{m}")}
            wanted |= {k: v for k, v in taken.items() if k in own}
        absent = [m for m in carried if not any(k.startswith(p) for k in wanted for p in
                                                (f"semantic.encoders.{m}.", f"semantic.{m}."))]
        if absent:
            raise KeyError(f"{init.checkpoint / MODEL_FILE}: no semantic encoder weights for carried modalities "
                           f"{absent}")
        self.model.load_state_dict(wanted, strict=False)

    @torch.no_grad()
    def end_phase_(self, batches: Iterator[Batch], device: torch.device | str) -> dict[str, float]:
        """Fisher of this phase's EWC parameters and the snapshot θ*, kept for ``extra_state``; returns metrics."""
        if not (self.cfg.use_ewc and self.model.adapter is not None):
            return {}
        names = self.model.ewc_parameter_names(self.modalities)
        own = self._adapter_parameters()
        squares = {n: torch.zeros_like(own[n], dtype=torch.float32) for n in names}
        clips = 0
        was_training = self.model.training
        self.model.eval()
        try:
            for _ in range(self.cfg.ewc.fisher_batches):
                features = self.prepare_batch(next(batches), device)
                with torch.enable_grad():
                    per_clip = self.model.per_clip_gradients(features, names)
                for n in names:
                    squares[n] += per_clip[n].float().pow(2).sum(0)
                clips += next(iter(per_clip.values())).shape[0]
        finally:
            self.model.train(was_training)
        flat = torch.cat([squares[n].flatten() for n in names] + [squares[names[0]].new_tensor([clips])])
        self.all_reduce_fn(flat)   # in place: every rank now holds Σ over all ranks' clips
        summed, offset = {}, 0
        for n in names:
            summed[n] = flat[offset:offset + squares[n].numel()].view_as(squares[n])
            offset += squares[n].numel()
        phase_fisher = normalized_fisher(fisher_from_gradients(summed, float(flat[-1])), self.cfg.ewc.normalize)
        fisher = cumulative_fisher(self.ewc_fisher, phase_fisher)
        self.handover = {"ewc_fisher": fisher,
                         "ewc_anchor": {n: own[n].detach().float().clone() for n in fisher}}
        return {"ewc/clips": float(flat[-1]), "ewc/fisher_mean": float(sum(f.sum() for f in phase_fisher.values()) /
                                                                      sum(f.numel() for f in phase_fisher.values()))}

    def _adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The adapter's parameters by name, refused when an engine holds only a shard of them: EWC reads them
        outside the forward, which ZeRO-3 does not gather (run COMET with ZeRO-2, as launch/accelerate does)."""
        params = dict(self.model.adapter.named_parameters())
        if any(p.numel() == 0 for p in params.values()):
            raise RuntimeError("EWC needs the adapter's full parameters, but they are partitioned (ZeRO-3?); "
                               "train COMET with ZeRO-2 or without DeepSpeed")
        return params

    def extra_state(self) -> dict[str, Any]:
        """What the next phase needs besides model.pt (EWC's Fisher and anchors), once ``end_phase_`` ran."""
        return {n: {k: v.detach().cpu() for k, v in d.items()} for n, d in self.handover.items()}

    # ------------------------------------------------------------------ state
    def replicated_state(self) -> dict[str, Tensor]:
        state = super().replicated_state()
        state |= {f"ewc_anchor.{n}": v.detach().cpu().clone() for n, v in self.ewc_anchor.items()}
        state |= {f"ewc_fisher.{n}": v.detach().cpu().clone() for n, v in self.ewc_fisher.items()}
        return state

    def state_dict(self) -> dict[str, Any]:
        """UniCodeTask's state plus the EWC anchors and Fisher in use (from earlier phases)."""
        return super().state_dict() | {"ewc": {"anchor": dict(self.ewc_anchor), "fisher": dict(self.ewc_fisher)}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)          # checks the keys against this task's state_dict, "ewc" included
        ewc = state["ewc"]
        device = self.model.inherited_codes.device
        self.ewc_anchor = {n: v.to(device) for n, v in ewc["anchor"].items()}
        self.ewc_fisher = {n: v.to(device) for n, v in ewc["fisher"].items()}


__all__ = ["COMETTask"]
