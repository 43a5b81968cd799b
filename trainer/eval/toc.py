"""TOC: training-free optimisation of the codebook (seed 003 §3.2, eqs. 15–17; ALGORITHMS.md §3).

For the trained codebook E ``(m d)``, per dimension k (a closed form, O(M·D), no data, no training):
    S_k = ((Σ_i E_ik)² − Σ_i E_ik²) / (M (M − 1))     mean over code pairs i ≠ j of E_ik E_jk (eq. 15)
    V_k = unbiased variance of E_·k over the codes      (eq. 16)
    U_k = λ V_k − (1 − λ) S_k                          (eq. 17, λ = 0.3)
and the Q dimensions with the largest U_k are kept; downstream heads read only those dimensions.
The paper derives eq. 15 for an L2-normalised codebook (cosine = dot product); ``normalize`` (default on)
normalises the codes first, and S, V and U are all computed on that codebook.

``python -m trainer.programs.toc_report`` prints every dimension's scores of a checkpoint's codebook; the
evaluation applies TOC with ``--toc Q`` (trainer/programs/evaluate.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from trainer.configs.eval import TOCConfig


@dataclass
class TOCScores:
    similarity: Tensor   # (d) S_k
    variance: Tensor     # (d) V_k
    score: Tensor        # (d) U_k
    selected: Tensor     # (q) int64 indices of the kept dimensions, best U first


def toc_scores(codebook: Tensor, cfg: TOCConfig) -> TOCScores:
    """S, V, U of every dimension of ``codebook (m d)`` and the ``cfg.dims`` dimensions with the largest U."""
    if codebook.ndim != 2 or codebook.shape[0] < 2:
        raise ValueError(f"codebook must be (m d) with m >= 2 codes, got {tuple(codebook.shape)}")
    m, d = codebook.shape
    if cfg.dims > d:
        raise ValueError(f"TOC cannot keep {cfg.dims} of {d} dimensions")
    e = codebook.double()
    if cfg.normalize:
        e = F.normalize(e, dim=1)
    # Σ_{i≠j} E_ik E_jk = (Σ_i E_ik)² − Σ_i E_ik², so no (m m) matrix is formed
    similarity = (e.sum(0).square() - e.square().sum(0)) / (m * (m - 1))
    variance = e.var(dim=0, unbiased=True)
    score = cfg.balance * variance - (1.0 - cfg.balance) * similarity
    # stable sort: equal scores keep the lower dimension first, so the choice is deterministic
    selected = torch.sort(score, descending=True, stable=True).indices[:cfg.dims]
    return TOCScores(similarity.float(), variance.float(), score.float(), selected)


def cosine_summary(codebook: Tensor, dims: Tensor | None = None) -> dict[str, float]:
    """Off-diagonal inter-code cosine similarity of ``codebook (m d)`` (on ``dims`` only, if given)."""
    e = codebook if dims is None else codebook.index_select(1, dims)
    e = F.normalize(e.double(), dim=1)
    cos = e @ e.T
    off = cos[~torch.eye(cos.shape[0], dtype=torch.bool)]
    return {"mean": off.mean().item(), "mean_abs": off.abs().mean().item(), "std": off.std().item(),
            "max": off.max().item(), "share_above_0.5": (off > 0.5).double().mean().item()}
