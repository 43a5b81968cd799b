"""COMET: continual cross-modal generalisation (seed 004 §3; ALGORITHMS.md §4) on top of the Uni-Code model.

Phases are separate jobs (video–text -> audio–text -> image–text, text the mediator). What this file adds:

- ``CMoEAdapter`` (seed 004 §3.2, eq. 4) between the semantic encoders Φ^m and the quantiser: O experts,
  each ``E_j(x) = C_j x + S_j^m x`` with a common linear layer C_j shared by every modality and a specific
  linear layer S_j^m of the input's modality m (only that one is active); a router ``g(x) = softmax(W_g x)``
  mixes them into ``Σ_j g_j(x) E_j(x)``. Everything downstream (quantiser, MM-EMA, commitment, Cross-CPC,
  CMCM, CLUB) sees the adapter's output: it is the semantic feature z^m of this model. Choices where the paper
  is silent: the output is residual, ``y = x + Σ_j g_j(x) E_j(x)`` (as adapters and the MoE-adapters the paper
  builds on are): without it the unnormalised linear mixture after Φ^m's LayerNorm let the semantic path
  collapse onto 2–3 codes in the continual bench (CPC at chance); the specific layers have no bias (the
  common one has) and start at zero, so a modality new to a phase is first mapped by the shared layers only;
  the common layers start at zero too (``AdapterConfig.identity_init``), so the adapter starts as the identity.
- ``gate_balance_loss`` (eq. 5): coefficient of variation² of the experts' loads over the batch's tokens.
- EWC (eq. 6): ``ewc_penalty`` = Σ_i F_i (θ_i − θ*_i)² over the adapter's common layers and the specific
  layers of the modalities a phase trained; ``per_clip_gradients`` gives the per-clip gradients from which
  the task forms the diagonal Fisher (its docstring says which loss terms and why).
- Pseudo-modality replay (§3.3): ``pseudo_modality`` quantises the mediator's features against the codes
  inherited from earlier phases when one is close enough, else against the codes this phase appended
  (``MMEMAQuantizer.expand_``); ``pseudo_cpc_losses`` is the position-weighted Cross-CPC between that
  sequence and the current pair.
- ``COMETModel``: the Uni-Code model with the adapter, the pseudo-modality's CPC context network, and the
  frozen semantic path of modalities carried over from earlier phases (Φ^m and a snapshot of the adapter as
  their phase left it, ``AdapterConfig.freeze_carried``; or Φ^m and S^m in the live adapter), so that a
  phase-2 model still encodes phase-1's video for the unseen-pair evaluation (video↔audio).

Modalities are named by the model (``image``); ``COMETConfig.rename`` maps a data stream to such a name,
e.g. ``{video: image}`` trains an ``image`` modality on still images packed as silent clips and read by the
video backbone, without touching the video modality of an earlier phase.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from trainer import distributed
from trainer.models.cpc import CrossCPC
from trainer.models.encoders import SemanticEncoder
from trainer.models.inputs import feature_mask
from trainer.models.losses import commitment_losses, reconstruction_loss
from trainer.models.unicode import UniCodeModel, mask_key
from trainer.configs.model import AdapterConfig, COMETConfig, COMETLossConfig, EWCConfig, ReplayConfig

PSEUDO = "pseudo"   # name of the pseudo-modality in Cross-CPC terms and metrics


# ---------------------------------------------------------------------- CMoE-Adapter

class CMoEAdapter(nn.Module):
    """O experts of a common and a per-modality specific linear layer, mixed by a softmax router (eq. 4).

    Parameters (stacked over experts, so one einsum runs all of them):
        common.weight     (o·d d)  C_j stacked row-wise, common.bias (o·d)
        specific.<m>      (o d d)  S_j^m     (zero-initialised, no bias; absent with specific_layers=False)
        router.weight     (o d), router.bias (o)   (absent for a single expert)
    """

    def __init__(self, modalities: Sequence[str], dim: int, cfg: AdapterConfig):
        super().__init__()
        self.cfg = cfg
        self.dim = dim
        experts = cfg.num_experts
        self.common = nn.Linear(dim, experts * dim)
        if cfg.identity_init:
            nn.init.zeros_(self.common.weight)
            nn.init.zeros_(self.common.bias)
        self.specific = nn.ParameterDict()
        for m in modalities:
            self.add_modality_(m)
        self.router = nn.Linear(dim, experts) if experts > 1 else None

    def add_modality_(self, modality: str) -> None:
        """A zero specific layer for ``modality`` (a no-op without specific layers or if it exists)."""
        if self.cfg.specific_layers and modality not in self.specific:
            self.specific[modality] = nn.Parameter(torch.zeros(self.cfg.num_experts, self.dim, self.dim))

    def forward(self, x: Tensor, modality: str) -> tuple[Tensor, Tensor]:
        """``x (... d)`` of ``modality`` -> (y = x + Σ_j g_j E_j(x) ``(... d)``, router probabilities g ``(... o)``)."""
        experts = self.cfg.num_experts
        out = self.common(x).unflatten(-1, (experts, self.dim))                     # (... o d): C_j x + b_j
        if self.cfg.specific_layers:
            if modality not in self.specific:
                raise KeyError(f"the adapter has no specific layer for '{modality}' (has {list(self.specific)})")
            out = out + torch.einsum("...i,oji->...oj", x, self.specific[modality])   # + S_j^m x
        if self.router is None:
            return x + out.squeeze(-2), x.new_ones(*x.shape[:-1], 1)
        gates = torch.softmax(self.router(x), dim=-1)                                # (... o)
        return x + torch.einsum("...o,...od->...d", gates, out), gates               # residual + eq. 4


def gate_balance_loss(gates: Sequence[Tensor]) -> Tensor:
    """Load balancing (seed 004 eq. 5) over every token of ``gates`` (each ``(... o)`` router probabilities).

    Load L_j = Σ_i G_ij over the B tokens, ideal load I = B / O; the loss is (1/O) Σ_j (L_j − I)² / I², the
    squared coefficient of variation of the loads: 0 exactly at the uniform load, O − 1 when one expert
    takes every token.
    """
    flat = torch.cat([g.reshape(-1, g.shape[-1]) for g in gates])
    experts = flat.shape[1]
    ideal = flat.shape[0] / experts
    return ((flat.sum(0) - ideal) / ideal).pow(2).mean()


class AdaptedSemanticEncoders(nn.Module):
    """Φ^m followed by the adapter, indexed like the ``ModuleDict`` of encoders it replaces in UniCodeModel:
    ``encoders[m](x, mask)`` returns the adapted z^m ``(b t D)``.

    The router probabilities of the latest call per modality are kept (the usual way to collect an MoE
    auxiliary loss from inside a forward) until ``take_gates`` hands them to the model's output.
    """

    def __init__(self, encoders: nn.ModuleDict, adapter: CMoEAdapter):
        super().__init__()
        self.encoders = encoders
        self.adapter = adapter
        self.carried = nn.ModuleDict()      # modality -> frozen adapter snapshot (AdapterConfig.freeze_carried)
        self._gates: dict[str, Tensor] = {}

    def __getitem__(self, modality: str) -> Callable[..., Tensor]:
        return lambda x, mask=None: self._adapted(modality, x, mask)

    def __contains__(self, modality: str) -> bool:
        return modality in self.encoders

    def _adapted(self, modality: str, x: Tensor, mask: Tensor | None) -> Tensor:
        adapter = self.carried[modality] if modality in self.carried else self.adapter
        y, gates = adapter(self.encoders[modality](x, mask), modality)
        self._gates[modality] = gates
        return y

    def take_gates(self, modalities: Sequence[str]) -> dict[str, Tensor]:
        gates = {m: self._gates[m] for m in modalities if m in self._gates}
        self._gates.clear()
        return gates


# ---------------------------------------------------------------------- pseudo-modality replay

@dataclass
class PseudoModality:
    """The mediator's code sequence used as an extra modality (seed 004 §3.3)."""

    sequence: Tensor    # (b t D) code vectors e[codes], detached
    codes: Tensor       # (b t) int64
    from_old: Tensor    # (b t) bool: the code is an inherited one
    weights: Tensor     # (b t) 1 for inherited codes, new_code_weight for new ones


def pseudo_modality(semantic: Tensor, distances: Tensor, codebook: Tensor, inherited: int,
                    cfg: ReplayConfig) -> PseudoModality:
    """Quantise the mediator's ``semantic (b t D)`` against inherited codes ``[0, inherited)`` when the nearest
    one is within ``match_threshold`` (relative squared distance), else against the new codes.

    ``distances (b t M)``: squared distances to every code of ``codebook (M D)`` (the quantiser's, pre-update).
    """
    z_norm = semantic.detach().pow(2).sum(-1)                                        # (b t)
    old_distance, old_code = distances[..., :inherited].detach().min(-1)
    if distances.shape[-1] > inherited:
        new_code = distances[..., inherited:].detach().argmin(-1) + inherited
        from_old = old_distance <= cfg.match_threshold * z_norm
        codes = torch.where(from_old, old_code, new_code)
    else:
        from_old = torch.ones_like(old_code, dtype=torch.bool)
        codes = old_code
    weights = torch.where(from_old, 1.0, cfg.new_code_weight).to(semantic.dtype)
    return PseudoModality(F.embedding(codes, codebook).detach(), codes, from_old, weights)


def cpc_entry_losses(prediction: Tensor, target: Tensor, t: int | None, normalize_over: str) -> Tensor:
    """Cross-CPC InfoNCE (CMG eq. 6) of every (context end, step, clip) entry, not yet averaged.

    ``prediction (b s k D)``: W_k c_t of the context modality; ``target (b T D)``; ``t``: the context end or
    None for all of them. Returns ``(s' k b)``: the cross-entropy of clip i's positive z_{i,t+k} among the
    batch's candidates (``normalize_over="targets"``, eq. 6) or among the contexts (authors' code).
    """
    steps = prediction.shape[2]
    ends = slice(None) if t is None else slice(t, t + 1)
    candidates = target[:, 1:].unfold(1, steps, 1).transpose(-1, -2)[:, ends]       # (b s' k D): z_{s+k}
    scores = torch.einsum("iskd,jskd->skij", prediction[:, ends], candidates)
    dim = -1 if normalize_over == "targets" else -2
    return torch.logsumexp(scores, dim=dim) - scores.diagonal(dim1=-2, dim2=-1)


def target_weights(weights: Tensor, steps: int, t: int | None) -> Tensor:
    """Per-position weights ``(b T)`` of a target sequence -> ``(s' k b)``: the weight of position t + k."""
    ends = slice(None) if t is None else slice(t, t + 1)
    return weights[:, 1:].unfold(1, steps, 1)[:, ends].permute(1, 2, 0)


def pseudo_cpc_losses(predictions: Mapping[str, Tensor], semantic: Mapping[str, Tensor],
                      pseudo_prediction: Tensor, pseudo_sequence: Tensor, pseudo_weights: Tensor, t: int | None,
                      normalize_over: str) -> dict[tuple[str, str], Tensor]:
    """Cross-CPC between the pseudo-modality P and each current modality a, both directions, position-weighted.

    a -> P: a's context predicts P's future codes, each entry weighted by its target position's weight; P -> a:
    P's context (its own LSTM, ``pseudo_prediction (b s k D)``) predicts a's future, weighted by the context
    end's weight. Each term is the mean over entries of weight × cross-entropy, so positions quantised to new
    codes count ``new_code_weight`` times as much as inherited ones (seed 004 §3.3). ``pseudo_sequence`` and
    ``pseudo_weights``: a ``PseudoModality``'s ``sequence (b t D)`` and ``weights (b t)``.
    """
    steps = pseudo_prediction.shape[2]
    to_pseudo = target_weights(pseudo_weights, steps, t)                             # (s' k b)
    ends = slice(None) if t is None else slice(t, t + 1)
    from_pseudo = pseudo_weights[:, : pseudo_weights.shape[1] - steps][:, ends].T.unsqueeze(1)   # (s' 1 b)
    losses = {}
    for a, z in semantic.items():
        losses[(a, PSEUDO)] = (cpc_entry_losses(predictions[a], pseudo_sequence, t, normalize_over)
                               * to_pseudo).mean()
        losses[(PSEUDO, a)] = (cpc_entry_losses(pseudo_prediction, z, t, normalize_over) * from_pseudo).mean()
    return losses


def farthest_points(pool: Tensor, anchors: Tensor, count: int) -> Tensor:
    """``count`` rows of ``pool (n d)`` chosen greedily: each time the row farthest from ``anchors (a d)`` and
    from the rows already chosen. Returns ``(count d)`` (repeats only if ``count`` exceeds the distinct rows)."""
    nearest = torch.cdist(pool, anchors).min(1).values                                 # (n)
    chosen = []
    for _ in range(count):
        i = int(nearest.argmax())
        chosen.append(pool[i])
        nearest = torch.minimum(nearest, (pool - pool[i]).norm(dim=1))
    return torch.stack(chosen)


# ---------------------------------------------------------------------- EWC

def ewc_penalty(params: Mapping[str, Tensor], anchor: Mapping[str, Tensor], fisher: Mapping[str, Tensor]) -> Tensor:
    """Σ_i F_i (θ_i − θ*_i)² over every parameter named in ``fisher`` (seed 004 eq. 6 without λ/2)."""
    missing = sorted(set(fisher) - set(params))
    if missing:
        raise KeyError(f"EWC anchors name parameters the adapter does not have: {missing}")
    return sum((fisher[n] * (params[n] - anchor[n]).pow(2)).sum() for n in sorted(fisher))


# ---------------------------------------------------------------------- the model

class COMETModel(UniCodeModel):
    """Uni-Code with the CMoE-Adapter between Φ^m and the quantiser, the pseudo-modality's CPC network, and
    the frozen semantic path of modalities carried over from earlier phases.

    ``forward`` returns UniCodeModel's dict (``semantic`` being the adapted z^m) plus
        gates           router probabilities (b t o) per modality (only with the adapter)
        pseudo          PseudoModality of the mediator (training phases that inherited codes, with PM)
        pseudo_cpc_predictions  (b s k D) of the pseudo-modality's context network (same condition)
    ``inherited_codes`` (a buffer) is K1: the codes this phase inherited before appending its new ones.
    """

    def __init__(
        self,
        cfg: COMETConfig,
        all_reduce_fn: Callable[[Tensor], Tensor] = distributed.all_reduce_sum_,
        all_gather_fn: Callable[[Tensor], Tensor] = distributed.all_gather_cat,
    ):
        super().__init__(cfg.core(), all_reduce_fn, all_gather_fn)
        self.comet = cfg
        dim = cfg.encoder.semantic_dim
        if cfg.use_adapter:
            self.semantic = AdaptedSemanticEncoders(self.semantic, CMoEAdapter(cfg.model_modalities, dim, cfg.adapter))
        for m in cfg.carried:
            self.add_carried_modality_(m)
        self.pseudo_cpc = None
        if cfg.use_pseudo_modality and cfg.use_cpc and cfg.replay.new_codes:
            self.pseudo_cpc = CrossCPC((PSEUDO,), dim, self.cpc_steps, cfg.cpc.lstm_layers)
        self.register_buffer("inherited_codes", torch.tensor(0, dtype=torch.int64))
        # True from the expansion until the first training forward has placed the new codes on data
        self.register_buffer("new_codes_pending", torch.tensor(False))
        # host copies of the two buffers: read once per load, not once per forward
        self._inherited, self._pending = 0, False
        self.register_load_state_dict_post_hook(_read_phase_buffers)

    @property
    def encoders(self) -> nn.ModuleDict:
        """Φ^m of every known modality (the ModuleDict under the adapter, if any)."""
        return self.semantic.encoders if isinstance(self.semantic, AdaptedSemanticEncoders) else self.semantic

    @property
    def adapter(self) -> CMoEAdapter | None:
        return self.semantic.adapter if isinstance(self.semantic, AdaptedSemanticEncoders) else None

    def add_carried_modality_(self, modality: str) -> None:
        """Φ^m (and the adapter's S^m, or with ``adapter.freeze_carried`` a whole adapter snapshot) of a modality
        of an earlier phase, frozen: it is only ever encoded."""
        encoder = SemanticEncoder(self.cfg.feature_dims[modality], self.cfg.encoder, self._patches(modality) > 0)
        self.encoders[modality] = encoder.requires_grad_(False)
        if self.adapter is not None and self.comet.adapter.freeze_carried:
            snapshot = CMoEAdapter((modality,), self.comet.encoder.semantic_dim, self.comet.adapter)
            self.semantic.carried[modality] = snapshot.requires_grad_(False)
        elif self.adapter is not None:
            self.adapter.add_modality_(modality)
            if modality in self.adapter.specific:
                self.adapter.specific[modality].requires_grad_(False)

    def carry_(self, cfg: COMETConfig) -> None:
        """Adopt ``cfg``: this model's config with more carried modalities (a phase start); builds their frozen
        semantic paths (the caller loads their weights)."""
        added = [m for m in cfg.carried if m not in self.encoders]
        self.comet, self.cfg = cfg, cfg.core()
        for m in added:
            self.add_carried_modality_(m)

    def expand_codebook_(self, new_codes: int) -> None:
        """Append ``new_codes`` codes (seed 004 §3.3); the codes before them become the inherited ones (K1)."""
        inherited = self.quantizer.cfg.num_codes
        self.quantizer.expand_(new_codes)
        self.inherited_codes.fill_(inherited)
        self._inherited = inherited
        self._pending = self.comet.replay.new_code_init == "data"
        self.new_codes_pending.fill_(self._pending)

    @torch.no_grad()
    def _place_new_codes_(self, features: Mapping[str, Tensor]) -> None:
        """Put the appended codes on the mediator's vectors of this global batch farthest from the inherited
        codes (every rank gathers the same pool, so all place the same vectors); see ``ReplayConfig``."""
        mediator = self.comet.replay.mediator
        sources = (mediator,) if mediator in self.modalities else self.modalities
        pool = torch.cat([self.quantizer.all_gather_fn(
            self.semantic[m](self._input(features, m), features.get(mask_key(m))).float().contiguous()).flatten(0, 1)
            for m in sources])
        codebook = self.quantizer.codebook
        count = codebook.shape[0] - self._inherited
        self.quantizer.place_codes_(slice(self._inherited, None),
                                    farthest_points(pool, codebook[:self._inherited], count))
        if self.adapter is not None:
            self.semantic.take_gates(self.modalities)     # this extra encoding is no part of the step's routing
        self._pending = False
        self.new_codes_pending.fill_(False)

    @property
    def inherited(self) -> int:
        return self._inherited

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        if self.training and self._pending:
            self._place_new_codes_(features)
        out = super().forward(features)
        if self.adapter is not None:
            out["gates"] = self.semantic.take_gates(self.modalities)
        if self.pseudo_cpc is not None and self.inherited:
            mediator = self.comet.replay.mediator
            pseudo = pseudo_modality(out["semantic"][mediator], out["distances"][mediator], self.quantizer.codebook,
                                     self.inherited, self.comet.replay)
            out["pseudo"] = pseudo
            out["pseudo_cpc_predictions"] = self.pseudo_cpc({PSEUDO: pseudo.sequence})[PSEUDO]
        return out

    @property
    def downstream_modalities(self) -> tuple[str, ...]:
        """Every modality this model encodes downstream: this phase's and the carried ones (``modalities`` is
        only this phase's, which the training forward needs)."""
        return self.comet.known_modalities

    @property
    def trained_pairs(self) -> set[frozenset[str]]:
        """This phase's pairs, and each modality carried from an earlier phase paired with the mediator, which every
        phase trains (ALGORITHMS.md §4)."""
        cfg = self.comet
        return ({frozenset(p) for p in combinations(cfg.model_modalities, 2)}
                | {frozenset((m, cfg.replay.mediator)) for m in cfg.carried})

    def segment_semantic(self, features: Mapping[str, Tensor], modality: str) -> Tensor:
        """The adapted z^m ``(b t D)`` of any known modality, this phase's or a carried one (``segment_codes``,
        inherited from ``SegmentCoder``, quantises it)."""
        if modality not in self.encoders:
            raise KeyError(f"the model has no '{modality}' encoder "
                           f"(known modalities {list(self.downstream_modalities)})")
        x = self._input(features, modality)
        return self.semantic[modality](x, feature_mask(features, modality, x.shape[:2]))

    # ------------------------------------------------------------------ EWC
    def ewc_parameter_names(self, modalities: Sequence[str]) -> list[str]:
        """Adapter parameters EWC protects after a phase that trained ``modalities``: the common layers and
        those modalities' specific layers (seed 004 §3.2), and the router with ``ewc.include_router``."""
        if self.adapter is None:
            return []
        names = ["common.weight", "common.bias"]
        if self.comet.ewc.include_router and self.adapter.router is not None:
            names += ["router.weight", "router.bias"]
        return names + [f"specific.{m}" for m in modalities if m in self.adapter.specific]

    def per_clip_gradients(self, features: Mapping[str, Tensor], names: Sequence[str],
                           chunk_size: int = 16) -> dict[str, Tensor]:
        """∇_θ ℓ_n for every clip n of the batch and every adapter parameter θ in ``names``: ``(b *θ.shape)``.

        ℓ_n = Σ_m [recon · MSE(x̂^m_n, x^m_n) + commit · CMG eq. 8 of clip n], the per-clip terms of the CMG
        loss (the Gaussian decoder's negative log-likelihood and the commitment to the chosen codes). The
        contrastive terms (Cross-CPC, CMCM, CLUB) are left out: a clip's share of them depends on which other
        clips share its batch, so a Fisher built from them would change with the split over ranks. Computed in
        eval mode semantics (no dropout, no codebook change): Φ^m, Ψ^m and the codes are fixed, and only the
        adapter is differentiated (through the straight-through quantiser and the decoder), clip by clip with
        ``torch.func.vmap(grad(...))``.
        """
        if self.adapter is None:
            raise RuntimeError("per_clip_gradients needs the adapter (use_adapter=True)")
        weights = self.comet.loss
        with torch.no_grad():
            inputs = {m: self._input(features, m) for m in self.modalities}
            pre = {m: self.encoders[m](inputs[m], features.get(mask_key(m))) for m in self.modalities}
            specific = {m: self.specific[m](inputs[m]) for m in self.modalities}
            codewords = {m: self.quantizer.quantize(self.adapter(pre[m], m)[0]).codewords for m in self.modalities}
        own = dict(self.adapter.named_parameters())
        params = {n: own[n].detach() for n in names}

        def clip_loss(theta: dict[str, Tensor], pre_n, specific_n, codewords_n, target_n) -> Tensor:
            adapted, recon = {}, 0.0
            for m in self.modalities:
                y = functional_call(self.adapter, theta, (pre_n[m].unsqueeze(0), m))[0]
                adapted[m] = y
                quantized = y + (codewords_n[m].unsqueeze(0) - y).detach()     # straight-through (value e)
                x_hat = self.decoder[m](quantized, specific_n[m].unsqueeze(0))
                recon = recon + reconstruction_loss(x_hat.reshape(target_n[m].unsqueeze(0).shape),
                                                    target_n[m].unsqueeze(0))
            commit = commitment_losses(adapted, {m: c.unsqueeze(0) for m, c in codewords_n.items()},
                                       weights.commit_self, weights.commit_partner)
            return weights.recon * recon + weights.commit * sum(commit.values())

        per_clip = vmap(grad(clip_loss), in_dims=(None, 0, 0, 0, 0), chunk_size=chunk_size)
        return per_clip(params, pre, specific, codewords, {m: features[m].float() for m in self.modalities})


def _read_phase_buffers(module: COMETModel, incompatible_keys) -> None:
    module._inherited = int(module.inherited_codes)
    module._pending = bool(module.new_codes_pending)


def fisher_from_gradients(gradient_squares: Mapping[str, Tensor], clips: float) -> dict[str, Tensor]:
    """Diagonal Fisher F = (1/N) Σ_n (∇ℓ_n)² from the (already rank-summed) squares and clip count N."""
    if clips <= 0:
        raise ValueError("the Fisher needs at least one clip")
    return {n: s / clips for n, s in gradient_squares.items()}


def normalized_fisher(fisher: Mapping[str, Tensor], mode: str) -> dict[str, Tensor]:
    """``mode="mean"``: F divided by its mean entry over all parameters (see ``EWCConfig.normalize``)."""
    if mode == "none":
        return dict(fisher)
    entries = sum(f.numel() for f in fisher.values())
    mean = sum(f.sum() for f in fisher.values()) / max(1, entries)
    return {n: f / mean.clamp_min(torch.finfo(f.dtype).tiny) for n, f in fisher.items()}


def cumulative_fisher(previous: Mapping[str, Tensor], current: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Online EWC: the importance handed on = previous phases' F + this phase's F, per parameter name."""
    return {n: previous.get(n, 0.0) + current.get(n, 0.0) for n in sorted(set(previous) | set(current))}


__all__ = ["AdapterConfig", "CMoEAdapter", "COMETConfig", "COMETLossConfig", "COMETModel", "EWCConfig", "PSEUDO",
           "PseudoModality", "ReplayConfig", "cpc_entry_losses", "cumulative_fisher", "ewc_penalty",
           "farthest_points", "fisher_from_gradients", "gate_balance_loss", "normalized_fisher", "pseudo_cpc_losses",
           "pseudo_modality"]
