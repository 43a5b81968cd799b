"""Parameter-free loss math of Uni-Code (seed 001 §4; ALGORITHMS.md §1).

Every function takes modality-keyed tensors or plain score matrices and returns scalars; nothing here
owns state. Conventions: ``||a - b||²`` in the paper's equations is the element mean of the squared
difference (``F.mse_loss``), as in VQ-VAE implementations and the §6 commitment check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.models.spatial import plain_required


def reconstruction_loss(reconstruction: Tensor, target: Tensor, real: Tensor | None = None) -> Tensor:
    """MSE between the decoder output and the frozen backbone feature (never a trainable tensor); with ``real``
    ``(b t)`` bool, over the real segments only (the rows ``real`` marks).

    ``reconstruction``, ``target``: identical shapes, e.g. ``(b t d)`` or ``(b t h w c)``. Same value and gradient
    as ``F.mse_loss(reconstruction, target)``; the forward sums the squares chunk by chunk instead of writing the
    whole squared difference to memory first (a 7×7×512 video map per segment is 80 MB per batch at the paper's
    shapes, and a fresh tensor that size costs more than the arithmetic on it).
    """
    if reconstruction.shape != target.shape:
        raise ValueError(f"reconstruction shape {tuple(reconstruction.shape)} != target {tuple(target.shape)}")
    if real is not None:
        reconstruction, target = reconstruction[real], target[real]
    if plain_required(reconstruction, target):      # vmap / grad (COMET's per-clip Fisher), torch.compile
        return F.mse_loss(reconstruction, target.detach())
    return _MeanSquaredError.apply(reconstruction, target.detach())


class _MeanSquaredError(torch.autograd.Function):
    CHUNK = 1 << 18   # elements per chunk of the forward's running sum (1 MiB in fp32)

    @staticmethod
    def forward(ctx, prediction: Tensor, target: Tensor) -> Tensor:
        flat_prediction, flat_target = prediction.reshape(-1), target.reshape(-1)
        total = prediction.new_zeros((), dtype=torch.float64 if prediction.dtype == torch.float64 else torch.float32)
        buffer = prediction.new_empty(min(_MeanSquaredError.CHUNK, flat_prediction.numel()))
        for start in range(0, flat_prediction.numel(), _MeanSquaredError.CHUNK):
            end = min(start + _MeanSquaredError.CHUNK, flat_prediction.numel())
            difference = torch.sub(flat_prediction[start:end], flat_target[start:end], out=buffer[: end - start])
            total += torch.dot(difference, difference).to(total.dtype)
        ctx.save_for_backward(prediction, target)
        return (total / prediction.numel()).to(prediction.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        prediction, target = ctx.saved_tensors
        return torch.sub(prediction, target).mul_(grad * (2.0 / prediction.numel())), None


def commitment_losses(
    semantic: Mapping[str, Tensor],
    codewords: Mapping[str, Tensor],
    self_weight: float,
    partner_weight: float,
    real: Tensor | None = None,
) -> dict[str, Tensor]:
    """Modified commitment loss (CMG eq. 8) for any number of modalities, one scalar per modality.

    For modality a with partners P(a) (all other modalities):
        self_weight · ||z^a − sg e^a||² + partner_weight · mean_{b∈P(a)} ||z^a − sg e^b||²
    where e^b is the code modality b chose at the same (clip, segment). Paper: self_weight = β = 0.25,
    partner_weight = β/2. Authors' code: 2β and β (AV), 2β and β/2 per partner (AVT) — the same form
    with self_weight = 2β, partner_weight = β. partner_weight = 0 is the plain VQ-VAE commitment (eq. 3).

    semantic[m], codewords[m]: ``(b t d)``; codewords are the pre-update codes (stop-gradient here). ``real``
    ``(b t)`` bool (None: all): the mean runs over the real segments only.
    """
    if real is not None:
        semantic = {m: z[real] for m, z in semantic.items()}
        codewords = {m: e[real] for m, e in codewords.items()}
    losses = {}
    for a, z in semantic.items():
        loss = self_weight * F.mse_loss(z, codewords[a].detach())
        partners = [b for b in semantic if b != a]
        if partners and partner_weight != 0.0:
            teachers = torch.stack([codewords[b].detach() for b in partners])  # (n_partners b t d)
            loss = loss + partner_weight * (z.unsqueeze(0) - teachers).pow(2).mean()
        losses[a] = loss
    return losses


def diagonal_cross_entropy(scores: Tensor, normalize_over: str = "targets", valid: Tensor | None = None) -> Tensor:
    """InfoNCE on a score matrix whose positives sit on the diagonal.

    ``scores``: ``(... i j)`` with rows i = contexts (queries) and columns j = candidate targets.
    ``normalize_over="targets"``: softmax over each row's candidates (CMG eq. 6: the denominator runs
    over z_j ∈ Z_b). ``"contexts"``: softmax over each column (what the authors' CPC code computed).
    Returns the mean over leading dims and over the diagonal entries. Stable: uses logsumexp.

    ``valid`` ``(... n)`` bool (None: all): the clips that take part at each leading index (padded segments are
    not): an invalid clip is neither a candidate in any softmax nor a positive in the mean, so the value is the one
    of the valid clips' score matrix alone. Invalid scores are filled with the dtype's lowest finite value, not
    −∞: a softmax over no valid entry then stays finite (and is left out), where −∞ would put NaN in the backward.
    """
    if scores.shape[-1] != scores.shape[-2]:
        raise ValueError(f"score matrix must be square in its last two dims, got {tuple(scores.shape)}")
    if normalize_over == "targets":
        dim = -1
    elif normalize_over == "contexts":
        dim = -2
    else:
        raise ValueError(f"normalize_over must be 'targets' or 'contexts', got {normalize_over!r}")
    if valid is not None:
        other = valid.unsqueeze(-2) if dim == -1 else valid.unsqueeze(-1)
        scores = scores.masked_fill(~other, torch.finfo(scores.dtype).min)
    positives = scores.diagonal(dim1=-2, dim2=-1)  # (... n)
    losses = torch.logsumexp(scores, dim=dim) - positives
    return losses.mean() if valid is None else losses[valid].mean()


def code_log_distribution(squared_distances: Tensor, real: Tensor | None = None) -> Tensor:
    """log P_b of the CMCM clip-level code distribution: P_b = mean_t softmax_k(−||z_{b,t} − e_k||).

    ``squared_distances``: ``(b t m)`` squared Euclidean distances to the M codes (may carry tiny
    negative rounding from the ||z||² − 2z·e + ||e||² expansion). Returns ``(b m)`` log-probabilities.
    ``real`` ``(b t)`` bool (None: all): the mean runs over each clip's real segments only (every clip has one).

    Distances are clamped before the square root. The floor is 1e-12 rather than exactly 0: a vector
    sitting on a code (data init copies batch vectors into the codebook) would otherwise hit sqrt'(0) = ∞,
    and ∞ · 0 (the clamp's gradient) is NaN.
    """
    distances = squared_distances.clamp_min(1e-12).sqrt()
    log_p_segments = torch.log_softmax(-distances, dim=-1)  # (b t m)
    # log mean_t p = logsumexp_t log p − log T, computed without leaving log space
    if real is None:
        return torch.logsumexp(log_p_segments, dim=1) - math.log(squared_distances.shape[1])
    log_p_segments = log_p_segments.masked_fill(~real.unsqueeze(-1), -math.inf)
    return torch.logsumexp(log_p_segments, dim=1) - real.sum(1, keepdim=True).to(log_p_segments.dtype).log()


def cmcm_loss(log_p_a: Tensor, log_p_b: Tensor) -> Tensor:
    """Cross-modal code matching (Liu et al. 2021, ALGORITHMS.md §1), symmetric form.

    ``log_p_a``, ``log_p_b``: ``(b m)`` clip code log-distributions of two modalities (same clips in the
    same order). S_ij = Σ_k P^a_i[k] log P^b_j[k] + Σ_k P^b_j[k] log P^a_i[k]; the loss is the
    cross-entropy of S against the diagonal over rows plus over columns (clip i of a must pick clip i of
    b among the batch and vice versa).
    """
    p_a, p_b = log_p_a.exp(), log_p_b.exp()
    scores = p_a @ log_p_b.T + log_p_a @ p_b.T  # (b_a b_b)
    return diagonal_cross_entropy(scores, "targets") + diagonal_cross_entropy(scores, "contexts")


def symmetric_info_nce(x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
    """Symmetric InfoNCE with cosine similarity (seed 003 eq. 7: FCCID's coarse audio-visual ↔ text term).

    ``x``, ``y``: ``(n d)`` paired rows (row i of each is clip i). S_ij = cos(x_i, y_j) / τ; returns
    L^{x→y} + L^{y→x}: the mean cross-entropy of each row of S against its diagonal entry (x_i must pick
    y_i among the batch's y) plus the same over each column (y_j must pick x_j). Eq. 7 is written for
    (m, n) ∈ {av, te} and holds in both orders, so both directions are summed, as CMCM sums rows and columns.
    """
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"InfoNCE needs two (n d) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if temperature <= 0:
        raise ValueError(f"InfoNCE temperature must be > 0, got {temperature}")
    scores = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / temperature   # (n_x n_y)
    return diagonal_cross_entropy(scores, "targets") + diagonal_cross_entropy(scores, "contexts")
