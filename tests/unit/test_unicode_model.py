"""UniCodeModel + UniCodeTask: shapes (AV, AVT), gradient facts, ablation switches, state round trips."""

import dataclasses
import math

import pytest
import torch

from trainer.configs.load import ConfigError, load_config
from trainer.configs.model import CLUBConfig, CPCConfig, EncoderConfig, LossConfig, QuantizerConfig, UniCodeConfig
from trainer.models.encoders import AttentionPool, ChannelGate, sinusoidal_table
from trainer.models.losses import commitment_losses
from trainer.models.unicode import UniCodeModel
from trainer.tasks import UniCodeTask

B, T = 4, 5
DIMS = {"audio": 12, "video": 16, "text": 20}


def small_cfg(modalities=("audio", "video"), **overrides) -> UniCodeConfig:
    """Paper structure (spatial video map, 2-layer 4-head transformer) at toy widths."""
    base = dict(
        modalities=modalities,
        feature_dims=dict(DIMS),
        spatial_patches={"video": 4},
        encoder=EncoderConfig(semantic_dim=16, specific_dim=8, ff_dim=32, dropout=0.0, se_reduction=4,
                              pool_hidden=8, specific_hidden=16, spatial_specific_channels=8, decoder_hidden=16),
        quantizer=QuantizerConfig(num_codes=8, dim=16, reset_steps=2),
        club=CLUBConfig(hidden_dim=16, inner_steps=2),
    )
    base.update(overrides)
    return UniCodeConfig(**base)


def features(modalities=("audio", "video"), batch=B, seed=0, spatial_5d=True):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modalities:
        if m == "video":
            shape = (batch, T, 2, 2, DIMS[m]) if spatial_5d else (batch, T, 4, DIMS[m])
        else:
            shape = (batch, T, DIMS[m])
        out[m] = torch.randn(shape, generator=g)
    if "text" in modalities:
        mask = torch.ones(batch, T, dtype=torch.bool)
        mask[:, 3:] = False                                  # two padding tokens per caption
        out["text_mask"] = mask
    return out


def make_task(cfg=None, seed=0):
    torch.manual_seed(seed)
    return UniCodeTask(cfg or small_cfg())


# ---------------------------------------------------------------- shapes
@pytest.mark.parametrize("modalities, steps", [(("audio", "video"), 2), (("audio", "video", "text"), 1)])
def test_forward_shapes_av_and_avt(modalities, steps):
    task = make_task(small_cfg(modalities))
    feats = features(modalities)
    out = task.model(feats)
    for m in modalities:
        assert out["semantic"][m].shape == (B, T, 16)
        assert out["specific"][m].shape == (B, T, 8)
        assert out["quantized"][m].shape == (B, T, 16)
        assert out["codes"][m].shape == (B, T) and out["codes"][m].dtype == torch.int64
        assert out["codewords"][m].shape == (B, T, 16)
        assert out["distances"][m].shape == (B, T, 8)
        assert out["reconstruction"][m].shape == feats[m].shape
        assert out["cpc_predictions"][m].shape == (B, T - steps, steps, 16)
    loss, metrics = task.compute_loss(feats, step=0)
    expected_pairs = {f"cpc_{a}2{b}" for a in modalities for b in modalities if a != b}
    assert expected_pairs <= set(metrics)
    assert {"recon", "commit", "cpc", "cmcm", "mi", "club_log_likelihood", "loss"} <= set(metrics)
    assert all(v.ndim == 0 and not v.requires_grad for v in metrics.values())
    assert torch.isfinite(loss) and loss.requires_grad


def test_video_as_patch_sequence_and_bad_inputs_name_the_key():
    task = make_task()
    flat = features(spatial_5d=False)
    assert task.model(flat)["reconstruction"]["video"].shape == (B, T, 4, DIMS["video"])
    with pytest.raises(ValueError, match=r"features\['video'\]"):
        task.model({"audio": flat["audio"], "video": flat["video"].mean(2)})
    with pytest.raises(KeyError, match="'video'"):
        task.model({"audio": flat["audio"]})
    with pytest.raises(KeyError, match="labels"):
        task.model({**flat, "labels": torch.zeros(B)})
    with pytest.raises(ValueError, match="share"):
        task.model({"audio": flat["audio"][:, :3], "video": flat["video"]})


def test_video_as_one_vector_per_segment():
    task = make_task(small_cfg(spatial_patches={}))
    feats = {"audio": torch.randn(B, T, 12), "video": torch.randn(B, T, 16)}
    out = task.model(feats)
    assert out["reconstruction"]["video"].shape == (B, T, 16) and not task.model.semantic["video"].spatial
    with pytest.raises(ValueError, match=r"features\['video'\] must be \(b t 16\)"):
        task.model({"audio": feats["audio"], "video": torch.randn(B, T, 4, 16)})


def test_config_loads_through_the_project_loader():
    cfg = load_config(UniCodeConfig, overrides=["modalities=[audio, video, text]", "quantizer.ema_mode=plain",
                                                "cpc.normalize_over=contexts", "variant=baseline"])
    assert cfg.modalities == ("audio", "video", "text") and cfg.quantizer.ema_mode == "plain"
    with pytest.raises(ConfigError, match="cpc.normalize_over"):
        load_config(UniCodeConfig, overrides=["cpc.normalize_over=rows"])


def test_prepare_batch_checks_and_converts():
    task = make_task(small_cfg(("audio", "video", "text")))
    batch = features(("audio", "video", "text"))
    batch["audio"] = batch["audio"].double()
    batch["labels"] = torch.arange(B)
    prepared = task.prepare_batch(batch)
    assert set(prepared) == {"audio", "video", "text", "text_mask"}
    assert prepared["audio"].dtype == torch.float32 and prepared["text_mask"].dtype == torch.bool
    with pytest.raises(KeyError, match="'text'"):
        task.prepare_batch({k: v for k, v in batch.items() if k != "text"})
    empty = dict(batch, text_mask=torch.zeros(B, T, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"text_mask.*without any real token"):
        task.prepare_batch(empty)
    with pytest.raises(TypeError, match=r"batch\['audio'\]"):
        task.prepare_batch(dict(batch, audio=torch.zeros(B, T, 12, dtype=torch.int64)))


def test_text_mask_hides_padding_from_real_tokens():
    task = make_task(small_cfg(("audio", "video", "text")))
    task.model.eval()
    feats = features(("audio", "video", "text"))
    z = task.model(feats)["semantic"]["text"]
    feats["text"][:, 3:] += 5.0                               # change only the padding tokens
    z2 = task.model(feats)["semantic"]["text"]
    assert torch.allclose(z2[:, :3], z[:, :3], atol=1e-6)
    assert not torch.allclose(z2[:, 3:], z[:, 3:])


def test_segment_codes_are_the_forward_codes_of_one_modality():
    """The downstream contract shared with FCCID (trainer.eval.frozen_codes calls only segment_codes)."""
    modalities = ("audio", "video", "text")
    task = make_task(small_cfg(modalities))
    feats = features(modalities)
    task.compute_loss(feats, 0)
    task.after_optimizer_step_()
    model = task.model.eval()
    codebook = model.quantizer.codebook.clone()
    with torch.no_grad():
        out = model(feats)
        for m in modalities:
            only = {k: v for k, v in feats.items() if k in (m, f"{m}_mask")}       # the modality and its mask
            codes, quantized = model.segment_codes(only, m)
            assert torch.equal(codes, out["codes"][m]) and torch.equal(quantized, out["codewords"][m]), m
            assert torch.equal(model.segment_semantic(only, m), out["semantic"][m]), m
        # the mask is read: without it the padding tokens are attended to
        unmasked = model.segment_semantic({"text": feats["text"]}, "text")
        assert not torch.allclose(unmasked[:, :3], out["semantic"]["text"][:, :3])
    assert torch.equal(model.quantizer.codebook, codebook)
    with pytest.raises(KeyError, match="no 'speech' encoder"):
        model.segment_codes(feats, "speech")
    with pytest.raises(ValueError, match=r"features\['text_mask'\] must be \(4, 5\)"):
        model.segment_codes({"text": feats["text"], "text_mask": feats["text_mask"][:, :2]}, "text")


@pytest.mark.parametrize("positional", ["none", "learned", "sinusoidal"])
def test_positional_encoding_options(positional):
    enc = dataclasses.replace(small_cfg().encoder, positional=positional)
    task = make_task(small_cfg(encoder=enc))
    task.model.eval()
    feats = features()
    perm = torch.tensor([4, 3, 2, 1, 0])
    z = task.model(feats)["semantic"]["audio"]
    z_perm = task.model({m: x[:, perm] for m, x in feats.items()})["semantic"]["audio"]
    # without positions the encoder is permutation-equivariant over segments; with them it is not
    assert torch.allclose(z_perm, z[:, perm], atol=1e-5) == (positional == "none")


def test_spatial_gate_and_pool_hand_cases():
    x = torch.arange(24.0).view(1, 1, 4, 6)                  # (b t p c)
    gate = ChannelGate(6, reduction=2)
    torch.nn.init.zeros_(gate.excite[2].weight)
    torch.nn.init.zeros_(gate.excite[2].bias)                # sigmoid(0) = 1/2 on every channel
    assert torch.allclose(gate(x), torch.full((1, 1, 6), 0.5))
    pool = AttentionPool(6, hidden=3)
    torch.nn.init.zeros_(pool.score[2].weight)               # equal scores -> the mean over patches
    ones = torch.ones(1, 1, 6)
    assert torch.allclose(pool(x, ones), x.mean(dim=2))
    assert torch.allclose(pool(x, gate(x)), x.mean(dim=2) / 2)   # the gated map x · 1/2
    with torch.no_grad():
        pool.score[2].bias.fill_(7.0)                        # a constant shift leaves softmax unchanged
    assert torch.allclose(pool(x, ones), x.mean(dim=2))


def test_sinusoidal_table_values():
    table = sinusoidal_table(3, 4)
    # position 1: dims (sin 1, cos 1, sin 0.01, cos 0.01) — frequencies 1 and 10000^(−2/4)
    expected = torch.tensor([math.sin(1.0), math.cos(1.0), math.sin(0.01), math.cos(0.01)])
    assert torch.allclose(table[1], expected, atol=1e-6)
    assert torch.equal(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))


# ---------------------------------------------------------------- gradient facts


@pytest.mark.parametrize("nonnegative", [False, True])
def test_nonnegative_club_bound_clamps_an_estimator_error_at_zero(nonnegative):
    club = CLUBConfig(hidden_dim=16, inner_steps=0, nonnegative=nonnegative)
    task = make_task(small_cfg(club=club))
    estimator = task.club["audio"]
    with torch.no_grad():   # μ(x) = x[:8] exactly (relu(x) − relu(−x)); logvar = tanh(0) = 0
        pick = torch.eye(8, 16)
        estimator.mean[0].weight.copy_(torch.cat([pick, -pick]))
        estimator.mean[2].weight.copy_(torch.cat([torch.eye(8), -torch.eye(8)], 1))
        for layer in (estimator.mean[0], estimator.mean[2], estimator.logvar[2]):
            layer.bias.zero_()
        estimator.logvar[2].weight.zero_()
    x = torch.tensor([[[1.0] * 16], [[-1.0] * 16]], requires_grad=True)   # (b=2 t=1 16)
    y = x[[1, 0], :, :8]            # each clip's z̄ is the OTHER clip's μ: the positive fits worse than the negative
    bound = task._mi_upper_bounds({"audio": ("audio", x, y, None)})["audio"]
    # (negative − positive) / 2σ² summed over 8 dims: (0 − 2²) / 2 · 8 = −16, an estimator error (MI >= 0)
    assert bound.item() == (0.0 if nonnegative else -16.0)
    bound.backward()
    assert (x.grad.abs().sum() == 0) == nonnegative                 # clamped: nothing to exploit


def test_mi_bound_gradient_reaches_both_encoders():
    task = make_task(small_cfg(loss=LossConfig(recon=0, commit=0, cpc=0, cmcm=0, mi=1)))
    loss, _ = task.compute_loss(features(), 0)
    loss.backward()
    assert task.model.semantic["audio"].project.weight.grad.abs().sum() > 0
    assert task.model.specific["audio"].mlp[0].weight.grad.abs().sum() > 0


def test_straight_through_passes_reconstruction_gradient_to_semantic_encoder():
    task = make_task()
    out = task.model(features())
    for m in ("audio", "video"):
        out["semantic"][m].retain_grad()
        out["quantized"][m].retain_grad()
    loss = sum(((out["reconstruction"][m] - 1.0) ** 2).mean() for m in ("audio", "video"))
    loss.backward()
    for m in ("audio", "video"):
        # ẑ = z + sg(e − z): the gradient at z is exactly the gradient at ẑ
        assert torch.equal(out["semantic"][m].grad, out["quantized"][m].grad)
        assert task.model.semantic[m].project.weight.grad.abs().sum() > 0
    # its value is the code (up to the rounding of z + (e − z))
    assert torch.allclose(out["quantized"]["audio"].detach(), out["codewords"]["audio"], atol=1e-6)


# ---------------------------------------------------------------- ablation switches
def _param_names(task):
    names = {n for n, _ in task.model.named_parameters()}
    if task.club is not None:
        names |= {f"club.{n}" for n, _ in task.club.named_parameters()}
    return names


def test_full_model_has_every_term_and_module():
    task = make_task()
    _, metrics = task.compute_loss(features(), 0)
    assert {"recon", "commit", "cpc", "cmcm", "mi"} <= set(metrics)
    names = _param_names(task)
    assert any(n.startswith("cpc.") for n in names) and any(n.startswith("club.") for n in names)


@pytest.mark.parametrize("switch, term, prefix", [
    ("use_club", "mi", "club."),
    ("use_cpc", "cpc", "cpc."),
    ("use_cmcm", "cmcm", None),
])
def test_switched_off_term_is_absent_with_its_parameters(switch, term, prefix):
    task = make_task(small_cfg(**{switch: False}))
    _, metrics = task.compute_loss(features(), 0)
    assert term not in metrics and not any(k.startswith(f"{term}_") for k in metrics)
    if prefix:
        assert not any(n.startswith(prefix) for n in _param_names(task))
    if switch == "use_club":
        assert task.club is None and task.club_optimizer is None and "club_log_likelihood" not in metrics
    if switch == "use_cpc":
        assert task.model.cpc is None and "cpc_generator" not in task.state_dict()


def test_quantizer_ablations_reach_the_quantizer():
    plain = make_task(small_cfg(quantizer=QuantizerConfig(num_codes=8, dim=16, ema_mode="plain", reset=False)))
    assert plain.model.quantizer.cfg.ema_mode == "plain" and plain.model.quantizer.cfg.reset is False


def test_baseline_variant_is_recon_ema_vq_and_plain_commitment():
    task = make_task(small_cfg(variant="baseline"))
    assert task.cfg.quantizer.ema_mode == "plain" and task.cfg.quantizer.reset is False
    assert task.club is None and task.model.cpc is None and task.cpc_generator is None
    feats = features()
    loss, metrics = task.compute_loss(feats, 0)
    assert set(k for k in metrics if "_" not in k) == {"recon", "commit", "loss"}
    # plain commitment β||z − sg e||²: recompute from the forward outputs (model in eval: no state change)
    task.model.eval()
    out = task.model(feats)
    plain = commitment_losses(out["semantic"], out["codewords"], 0.25, 0.0)
    assert metrics["commit_audio"].item() == pytest.approx(plain["audio"].item(), rel=1e-6)
    assert metrics["loss"].item() == pytest.approx((metrics["recon"] + metrics["commit"]).item(), rel=1e-6)


def test_compatibility_options():
    cfg = small_cfg(cpc=CPCConfig(lstm_layers=2, normalize_over="contexts", same_modality_weight=0.1),
                    loss=LossConfig(commit_self=0.5, commit_partner=0.25))
    task = make_task(cfg)
    assert task.model.cpc.context["audio"].num_layers == 2
    _, metrics = task.compute_loss(features(), 0)
    pairs = {"cpc_audio2video", "cpc_video2audio", "cpc_audio2audio", "cpc_video2video"}
    assert pairs <= set(metrics)
    expected = (metrics["cpc_audio2video"] + metrics["cpc_video2audio"]
                + 0.1 * (metrics["cpc_audio2audio"] + metrics["cpc_video2video"]))
    assert metrics["cpc"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_total_loss_is_the_weighted_sum_of_terms():
    weights = LossConfig(recon=1.0, commit=2.0, cpc=0.5, cmcm=0.25, mi=3.0)
    task = make_task(small_cfg(loss=weights))
    _, m = task.compute_loss(features(), 0)
    expected = m["recon"] + 2 * m["commit"] + 0.5 * m["cpc"] + 0.25 * m["cmcm"] + 3 * m["mi"]
    assert m["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="quantizer.dim"):
        small_cfg(quantizer=QuantizerConfig(num_codes=8, dim=32))
    with pytest.raises(ValueError, match="feature_dims"):
        small_cfg(modalities=("audio", "speech"))
    with pytest.raises(ValueError, match="at least two"):
        small_cfg(modalities=("audio",))


# ---------------------------------------------------------------- training-step behaviour and state
def test_eval_mode_averages_cpc_over_t_without_drawing():
    task = make_task()
    task.model.eval()
    state = task.cpc_generator.get_state()
    _, first = task.compute_loss(features(), 0)
    _, second = task.compute_loss(features(), 1)
    assert torch.equal(task.cpc_generator.get_state(), state)
    assert torch.equal(first["cpc"], second["cpc"])


def test_after_optimizer_step_returns_codebook_statistics():
    task = make_task()
    task.compute_loss(features(), 0)
    stats = task.after_optimizer_step_()
    expected = {"perplexity", "active_codes", "codes_used_all", "resets", "codes_used_audio", "codes_used_video",
                "codes_used_only_audio", "codes_used_only_video"}
    assert set(stats) == {f"codebook/{k}" for k in expected}
    assert stats["codebook/active_codes"] >= 1


def test_cpc_time_draws_cover_the_valid_range_and_resume_from_state():
    task = make_task()
    valid = T - 2
    draws = [task._draw_cpc_time(valid) for _ in range(200)]
    assert set(draws) == set(range(valid))
    state = task.state_dict()
    continued = [task._draw_cpc_time(valid) for _ in range(20)]
    other = make_task(seed=1)
    other.load_state_dict(state)
    assert [other._draw_cpc_time(valid) for _ in range(20)] == continued


def test_model_is_a_plain_module_holding_the_quantizer():
    model = UniCodeModel(small_cfg(("audio", "video", "text")))
    children = dict(model.named_children())
    assert set(children) == {"semantic", "specific", "decoder", "quantizer", "cpc"}
    assert set(model.semantic.keys()) == {"audio", "video", "text"}
    assert model.semantic["video"].spatial and not model.semantic["audio"].spatial
