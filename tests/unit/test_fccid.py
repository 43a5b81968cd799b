"""FCCID (seed 003 §3.1): model shapes, loss terms of eq. 10, InfoNCE by hand, Table 5 switches, the coarse path
per segment, config and state. The 2-rank exactness of the quantizer state is in tests/dist/test_codebook_dist.py, the
real job with ``task: fccid`` in tests/system/test_fccid_job.py."""

import math

import pytest
import torch
from fccid_utils import B, DIMS, L, SWITCHES, T, small_cfg
from job_utils import REPO

from trainer.configs.load import ConfigError, load_config
from trainer.configs.job import JobConfig
from trainer.models.fccid import mean_over_time
from trainer.configs.model import CoarseConfig, FCCIDConfig, FCCIDLossConfig, QuantizerConfig
from trainer.models.losses import commitment_losses, symmetric_info_nce
from trainer.configs.model import model_config_class
from trainer.tasks import FCCIDTask, task_class


def features(batch=B, seed=0, lengths=(3, 4, 7, 5)):
    g = torch.Generator().manual_seed(seed)
    return {
        "audio": torch.randn(batch, T, DIMS["audio"], generator=g),
        "video": torch.randn(batch, T, 2, 2, DIMS["video"], generator=g),
        "text": torch.randn(batch, L, DIMS["text"], generator=g),
        "text_mask": torch.arange(L) < torch.tensor(lengths[:batch]).unsqueeze(1),   # (b l), True = real token
    }


def make_task(cfg=None, seed=0):
    torch.manual_seed(seed)
    return FCCIDTask(cfg or small_cfg())


# ---------------------------------------------------------------- InfoNCE (seed 003 eq. 7) by hand
def test_symmetric_info_nce_hand_computed():
    # cos: x0·y0 = 1, x0·y1 = 1/√2, x1·y0 = 0, x1·y1 = 1/√2 (y0 has length 2: cosine ignores lengths)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    s = 1 / math.sqrt(2)
    rows = ((math.log(math.e + math.exp(s)) - 1) + (math.log(1 + math.exp(s)) - s)) / 2      # x_i picks y_i
    cols = ((math.log(math.e + 1) - 1) + math.log(2)) / 2                                   # y_j picks x_j
    assert rows + cols == pytest.approx(0.9823140792, abs=1e-9)
    assert symmetric_info_nce(x, y).item() == pytest.approx(rows + cols, abs=1e-6)
    # τ = 0.5 doubles every score: rows 0.3300847, columns 0.4100376
    assert symmetric_info_nce(x, y, temperature=0.5).item() == pytest.approx(0.7401222459, abs=1e-6)
    # symmetric: swapping the modalities swaps the two directions and leaves the sum
    assert symmetric_info_nce(y, x).item() == pytest.approx(rows + cols, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        symmetric_info_nce(x, y, temperature=0.0)
    with pytest.raises(ValueError, match="one shape"):
        symmetric_info_nce(x, y[:1])


def test_mean_over_time_counts_real_tokens_only():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])                           # (b=1 t=3 c=1), last token padding
    assert mean_over_time(x, torch.tensor([[True, True, False]])).item() == 2.0
    assert mean_over_time(x).item() == pytest.approx(104 / 3)


# ---------------------------------------------------------------- shapes and loss terms
def test_forward_shapes():
    task = make_task()
    feats = features()
    out = task.model(feats)
    for m in ("audio", "video"):
        assert out["fine_semantic"][m].shape == (B, T, 16)
        assert out["fine_specific"][m].shape == (B, T, 8)
        assert out["reconstruction"][m].shape == feats[m].shape == out["reconstruction_target"][m].shape
        assert out["cpc_predictions"][m].shape == (B, T - 2, 2, 16)           # K = 2: the fine level is AV
    for m in ("audio", "video", "text"):
        assert out["coarse_general"][m].shape == (B, 16)
        assert out["coarse_specific"][m].shape == (B, 6)
        assert out["quantized"][m].shape == out["codewords"][m].shape == (B, 16)
        assert out["codes"][m].shape == (B,) and out["codes"][m].dtype == torch.int64
        assert out["distances"][m].shape == (B, 8)
    assert out["reconstruction"]["text"].shape == out["reconstruction_target"]["text"].shape == (B, DIMS["text"])
    assert set(out["cpc_predictions"]) == {"audio", "video"}


def test_loss_has_every_term_of_eq_10():
    task = make_task()
    loss, metrics = task.compute_loss(features(), step=0)
    assert {"recon", "commit", "cmcm", "cpc", "nce", "mi", "mi_fine", "mi_coarse", "club_log_likelihood",
            "loss"} <= set(metrics)
    assert {"cpc_audio2video", "cpc_video2audio", "nce_audio_text", "nce_video_text", "cmcm_audio_video",
            "cmcm_audio_text", "cmcm_video_text", "mi_fine_audio", "mi_fine_video", "mi_coarse_audio",
            "mi_coarse_video", "mi_coarse_text"} <= set(metrics)
    assert all(v.ndim == 0 and not v.requires_grad for v in metrics.values())
    assert torch.isfinite(loss) and loss.requires_grad
    assert metrics["mi_fine"].item() == pytest.approx((metrics["mi_fine_audio"] + metrics["mi_fine_video"]).item())
    coarse = metrics["mi_coarse_audio"] + metrics["mi_coarse_video"] + metrics["mi_coarse_text"]
    assert metrics["mi_coarse"].item() == pytest.approx(coarse.item(), abs=1e-7)
    assert metrics["mi"].item() == pytest.approx((metrics["mi_fine"] + metrics["mi_coarse"]).item(), abs=1e-6)


def test_total_loss_is_the_weighted_sum_of_eq_10():
    weights = FCCIDLossConfig(recon=1.0, commit=2.0, cmcm=0.25, cpc=0.5, nce=3.0, mi=1.5)
    _, m = make_task(small_cfg(loss=weights)).compute_loss(features(), 0)
    expected = m["recon"] + 2 * m["commit"] + 0.25 * m["cmcm"] + 0.5 * m["cpc"] + 3 * m["nce"] + 1.5 * m["mi"]
    assert m["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_terms_recomputed_from_the_forward_outputs():
    """Eval mode (no state change): the task's terms are the documented functions of the model's outputs."""
    cfg = small_cfg(coarse=CoarseConfig(hidden_dim=16, specific_dim=6, temperature=0.5))
    task = make_task(cfg)
    feats = features()
    task.compute_loss(feats, 0)                                              # initialise the codebook
    task.after_optimizer_step_()
    task.model.eval()
    _, metrics = task.compute_loss(feats, 1)
    out = task.model(feats)
    c = out["coarse_general"]
    for m in ("audio", "video"):
        assert metrics[f"nce_{m}_text"].item() == pytest.approx(symmetric_info_nce(c[m], c["text"], 0.5).item(),
                                                                abs=1e-6)
    commit = commitment_losses(c, out["codewords"], 0.25, 0.125)
    assert metrics["commit_text"].item() == pytest.approx(commit["text"].item(), rel=1e-6)
    # text reconstruction target: the mean of each caption's real tokens only
    lengths = feats["text_mask"].sum(1, keepdim=True)
    manual = torch.stack([feats["text"][i, :n].mean(0) for i, n in enumerate(lengths.flatten().tolist())])
    assert torch.allclose(out["reconstruction_target"]["text"], manual, atol=1e-6)
    recon = ((out["reconstruction"]["text"] - manual) ** 2).mean()
    assert metrics["recon_text"].item() == pytest.approx(recon.item(), rel=1e-5)


def test_text_padding_reaches_nothing():
    task = make_task()
    task.model.eval()
    feats = features()
    out = task.model(feats)
    padded = dict(feats, text=torch.where(feats["text_mask"].unsqueeze(-1), feats["text"], 50.0))
    out2 = task.model(padded)
    for key in ("coarse_general", "coarse_specific", "reconstruction", "reconstruction_target"):
        assert torch.allclose(out[key]["text"], out2[key]["text"], atol=1e-6), key


def test_bad_inputs_name_the_key():
    task = make_task()
    feats = features()
    with pytest.raises(KeyError, match="'text'"):
        task.model({k: v for k, v in feats.items() if k not in ("text", "text_mask")})
    with pytest.raises(KeyError, match="audio_mask"):
        task.model({**feats, "audio_mask": torch.ones(B, T, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"features\['video'\]"):
        task.model({**feats, "video": feats["video"].mean((2, 3))})
    with pytest.raises(ValueError, match="share"):
        task.model({**feats, "audio": feats["audio"][:, :3]})
    with pytest.raises(ValueError, match=r"features\['text_mask'\]"):
        task.model({**feats, "text_mask": feats["text_mask"][:, :3]})
    with pytest.raises(ValueError, match=r"features\['text'\] has 2 clips"):
        task.model({**feats, "text": feats["text"][:2], "text_mask": feats["text_mask"][:2]})
    with pytest.raises(ValueError, match=r"batch\['text_mask'\] has rows without any real token"):
        task.prepare_batch({**feats, "text_mask": torch.zeros(B, L, dtype=torch.bool)})


# ---------------------------------------------------------------- gradient facts
def test_every_specific_encoder_feeds_the_reconstruction():
    """Ψ_f and Ψ_c reach the decoders, so their CLUB terms cannot be zeroed for free by a constant output;
    the general path reaches them only through the quantised clip code (straight-through)."""
    task = make_task(small_cfg(loss=FCCIDLossConfig(recon=1, commit=0, cmcm=0, cpc=0, nce=0, mi=0)))
    loss, _ = task.compute_loss(features(), 0)
    loss.backward()
    model = task.model

    def reached(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    for m in ("audio", "video"):
        assert reached(model.fine_specific[m]) and reached(model.fine_semantic[m]), m
    for side in ("audiovisual", "text"):
        assert reached(model.coarse_specific[side]) and reached(model.coarse_general[side]), side
        assert reached(model.project[side]), side


def test_one_clip_code_per_clip_and_modality():
    task = make_task()
    q = task.model.quantizer
    assert q.modalities == ("audio", "video", "text")
    task.compute_loss(features(), 0)
    counts, _ = q._accumulated()
    assert counts.sum(1).tolist() == [B, B, B]


# ---------------------------------------------------------------- Table 5 switches
@pytest.mark.parametrize("on", [
    (), ("a_club",), ("v_club",), ("av_club",), ("te_club",), ("a_club", "v_club"), ("av_club", "te_club"),
])
def test_table5_rows_build_only_their_estimators_and_terms(on):
    task = make_task(small_cfg(**{switch: switch in on for switch in SWITCHES}))
    _, metrics = task.compute_loss(features(), 0)
    wanted = {SWITCHES[s] for s in on}
    bounds = {k.removeprefix("mi_") for k in metrics if k.startswith(("mi_fine_", "mi_coarse_"))}
    expected = {name for name in ("fine_audio", "fine_video") if name in wanted}
    expected |= {"coarse_audio", "coarse_video"} if "coarse_audiovisual" in wanted else set()
    expected |= {"coarse_text"} if "coarse_text" in wanted else set()
    assert bounds == expected
    if not on:
        assert task.club is None and task.club_optimizer is None
        assert not {"mi", "mi_fine", "mi_coarse", "club_log_likelihood"} & set(metrics)
        assert "club" not in task.state_dict()
    else:
        assert set(task.club.keys()) == wanted
        assert ("mi_fine" in metrics) == bool(wanted & {"fine_audio", "fine_video"})
        assert ("mi_coarse" in metrics) == bool(wanted & {"coarse_audiovisual", "coarse_text"})
    # the rest of eq. 10 is untouched by the switches
    assert {"recon", "commit", "cmcm", "cpc", "nce"} <= set(metrics)


# ---------------------------------------------------------------- downstream: per-segment coarse path
def test_segment_codes_pass_each_segment_through_the_coarse_path():
    task = make_task()
    feats = features()
    task.compute_loss(feats, 0)
    task.after_optimizer_step_()
    model = task.model.eval()
    with torch.no_grad():
        for m, length in (("audio", T), ("video", T), ("text", L)):
            codes, quantized = model.segment_codes(feats, m)
            assert codes.shape == (B, length) and quantized.shape == (B, length, 16)
            assert torch.equal(quantized, model.quantizer.codebook[codes])
        # a clip whose segments are all equal has one code: the one its clip vector gets in training
        still = {**feats, "audio": feats["audio"][:, :1].expand(-1, T, -1).contiguous(),
                 "video": feats["video"][:, :1].expand(-1, T, -1, -1, -1).contiguous(),
                 "text": feats["text"][:, :1].expand(-1, L, -1).contiguous()}
        clip_codes = model(still)["codes"]
        for m in ("audio", "video", "text"):
            codes, _ = model.segment_codes(still, m)
            assert torch.equal(codes, clip_codes[m].unsqueeze(1).expand(-1, codes.shape[1])), m
        with pytest.raises(KeyError, match="speech"):
            model.segment_codes(feats, "speech")


# ---------------------------------------------------------------- config and state
def test_config_through_the_project_loader_and_the_task_registry():
    cfg = load_config(FCCIDConfig, overrides=["av_club=false", "coarse.temperature=0.07", "loss.nce=0.5"])
    assert cfg.club_estimators == ("fine_audio", "fine_video", "coarse_text")
    assert cfg.coarse.temperature == 0.07 and cfg.loss.nce == 0.5 and cfg.modalities == ("audio", "video", "text")
    assert model_config_class("fccid") is FCCIDConfig and task_class("fccid") is FCCIDTask
    with pytest.raises(ConfigError, match="coarse.temprature"):
        load_config(FCCIDConfig, overrides=["coarse.temprature=0.5"])
    with pytest.raises(ValueError, match="temperature"):
        CoarseConfig(temperature=0.0)
    with pytest.raises(ValueError, match="quantizer.dim"):
        small_cfg(quantizer=QuantizerConfig(num_codes=8, dim=32))
    with pytest.raises(ValueError, match="text"):
        small_cfg(spatial_patches={"text": 4})
    with pytest.raises(ValueError, match="exactly"):
        small_cfg(modalities=("audio", "video"))
    assert small_cfg(modalities=["text", "video", "audio"]).modalities == ("audio", "video", "text")


def test_pretrain_config_carries_the_paper_hyperparameters():
    cfg = load_config(JobConfig, REPO / "launch" / "configs" / "pretrain_fccid.yaml")
    assert cfg.task == "fccid"
    model = cfg.model
    assert isinstance(model, FCCIDConfig) and model.club_estimators == tuple(SWITCHES.values())
    q = model.quantizer
    assert (q.num_codes, q.dim, q.decay, q.reset, q.reset_steps) == (400, 256, 0.99, True, 200)
    assert model.encoder.semantic_dim == 256 and model.coarse.temperature == 0.1
    assert (model.loss.commit_self, model.loss.commit_partner) == (0.25, 0.125)
    assert model.club.inner_steps == 5 and cfg.optim.lr == 4e-4 and cfg.data.batch_size == 80
    demo = load_config(JobConfig, REPO / "launch" / "configs" / "demo_fccid.yaml")
    assert demo.task == "fccid" and isinstance(demo.model, FCCIDConfig)
