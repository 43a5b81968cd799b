"""Hand-computed checks of the Uni-Code loss math (ALGORITHMS.md §1 and §6; CMG eqs. 5, 6, 8; CMCM)."""

import math

import pytest
import torch

from trainer.models.club import CLUBEstimator, club_upper_bound, gaussian_log_likelihood
from trainer.models.cpc import CrossCPC, cross_cpc_losses
from trainer.configs.model import CPCConfig
from trainer.models.losses import (
    cmcm_loss,
    code_log_distribution,
    commitment_losses,
    diagonal_cross_entropy,
    reconstruction_loss,
)


def full(value, shape=(2, 3, 4)):
    return torch.full(shape, float(value))


# ---------------------------------------------------------------- commitment (eq. 8)
def test_commitment_av_check_from_spec():
    # §6: z^a ≡ 1, e^a ≡ 0, e^v ≡ 3 -> 0.25·1 + 0.125·4 = 0.75; for video z^v ≡ 1: 0.25·4 + 0.125·1 = 1.125
    z = {"audio": full(1), "video": full(1)}
    e = {"audio": full(0), "video": full(3)}
    losses = commitment_losses(z, e, self_weight=0.25, partner_weight=0.125)
    assert losses["audio"].item() == pytest.approx(0.75, abs=1e-7)
    assert losses["video"].item() == pytest.approx(1.125, abs=1e-7)


def test_commitment_three_modalities_partner_mean():
    # audio: own (1−0)² = 1, partners (1−3)² = 4 and (1−2)² = 1 -> 0.25 + 0.125·2.5 = 0.5625
    z = {"audio": full(1), "video": full(3), "text": full(0)}
    e = {"audio": full(0), "video": full(3), "text": full(2)}
    paper = commitment_losses(z, e, 0.25, 0.125)
    assert paper["audio"].item() == pytest.approx(0.5625, abs=1e-7)
    # video: own 0, partners (3−0)² = 9, (3−2)² = 1 -> 0.125·5 = 0.625; text: own 4·0.25, partners 0 and 9
    assert paper["video"].item() == pytest.approx(0.625, abs=1e-7)
    assert paper["text"].item() == pytest.approx(1.0 + 0.125 * 4.5, abs=1e-7)
    # authors' AVT weights 2β, β/2, β/2 == self 0.5 + partner mean 0.25: 0.5·1 + 0.125·4 + 0.125·1 = 1.125
    authors = commitment_losses(z, e, 0.5, 0.25)
    assert authors["audio"].item() == pytest.approx(1.125, abs=1e-7)


def test_commitment_is_elementwise_mean_and_stops_gradient_to_codes():
    z = torch.tensor([[[1.0, 2.0]]], requires_grad=True)           # (b=1 t=1 d=2)
    e = torch.tensor([[[0.0, 0.0]]], requires_grad=True)
    (loss,) = commitment_losses({"audio": z}, {"audio": e}, 0.25, 0.125).values()
    assert loss.item() == pytest.approx(0.25 * (1 + 4) / 2)        # no partner: plain β||z − sg e||²
    loss.backward()
    assert e.grad is None
    assert torch.allclose(z.grad, 0.25 * 2 * z.detach() / 2)       # d/dz β·mean(z²) = β·2z/n


def test_reconstruction_is_mse_and_checks_shapes():
    x = torch.zeros(2, 3, 4)
    assert reconstruction_loss(torch.full((2, 3, 4), 2.0), x).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="shape"):
        reconstruction_loss(torch.zeros(2, 3, 5), x)


# ---------------------------------------------------------------- InfoNCE direction (§6)
def test_cpc_direction_check_from_spec():
    scores = torch.tensor([[2.0, 0.0], [1.0, 0.0]])   # rows = contexts, columns = candidate targets
    assert diagonal_cross_entropy(scores, "targets").item() == pytest.approx(0.7200949, abs=1e-6)
    # the authors' code normalised over the other axis: 0.5032044 (§6, their matrix is our transpose)
    assert diagonal_cross_entropy(scores, "contexts").item() == pytest.approx(0.5032044, abs=1e-6)
    # a leading batch dim averages: the second matrix has equal scores -> log 2
    stacked = torch.stack([scores, torch.zeros(2, 2)])
    assert diagonal_cross_entropy(stacked).item() == pytest.approx((0.7200949 + math.log(2)) / 2, abs=1e-6)


def test_info_nce_is_stable_for_large_scores():
    scores = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]])
    assert diagonal_cross_entropy(scores).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(diagonal_cross_entropy(-scores))


# ---------------------------------------------------------------- Cross-CPC (eq. 6)
def test_cross_cpc_loss_hand_case():
    # d = 1, K = 2, two clips, context end t = 1. predictions for k=1: [2, 1]; video at t+1: [1, 0]
    # -> scores [[2, 0], [1, 0]] -> 0.7200949; k=2: predictions [0, 0] -> log 2. Eq. 6 averages over k.
    predictions = torch.zeros(2, 2, 2, 1)                    # (b s k d)
    predictions[:, 1, 0, 0] = torch.tensor([2.0, 1.0])
    video = torch.zeros(2, 4, 1)                             # (b t d), T = 4
    video[:, 2, 0] = torch.tensor([1.0, 0.0])
    video[:, 3, 0] = torch.tensor([5.0, -3.0])               # scored against zero predictions: irrelevant
    audio = torch.randn(2, 4, 1)
    losses = cross_cpc_losses({"audio": predictions}, {"audio": audio, "video": video}, t=1)
    assert set(losses) == {("audio", "video")}
    assert losses[("audio", "video")].item() == pytest.approx((0.7200949 + math.log(2)) / 2, abs=1e-6)
    # same-modality terms only on request (authors' code: weight 0.1)
    with_self = cross_cpc_losses({"audio": predictions}, {"audio": audio, "video": video}, t=1,
                                 include_same_modality=True)
    assert set(with_self) == {("audio", "video"), ("audio", "audio")}
    with pytest.raises(ValueError, match="outside"):
        cross_cpc_losses({"audio": predictions}, {"audio": audio, "video": video}, t=2)


def test_cross_cpc_without_t_is_the_mean_over_every_context_end():
    g = torch.Generator().manual_seed(0)
    predictions = {m: torch.randn(3, 4, 2, 5, generator=g) for m in ("audio", "video")}   # T = 6, K = 2
    semantic = {m: torch.randn(3, 6, 5, generator=g) for m in ("audio", "video")}
    per_t = [cross_cpc_losses(predictions, semantic, t) for t in range(4)]
    averaged = cross_cpc_losses(predictions, semantic, None)
    for pair, value in averaged.items():
        assert value.item() == pytest.approx(sum(d[pair].item() for d in per_t) / 4, rel=1e-6)
    # the candidate for (t, k) is z_{t+k}: check one entry against a direct dot product
    t, k = 2, 2
    direct = torch.einsum("id,jd->ij", predictions["audio"][:, t, k - 1], semantic["video"][:, t + k])
    only_k = predictions["audio"].clone()
    only_k[:, :, 0] = 0.0                                     # k = 1 scores become 0 -> log 3 each
    loss = cross_cpc_losses({"audio": only_k}, semantic, t)[("audio", "video")]
    expected = (diagonal_cross_entropy(direct) + math.log(3)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_cross_cpc_contexts_are_causal_and_shaped():
    torch.manual_seed(0)
    cpc = CrossCPC(["audio", "video"], dim=8, steps=2)
    z = {"audio": torch.randn(3, 6, 8), "video": torch.randn(3, 6, 8)}
    pred = cpc(z)
    assert pred["audio"].shape == (3, 4, 2, 8)               # (b, T − K, K, D)
    changed = {k: v.clone() for k, v in z.items()}
    changed["audio"][:, 3] += 1.0                            # the future of context ends 0..2
    pred2 = cpc(changed)
    assert torch.equal(pred2["audio"][:, :3], pred["audio"][:, :3])
    assert not torch.allclose(pred2["audio"][:, 3], pred["audio"][:, 3])
    assert torch.equal(pred2["video"], pred["video"])
    with pytest.raises(ValueError, match="'audio' has 2"):
        cpc({"audio": torch.randn(3, 2, 8), "video": torch.randn(3, 2, 8)})


def test_cpc_steps_default_follows_the_paper():
    assert CPCConfig().steps_for(2) == 2 and CPCConfig().steps_for(3) == 1
    assert CPCConfig(prediction_steps=3).steps_for(2) == 3


# ---------------------------------------------------------------- CLUB (eq. 5)
def test_club_upper_bound_hand_case():
    # N = 2, T = 1, d = 1. mu = [0, 1], sigma² = [1, 4], y = [1, 3]
    # i=0: (other (3−0)² − own (1−0)²) / (2·1) = 4 ;  i=1: ((1−1)² − (3−1)²) / (2·4) = −0.5 ; mean 1.75
    mu = torch.tensor([0.0, 1.0]).view(2, 1, 1)
    logvar = torch.log(torch.tensor([1.0, 4.0])).view(2, 1, 1)
    y = torch.tensor([1.0, 3.0]).view(2, 1, 1)
    assert club_upper_bound(mu, logvar, y).item() == pytest.approx(1.75, abs=1e-6)
    # log N: i=0: −1/2 − ½ln2π ; i=1: −4/8 − ½ln4 − ½ln2π ; mean = −0.5 − ½ln2 − ½ln2π
    assert gaussian_log_likelihood(mu, logvar, y).item() == pytest.approx(-1.7655121, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 clips"):
        club_upper_bound(mu[:1], logvar[:1], y[:1])


def test_club_upper_bound_matches_pairwise_definition():
    # vectorised form vs eq. 5 written out with loops (log q includes log σ and 2π; they cancel)
    g = torch.Generator().manual_seed(0)
    n, t, d = 4, 3, 2
    mu, logvar, y = (torch.randn(n, t, d, generator=g, dtype=torch.float64) for _ in range(3))

    def log_q(j, i, s):   # log q(y_{j,s} | x_{i,s})
        var = logvar[i, s].exp()
        return (-0.5 * ((y[j, s] - mu[i, s]) ** 2 / var + logvar[i, s] + math.log(2 * math.pi))).sum()

    total = 0.0
    for i in range(n):
        for s in range(t):
            negatives = sum(log_q(j, i, s) for j in range(n) if j != i) / (n - 1)
            total += log_q(i, i, s) - negatives
    expected = total / (n * t)
    assert club_upper_bound(mu, logvar, y).item() == pytest.approx(expected.item(), rel=1e-10)


def test_club_estimator_learns_a_dependent_pair():
    torch.manual_seed(0)
    x = torch.randn(64, 2, 4)
    y = x[..., :2] * 2.0 + 0.1 * torch.randn(64, 2, 2)
    est = CLUBEstimator(4, 2, hidden_dim=32)
    opt = torch.optim.Adam(est.parameters(), lr=3e-2)
    before = est.log_likelihood(x, y).item()
    for _ in range(60):
        opt.zero_grad()
        (-est.log_likelihood(x, y)).backward()
        opt.step()
    assert est.log_likelihood(x, y).item() > before + 1.0
    mu, logvar = est(x)
    assert club_upper_bound(mu, logvar, y).item() > 1.0      # strongly dependent: a large MI estimate


# ---------------------------------------------------------------- CMCM
def _squared(d):
    return torch.tensor(d) ** 2


def test_code_distribution_averages_softmax_over_time():
    ln3 = math.log(3.0)
    d2 = _squared([[[0.0, ln3], [ln3, 0.0]]])          # (b=1 t=2 m=2): softmax(−d) = [3/4,1/4] and [1/4,3/4]
    assert torch.allclose(code_log_distribution(d2).exp(), torch.tensor([[0.5, 0.5]]), atol=1e-6)


def test_cmcm_hand_case():
    # P^a = [[3/4, 1/4], [1/4, 3/4]], P^b = [[1/2, 1/2] (mean of two segments), [1/4, 3/4]].
    # S = P^a log P^bᵀ + log P^a P^bᵀ; the row CEs are ln(3/2), ln(5/3), the column CEs ln 2, ln(4/3),
    # so the loss = mean(rows) + mean(columns) = ½ ln(20/3).
    ln3 = math.log(3.0)
    audio = _squared([[[0.0, ln3], [0.0, ln3]], [[ln3, 0.0], [ln3, 0.0]]])     # (b=2 t=2 m=2)
    video = _squared([[[0.0, ln3], [ln3, 0.0]], [[ln3, 0.0], [ln3, 0.0]]])
    loss = cmcm_loss(code_log_distribution(audio), code_log_distribution(video))
    assert loss.item() == pytest.approx(0.5 * math.log(20.0 / 3.0), abs=1e-6)
    # symmetric in the modalities (S transposes, rows and columns swap)
    swapped = cmcm_loss(code_log_distribution(video), code_log_distribution(audio))
    assert swapped.item() == pytest.approx(loss.item(), abs=1e-6)


def test_cmcm_clamps_before_sqrt_and_keeps_gradients_finite():
    # a vector sitting exactly on a code (distance 0) and expansion rounding below 0
    d2 = torch.tensor([[[0.0, 4.0]], [[-1e-6, 9.0]]], requires_grad=True)      # (b=2 t=1 m=2)
    other = torch.tensor([[[1.0, 1.0]], [[4.0, 0.0]]], requires_grad=True)
    loss = cmcm_loss(code_log_distribution(d2), code_log_distribution(other))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(d2.grad).all() and torch.isfinite(other.grad).all()
    # the negative squared distance counts as 0
    same = code_log_distribution(torch.tensor([[[0.0, 9.0]]]))
    assert torch.allclose(code_log_distribution(torch.tensor([[[-1e-6, 9.0]]])), same)
