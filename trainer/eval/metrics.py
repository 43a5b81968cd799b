"""Downstream metrics (ALGORITHMS.md §5): accuracy, micro precision/recall/F1, recall@k.

Conventions:
- localisation is scored over ALL (clip, segment, class) cells of the split at once (micro), never
  averaged per batch or per clip; a segment whose prediction is empty still counts (its true events are
  false negatives), and a segment without any event counts its predicted events as false positives;
- a ratio whose denominator is 0 is reported as 0.0 (no prediction at all gives precision 0), as
  scikit-learn does with ``zero_division=0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

BACKGROUND = -1


def multi_hot(labels: Tensor, num_classes: int) -> Tensor:
    """Class indices ``(...)`` with −1 = background -> multi-hot ``(... c)`` bool (background: all False)."""
    if labels.numel() and (labels.min() < BACKGROUND or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [-1, {num_classes - 1}], got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return torch.nn.functional.one_hot(labels + 1, num_classes + 1)[..., 1:].bool()


def accuracy(predicted: Tensor, labels: Tensor) -> float:
    """Share of ``predicted == labels``; ``predicted`` are class indices ``(n)`` or scores ``(n c)``."""
    if predicted.ndim == labels.ndim + 1:
        predicted = predicted.argmax(-1)
    if predicted.shape != labels.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and labels {tuple(labels.shape)} differ")
    if labels.numel() == 0:
        raise ValueError("accuracy of an empty set")
    return (predicted == labels).float().mean().item()


@dataclass(frozen=True)
class PRF:
    """Micro precision / recall / F1 and the counts they come from."""

    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def micro_prf(predicted: Tensor, target: Tensor) -> PRF:
    """Micro P/R/F1 over every cell of two same-shape bool tensors, e.g. ``(n t c)`` segment × class."""
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} differ")
    predicted, target = predicted.bool(), target.bool()
    tp = int((predicted & target).sum())
    fp = int((predicted & ~target).sum())
    fn = int((~predicted & target).sum())
    # F1 = 2PR / (P + R) = 2tp / (2tp + fp + fn), which stays defined when P or R is 0
    return PRF(_ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn), tp, fp, fn)


def recall_at_k(similarity: Tensor, relevant: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Share of queries with a relevant gallery item in the top k, for each k (docs/evaluation.md, "Zero-shot
    retrieval").

    ``similarity``: ``(q g)``, higher = closer. ``relevant``: ``(q)`` the gallery index of each query's one match, or
    ``(q g)`` bool, several matches per query (an audio clip and its five captions: the query is a hit when any of them
    ranks within k, as in vsepp and the authors' ``i2t``). Every query needs at least one match.

    Ties are ranked in a uniformly random order and the expectation is reported, so the score does not depend on how a
    sort breaks ties, and a constant similarity scores chance (k / g with one match). For a query whose best match
    scores s: ``a`` items that are not matches score above s, and ``e`` others and ``r`` matches score exactly s. Its
    best match ranks ``a + X``, X the non-matches drawn before the first of r matches from the e + r tied items, and
    P(X >= x) = prod_{i<x} (e - i) / (e + r - i); the query is a hit within k with probability 1 - P(X >= k - a)
    (0 when a >= k).
    """
    if similarity.ndim != 2 or relevant.shape not in (similarity.shape[:1], similarity.shape):
        raise ValueError(f"similarity must be (q g) and relevant (q) or (q g), got {tuple(similarity.shape)} "
                         f"and {tuple(relevant.shape)}")
    if relevant.ndim == 1:
        relevant = torch.nn.functional.one_hot(relevant, similarity.shape[1]).bool()
    relevant = relevant.bool()
    if not relevant.any(1).all():
        raise ValueError(f"queries {(~relevant.any(1)).nonzero().flatten().tolist()[:10]} have no relevant item")
    best = similarity.masked_fill(~relevant, float("-inf")).amax(1, keepdim=True)       # (q 1)
    above = ((similarity > best) & ~relevant).sum(1)                                      # a: nothing relevant above
    tied = similarity == best
    others = (tied & ~relevant).sum(1).double()                                           # e
    matches = (tied & relevant).sum(1).double()                                           # r >= 1
    out = {}
    for k in ks:
        need = (k - above).clamp(min=0)             # X must stay below this for a hit
        # P(X >= need) = prod_{i < need} (e - i) / (e + r - i): 0 once a factor's numerator reaches 0
        steps = torch.arange(int(need.max()) if len(need) else 0, dtype=torch.float64)
        factors = ((others[:, None] - steps) / (others[:, None] + matches[:, None] - steps)).clamp(min=0)
        factors = torch.where(steps[None] < need[:, None], factors, torch.ones_like(factors))
        miss = factors.prod(1)
        out[k] = torch.where(need > 0, 1 - miss, torch.zeros_like(miss)).mean().item()
    return out


def class_precision_at_k(similarity: Tensor, query_class: Tensor, gallery_class: Tensor,
                         ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Class-level retrieval: the share of each query's top-k gallery items that carry its class, averaged
    over queries (precision@k; chance = the share of the gallery in the query's class).

    For gallery items that are only class-level matches of a query (captions naming the event, not the clip).
    ``similarity (q g)``; ``query_class (q)``, ``gallery_class (g)``. Ties rank the gallery items of other
    classes first, so a constant similarity scores no better than its worst case.
    """
    if similarity.shape != (query_class.shape[0], gallery_class.shape[0]):
        raise ValueError(f"similarity {tuple(similarity.shape)} does not match {query_class.shape[0]} queries "
                         f"and {gallery_class.shape[0]} gallery items")
    relevant = query_class.unsqueeze(1) == gallery_class.unsqueeze(0)             # (q g)
    others_first = relevant.to(torch.uint8).argsort(dim=1, stable=True)
    by_score = similarity.gather(1, others_first).argsort(dim=1, descending=True, stable=True)
    hits = relevant.gather(1, others_first.gather(1, by_score))                  # (q g) in rank order
    return {k: hits[:, :k].float().mean().item() for k in ks}
