"""Cross-modal Contrastive Predictive Coding (Cross-CPC, CMG eq. 6).

Per modality a, a unidirectional LSTM summarises z^a_{≤t} into c^a_t ∈ R^D and W^a_k c^a_t predicts the
partner's future segment z^n_{t+k}, k = 1..K. The InfoNCE softmax runs over candidate targets: the true
z^n_{t+k} and the other clips' z^n_{t+k} of the batch (this rank's or the global one: ``model.negatives``).

The module computes the predictions W^a_k c^a_t for every valid context end t at once (cheap: T ≈ 10),
so that everything touching parameters happens inside the model's forward (ZeRO-3 only gathers
parameters there); the loss then picks the step t drawn by the task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, einsum, nn

from trainer.models.losses import diagonal_cross_entropy


class CrossCPC(nn.Module):
    """Context LSTMs and step projections W^a_k, keyed by modality."""

    def __init__(self, modalities: Sequence[str], dim: int, steps: int, lstm_layers: int = 1):
        super().__init__()
        self.steps = steps
        self.context = nn.ModuleDict(
            {m: nn.LSTM(dim, dim, num_layers=lstm_layers, batch_first=True) for m in modalities})
        # the K matrices W^a_1..W^a_K stacked into one (K·D × D) projection
        self.predict = nn.ModuleDict({m: nn.Linear(dim, steps * dim, bias=False) for m in modalities})

    def forward(self, semantic: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``semantic[m]``: ``(b t d)`` -> predictions[m]: ``(b s k d)``, s = T − K context ends.

        predictions[m][:, t, k − 1] = W^m_k c^m_t, with c^m_t = LSTM(z^m_{≤t}) (0-based t).
        """
        predictions = {}
        for m, lstm in self.context.items():
            z = semantic[m]
            if z.shape[1] <= self.steps:
                raise ValueError(f"Cross-CPC needs more than K={self.steps} segments, "
                                 f"'{m}' has {z.shape[1]}")
            contexts, _ = lstm(z[:, : z.shape[1] - self.steps])  # (b s d); unidirectional: c_t sees z_{≤t}
            predictions[m] = self.predict[m](contexts).unflatten(-1, (self.steps, z.shape[-1]))
        return predictions


def cross_cpc_losses(
    predictions: Mapping[str, Tensor],
    semantic: Mapping[str, Tensor],
    t: int | None,
    normalize_over: str = "targets",
    include_same_modality: bool = False,
    real: Tensor | None = None,
) -> dict[tuple[str, str], Tensor]:
    """L^{a2n}_cpc (eq. 6) for every ordered pair of distinct modalities (plus a→a if asked).

    ``predictions[a]``: ``(b s k d)`` from ``CrossCPC``; ``semantic[n]``: ``(b t d)``; ``t``: the context end
    (0-based, 0 <= t < s), or None for the mean over every valid t (the expectation of the random-t loss).
    Score of context i against candidate j: z^n_{j,t+k} · W^a_k c^a_{i,t}; the loss is the mean over k
    (and t) and over clips of the cross-entropy with the positive on the diagonal. Returns {(a, n): scalar}.

    ``real`` ``(b t)`` bool (None: every segment is real; padding only ever follows a clip's real segments): t is a
    context end of a clip of L real segments when t + K < L, as for the clip unpadded; at each t those clips are the
    queries and the candidates, and the mean runs over those (query, t, k) only: a batch of clips padded to T gives
    the value of the same clips unpadded.
    """
    losses = {}
    for a, pred in predictions.items():
        valid, steps = pred.shape[1], pred.shape[2]
        if t is not None and not 0 <= t < valid:
            raise ValueError(f"CPC context end t={t} outside [0, {valid})")
        ends = slice(None) if t is None else slice(t, t + 1)
        query = pred[:, ends]  # (b s' k d)
        for n, z in semantic.items():
            if n == a and not include_same_modality:
                continue
            # candidates[:, s, k − 1] = z^n_{s+k} for every clip: windows of K segments starting at s + 1
            candidates = z[:, 1:].unfold(1, steps, 1).transpose(-1, -2)[:, ends]  # (b s' k d)
            scores = einsum("iskd,jskd->skij", query, candidates)  # (s' k contexts candidates)
            valid = None
            if real is not None:   # valid[s, k − 1, i]: segment s + K of clip i is real (s is one of its context ends)
                valid = real[:, steps:][:, ends].t().unsqueeze(1).expand(-1, steps, -1)
            losses[(a, n)] = diagonal_cross_entropy(scores, normalize_over, valid)
    return losses
