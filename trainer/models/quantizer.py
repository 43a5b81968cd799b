"""Shared codebook with MM-EMA and code reset (CMG seed 001 §4.3, eq. 7; appendix seed 000 §C).

One codebook ``e (m d)`` is shared by every modality. Each modality's semantic vectors are quantised
to their nearest code (straight-through gradient). The codebook is no parameter: it is the EMA ratio
``e = o / N`` of per-code counts ``N`` and sums ``o`` collected from *all* modalities, where each vector
enters as ``(z^m + r^m) / 2`` and ``r^m`` is the partner modalities' view of the same clip (MM-EMA).

State is buffers only, updated in place at the optimizer-step boundary by ``step_``:
    codebook    (m d)    fp32  e
    ema_count   (m)      fp32  N. joint/plain modes keep the raw EMA (Laplace smoothing is applied only
                               to compute e); sequential mode stores the smoothed value, as the authors' code does
    ema_sum     (m d)    fp32  o
    initialized ()       bool  codebook set (data init happens at the first training forward)
    step        ()       int64 number of completed training steps (``step_`` calls)
    last_used   (k m)    int64 the step at which modality k last selected code m (0 = never since init)
The reset generator's state (torch.Generator, CPU) is saved in the module's ``_extra_state`` entry of
``state_dict``. It is not a buffer, so ``.to(device)`` never moves it and reading it never needs a
device-to-host copy.

Distributed exactness: ``accumulate_`` only adds the LOCAL micro-batch statistics into one flat fp32
accumulator. ``step_`` sums that tensor over ranks with ONE ``all_reduce_fn`` call. Every rank then
applies the same update to the same reduced numbers, and draws reset randomness from a generator
seeded identically everywhere, so the buffers stay bit-identical without any broadcast.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer import distributed
from trainer.models.eager import eager_under_compile
from trainer.configs.model import QuantizerConfig


@dataclass
class QuantizeOutput:
    """What ``quantize`` returns for vectors ``z (... d)``."""

    quantized: Tensor   # (... d) fp32 straight-through: value exactly e (a view of codewords), gradient to z
    codes: Tensor       # (...) int64 index of the nearest code
    codewords: Tensor   # (... d) fp32 e[codes] from the pre-update codebook, detached (commitment target)
    distances: Tensor   # (... m) fp32 squared distances to every code, clamped at 0; carries z's gradient


class _StraightThrough(torch.autograd.Function):
    """Forward returns the codewords e; backward hands the gradient to z unchanged (VQ-VAE estimator).

    Same value and gradient as ``z + (e − z).detach()``, but exactly e and without two (n d) temporaries.
    """

    @staticmethod
    def forward(ctx, z: Tensor, codewords: Tensor) -> Tensor:
        return codewords.view_as(codewords)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def laplace_smoothed(counts: Tensor, epsilon: float) -> Tensor:
    """``(N + eps) / (sum N + M eps) * sum N`` per code (m): no code divides by zero, and sum N is unchanged."""
    total = counts.sum()
    return (counts + epsilon) / (total + counts.numel() * epsilon) * total


class MMEMAQuantizer(nn.Module):
    """Shared codebook with MM-EMA. State = buffers only (no nn.Parameter); see the module docstring.

    Per training step: ``maybe_init_`` at the start of every forward, ``quantize`` per modality,
    ``accumulate_`` once per micro-batch, ``step_`` once at the optimizer-step boundary.
    """

    def __init__(
        self,
        cfg: QuantizerConfig,
        modalities: Sequence[str],
        all_reduce_fn: Callable[[Tensor], Tensor] = distributed.all_reduce_sum_,
        all_gather_fn: Callable[[Tensor], Tensor] = distributed.all_gather_cat,
    ):
        super().__init__()
        modalities = tuple(modalities)
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"quantizer modalities must be distinct names, got {list(modalities)}")
        if cfg.ema_mode != "plain" and len(modalities) < 2:
            raise ValueError(f"quantizer ema_mode '{cfg.ema_mode}' needs a partner modality for r; "
                             f"got only {list(modalities)} (use ema_mode 'plain')")
        self.cfg = cfg
        self.modalities = modalities
        self.all_reduce_fn = all_reduce_fn
        self.all_gather_fn = all_gather_fn
        m, d, k = cfg.num_codes, cfg.dim, len(modalities)
        self._generator = torch.Generator().manual_seed(cfg.seed)
        self.register_buffer("codebook", torch.zeros(m, d))
        self.register_buffer("ema_count", torch.zeros(m))
        self.register_buffer("ema_sum", torch.zeros(m, d))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("step", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("last_used", torch.zeros(k, m, dtype=torch.int64))
        # Flat so that step_ reduces it with one collective: [counts (k m) | sums (g m d)], where the
        # sequential mode needs one sum per modality (g = k) and the others only their total (g = 1).
        sum_groups = k if cfg.ema_mode == "sequential" else 1
        self.register_buffer("stats_accumulator", torch.zeros(k * m + sum_groups * m * d), persistent=False)
        # Globally reduced per-modality code counts summed since the last ``take_usage_`` (for the
        # code-usage plots of CMG Fig. 4); monitoring only, so not part of the checkpointed state.
        self.register_buffer("usage_window", torch.zeros(k, m), persistent=False)
        # Host-side memo of `initialized`, so maybe_init_ reads the buffer (a device sync) once, not per forward.
        self._known_initialized = False
        self.register_load_state_dict_post_hook(_forget_initialized_memo)
        if cfg.init == "uniform":
            self._init_uniform_()

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> Tensor:
        return self._generator.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        if not isinstance(state, Tensor) or state.dtype != torch.uint8:
            raise ValueError("quantizer state_dict '_extra_state' must be the uint8 reset-generator state, "
                             f"got {type(state).__name__}")
        self._generator.set_state(state.cpu())

    @property
    def reset_rng_state(self) -> Tensor:
        """The reset generator's state (uint8, CPU); saved in ``state_dict`` as ``_extra_state``."""
        return self._generator.get_state()

    @property
    def _host_reads_are_free(self) -> bool:
        """Whether reading a buffer's value on the host costs nothing (CPU) or a device sync (accelerators)."""
        return self.codebook.device.type == "cpu"

    def _require_fp32(self) -> None:
        # A module-wide cast (module.bfloat16(), e.g. by a bf16 engine) would also cast these buffers.
        if self.codebook.dtype != torch.float32 or self.stats_accumulator.dtype != torch.float32:
            raise TypeError(f"quantizer buffers must stay fp32, got {self.codebook.dtype}: call "
                            "quantizer.float() after any module-wide dtype cast")

    def _accumulated(self) -> tuple[Tensor, Tensor]:
        """Views into the accumulator: counts ``(k m)`` and sums ``(g m d)``."""
        k, m, d = len(self.modalities), self.cfg.num_codes, self.cfg.dim
        flat = self.stats_accumulator
        return flat[: k * m].view(k, m), flat[k * m:].view(-1, m, d)

    # ------------------------------------------------------------------ quantisation
    def distances(self, z: Tensor) -> Tensor:
        """Squared distances ``(... d) -> (... m)``: ||z||² − 2 z·eᵀ + ||e||², one matmul, fp32, autocast off.

        Floored at the expansion's own rounding error, d·eps·(||z||² + ||e||²): the matmul sums d products, and
        two summation orders (another CPU's kernels, a batch split over ranks) differ by up to that much
        (tests/support/numerics.py). Below it a value says nothing about the distance, only about the order; for a
        vector sitting on a code (data init copies batch vectors into the codebook) it would come out as 0 on one
        machine and 1e-7 on another, and CMCM's √ turns that into a gradient anywhere from 0 to 10⁴. At the
        floor the distance has no gradient (the floor is a constant), the same on every CPU. Differentiable
        w.r.t. z above the floor.
        """
        if z.shape[-1] != self.cfg.dim:
            raise ValueError(f"quantizer expects vectors of dim {self.cfg.dim}, got shape {tuple(z.shape)}")
        self._require_fp32()
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.float().reshape(-1, self.cfg.dim)
            e = self.codebook
            # vector_norm avoids (n d) temporaries; the matmul result is then updated in place
            e_sq = torch.linalg.vector_norm(e, dim=1).square()                     # (m)
            z_sq = torch.linalg.vector_norm(flat, dim=1, keepdim=True).square()    # (n 1)
            dist = torch.addmm(e_sq, flat, e.t(), alpha=-2.0).add_(z_sq)
            floor = torch.add(z_sq.detach(), e_sq).mul_(self.cfg.dim * torch.finfo(torch.float32).eps)
            # where, not clamp_min(floor): the compiled graph of a tensor clamp_min aborted (torch 2.13, CPU)
            dist = torch.where(dist > floor, dist, floor)
        return dist.view(*z.shape[:-1], self.cfg.num_codes)

    def quantize(self, z: Tensor) -> QuantizeOutput:
        """Nearest code of every vector of ``z (... d)``; no state change (CMG eq. 2, straight-through)."""
        dist = self.distances(z)
        # = argmin (first minimum on ties), but torch's CPU min(dim) is faster (docs/performance.md, Training step)
        codes = dist.min(-1).indices
        codewords = F.embedding(codes, self.codebook).detach()
        quantized = _StraightThrough.apply(z.float(), codewords)
        return QuantizeOutput(quantized=quantized, codes=codes, codewords=codewords, distances=dist)

    # ------------------------------------------------------------------ randomness and initialisation
    def _sign_noise(self, rows: int) -> Tensor:
        """``(rows d)`` independent random signs ±1 from the seeded generator, on the buffers' device.

        Sign (Rademacher) noise has unit variance like a Gaussian but costs one 32-bit draw per 32
        entries: drawing ``randn(M, D)`` every step was a third of ``step_``'s time at M=400, D=256.
        """
        return self._signs(self._draw_sign_words(rows))

    def _draw_sign_words(self, rows: int) -> Tensor:
        """The draw behind ``_sign_noise``: ``(rows ⌈d/32⌉)`` random 32-bit words."""
        return self._draw(torch.randint, 0, 2**32, (rows, -(-self.cfg.dim // 32)))

    def _signs(self, words: Tensor) -> Tensor:
        """``(rows d)`` signs ±1, one per bit of ``words``."""
        bits = (words.unsqueeze(-1) >> torch.arange(32, device=words.device)) & 1      # (rows words 32)
        return bits.view(words.shape[0], -1)[:, : self.cfg.dim].float().mul_(2.0).sub_(1.0)

    def _perturbed(self, vectors: Tensor, noise: Tensor) -> Tensor:
        """``vectors (n d)`` plus ``noise (n d)`` scaled to reset_noise × each vector's RMS."""
        scale = vectors.norm(dim=1, keepdim=True) * (self.cfg.reset_noise / math.sqrt(self.cfg.dim))
        return torch.addcmul(vectors, noise, scale)

    def _draw(self, fn: Callable[..., Tensor], *args, **kwargs) -> Tensor:
        """A draw from the seeded CPU generator, moved to the buffers' device (same on every rank)."""
        return fn(*args, generator=self._generator, **kwargs).to(self.codebook.device)

    @torch.no_grad()
    def _init_uniform_(self) -> None:
        """Authors' init: e ~ U(−1/M, 1/M), N = 0, o = e (blows unused codes up after one step; compat only)."""
        m, d = self.cfg.num_codes, self.cfg.dim
        self.codebook.copy_((self._draw(torch.rand, m, d) * 2.0 - 1.0) / m)
        self.ema_sum.copy_(self.codebook)
        self.ema_count.zero_()
        self.initialized.fill_(True)
        self._known_initialized = True

    @eager_under_compile        # once per run, with the seeded generator: eager under run.compile too
    @torch.no_grad()
    def maybe_init_(self, semantic: Mapping[str, Tensor], real: Tensor | None = None) -> None:
        """Data-dependent init from the first global training batch; a no-op afterwards and in eval.

        semantic[m]: ``(b t d)``. The batch is all-gathered (rank order; with gradient accumulation it is
        the first micro-batch of every rank), so every rank draws the same M of its B·T·k vectors (without
        replacement when there are enough) with the same generator: e = drawn vectors + reset_noise
        relative noise (which separates repeats), N = 1, o = e. ``real`` ``(b t)`` bool (None: all): only the
        real segments' vectors are drawn from (it is gathered with them).
        """
        if self.cfg.init != "data" or not self.training or self._known_initialized:
            return
        if bool(self.initialized):
            self._known_initialized = True
            return
        self._check_semantic(semantic)
        m, d = self.cfg.num_codes, self.cfg.dim
        pool = torch.cat([self.all_gather_fn(semantic[name].detach().float().contiguous()).reshape(-1, d)
                          for name in self.modalities])
        if real is not None:
            keep = self.all_gather_fn(real.float().contiguous()).reshape(-1) > 0
            pool = pool[keep.repeat(len(self.modalities))]
        n = pool.shape[0]
        if n >= m:
            pick = torch.randperm(n, generator=self._generator)[:m]
        else:
            pick = torch.randint(n, (m,), generator=self._generator)
        self.codebook.copy_(self._perturbed(pool[pick.to(pool.device)], self._sign_noise(m)))
        self.ema_sum.copy_(self.codebook)
        self.ema_count.fill_(1.0)
        self.last_used.copy_(self.step.expand_as(self.last_used))
        self.initialized.fill_(True)
        self._known_initialized = True

    # ------------------------------------------------------------------ MM-EMA statistics
    def _check_semantic(self, semantic: Mapping[str, Tensor]) -> None:
        if set(semantic) != set(self.modalities):
            raise KeyError(f"quantizer got semantic features for {sorted(semantic)}, "
                           f"but was built for modalities {list(self.modalities)}")
        batch = None
        for name in self.modalities:
            z = semantic[name]
            if z.ndim != 3 or z.shape[-1] != self.cfg.dim:
                raise ValueError(f"semantic['{name}'] must be (b t {self.cfg.dim}), got {tuple(z.shape)}")
            if batch is not None and z.shape[0] != batch:
                raise ValueError(f"semantic['{name}'] has {z.shape[0]} clips, other modalities {batch}")
            batch = z.shape[0]
        if self.cfg.ema_mode != "plain" and self.cfg.r_source == "paired":
            shapes = {name: tuple(semantic[name].shape) for name in self.modalities}
            if len(set(shapes.values())) != 1:
                raise ValueError(f"r_source 'paired' needs one (b t d) shape for all modalities, got {shapes}")

    def _partners(self, semantic: Mapping[str, Tensor], real: Tensor | None = None
                  ) -> dict[str, list[tuple[Tensor | None, Tensor]]]:
        """For every modality m, one ``(weights, z^n)`` per partner n: r^m's share from n is ``weights @ z^n``
        (cross_attention; ``weights`` ``(b t_m t_n)``) or z^n itself (paired; ``weights`` None). With ``real``
        ``(b t)`` (padded segments False) a query attends to the partner's real segments only."""
        seen: dict[str, list[tuple[Tensor | None, Tensor]]] = {name: [] for name in self.modalities}
        for i, a in enumerate(self.modalities):
            for b in self.modalities[i + 1:]:
                za, zb = semantic[a], semantic[b]
                if self.cfg.r_source == "paired":
                    seen[a].append((None, zb))
                    seen[b].append((None, za))
                    continue
                # One score matrix serves both directions: a attends over b's segments (axis 2), b over
                # a's (axis 1). Both softmaxes run along axis 1 of a view: torch's CPU softmax over a
                # short last axis (T = 10) is ~3x slower than over a middle one.
                scores = torch.bmm(za, zb.transpose(1, 2)).mul_(1.0 / math.sqrt(self.cfg.dim))   # (b ta tb)
                if real is not None:   # the lowest finite value, not −∞: a padded query's row stays finite
                    padded = ~(real.unsqueeze(2) & real.unsqueeze(1))
                    scores = scores.masked_fill_(padded, torch.finfo(scores.dtype).min)
                seen[a].append((scores.transpose(1, 2).softmax(1).transpose(1, 2), zb))
                seen[b].append((scores.softmax(1).transpose(1, 2), za))
        return seen

    def partner_view(self, semantic: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """r^m ``(b t d)`` for every modality m: the partners' information as seen from m (CMG §4.3).

        cross_attention: r^m = softmax_s(z^m_t · z^n_s / √d) z^n_s, over the partner's segments s of the
        same clip (parameter-free scaled dot-product attention, query z^m, key = value z^n).
        paired: r^m = z^n at the same (clip, segment). With several partners r^m is their mean.
        """
        views = {name: [zn if w is None else torch.bmm(w, zn) for w, zn in shares]
                 for name, shares in self._partners(semantic).items()}
        return {name: v[0] if len(v) == 1 else torch.stack(v).mean(0) for name, v in views.items()}

    def _ema_targets(self, semantic: Mapping[str, Tensor], real: Tensor | None = None) -> Tensor:
        """(z^m + r^m) / 2 (CMG eq. 7's summand) of every modality, its rows stacked in modality order:
        ``(Σ_m b t_m, d)``; r^m as ``partner_view`` gives it. Each attention share is added inside its product
        (``baddbmm``), so neither r^m nor the sum is a separate pass, and every modality writes straight into
        the one tensor that ``accumulate_`` then adds up."""
        d = self.cfg.dim
        out = next(iter(semantic.values())).new_empty(sum(z.numel() for z in semantic.values()) // d, d)
        start = 0
        for name, shares in self._partners(semantic, real).items():
            z = semantic[name]
            target = out[start:start + z.shape[0] * z.shape[1]].view(z.shape)
            start += z.shape[0] * z.shape[1]
            share = 0.5 / len(shares)
            for i, (weights, zn) in enumerate(shares):
                base, beta = (z, 0.5) if i == 0 else (target, 1.0)
                if weights is None:
                    torch.add(base.mul(beta), zn, alpha=share, out=target)
                else:
                    torch.baddbmm(base, weights, zn, beta=beta, alpha=share, out=target)
        return out

    @eager_under_compile        # in-place statistics in views of one flat buffer: eager under run.compile
    @torch.no_grad()
    def accumulate_(self, semantic: Mapping[str, Tensor], codes: Mapping[str, Tensor],
                    real: Tensor | None = None) -> None:
        """Add this micro-batch's LOCAL counts n^m ``(m)`` and sums Σ(z^m + r^m)/2 ``(m d)`` (training only).

        semantic[m]: ``(b t d)``; codes[m]: ``(b t)`` int64 from ``quantize``. In plain mode the sums are Σ z^m.
        ``real`` ``(b t)`` bool (None: all): padded segments add nothing (and r^m attends to real ones only).
        One ``bincount`` and one ``index_add_`` for all modalities: code k of modality i is row i·M + k of the
        per-modality statistics.
        """
        if not self.training:
            return
        self._check_semantic(semantic)
        for name in self.modalities:
            if name not in codes or codes[name].shape != semantic[name].shape[:-1]:
                got = tuple(codes[name].shape) if name in codes else "missing"
                raise ValueError(f"codes['{name}'] must be {tuple(semantic[name].shape[:-1])}, got {got}")
        m, d = self.cfg.num_codes, self.cfg.dim
        with torch.autocast(device_type=self.codebook.device.type, enabled=False):
            z = {name: semantic[name].detach().float() for name in self.modalities}
            if self.cfg.ema_mode == "plain":
                targets = torch.cat([z[name].reshape(-1, d) for name in self.modalities])
            else:
                targets = self._ema_targets(z, real)                                    # eq. 7: (z + r)/2
            counts, sums = self._accumulated()
            flat_codes = torch.cat([codes[name].reshape(-1) for name in self.modalities])
            per_modality = torch.cat([codes[name].reshape(-1) + i * m for i, name in enumerate(self.modalities)])
            if real is not None:
                keep = real.reshape(-1).repeat(len(self.modalities))
                targets, flat_codes, per_modality = targets[keep], flat_codes[keep], per_modality[keep]
            counts.view(-1).add_(torch.bincount(per_modality, minlength=counts.numel()))
            if self.cfg.ema_mode == "sequential":
                sums.view(-1, d).index_add_(0, per_modality, targets)
            else:
                sums[0].index_add_(0, flat_codes, targets)

    # ------------------------------------------------------------------ the training-step update
    @torch.no_grad()
    def step_(self) -> dict[str, Tensor]:
        """Reduce the accumulated statistics over ranks (one all_reduce), apply MM-EMA, usage and reset.

        Returns per-step statistics as 0-dim tensors (no host sync): perplexity (of this step's global code
        usage), active_codes (used by any modality this step), codes_used_<m>, codes_used_all (used by every
        modality), codes_used_only_<m> (by m and no other), resets (codes reset this step).
        """
        if not self.training:
            raise RuntimeError("MMEMAQuantizer.step_() called in eval mode; the codebook only updates in training")
        self._require_fp32()
        reduced = self.all_reduce_fn(self.stats_accumulator)   # in place by contract (all_reduce_sum_)
        if reduced is not self.stats_accumulator:
            self.stats_accumulator.copy_(reduced)
        counts, sums = self._accumulated()
        self.usage_window.add_(counts)
        self._ema_update_(counts, sums)
        step = self.step.add_(1)
        used = counts > 0                                                   # (k m)
        torch.where(used, step, self.last_used, out=self.last_used)
        resets = self._reset_dead_codes_(step) if self.cfg.reset else torch.zeros_like(step)
        stats = self._usage_stats(counts, used, resets)
        self.stats_accumulator.zero_()
        return stats

    @torch.no_grad()
    def adopt_(self, state: Mapping[str, Tensor], modalities: Sequence[str]) -> None:
        """Continue from another run's quantizer state whose modalities may differ (continual phases).

        The codebook, EMA statistics, step counter and reset generator are taken as they are. Usage clocks
        (``last_used``) are remapped by modality name; a modality new to this run starts its clock at the
        adopted step, so it gets N_re steps to use the inherited codes before rule "all" could reset them.
        """
        required = ("codebook", "ema_count", "ema_sum", "initialized", "step", "last_used")
        missing = [k for k in required if k not in state]
        if missing:
            raise KeyError(f"quantizer state lacks {missing}")
        if state["codebook"].shape != self.codebook.shape:
            raise ValueError(f"cannot adopt a codebook of shape {tuple(state['codebook'].shape)} into "
                             f"{tuple(self.codebook.shape)} (num_codes/dim differ)")
        for name in ("codebook", "ema_count", "ema_sum", "initialized", "step"):
            getattr(self, name).copy_(state[name])
        if "_extra_state" in state:
            self.set_extra_state(state["_extra_state"])
        old = list(modalities)
        for i, name in enumerate(self.modalities):
            source = state["last_used"][old.index(name)] if name in old else state["step"].expand(self.cfg.num_codes)
            self.last_used[i].copy_(source)
        self._known_initialized = bool(state["initialized"])

    @torch.no_grad()
    def expand_(self, new_codes: int) -> None:
        """Append ``new_codes`` codes to the codebook (dynamic expansion, COMET seed 004 §3.3); old codes unchanged.

        Every buffer with a code axis grows consistently: codebook and ema_sum ``(m d)``, ema_count ``(m)``,
        last_used and usage_window ``(k m)``, and the flat statistics accumulator. A new code starts like a reset
        code: a copy of a uniformly drawn existing code plus ``reset_noise`` relative noise, N = 1, o = e, and
        usage clocks at the current step (so rule "all" gives it N_re steps before it may reset it). The draws
        come from the seeded reset generator, so ranks holding the same state grow bit-identically.

        The buffers are replaced by larger tensors: call it before an engine wraps the model, between training
        steps (nothing accumulated), on an initialised codebook.
        """
        if new_codes < 1:
            raise ValueError(f"expand_ needs new_codes >= 1, got {new_codes}")
        if not bool(self.initialized):
            raise RuntimeError("cannot expand a codebook that was never initialised (no training step yet)")
        if bool(self.stats_accumulator.any()):
            raise RuntimeError("expand_ called with MM-EMA statistics pending: expand between training steps")
        m, d, k = self.cfg.num_codes, self.cfg.dim, len(self.modalities)
        sum_groups = (self.stats_accumulator.numel() - k * m) // (m * d)
        source = self._draw(torch.randint, m, (new_codes,))
        fresh = self._perturbed(self.codebook[source], self._sign_noise(new_codes))
        # Assigning to a registered buffer's name replaces the buffer (persistence flags are kept by name).
        self.codebook = torch.cat([self.codebook, fresh])
        self.ema_sum = torch.cat([self.ema_sum, fresh])
        self.ema_count = torch.cat([self.ema_count, self.ema_count.new_ones(new_codes)])
        self.last_used = torch.cat([self.last_used, self.step.expand(k, new_codes)], dim=1)
        self.usage_window = torch.cat([self.usage_window, self.usage_window.new_zeros(k, new_codes)], dim=1)
        total = m + new_codes
        self.stats_accumulator = self.stats_accumulator.new_zeros(k * total + sum_groups * total * d)
        # a new config object: the caller's QuantizerConfig (often shared with a model config) stays as it was
        self.cfg = dataclasses.replace(self.cfg, num_codes=total)

    @torch.no_grad()
    def place_codes_(self, codes: slice, vectors: Tensor) -> None:
        """Set ``codes`` to ``vectors`` ``(n d)`` (e.g. appended codes placed on data), N = 1, o = e, usage clocks
        restarted, as a reset would. The caller passes the same vectors on every rank."""
        self.codebook[codes] = vectors
        self.ema_sum[codes] = vectors
        self.ema_count[codes] = 1.0
        self.last_used[:, codes] = self.step

    @torch.no_grad()
    def refresh_usage_(self, codes: slice) -> None:
        """Restart the reset clocks of ``codes`` as if every modality had used them in the current step.

        For codes that a modality absent from this run still relies on (COMET: the codes inherited from earlier
        phases, which no data of this phase can keep in use); they are then never reset. Rank-identical.
        """
        self.last_used[:, codes] = self.step

    @torch.no_grad()
    def take_usage_(self) -> dict[str, Tensor]:
        """Per-modality global code counts ``(m)`` summed since the previous call; clears the window."""
        usage = {name: self.usage_window[i].clone() for i, name in enumerate(self.modalities)}
        self.usage_window.zero_()
        return usage

    def _ema_update_(self, counts: Tensor, sums: Tensor) -> None:
        """MM-EMA on the globally reduced counts ``(k m)`` and sums ``(g m d)``."""
        gamma, eps = self.cfg.decay, self.cfg.epsilon
        if self.cfg.ema_mode == "sequential":
            # Authors' code: one EMA step per modality in turn, smoothing N each time (effective decay γ^k).
            for i in range(len(self.modalities)):
                self.ema_count.mul_(gamma).add_(counts[i], alpha=1.0 - gamma)
                self.ema_count.copy_(laplace_smoothed(self.ema_count, eps))
                self.ema_sum.mul_(gamma).add_(sums[i], alpha=1.0 - gamma)
            torch.div(self.ema_sum, self.ema_count.unsqueeze(1), out=self.codebook)
        else:
            # CMG eq. 7: N ← γN + (1−γ) Σ_m n^m ; o ← γo + (1−γ) Σ_m Σ (z^m + r^m)/2 ; e = o / N (smoothed)
            self.ema_count.mul_(gamma).add_(counts.sum(0), alpha=1.0 - gamma)
            self.ema_sum.mul_(gamma).add_(sums[0], alpha=1.0 - gamma)
            torch.div(self.ema_sum, laplace_smoothed(self.ema_count, eps).unsqueeze(1), out=self.codebook)

    def _reset_dead_codes_(self, step: Tensor) -> Tensor:
        """Code reset (CMG §4.3): re-initialise codes that missed the usage rule over the last N_re steps.

        A modality went stale on a code when it has not selected it in the last N_re steps
        (step − last_used ≥ N_re). Rule "all" resets a code stale for ANY modality (keep only codes every
        modality uses); rule "any" resets a code stale for EVERY modality. A reset code becomes a copy of a
        uniformly drawn kept code plus relative noise, with N = 1 and o = e so the next EMA step starts
        from it, and its usage clock restarts. Randomness is drawn for every code every step, so the
        generator advances identically whatever the decisions. Returns the number of codes reset.
        """
        m = self.cfg.num_codes
        stale = (step - self.last_used) >= self.cfg.reset_steps            # (k m)
        dead = stale.any(0) if self.cfg.reset_rule == "all" else stale.all(0)
        uniform = self._draw(torch.rand, m)
        words = self._draw_sign_words(m)
        if self._host_reads_are_free and not bool(dead.any()):
            # The usual step: nothing to reset, and the update below would change nothing. On a CPU this check
            # is free (it skips most of step_'s time); on a GPU it would be a host sync, so there every step
            # runs the branch-free update. The draws above are made either way: the generator stays in step.
            return dead.sum()
        noise = self._signs(words)
        # Source of code i = the j-th kept code, j = floor(u_i · n_kept); every code if none is kept.
        candidates = torch.where(dead.all(), torch.ones_like(dead), ~dead)
        rank_of = candidates.cumsum(0)                                       # (m) 1-based rank of each candidate
        n_candidates = rank_of[-1]
        wanted = torch.minimum((uniform * n_candidates).long(), n_candidates - 1) + 1
        source = torch.searchsorted(rank_of, wanted)
        fresh = self._perturbed(self.codebook[source], noise)
        keep = ~dead.unsqueeze(1)
        torch.where(keep, self.codebook, fresh, out=self.codebook)
        torch.where(keep, self.ema_sum, fresh, out=self.ema_sum)
        self.ema_count.masked_fill_(dead, 1.0)
        torch.where(dead, step, self.last_used, out=self.last_used)
        return dead.sum()

    def _usage_stats(self, counts: Tensor, used: Tensor, resets: Tensor) -> dict[str, Tensor]:
        total = counts.sum(0)
        p = total / total.sum().clamp_min(1.0)
        users = used.sum(0)                                                  # (m) modalities per code
        stats = {
            "perplexity": torch.exp(-torch.special.xlogy(p, p).sum()),
            "active_codes": (users > 0).sum(),
            "codes_used_all": (users == len(self.modalities)).sum(),
            "resets": resets,
        }
        used_by = used.sum(1)                                                # (k) codes each modality used
        used_only_by = (used & (users == 1)).sum(1)                          # (k) codes no other modality used
        for i, name in enumerate(self.modalities):
            stats[f"codes_used_{name}"] = used_by[i]
            stats[f"codes_used_only_{name}"] = used_only_by[i]
        return stats


def _forget_initialized_memo(module: MMEMAQuantizer, incompatible_keys) -> None:
    """After load_state_dict the `initialized` buffer may differ from the memo: re-read it next forward."""
    module._known_initialized = False
