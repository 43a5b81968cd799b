"""Clips shorter than the training window: padded seconds are nothing to the model (trainer/models/inputs.py).

The property the data path relies on: a batch of clips of L real seconds, padded to T > L with anything and a
``segment_mask``, trains exactly as the same clips unpadded (T = L): every loss term, every gradient, the codebook's
init and MM-EMA statistics, the code counts, the CLUB estimators and the Cross-CPC draw, over training steps that
include the codebook's data init, and in evaluation mode. The two batches reduce over tensors of other lengths, so
the values agree up to the order of their sums (tests/support/numerics.py), not bit for bit. With clips of mixed
lengths there is no unpadded batch to compare with; there, the padding's content must not matter at all.
"""

import copy

import pytest
import torch
from fccid_utils import DIMS as FCCID_DIMS
from fccid_utils import small_cfg as small_fccid_cfg
from numerics import COMPOUNDED_ULPS, ONE_PASS_ULPS, assert_reordered_close
from unicode_utils import small_unicode_config

from trainer.models.club import club_upper_bound
from trainer.models.cpc import cross_cpc_losses
from trainer.models.inputs import SEGMENT_MASK
from trainer.models.losses import code_log_distribution, reconstruction_loss
from trainer.tasks import FCCIDTask, UniCodeTask

B, L, T = 4, 4, 7          # clips, real seconds, the padded window


def _unicode_features(seed: int, segments: int = L) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(B, segments, 12, generator=g),
            "video": torch.randn(B, segments, 2, 2, 16, generator=g)}


def _fccid_features(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(B, L, FCCID_DIMS["audio"], generator=g),
            "video": torch.randn(B, L, 2, 2, FCCID_DIMS["video"], generator=g),
            "text": torch.randn(B, 6, FCCID_DIMS["text"], generator=g)}


def _padded(features: dict[str, torch.Tensor], lengths: list[int], seed: int,
            timed: tuple[str, ...] = ("audio", "video")) -> dict[str, torch.Tensor]:
    """``features`` of clips with ``lengths`` real seconds, padded to T with noise (not zeros: the padding's content
    must not matter), and their ``segment_mask``."""
    g = torch.Generator().manual_seed(seed)
    out = dict(features)
    for m in timed:
        x = features[m]
        noise = 100 * torch.randn(x.shape[0], T, *x.shape[2:], generator=g)
        out[m] = torch.cat([x, noise[:, x.shape[1]:]], dim=1)
        for i, n in enumerate(lengths):
            out[m][i, n:] = noise[i, n:]
    out[SEGMENT_MASK] = torch.arange(T) < torch.tensor(lengths).unsqueeze(1)
    return out


def _train(task, batches, steps: int = 3) -> list[dict]:
    """``steps`` SGD steps of ``task`` on ``batches(step)``: each step's metrics, gradients, codebook statistics and
    code counts, and the replicated state at the end."""
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.05, momentum=0.9)
    record = []
    for step in range(steps):
        loss, metrics = task.compute_loss(batches(step), step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in task.model.named_parameters() if p.grad is not None}
        optimizer.step()
        stats = task.after_optimizer_step_()
        record.append({"metrics": metrics, "grads": grads, "stats": stats, "usage": task.code_usage_()})
    record.append({"state": task.replicated_state()})
    return record


def _assert_same_training(padded: list[dict], unpadded: list[dict]) -> None:
    for step, (ours, ref) in enumerate(zip(padded[:-1], unpadded[:-1])):
        assert ours["metrics"].keys() == ref["metrics"].keys()
        for key, value in ref["metrics"].items():
            assert_reordered_close(ours["metrics"][key], value, ulps=COMPOUNDED_ULPS, what=f"step {step} {key}")
        assert ours["grads"].keys() == ref["grads"].keys()
        # some gradients are exactly 0 in exact arithmetic (the bias of a softmax scorer) and only rounding noise in
        # practice: the noise is relative to the gradients' magnitude, not to its own
        scale = max(float(g.abs().max()) for g in ref["grads"].values())
        for name, grad in ref["grads"].items():
            assert_reordered_close(ours["grads"][name], grad, ulps=COMPOUNDED_ULPS, scale=scale,
                                   what=f"step {step} grad {name}")
        for key, value in ref["stats"].items():
            assert_reordered_close(ours["stats"][key], value, ulps=COMPOUNDED_ULPS, what=f"step {step} {key}")
        for m, counts in ref["usage"].items():       # code counts: exactly the real seconds' codes
            assert torch.equal(ours["usage"][m], counts), (step, m)
    for key, value in unpadded[-1]["state"].items():
        what = f"state {key}"
        if value.is_floating_point():
            assert_reordered_close(padded[-1]["state"][key], value, ulps=COMPOUNDED_ULPS, what=what)
        else:
            assert torch.equal(padded[-1]["state"][key], value), what


@pytest.mark.parametrize("r_source", ["cross_attention", "paired"])
def test_unicode_trains_a_padded_batch_as_the_unpadded_one(r_source):
    """Every Uni-Code term, gradient and codebook statistic over 3 steps (the first initialises the codebook from
    the batch, so the init too draws from real seconds only), with clips of L seconds padded to T."""
    torch.manual_seed(0)
    task = UniCodeTask(small_unicode_config(r_source))
    twin = copy.deepcopy(task)
    unpadded = _train(task, lambda step: _unicode_features(step))
    padded = _train(twin, lambda step: _padded(_unicode_features(step), [L] * B, seed=100 + step))
    assert int(sum(unpadded[-2]["usage"]["audio"])) > 0
    _assert_same_training(padded, unpadded)


def test_unicode_evaluates_a_padded_batch_as_the_unpadded_one():
    """Evaluation mode: Cross-CPC averages over every context end, and only the real ones count."""
    torch.manual_seed(0)
    task = UniCodeTask(small_unicode_config())
    _train(task, lambda step: _unicode_features(step), steps=1)      # an initialised codebook
    task.model.eval()
    with torch.no_grad():
        _, ref = task.compute_loss(_unicode_features(7), 0)
        _, ours = task.compute_loss(_padded(_unicode_features(7), [L] * B, seed=7), 0)
    for key, value in ref.items():
        assert_reordered_close(ours[key], value, ulps=ONE_PASS_ULPS, what=key)


def test_fccid_trains_a_padded_batch_as_the_unpadded_one():
    """FCCID: the fine encoders, the clip means, the per-second reconstruction, fine Cross-CPC and the fine CLUB
    bounds see real seconds only (the clip-level terms take the clip vectors those give)."""
    torch.manual_seed(0)
    task = FCCIDTask(small_fccid_cfg())
    twin = copy.deepcopy(task)
    unpadded = _train(task, lambda step: _fccid_features(step))
    padded = _train(twin, lambda step: _padded(_fccid_features(step), [L] * B, seed=100 + step))
    _assert_same_training(padded, unpadded)


def test_with_mixed_lengths_the_padding_content_changes_nothing():
    """Clips of 3, 7, 5 and 4 real seconds: two batches that differ only in what fills the padding give the same
    loss, gradients, codebook statistics and code counts, bit for bit; the counts are those of the real seconds."""
    torch.manual_seed(0)
    task = UniCodeTask(small_unicode_config())
    twin = copy.deepcopy(task)
    lengths = [3, 7, 5, 4]
    first = _train(task, lambda step: _padded(_unicode_features(step, T), lengths, seed=step), steps=2)
    second = _train(twin, lambda step: _padded(_unicode_features(step, T), lengths, seed=50 + step), steps=2)
    for ours, ref in zip(first[:-1], second[:-1]):
        for part in ("metrics", "grads", "stats", "usage"):
            for key, value in ref[part].items():
                assert torch.equal(ours[part][key], value), (part, key)
        for m in ("audio", "video"):
            assert int(ref["usage"][m].sum()) == sum(lengths)
    assert all(torch.equal(first[-1]["state"][k], v) for k, v in second[-1]["state"].items())


def test_each_masked_term_equals_its_equation_on_the_real_segments():
    """The masked terms by hand, on mixed lengths: reconstruction = MSE over the real rows; the clip code distribution
    = the mean over a clip's real seconds; the CLUB bound at t = over the clips real at t; Cross-CPC at context end t =
    InfoNCE over the clips for which t is a context end (second t + K real)."""
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([2, 5, 4])
    real = torch.arange(5) < lengths.unsqueeze(1)
    x, y = torch.randn(3, 5, 6, generator=g), torch.randn(3, 5, 6, generator=g)
    rows = [(i, t) for i in range(3) for t in range(int(lengths[i]))]
    expected = sum(float(((x[i, t] - y[i, t]) ** 2).sum()) for i, t in rows) / (len(rows) * 6)
    assert_reordered_close(reconstruction_loss(x, y, real), expected, ulps=ONE_PASS_ULPS, what="recon")

    distances = torch.rand(3, 5, 4, generator=g)
    log_p = code_log_distribution(distances, real)
    for i, n in enumerate(lengths.tolist()):
        alone = code_log_distribution(distances[i:i + 1, :n])
        assert_reordered_close(log_p[i], alone[0], ulps=ONE_PASS_ULPS, what=f"clip {i}")

    mu, logvar = torch.randn(3, 5, 6, generator=g), 0.3 * torch.randn(3, 5, 6, generator=g)
    per_t = []
    for t in range(5):
        clips = real[:, t].nonzero().flatten()
        if len(clips) >= 2:
            per_t.append((club_upper_bound(mu[clips, t:t + 1], logvar[clips, t:t + 1], y[clips, t:t + 1]),
                          len(clips)))
    expected = sum(v * n for v, n in per_t) / sum(n for _, n in per_t)
    assert_reordered_close(club_upper_bound(mu, logvar, y, real), expected, ulps=ONE_PASS_ULPS, what="club")

    steps = 2
    predictions = {"audio": torch.randn(3, 5 - steps, steps, 6, generator=g)}
    semantic = {"video": torch.randn(3, 5, 6, generator=g)}
    for t in range(5 - steps):
        value = cross_cpc_losses(predictions, semantic, t, real=real)[("audio", "video")]
        terms = []
        for k in range(1, steps + 1):
            clips = (lengths > t + steps).nonzero().flatten()
            scores = predictions["audio"][clips, t, k - 1] @ semantic["video"][clips, t + k].T
            terms += list(torch.logsumexp(scores, dim=1) - scores.diagonal())
        assert_reordered_close(value, torch.stack(terms).mean(), ulps=ONE_PASS_ULPS, what=f"cpc t={t}")
