"""What the training loop relies on in a task (``Task``), and the plumbing every codebook task shares
(``CodebookTask``: Uni-Code in ``trainer.tasks.unicode``, FCCID in ``trainer.tasks.fccid``, COMET in
``trainer.tasks.comet``).

The loop (trainer/loop.py) is generic; per optimizer step it does::

    features = task.prepare_batch(batch, device)
    loss, metrics = task.compute_loss(features, step)     # = loss_terms(features, task.forward(features), step)
    engine.backward(loss); engine.step()
    metrics |= task.after_optimizer_step_()               # MM-EMA update + code reset + codebook statistics

A task's loss is the forward (``forward``) and its terms (``loss_terms``), kept apart so that a task that
extends another adds terms to the parent's ``loss_terms`` without touching the forward (COMET's gate, EWC and
pseudo-modality terms). Terms are weighted by the loss config field of the same name (``weighted_total``).

Phase hooks (continual learning): every task has them, ``CodebookTask``'s change nothing.
- ``begin_phase_(init, model_cfg) -> model config``: right after ``run.init_from``'s model.pt was loaded into
  the model (``trainer.checkpoint.load_init_state_``) and before the optimiser and engine exist, so the task
  may still grow the model. ``init`` is that checkpoint as read from disk (``InitSource``: meta, model state and
  the previous phase's ``extra_state``). Returns the model config as the phase now stands; the loop writes it
  into every checkpoint's meta.json (it is what rebuilds the model later).
- ``end_phase_(batches, device) -> metrics``: once, after the last optimizer step and before the final
  checkpoint, with the run's batch iterator (this phase's data) and device; collective (every rank calls it).
  Its metrics are logged at the final step.
- ``extra_state() -> dict``: tensors (and containers of them) for the next phase; when non-empty, rank 0 writes
  it into each checkpoint as ``task_extra.pt``.

Rules every ``CodebookTask`` follows:
- the CLUB estimators q_θ (an ``nn.ModuleDict``) and their own Adam optimiser belong to the task. They are not
  submodules of the model, so no engine partitions or steps them. Each ``compute_loss`` in training mode first
  runs ``club.inner_steps`` estimator updates on DETACHED (z, z̄) that maximise the log-likelihood, averaging
  gradients across ranks (``average_gradients_fn``) before every optimiser step so the replicas stay
  identical; then it evaluates the MI bound (CMG eq. 5) for the main loss with the estimator's parameters
  detached, so the main loss neither moves nor even grads them. With gradient accumulation every
  micro-batch's ``compute_loss`` runs its own inner updates;
- the generator that draws the Cross-CPC context end t is seeded from ``cpc.seed`` and advanced once per
  training-mode ``compute_loss`` on every rank alike, so all ranks use the same t (a per-rank t would also
  be a valid estimator; a shared one keeps runs reproducible for any world size). Eval mode averages the
  CPC loss over every t instead and leaves the generator alone;
- in-batch negatives (Cross-CPC, CMCM, the CLUB bound, FCCID's InfoNCE, COMET's pseudo-modality CPC) come from
  the batch ``cfg.negatives`` names (``_negatives_batch``). "global" (default): the tensors they are computed
  from are all-gathered (one packed collective per micro-batch), every rank computes the global-batch term, and
  gradients flow into its own rows only, scaled so that the engine's average over ranks is the one-process
  gradient (``trainer.distributed.gather_rows``): N ranks × B/N train exactly what one process × B trains.
  "local": each rank's own batch, i.e. the mean of per-rank contrastive objectives, not the global one. With
  gradient accumulation the negatives are those of one micro-batch across ranks (global batch / accumulation
  steps clips), as one process with the same micro-batch would see. The per-sample terms (reconstruction,
  commitment, the CLUB estimators' own likelihood) and the codebook statistics are exact either way;
- ``state_dict`` holds the CLUB estimators, their optimiser state and the CPC generator state. The model
  (and with it the quantizer buffers) is saved by the engine, not here.
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from trainer.models.club import club_upper_bound
from trainer.configs.model import CLUBConfig, CPCConfig
from trainer.models.eager import eager_under_compile, keep_marked_eager_
from trainer.models.cpc import cross_cpc_losses
from trainer.models.losses import cmcm_loss, code_log_distribution
from trainer.models.inputs import SEGMENT_MASK, mask_key, repeat_single_segments

if TYPE_CHECKING:
    from trainer.checkpoint import InitSource
    from trainer.data.batch import Batch


@runtime_checkable
class Task(Protocol):
    """Everything trainer/loop.py calls on a task (see the module docstring for the order)."""

    model: nn.Module   # a SegmentCoder (trainer/models/segment_coder.py): every trainable parameter of the loss

    def to(self, device: torch.device | str) -> Task: ...
    def attach_engine_(self, module: Callable[[Mapping[str, Tensor]], dict]) -> None: ...
    def compile_(self) -> None: ...
    def prepare_batch(self, batch: Batch, device: torch.device | str | None = None) -> dict[str, Tensor]: ...
    def forward(self, features: Mapping[str, Tensor]) -> dict: ...
    def loss_terms(self, features: Mapping[str, Tensor], out: Mapping[str, Any], step: int
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor]]: ...
    def compute_loss(self, features: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]: ...
    def after_optimizer_step_(self) -> dict[str, Tensor]: ...
    def code_usage_(self) -> dict[str, Tensor]: ...
    def codebook(self) -> Tensor: ...
    def replicated_state(self) -> dict[str, Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...
    def begin_phase_(self, init: InitSource, model_cfg: Any) -> Any: ...
    def end_phase_(self, batches: Iterator[Batch], device: torch.device | str) -> dict[str, float]: ...
    def extra_state(self) -> dict[str, Any]: ...


# bound name -> (estimator key, x, y, real): the CLUB bound "name" of q_θ[key](y | x), x = z (b t D), y = z̄ (b t d̄),
# over the segments ``real`` (b t) marks (None: all of them)
ClubPairs = Mapping[str, tuple[str, Tensor, Tensor, Tensor | None]]


def cmcm_terms(distances: Mapping[str, Tensor], real: Tensor | None = None) -> dict[tuple[str, str], Tensor]:
    """CMCM for every unordered pair of modalities, from each modality's ``(b t M)`` squared code distances (over the
    real segments ``real`` ``(b t)`` marks, None: all)."""
    log_p = {m: code_log_distribution(d, real) for m, d in distances.items()}
    return {(a, b): cmcm_loss(log_p[a], log_p[b]) for a, b in itertools.combinations(distances, 2)}


def loss_and_metrics(terms: Mapping[str, Tensor], weights: object,
                     metrics: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """A task's ``compute_loss`` result: the weighted total, and the metrics (its parts, every unweighted term and
    ``loss``) detached."""
    loss = weighted_total(terms, weights)
    metrics.update(terms)
    metrics["loss"] = loss
    return loss, {k: v.detach() for k, v in metrics.items()}


def weighted_total(terms: Mapping[str, Tensor], weights: object) -> Tensor:
    """Σ weight · term, each term weighted by the loss config field of the same name."""
    return sum(getattr(weights, name) * value for name, value in terms.items())


def rank_share(real: Tensor, batch_real: Tensor) -> Tensor:
    """The weight of this rank's mean over its real segments (``real`` ``(b t)``) that makes the ranks' average the
    mean over the real segments of the batch the negatives come from (``batch_real``, this rank's rows among them):
    ranks may hold different numbers of real segments, and the engine averages their gradients with equal weights.
    1 in one process (and with global negatives, a batch without padding has no mask at all)."""
    return real.sum().float() * (batch_real.shape[0] / real.shape[0]) / batch_real.sum().float()


def _checked_mask(mask: Any, key: str) -> Tensor:
    """``batch[key]`` as a ``(b t)`` bool tensor with a real entry in every row (attention over no key would be NaN,
    and a clip without a real segment has nothing to train)."""
    if not isinstance(mask, Tensor) or mask.ndim != 2:
        raise ValueError(f"batch['{key}'] must be a (b t) tensor, got {getattr(mask, 'shape', mask)}")
    mask = mask.bool()
    empty = (~mask.any(dim=1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(f"batch['{key}'] has rows without any real token: {empty.tolist()[:8]}")
    return mask


class CodebookTask(abc.ABC):
    """Task plumbing around a ``SegmentCoder`` model: CLUB estimators and their optimiser, the CPC time
    generator, batch preparation, the forward through the engine, the post-step codebook update, state, and
    phase hooks that change nothing.

    A subclass builds its model and estimators, calls this ``__init__`` and implements ``loss_terms`` with the
    helpers below (see the module docstring for the rules they follow); ``cfg.loss`` weights the terms.
    """

    def __init__(
        self,
        cfg: Any,
        model: nn.Module,
        modalities: Iterable[str],
        club: nn.ModuleDict | None,
        club_cfg: CLUBConfig,
        cpc_cfg: CPCConfig | None,
        average_gradients_fn: Callable[[Iterable[nn.Parameter]], None],
        gather_rows_fn: Callable[[list[Tensor]], list[Tensor]],
    ):
        self.cfg = cfg
        self.model = model
        # What ``forward`` runs: the model itself until the loop attaches the engine that wraps it.
        self.forward_module: Callable[[Mapping[str, Tensor]], dict] = model
        self.modalities = tuple(modalities)
        self.average_gradients_fn = average_gradients_fn
        self.gather_rows_fn = gather_rows_fn
        self.club_inner_steps = club_cfg.inner_steps
        self.club_nonnegative = club_cfg.nonnegative
        self.club = club
        self.club_optimizer = torch.optim.Adam(club.parameters(), lr=club_cfg.lr) if club is not None else None
        self.cpc_generator = torch.Generator().manual_seed(cpc_cfg.seed) if cpc_cfg is not None else None

    # ------------------------------------------------------------------ the loss
    def forward(self, features: Mapping[str, Tensor]) -> dict:
        """The model's forward, through the engine once one is attached."""
        return self.forward_module(features)

    @abc.abstractmethod
    def loss_terms(self, features: Mapping[str, Tensor], out: Mapping[str, Any], step: int
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(terms, metrics)``: the unweighted loss terms by loss-config field name, and their parts."""

    def compute_loss(self, features: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward + every loss term: the weighted total and detached metrics (parts, terms and ``loss``)."""
        terms, metrics = self.loss_terms(features, self.forward(features), step)
        return loss_and_metrics(terms, self.cfg.loss, metrics)

        # ------------------------------------------------------------------ plumbing
    def attach_engine_(self, module: Callable[[Mapping[str, Tensor]], dict]) -> None:
        """Run the forward through ``module`` (the engine wrapping ``self.model``). A bf16 engine casts the whole
        model; the codebook and its EMA statistics stay fp32."""
        self.forward_module = module
        self.model.quantizer.float()

    def compile_(self) -> None:
        """``torch.compile`` the model's forward (in place: the engine keeps calling the same module, and state_dict
        keys do not change) and ``loss_terms`` (``run.compile``). What must stay eager is marked
        ``eager_under_compile`` (trainer/models/eager.py) and wrapped in ``torch.compiler.disable`` here: the CLUB
        estimators' inner updates (their own backward and optimiser step), the in-batch negatives' all-gather,
        Cross-CPC (``_cpc_terms``) and the codebook's init and statistics. Values equal eager's to float tolerance,
        and the compiled step keeps the state a checkpoint holds, so resume stays exact
        (tests/system/test_compile_job.py)."""
        for obj in (self, *self.model.modules()):
            keep_marked_eager_(obj)
        self.model.compile()
        self.loss_terms = torch.compile(self.loss_terms)

    def to(self, device: torch.device | str) -> CodebookTask:
        """Move model and CLUB estimators (in place, so optimiser references stay valid)."""
        self.model.to(device)
        if self.club is not None:
            self.club.to(device)
        return self

    def prepare_batch(self, batch: Batch, device: torch.device | str | None = None) -> dict[str, Tensor]:
        """Pick this task's features (and optional masks) from a loader ``Batch``, checked, fp32/bool, on ``device``.

        Runs before the training step, on the loader's (CPU) tensors, so it may inspect values: a mask row
        without any real token is an error here (attention over no keys would give NaN later).
        """
        features = {}
        if SEGMENT_MASK in batch:
            features[SEGMENT_MASK] = _checked_mask(batch[SEGMENT_MASK], SEGMENT_MASK).to(device=device,
                                                                                         non_blocking=True)
        for m in self.modalities:
            if m not in batch:
                raise KeyError(f"batch lacks modality '{m}' (got keys {sorted(batch)})")
            value = batch[m]
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise TypeError(f"batch['{m}'] must be a floating-point tensor, got "
                                f"{getattr(value, 'dtype', type(value).__name__)}")
            features[m] = value.to(device=device, dtype=torch.float32, non_blocking=True)
            key = mask_key(m)
            if key in batch:
                features[key] = _checked_mask(batch[key], key).to(device=device, non_blocking=True)
        return repeat_single_segments(features, self.modalities)

    # ------------------------------------------------------------------ in-batch negatives
    @eager_under_compile
    def _negatives_batch(self, groups: Mapping[str, Mapping[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
        """``groups`` (e.g. ``{"semantic": {modality: (b t D)}}``) of the tensors whose rows are in-batch negatives,
        over the batch ``cfg.negatives`` names: as given ("local") or every rank's rows in rank order ("global":
        one packed all-gather for all of them; see the module docstring). Same keys, same order."""
        if self.cfg.negatives == "local":
            return {name: dict(group) for name, group in groups.items()}
        keys = [(name, key) for name, group in groups.items() for key in group]
        gathered = self.gather_rows_fn([groups[name][key] for name, key in keys])
        batch: dict[str, dict[str, Tensor]] = {name: {} for name in groups}
        for (name, key), tensor in zip(keys, gathered):
            batch[name][key] = tensor
        return batch

    # ------------------------------------------------------------------ CLUB
    @eager_under_compile
    def _train_estimators_(self, pairs: list[tuple[str, Tensor, Tensor, Tensor | None, Tensor | None]]) -> Tensor:
        """``club.inner_steps`` updates of q_θ maximising Σ_pairs log q_θ(y | x) on detached inputs (each pair
        ``(key, x, y, real, batch_real)``: over its real segments, weighted by ``rank_share``).

        Returns the summed log-likelihood of the last inner step (before its update), detached.
        Called only with ``club.inner_steps >= 1``.
        """
        detached = [(key, x.detach(), y.detach(), None) if real is None else
                    (key, x.detach()[real], y.detach()[real], rank_share(real, batch_real).detach())
                    for key, x, y, real, batch_real in pairs]
        for _ in range(self.club_inner_steps):
            self.club_optimizer.zero_grad(set_to_none=True)
            terms = [(self.club[key].log_likelihood(x, y), share) for key, x, y, share in detached]
            log_likelihood = sum(value if share is None else share * value for value, share in terms)
            (-log_likelihood).backward()
            self.average_gradients_fn(self.club.parameters())
            self.club_optimizer.step()
        # leave no estimator gradient behind: the main backward must find them untouched (None)
        self.club_optimizer.zero_grad(set_to_none=True)
        return log_likelihood.detach()

    def _mi_upper_bounds(self, pairs: ClubPairs) -> dict[str, Tensor]:
        """CMG eq. 5 per pair, with q_θ evaluated on detached parameters (gradients reach x and y only)."""
        bounds = {}
        for name, (key, x, y, real) in pairs.items():
            frozen = {n: p.detach() for n, p in self.club[key].named_parameters()}
            mu, logvar = functional_call(self.club[key], frozen, (x,))
            bounds[name] = club_upper_bound(mu, logvar, y, real)
            if self.club_nonnegative:
                bounds[name] = bounds[name].clamp_min(0.0)
        return bounds

    def _club_terms(self, pairs: ClubPairs, negatives: ClubPairs, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """Inner estimator updates on this rank's ``pairs`` (training mode only; their log-likelihood goes into
        ``metrics``), then the MI upper bound of every pair for the main loss, over ``negatives``: the same pairs
        over the batch the negatives come from (``_negatives_batch``)."""
        if self.model.training and self.club_inner_steps:
            metrics["club_log_likelihood"] = self._train_estimators_(
                [(*pair, negatives[name][3]) for name, pair in pairs.items()])
        return self._mi_upper_bounds(negatives)

    # ------------------------------------------------------------------ Cross-CPC
    @eager_under_compile
    def _draw_cpc_time(self, valid: int) -> int:
        """Context end t ~ U{0, …, valid − 1} from the task's CPU generator (host-side: no device sync)."""
        return int(torch.randint(valid, (), generator=self.cpc_generator))

    # Eager under run.compile: the context end t is a new Python int each step, which dynamo turns into a dynamic
    # shape, and the compiled backward of the t-slices came out wrong (torch 2.13, CPU: the gradient into the
    # candidate modality's z off by up to 70 %; tests/system/test_compile_job.py). CPC is a small part of a step.
    @eager_under_compile
    def _cpc_terms(self, predictions: Mapping[str, Tensor], semantic: Mapping[str, Tensor],
                   cpc_cfg: CPCConfig, real: Tensor | None = None) -> tuple[Tensor, dict[tuple[str, str], Tensor]]:
        """Cross-CPC (CMG eq. 6): (the weighted sum over ordered pairs, each pair's loss).

        Training: one random context end per step (CMG §4.2); evaluation: the mean over all of them, which
        is the random-t loss's expectation and leaves the training generator untouched. With padded clips
        (``real`` ``(b t)``) t is drawn among the context ends of the longest clip (every clip of one length L:
        those of L, as unpadded), and each (t, k) is scored over the clips whose segment t + k is real.
        """
        ends = next(iter(predictions.values())).shape[1]
        if real is not None:    # T − K context ends of a clip of T segments; here of the longest clip's
            ends = int(real.sum(1).max()) - (real.shape[1] - ends)
        t = self._draw_cpc_time(ends) if self.model.training else None
        same_weight = cpc_cfg.same_modality_weight
        pairs = cross_cpc_losses(predictions, semantic, t, cpc_cfg.normalize_over,
                                 include_same_modality=same_weight != 0.0, real=real)
        return sum(v if a != n else same_weight * v for (a, n), v in pairs.items()), pairs

    # ------------------------------------------------------------------ after the step
    def after_optimizer_step_(self) -> dict[str, Tensor]:
        """Once per optimizer step: MM-EMA update, usage and code reset; returns ``codebook/*`` statistics."""
        stats = self.model.quantizer.step_()
        return {f"codebook/{k}": v for k, v in stats.items()}

    def replicated_state(self) -> dict[str, Tensor]:
        """What every rank must hold bit-identically without any broadcast: the quantizer's buffers
        (codebook, EMA counts/sums, usage clocks) and the CLUB estimators' weights (CPU copies)."""
        state = {f"quantizer.{k}": v.detach().cpu().clone() for k, v in self.model.quantizer.state_dict().items()
                 if isinstance(v, Tensor)}
        if self.club is not None:
            state |= {f"club.{k}": v.detach().cpu().clone() for k, v in self.club.state_dict().items()}
        return state

    def code_usage_(self) -> dict[str, Tensor]:
        """Per-modality code counts since the previous call (CMG Fig. 4 plots); clears the window."""
        return self.model.quantizer.take_usage_()

    def codebook(self) -> Tensor:
        """The shared codebook ``(M D)``, detached."""
        return self.model.quantizer.codebook.detach()

    # ------------------------------------------------------------------ phase hooks (none change anything here)
    def begin_phase_(self, init: InitSource, model_cfg: Any) -> Any:
        del init
        return model_cfg

    def end_phase_(self, batches: Iterator[Batch], device: torch.device | str) -> dict[str, float]:
        del batches, device
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """CLUB estimators + their optimiser + the CPC generator (the engine saves the model itself)."""
        state: dict[str, Any] = {}
        if self.club is not None:
            state["club"] = self.club.state_dict()
            state["club_optimizer"] = self.club_optimizer.state_dict()
        if self.cpc_generator is not None:
            state["cpc_generator"] = self.cpc_generator.get_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise KeyError(f"{type(self).__name__} state has keys {sorted(state)}, expected {sorted(expected)} "
                           "(was it saved with different use_club / use_cpc / CLUB ablation switches?)")
        if self.club is not None:
            self.club.load_state_dict(state["club"])
            self.club_optimizer.load_state_dict(state["club_optimizer"])
        if self.cpc_generator is not None:
            self.cpc_generator.set_state(state["cpc_generator"].cpu())


