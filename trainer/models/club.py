"""CLUB mutual-information upper bound between semantic and specific features (CMG eq. 4–5).

q_θ(z̄ | z) is a diagonal Gaussian whose mean and log-variance are MLPs of z. The estimator has two
uses, kept apart on purpose:
- ``log_likelihood`` is the estimator's own objective (maximised on detached inputs, by its own
  optimiser, several inner steps per training step);
- ``club_upper_bound`` is the temporal vCLUB estimate (eq. 5) that the main model minimises; the caller
  evaluates q_θ with detached parameters so the main loss never moves θ.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


class CLUBEstimator(nn.Module):
    """q_θ(y | x) = N(y; μ(x), diag exp(logvar(x))) for x = z (semantic), y = z̄ (specific)."""

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int):
        super().__init__()
        self.mean = nn.Sequential(nn.Linear(x_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, y_dim))
        # tanh bounds the log-variance to (−1, 1), as in the CLUB reference estimator: the variance can
        # neither collapse nor explode while the encoders move underneath it.
        self.logvar = nn.Sequential(nn.Linear(x_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, y_dim), nn.Tanh())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: ``(b t dx)`` -> (μ, logvar), each ``(b t dy)``."""
        return self.mean(x), self.logvar(x)

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean over (b, t) of log q_θ(y_{b,t} | x_{b,t}) (full Gaussian density, summed over dims)."""
        mu, logvar = self(x)
        return gaussian_log_likelihood(mu, logvar, y)


def gaussian_log_likelihood(mu: Tensor, logvar: Tensor, y: Tensor) -> Tensor:
    """mean_{b,t} Σ_d log N(y; μ, exp(logvar)). All inputs ``(b t d)``."""
    log_density = -0.5 * ((y - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi))
    return log_density.sum(-1).mean()


def club_upper_bound(mu: Tensor, logvar: Tensor, y: Tensor, real: Tensor | None = None) -> Tensor:
    """Temporal vCLUB estimate (CMG eq. 5) with negatives = the other clips of the batch at the same t.

    ``mu``, ``logvar``: ``(b t d)`` = q_θ's parameters given z_{i,t}; ``y``: ``(b t d)`` = z̄.
    Returns mean_{i,t} [ log q(z̄_{i,t} | z_{i,t}) − mean_{j≠i} log q(z̄_{j,t} | z_{i,t}) ].

    ALGORITHMS.md §1 takes the negatives over the B−1 *other* clips (eq. 5 literally averages over all
    j, including the positive). In the difference, log σ and the 2π constant cancel, leaving
    Σ_d [mean_{j≠i}(y_{j,t} − μ_{i,t})² − (y_{i,t} − μ_{i,t})²] / (2σ²_{i,t}). The sum over j is formed
    without a (b b t d) tensor: Σ_j (y_j − μ)² = Σ_j (y_j − ȳ)² + B (ȳ − μ)² (centred, so no cancellation).

    ``real`` ``(b t)`` bool (None: all real): at each t only the clips whose segment t is real take part (B_t of
    them, as positives and as negatives), and the mean runs over real (i, t) with B_t >= 2.
    """
    batch = y.shape[0]
    if batch < 2:
        raise ValueError("club_upper_bound needs at least 2 clips in the batch (negatives are other clips)")
    if real is not None:
        return _masked_club_upper_bound(mu, logvar, y, real)
    y_mean = y.mean(0, keepdim=True)  # (1 t d)
    spread = (y - y_mean).pow(2).sum(0, keepdim=True)  # (1 t d)
    positive = (y - mu).pow(2)  # (b t d)
    all_clips = spread + batch * (y_mean - mu).pow(2)  # Σ_j (y_{j,t} − μ_{i,t})², (b t d)
    negative = (all_clips - positive) / (batch - 1)
    return ((negative - positive) / (2 * logvar.exp())).sum(-1).mean()


def _masked_club_upper_bound(mu: Tensor, logvar: Tensor, y: Tensor, real: Tensor) -> Tensor:
    """``club_upper_bound`` over the real segments only (the same centred sums, each over B_t real clips)."""
    weight = real.unsqueeze(-1).to(y.dtype)                       # (b t 1)
    clips = weight.sum(0, keepdim=True)                           # B_t, (1 t 1)
    y_mean = (y * weight).sum(0, keepdim=True) / clips.clamp_min(1.0)
    spread = ((y - y_mean).pow(2) * weight).sum(0, keepdim=True)
    positive = (y - mu).pow(2)
    all_clips = spread + clips * (y_mean - mu).pow(2)
    negative = (all_clips - positive) / (clips - 1).clamp_min(1.0)
    per_segment = ((negative - positive) / (2 * logvar.exp())).sum(-1)   # (b t)
    return per_segment[real & (clips.squeeze(-1) >= 2)].mean()
