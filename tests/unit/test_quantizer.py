"""MM-EMA quantizer: ALGORITHMS.md §6 checks and hand-computed cases (single process).

The 2-rank equivalence test lives in tests/dist/test_quantizer_dist.py.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from trainer.models.quantizer import MMEMAQuantizer, laplace_smoothed
from trainer.configs.model import QuantizerConfig

AV = ("audio", "video")


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def make(modalities=AV, **overrides) -> MMEMAQuantizer:
    """A training-mode quantizer with single-process collectives."""
    return MMEMAQuantizer(QuantizerConfig(**overrides), modalities, _identity, _identity).train()


def column(values) -> torch.Tensor:
    """One clip of 1-d segments: ``[v0, v1, ...] -> (1 t 1)``."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1)


def codes_of(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64).view(1, -1)


def set_codebook(q: MMEMAQuantizer, codebook: torch.Tensor) -> None:
    """A trained-looking state: e = codebook, N = 1, o = e, initialized."""
    q.codebook.copy_(codebook)
    q.ema_sum.copy_(codebook)
    q.ema_count.fill_(1.0)
    q.initialized.fill_(True)


def _run_steps(q: MMEMAQuantizer, batches) -> list[dict]:
    stats = []
    for semantic in batches:
        q.maybe_init_(semantic)
        q.accumulate_(semantic, {m: q.quantize(z).codes for m, z in semantic.items()})
        stats.append(q.step_())
    return stats


# Hand case of ALGORITHMS.md §6: M=4, audio assignments [0,0,0,1], video [1,1,0,1], fresh N = o = 0.
# 1-d vectors: audio z = [1,2,3,4], video z = [10,20,30,40] (one clip, 4 segments).
SIX_AUDIO, SIX_VIDEO = [1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]
SIX_CODES = {"audio": codes_of([0, 0, 0, 1]), "video": codes_of([1, 1, 0, 1])}


def six_step(**overrides) -> MMEMAQuantizer:
    q = make(num_codes=4, dim=1, reset=False, **overrides)   # never initialised: N = o = e = 0
    q.accumulate_({"audio": column(SIX_AUDIO), "video": column(SIX_VIDEO)}, SIX_CODES)
    q.step_()
    return q


# ---------------------------------------------------------------------------------------- MM-EMA (§6)
def test_joint_mm_ema_counts_sums_and_codebook_by_hand():
    q = six_step(r_source="paired")
    # n^a = [3,1,0,0], n^v = [1,3,0,0]; N = 0.99·0 + 0.01·(n^a + n^v) = [0.04, 0.04, 0, 0] (eq. 7)
    assert torch.allclose(q.ema_count, torch.tensor([0.04, 0.04, 0.0, 0.0]), rtol=1e-6, atol=0)
    # paired r: (z^a + r^a)/2 = (z^a + z^v)/2 = [5.5, 11, 16.5, 22] per segment, and the same for video.
    # code 0: audio segs 0,1,2 (5.5+11+16.5 = 33) + video seg 2 (16.5) = 49.5
    # code 1: audio seg 3 (22) + video segs 0,1,3 (5.5+11+22 = 38.5) = 60.5  -> o = 0.01·[49.5, 60.5, 0, 0]
    assert torch.allclose(q.ema_sum.view(-1), torch.tensor([0.495, 0.605, 0.0, 0.0]), rtol=1e-6, atol=0)
    # e = o / N_smoothed; N_smoothed = (N + 1e-5) / (0.08 + 4e-5) · 0.08
    #                               = [0.039990005, 0.039990005, 9.995e-6, 9.995e-6]
    # e0 = 0.495 / 0.039990005 = 12.378093, e1 = 0.605 / 0.039990005 = 15.128780, unused codes 0 / 9.995e-6 = 0
    assert torch.allclose(q.codebook.view(-1), torch.tensor([12.378093, 15.128780, 0.0, 0.0]), rtol=1e-6, atol=0)


def test_joint_cross_attention_sums_by_hand():
    # One clip, T=2, D=2. audio z = [[1,0],[0,1]], video z = [[2,0],[0,0]]; scale 1/√2.
    # r^a_0 = softmax([2,0]/√2)·v = [w, 1-w]·v with w = e^√2/(e^√2+1) = 0.80442968 -> [1.60885937, 0]
    # r^a_1 = softmax([0,0])·v = [1, 0];  r^v_0 = softmax([2,0]/√2)·a = [w, 1-w];  r^v_1 = [0.5, 0.5]
    q = make(num_codes=2, dim=2, reset=False)
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    v = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
    w = math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + 1)
    r = q.partner_view({"audio": a, "video": v})
    assert torch.allclose(r["audio"], torch.tensor([[[2 * w, 0.0], [1.0, 0.0]]]), atol=1e-6)
    assert torch.allclose(r["video"], torch.tensor([[[w, 1 - w], [0.5, 0.5]]]), atol=1e-6)
    # every vector to code 0: o_0 = 0.01 · Σ (z + r)/2 over the 4 vectors
    #   = 0.01 · ([1+2w, 0] + [1, 1] + [2+w, 1-w] + [0.5, 0.5]) / 2 = 0.01 · [4.5 + 3w, 2.5 - w] / 2
    q.accumulate_({"audio": a, "video": v}, {"audio": torch.zeros(1, 2, dtype=torch.long),
                                             "video": torch.zeros(1, 2, dtype=torch.long)})
    q.step_()
    assert torch.allclose(q.ema_sum[0], 0.01 * torch.tensor([4.5 + 3 * w, 2.5 - w]) / 2, rtol=1e-6)
    assert torch.equal(q.ema_sum[1], torch.zeros(2))


def test_sequential_mode_reproduces_authors_code():
    q = six_step(r_source="paired", ema_mode="sequential")
    # audio first: N = 0.01·[3,1,0,0] = [0.03,0.01,0,0], smoothed with Σ=0.04: (N+1e-5)/(0.04004)·0.04
    #   = [0.029980020, 0.0100000, 9.99001e-6, 9.99001e-6]
    # then video: N = 0.99·N + 0.01·[1,3,0,0] = [0.039680220, 0.0399000, 9.89011e-6, 9.89011e-6],
    #   smoothed with Σ = 0.0796: = [0.039670285, 0.0398899548, 1.98801e-5, 1.98801e-5]
    # (ALGORITHMS.md prints the second value as 0.039899548: a dropped digit, since smoothing keeps
    #  Σ N = 0.0796 and 0.0796 − 0.039670285 − 2·1.98801e-5 = 0.0398899548.)
    expected = torch.tensor([0.039670285, 0.0398899548, 1.98801199e-05, 1.98801199e-05])
    assert torch.allclose(q.ema_count, expected, rtol=1e-6, atol=0)
    assert q.ema_count.sum().item() == pytest.approx(0.0796, rel=1e-6)
    # o: audio's sums then video's, each decayed once more by the later step:
    # after audio o = 0.01·[33, 22]; after video o = 0.99·0.01·[33, 22] + 0.01·[16.5, 38.5] = [0.49170, 0.60280]
    assert torch.allclose(q.ema_sum.view(-1)[:2], torch.tensor([0.4917, 0.6028]), rtol=1e-6)
    assert torch.allclose(q.codebook.view(-1)[:2], torch.tensor([0.4917, 0.6028]) / expected[:2], rtol=1e-6)


def test_plain_mode_is_ema_of_each_modality_own_vectors():
    q = six_step(ema_mode="plain")
    # no r: o = 0.01·Σ z. code 0: audio 1+2+3 + video 30 = 36; code 1: audio 4 + video 10+20+40 = 74
    assert torch.allclose(q.ema_sum.view(-1), torch.tensor([0.36, 0.74, 0.0, 0.0]), rtol=1e-6, atol=0)
    assert torch.allclose(q.ema_count, torch.tensor([0.04, 0.04, 0.0, 0.0]), rtol=1e-6, atol=0)


def test_laplace_smoothing_keeps_the_total_and_lifts_empty_codes():
    counts = torch.tensor([0.04, 0.04, 0.0, 0.0], dtype=torch.float64)
    smoothed = laplace_smoothed(counts, 1e-5)
    # (N + 1e-5) / (0.08 + 4e-5) · 0.08
    assert torch.allclose(smoothed, torch.tensor([0.039990005, 0.039990005, 9.995002e-6, 9.995002e-6],
                                                 dtype=torch.float64), rtol=1e-6)
    assert smoothed.sum().item() == pytest.approx(0.08, rel=1e-12)
    random_counts = torch.rand(400, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 7
    assert laplace_smoothed(random_counts, 1e-5).sum().item() == pytest.approx(random_counts.sum().item(), rel=1e-12)


def test_quantize_uses_the_codebook_from_before_the_step():
    q = make(num_codes=8, dim=4, reset=False)
    gen = torch.Generator().manual_seed(0)
    semantic = {m: torch.randn(3, 5, 4, generator=gen) for m in AV}
    q.maybe_init_(semantic)
    before = q.codebook.clone()
    out = {m: q.quantize(z) for m, z in semantic.items()}
    q.accumulate_(semantic, {m: o.codes for m, o in out.items()})
    q.step_()
    assert not torch.equal(q.codebook, before)                      # the step did move the codebook
    for m in AV:
        assert torch.equal(out[m].codewords, before[out[m].codes])  # the commitment target is pre-update
        assert torch.equal(out[m].quantized, before[out[m].codes])  # straight-through value: exactly e


def test_nearest_code_by_one_matmul_equals_brute_force():
    q = make(num_codes=50, dim=16)
    gen = torch.Generator().manual_seed(3)
    q.codebook.copy_(torch.randn(50, 16, generator=gen))
    z = torch.randn(4, 7, 16, generator=gen) * 2
    brute = (z.unsqueeze(-2) - q.codebook).pow(2).sum(-1)             # (b t m), no expansion trick
    out = q.quantize(z)
    assert torch.equal(out.codes, brute.argmin(-1))
    assert torch.allclose(out.distances, brute, rtol=1e-5, atol=1e-4)
    assert out.codes.dtype == torch.int64 and out.codes.shape == (4, 7)
    assert torch.allclose(q.distances(z), brute, rtol=1e-5, atol=1e-4)
    # a vector sitting on a code: the expansion's rounding floor, d·eps·(||z||² + ||e||²), never 0 or below
    on_code = q.distances(q.codebook[:5]).diagonal()
    floor = 16 * 2.0 ** -23 * 2 * q.codebook[:5].pow(2).sum(-1)
    assert torch.allclose(on_code, floor, rtol=1e-5)


def test_a_vector_within_rounding_of_a_code_gets_no_gradient_on_any_cpu():
    """z a few ulps off a code (what the encoder gives for the same clip in another batch shape, or on another CPU):
    the expansion then holds only rounding (0 on one machine, 1e-4 on another, measured with the plain clamp at 0),
    and √ of it gave CMCM gradients anywhere from 0 to 1e-3 per vector. At the floor: every distance is the floor
    and no gradient reaches z, whatever the batch shape."""
    q = make(num_codes=8, dim=64)
    q.codebook.copy_(torch.randn(8, 64, generator=torch.Generator().manual_seed(4)) * 3)
    signs = torch.randint(0, 2, (8, 64), generator=torch.Generator().manual_seed(5)).float() * 2 - 1
    near = q.codebook * (1 + 4 * 2.0 ** -23 * signs)
    floor = 64 * 2.0 ** -23 * (near.pow(2).sum(-1) + q.codebook.pow(2).sum(-1))
    for rows in (slice(0, 8), slice(0, 3), slice(2, 3)):        # other batch shapes: other matmul blockings
        z = near[rows].clone().requires_grad_()
        d = q.distances(z)
        on_code = d[torch.arange(d.shape[0]), torch.arange(8)[rows]]
        assert torch.allclose(on_code, floor[rows], rtol=1e-5)
        on_code.clamp_min(1e-12).sqrt().sum().backward()
        assert not z.grad.any()


def test_quantize_ignores_autocast_and_returns_fp32():
    q = make(num_codes=6, dim=8)
    q.codebook.copy_(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)))
    z = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1))
    reference = q.quantize(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q.quantize(z.bfloat16())
    assert out.distances.dtype == torch.float32 and out.quantized.dtype == torch.float32
    # bf16 inputs round z, but the search itself ran in fp32 on those values
    assert torch.equal(out.codes, (z.bfloat16().float().unsqueeze(-2) - q.codebook).pow(2).sum(-1).argmin(-1))
    assert reference.distances.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- r
def test_paired_r_is_the_partner_at_the_same_segment():
    q = make(num_codes=4, dim=1, r_source="paired")
    r = q.partner_view({"audio": column(SIX_AUDIO), "video": column(SIX_VIDEO)})
    assert torch.equal(r["audio"], column(SIX_VIDEO))
    assert torch.equal(r["video"], column(SIX_AUDIO))


@pytest.mark.parametrize("r_source", ["paired", "cross_attention"])
def test_three_modalities_average_their_partners(r_source):
    # Each modality is constant over its segments, so attention over a partner returns that constant
    # whatever the weights: both r sources give r^a = (c_v + c_t)/2 etc.
    q = make(("audio", "video", "text"), num_codes=4, dim=2, r_source=r_source)
    const = {"audio": [1.0, 2.0], "video": [3.0, -1.0], "text": [-5.0, 4.0]}
    semantic = {m: torch.tensor(c).expand(2, 3, 2).clone() for m, c in const.items()}
    r = q.partner_view(semantic)
    expected = {"audio": [-1.0, 1.5], "video": [-2.0, 3.0], "text": [2.0, 0.5]}
    for m, e in expected.items():
        assert torch.allclose(r[m], torch.tensor(e).expand(2, 3, 2), atol=1e-6), m


def test_cross_attention_is_per_clip():
    # r of a clip depends only on that clip: the same clip inside a larger batch gives the same r.
    q = make(num_codes=4, dim=8)
    gen = torch.Generator().manual_seed(5)
    semantic = {m: torch.randn(6, 4, 8, generator=gen) for m in AV}
    whole = q.partner_view(semantic)
    part = q.partner_view({m: z[2:4] for m, z in semantic.items()})
    for m in AV:
        assert torch.allclose(whole[m][2:4], part[m], atol=1e-6)


# ------------------------------------------------------------------------------------------ reset
def _reset_run(rule: str, steps: int, reset_steps: int = 3):
    """M=4, D=2; audio selects all 4 codes every step, video only codes 0,1,2 (code 3 never).

    Plain EMA (no r), so used codes stay on their vectors up to Laplace smoothing (~1e-5 relative).
    """
    q = make(num_codes=4, dim=2, reset_steps=reset_steps, reset_rule=rule, ema_mode="plain")
    set_codebook(q, torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, -4.0]]))
    audio_codes, video_codes = codes_of([0, 1, 2, 3]), codes_of([0, 1, 2, 2])
    history = []
    for _ in range(steps):
        before = q.codebook.clone()
        # the vectors sit on their codes, so the EMA keeps used codes where they are
        semantic = {"audio": q.codebook[audio_codes].clone(), "video": q.codebook[video_codes].clone()}
        q.accumulate_(semantic, {"audio": audio_codes, "video": video_codes})
        stats = q.step_()
        history.append((before, stats, q.codebook.clone(), q.ema_count.clone(), q.ema_sum.clone(),
                        q.last_used.clone()))
    return q, history


def test_reset_rule_all_resets_a_code_one_modality_skipped_for_exactly_n_re_steps():
    q, history = _reset_run("all", steps=7, reset_steps=3)
    resets = [int(h[1]["resets"]) for h in history]
    # video never picks code 3; its clock starts at step 0 (init), so 3 − 0 >= N_re first at step 3;
    # the reset restarts the clock, so the next reset is at step 6.
    assert resets == [0, 0, 1, 0, 0, 1, 0]
    before, _, after, count, osum, last_used = history[2]
    assert torch.allclose(after[:3], before[:3], rtol=1e-4)      # kept codes stay (no reset)
    # new code 3 = a kept code + sign noise of exactly reset_noise × that code's RMS in every coordinate
    deltas = [(after[3] - before[j]).abs() / (before[j].norm() / math.sqrt(2)) for j in range(3)]
    assert any(torch.allclose(d, torch.full((2,), 0.01), rtol=1e-4) for d in deltas), deltas
    # its EMA state restarts from the new code (N = 1, o = e) and its usage clock from step 3
    assert count[3].item() == 1.0 and torch.equal(osum[3], after[3])
    assert last_used[:, 3].tolist() == [3, 3]
    # the next EMA step does not undo it: code 3 stays at the reset value (up to Laplace smoothing,
    # (N+ε)/(ΣN+Mε)·ΣN ≈ N here to 1e-5), it does not jump back to the old (0, -4)
    assert torch.allclose(history[3][2][3], after[3], rtol=1e-4)


def test_reset_rule_any_keeps_a_code_another_modality_uses():
    _, history = _reset_run("any", steps=7, reset_steps=3)
    assert [int(h[1]["resets"]) for h in history] == [0] * 7
    assert torch.allclose(history[-1][2][3], torch.tensor([0.0, -4.0]), rtol=1e-4)


def test_reset_counts_training_steps_not_forwards_and_never_in_eval():
    q = make(num_codes=4, dim=2, reset_steps=2, r_source="paired")
    set_codebook(q, torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, -4.0]]))
    semantic = {m: q.codebook[codes_of([0, 0])].clone() for m in AV}
    codes = {m: codes_of([0, 0]) for m in AV}
    for _ in range(5):                   # five micro-batches (gradient accumulation) = one training step
        q.accumulate_(semantic, codes)
    stats = q.step_()
    assert q.step.item() == 1 and int(stats["resets"]) == 0      # codes 1..3 unused for 1 step < N_re = 2
    assert q.stats_accumulator.abs().sum().item() == 0           # cleared for the next step
    q.eval()
    for _ in range(3):                   # eval forwards add nothing
        q.accumulate_(semantic, codes)
    assert q.stats_accumulator.abs().sum().item() == 0
    with pytest.raises(RuntimeError, match="eval mode"):
        q.step_()
    assert q.step.item() == 1
    q.train()
    q.accumulate_(semantic, codes)
    assert int(q.step_()["resets"]) == 3                          # step 2: codes 1, 2, 3 unused for 2 steps


def test_reset_off_never_resets():
    q = make(num_codes=4, dim=2, reset_steps=1, reset=False, r_source="paired")
    set_codebook(q, torch.eye(4, 2))
    q.accumulate_({m: torch.zeros(1, 1, 2) for m in AV}, {m: codes_of([0]) for m in AV})
    assert int(q.step_()["resets"]) == 0


def test_reset_when_every_code_is_dead_copies_any_code():
    # rule all, N_re = 1: audio uses only code 0, video only code 1, so every code misses a modality
    # at step 1 and all 16 are reset; with no kept code the sources are drawn from all codes.
    q = make(num_codes=16, dim=2, reset_steps=1, ema_mode="plain", reset_noise=0.0)
    set_codebook(q, torch.arange(16.0).unsqueeze(1).expand(16, 2) + 1)
    q.accumulate_({"audio": torch.tensor([[[1.0, 1.0]]]), "video": torch.tensor([[[2.0, 2.0]]])},
                  {"audio": codes_of([0]), "video": codes_of([1])})
    before = q.codebook.clone()
    assert int(q.step_()["resets"]) == 16
    # without noise every new code is a copy of one of the codes (as moved by this step's EMA: < 1e-3),
    # and the copies come from many different codes, not from one fallback index
    nearest = torch.cdist(q.codebook, before).min(1)
    assert nearest.values.max().item() < 1e-3
    assert torch.unique(nearest.indices).numel() >= 5


# ------------------------------------------------------------------------------------ statistics
def test_step_statistics_by_hand():
    q = make(num_codes=4, dim=1, reset=False, r_source="paired")
    q.accumulate_({"audio": column([0, 0, 0, 0]), "video": column([0, 0, 0, 0])},
                  {"audio": codes_of([0, 0, 2, 2]), "video": codes_of([0, 1, 1, 1])})
    stats = q.step_()
    # used: audio {0, 2}, video {0, 1}; both: {0}; total counts [3, 3, 2, 0] -> p = [3/8, 3/8, 1/4]
    # perplexity = exp(−(2·(3/8)·ln(3/8) + (1/4)·ln(1/4))) = exp(1.0821955) = 2.9511518
    assert stats["perplexity"].item() == pytest.approx(2.9511518, rel=1e-6)
    expected = {"active_codes": 3, "codes_used_all": 1, "codes_used_audio": 2, "codes_used_video": 2,
                "codes_used_only_audio": 1, "codes_used_only_video": 1, "resets": 0}
    assert {k: int(v) for k, v in stats.items() if k != "perplexity"} == expected
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in stats.values())


def test_exactly_one_all_reduce_per_step_and_gather_only_at_init():
    calls = {"reduce": 0, "gather": 0}

    def reduce(t):
        calls["reduce"] += 1
        return t

    def gather(t):
        calls["gather"] += 1
        return t

    q = MMEMAQuantizer(QuantizerConfig(num_codes=8, dim=4, reset_steps=1), AV, reduce, gather).train()
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 4):
        semantic = {m: torch.randn(2, 3, 4, generator=gen) for m in AV}
        q.maybe_init_(semantic)
        for _ in range(2):       # two micro-batches
            q.accumulate_(semantic, {m: q.quantize(z).codes for m, z in semantic.items()})
        q.step_()
        assert calls == {"reduce": step, "gather": 2}   # one gather per modality, at the first forward only


@pytest.mark.parametrize("ema_mode", ["joint", "sequential", "plain"])
def test_training_step_never_reads_a_tensor_back_to_the_host(ema_mode, monkeypatch):
    # .item(), bool(tensor), .tolist() and value-tensor masked_fill_ all go through
    # aten::_local_scalar_dense; on an accelerator each would be a device sync. The step as it runs on an
    # accelerator (on a CPU, reset_dead_codes_ skips its update when nothing is dead, a free host read).
    monkeypatch.setattr(MMEMAQuantizer, "_host_reads_are_free", property(lambda self: False))
    q = make(num_codes=16, dim=8, reset_steps=1, ema_mode=ema_mode)
    gen = torch.Generator().manual_seed(0)
    batches = [{m: torch.randn(2, 3, 8, generator=gen) for m in AV} for _ in range(3)]
    q.maybe_init_(batches[0])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        stats = _run_steps(q, batches)
    assert sum(int(s["resets"]) for s in stats) > 0          # the reset path ran inside the profile
    ops = {event.key for event in prof.key_averages()}
    assert "aten::index_add_" in ops                         # the profile did see the step's ops
    assert not {"aten::_local_scalar_dense", "aten::item", "aten::nonzero"} & ops


# ------------------------------------------------------------------------------------------ init
def test_data_init_picks_distinct_vectors_of_the_first_batch():
    q = make(num_codes=6, dim=3, reset_noise=0.0)
    gen = torch.Generator().manual_seed(0)
    semantic = {m: torch.randn(2, 2, 3, generator=gen) for m in AV}    # 8 vectors >= M = 6
    q.maybe_init_(semantic)
    pool = torch.cat([semantic[m].reshape(-1, 3) for m in AV])
    matches = (q.codebook.unsqueeze(1) == pool.unsqueeze(0)).all(-1)   # (m pool)
    assert matches.sum(1).tolist() == [1] * 6                        # every code is one pool vector
    assert matches.any(0).sum().item() == 6                           # ... and no vector is used twice
    assert torch.equal(q.ema_count, torch.ones(6)) and torch.equal(q.ema_sum, q.codebook)
    assert bool(q.initialized)
    first = q.codebook.clone()
    q.maybe_init_({m: torch.randn(2, 2, 3, generator=gen) for m in AV})
    assert torch.equal(q.codebook, first)                             # no-op afterwards


def test_data_init_with_fewer_vectors_than_codes_separates_repeats_with_noise():
    # 4 vectors for 10 codes: drawn with replacement. Sign noise separates two copies of one vector
    # unless their 32 signs all agree (probability 2^-32 per pair).
    q = make(num_codes=10, dim=32, reset_noise=0.01)
    semantic = {m: torch.randn(1, 2, 32, generator=torch.Generator().manual_seed(i)) for i, m in enumerate(AV)}
    q.maybe_init_(semantic)
    pool = torch.cat([semantic[m].reshape(-1, 32) for m in AV])
    nearest = torch.cdist(q.codebook, pool).min(1)
    # each code is a pool vector moved by exactly 1% of its RMS per coordinate: distance = 0.01·||v||
    assert torch.allclose(nearest.values, 0.01 * pool[nearest.indices].norm(dim=1), rtol=1e-4)
    assert torch.unique(q.codebook, dim=0).shape[0] == 10


def test_data_init_is_a_noop_in_eval():
    q = make(num_codes=4, dim=2).eval()
    q.maybe_init_({m: torch.ones(1, 4, 2) for m in AV})
    assert not bool(q.initialized) and torch.equal(q.codebook, torch.zeros(4, 2))


def test_uniform_init_is_the_authors_init():
    q = make(num_codes=5, dim=3, init="uniform")
    assert bool(q.initialized)
    assert q.codebook.abs().max().item() <= 1 / 5 and q.codebook.abs().min().item() > 0
    assert torch.equal(q.ema_count, torch.zeros(5)) and torch.equal(q.ema_sum, q.codebook)
    before = q.codebook.clone()
    q.maybe_init_({m: torch.ones(1, 4, 3) for m in AV})
    assert torch.equal(q.codebook, before)


# ------------------------------------------------------------------------------------ state_dict
def test_state_dict_round_trip_continues_bit_exactly_including_the_reset_generator():
    gen = torch.Generator().manual_seed(0)
    batches = [{m: torch.randn(3, 4, 8, generator=gen) for m in AV} for _ in range(9)]
    cfg = dict(num_codes=16, dim=8, reset_steps=2)
    original = make(**cfg)
    _run_steps(original, batches[:4])
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {"codebook", "ema_count", "ema_sum", "initialized", "step", "last_used", "_extra_state"}
    assert torch.equal(state["_extra_state"], original.reset_rng_state)
    resumed = make(**cfg, seed=123)                  # a different seed: the loaded generator state must win
    resumed.load_state_dict(state)
    stats_a = _run_steps(original, batches[4:])
    stats_b = _run_steps(resumed, batches[4:])
    assert sum(int(s["resets"]) for s in stats_a) > 0     # the continuation really drew reset randomness
    for name, value in original.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert [int(s["resets"]) for s in stats_a] == [int(s["resets"]) for s in stats_b]


def test_loading_an_uninitialised_state_re_arms_data_init():
    q = make(num_codes=4, dim=2)
    blank = {k: v.clone() for k, v in q.state_dict().items()}
    q.maybe_init_({m: torch.randn(2, 2, 2) for m in AV})
    parent = torch.nn.ModuleDict({"quantizer": q})       # the hook also fires when a parent loads
    parent.load_state_dict({f"quantizer.{k}": v for k, v in blank.items()})
    assert not bool(q.initialized)
    q.maybe_init_({m: torch.randn(2, 2, 2) for m in AV})
    assert bool(q.initialized)


# ------------------------------------------------------------------------------------ gradients
def test_codebook_gets_no_gradient_and_straight_through_reaches_z():
    q = make(num_codes=5, dim=3)
    q.codebook.copy_(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)))
    assert list(q.parameters()) == [] and not q.codebook.requires_grad
    z = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = q.quantize(z)
    upstream = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(2))
    (out.quantized * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)                  # d quantized / dz = identity
    assert q.codebook.grad is None and not out.codewords.requires_grad


def test_distances_gradient_is_two_z_minus_e():
    q = make(num_codes=5, dim=3)
    q.codebook.copy_(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)) * 0.1)
    z = (torch.randn(2, 3, generator=torch.Generator().manual_seed(1)) + 3).requires_grad_()
    q.quantize(z).distances.sum().backward()
    # d/dz Σ_j ||z − e_j||² = Σ_j 2 (z − e_j) = 2 (M z − Σ_j e_j)   (all distances > 0: no clamp active)
    assert torch.allclose(z.grad, 2 * (5 * z.detach() - q.codebook.sum(0)), atol=1e-5)


# ------------------------------------------------------------------------------------ bad input
def test_bad_config_and_inputs_fail_with_clear_messages():
    with pytest.raises(ValueError, match="decay"):
        QuantizerConfig(decay=1.0)
    with pytest.raises(ValueError, match="reset_steps"):
        QuantizerConfig(reset_steps=0)
    with pytest.raises(ValueError, match="epsilon"):
        QuantizerConfig(epsilon=0.0)
    with pytest.raises(ValueError, match="partner"):
        make(("audio",))
    make(("audio",), ema_mode="plain")                       # a single modality is fine without r
    q = make(num_codes=4, dim=2, r_source="paired")
    with pytest.raises(KeyError, match="text"):
        q.accumulate_({"audio": torch.zeros(1, 2, 2), "text": torch.zeros(1, 2, 2)}, {})
    with pytest.raises(ValueError, match=r"semantic\['video'\]"):
        q.accumulate_({"audio": torch.zeros(1, 2, 2), "video": torch.zeros(1, 2, 3)}, {})
    with pytest.raises(ValueError, match="paired"):
        q.accumulate_({"audio": torch.zeros(1, 2, 2), "video": torch.zeros(1, 3, 2)}, {})
    with pytest.raises(ValueError, match=r"codes\['video'\]"):
        q.accumulate_({m: torch.zeros(1, 2, 2) for m in AV}, {"audio": codes_of([0, 0])})
    with pytest.raises(ValueError, match="dim 2"):
        q.quantize(torch.zeros(3, 5))
    q.bfloat16()                                             # what a bf16 engine does to the whole module
    with pytest.raises(TypeError, match="fp32"):
        q.quantize(torch.zeros(3, 2))
    with pytest.raises(TypeError, match="fp32"):
        q.step_()


def test_usage_window_sums_reduced_counts_until_taken():
    q = MMEMAQuantizer(QuantizerConfig(num_codes=4, dim=2, init="uniform", reset=False), ["audio", "video"]).train()
    z = {"audio": torch.zeros(1, 4, 2), "video": torch.zeros(1, 4, 2)}
    for codes_a, codes_v in ([[0, 0, 0, 1]], [[1, 1, 0, 1]]), ([[2, 2, 2, 2]], [[3, 3, 3, 3]]):
        q.accumulate_(z, {"audio": torch.tensor(codes_a), "video": torch.tensor(codes_v)})
        q.step_()
    usage = q.take_usage_()
    assert usage["audio"].tolist() == [3, 1, 4, 0] and usage["video"].tolist() == [1, 3, 0, 4]
    assert q.take_usage_()["audio"].sum() == 0                        # the window was cleared
    assert "usage_window" not in q.state_dict()                       # monitoring only, not training state


def test_adopt_across_phases_keeps_codebook_and_remaps_usage_clocks_by_name():
    cfg = QuantizerConfig(num_codes=4, dim=2, init="uniform", reset_steps=3)
    old = MMEMAQuantizer(cfg, ["audio", "video"]).train()
    z = {"audio": torch.randn(1, 4, 2), "video": torch.randn(1, 4, 2)}
    for _ in range(5):
        old.accumulate_(z, {"audio": torch.tensor([[0, 0, 1, 1]]), "video": torch.tensor([[2, 2, 3, 3]])})
        old.step_()
    new = MMEMAQuantizer(cfg, ["video", "text"]).train()
    new.adopt_(old.state_dict(), ["audio", "video"])
    for name in ("codebook", "ema_count", "ema_sum", "initialized", "step"):
        assert torch.equal(getattr(new, name), getattr(old, name)), name
    assert torch.equal(new.last_used[0], old.last_used[1])            # video's clock follows video
    assert new.last_used[1].tolist() == [5, 5, 5, 5]                  # text's clock starts at the adopted step
    assert torch.equal(new.reset_rng_state, old.reset_rng_state)
    # the new modality is not stale yet: the next step resets nothing
    new.accumulate_({"video": torch.randn(1, 4, 2), "text": torch.randn(1, 4, 2)},
                    {"video": torch.tensor([[0, 1, 2, 3]]), "text": torch.tensor([[0, 1, 2, 3]])})
    assert new.step_()["resets"] == 0
    with pytest.raises(ValueError, match="num_codes/dim differ"):
        MMEMAQuantizer(QuantizerConfig(num_codes=8, dim=2), ["video", "text"]).adopt_(old.state_dict(),
                                                                                      ["audio", "video"])


def test_cpu_skip_of_an_empty_reset_matches_the_branch_free_update_bit_for_bit(monkeypatch):
    # With reset_steps=2 some steps reset codes and most do not; the shortcut (no code dead: skip the update, still
    # draw) and the accelerator's branch-free update must leave every buffer and the generator identical.
    gen = torch.Generator().manual_seed(1)
    batches = [{m: torch.randn(3, 4, 8, generator=gen) for m in AV} for _ in range(12)]

    def run(host_reads_free: bool) -> tuple[dict, list[dict]]:
        monkeypatch.setattr(MMEMAQuantizer, "_host_reads_are_free", property(lambda self: host_reads_free))
        q = make(num_codes=16, dim=8, reset_steps=2)
        stats = _run_steps(q, batches)
        return {**q.state_dict(), "rng": q.reset_rng_state}, stats

    fast, fast_stats = run(True)
    plain, plain_stats = run(False)
    resets = [int(s["resets"]) for s in plain_stats]
    assert 0 in resets and any(resets)                                # both kinds of step happened
    assert resets == [int(s["resets"]) for s in fast_stats]
    assert fast.keys() == plain.keys()
    assert all(torch.equal(fast[k], plain[k]) for k in fast)


@pytest.mark.parametrize("r_source", ["cross_attention", "paired"])
@pytest.mark.parametrize("modalities", [AV, ("audio", "video", "text")])
def test_ema_targets_are_half_of_z_plus_the_partner_view(r_source, modalities):
    q = make(modalities, r_source=r_source, dim=8)
    gen = torch.Generator().manual_seed(0)
    semantic = {m: torch.randn(2, 5, 8, generator=gen, dtype=torch.float64) for m in modalities}
    r = q.partner_view(semantic)
    targets = q._ema_targets(semantic)
    expected = torch.cat([((semantic[m] + r[m]) / 2).reshape(-1, 8) for m in modalities])
    torch.testing.assert_close(targets, expected, rtol=1e-12, atol=1e-12)
