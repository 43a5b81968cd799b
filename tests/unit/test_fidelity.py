"""The synthetic feature generator, the world grid, the fidelity bench's rows and its claim checks. A run of the
bench's rows (pretrained through the main job's loop on in-memory features): tests/system/test_fidelity_bench.py."""

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from trainer.programs.bench.fidelity import (
    CELLS, FidelityConfig, bench_model_config, claims, compare_methods, format_claims, format_table1, mean_claims,
    nuisance_r2, pretraining_jobs, row_model_config, select_rows,
)
from trainer.programs.bench.config import PretrainConfig, ROWS, SyntheticFeatureConfig, TABLE1, WORLDS
from trainer.programs.bench.jobs import task_name  # noqa: E402
from trainer.programs.bench.synthetic_features import BACKGROUND, SyntheticWorld, world_config
from trainer.programs.harness import Target  # noqa: E402
from trainer.configs.model import FCCIDConfig, UniCodeConfig


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(SyntheticFeatureConfig(text=True))


# ---------------------------------------------------------------- generator
def test_generator_is_seeded_and_shaped(world):
    a, b, other = world.sample(40, seed=5), world.sample(40, seed=5), world.sample(40, seed=6)
    assert all(torch.equal(a.features[k], b.features[k]) for k in a.features)
    assert not torch.equal(a.features["audio"], other.features["audio"])
    assert a.features["audio"].shape == (40, 10, 64) and a.features["video"].shape == (40, 10, 64)
    assert a.features["text"].shape[0] == 40 and a.features["text_mask"].any(1).all()
    assert torch.equal(SyntheticWorld(SyntheticFeatureConfig(text=True)).sample(40, seed=5).features["video"],
                       a.features["video"])                        # the world itself is a function of world_seed
    assert torch.bincount(a.clip_label, minlength=10).tolist() == [4] * 10       # balanced classes


def test_text_padded_to_a_fixed_length():
    data = SyntheticWorld(SyntheticFeatureConfig(text=True, text_length=10)).sample(30, seed=3)
    assert data.features["text"].shape == (30, 10, 32)
    assert data.features["text_mask"].sum(1).tolist() == [len(p.split()) for p in data.prompts]
    assert (data.features["text"][~data.features["text_mask"]] == 0).all()         # padding is zeros
    with pytest.raises(ValueError, match="text_length 8 is shorter than the longest prompt"):
        SyntheticFeatureConfig(text=True, text_length=8)


def test_labels_are_per_segment_and_only_partly_shared(world):
    data = world.sample(400, seed=1)
    audio, video = data.segment_labels["audio"], data.segment_labels["video"]
    for labels in (audio, video):   # a segment carries the clip's event or background
        assert ((labels == BACKGROUND) | (labels == data.clip_label.unsqueeze(1))).all()
    both = (audio >= 0) & (video >= 0)
    assert both.any(1).all()                                       # every clip has an audio-visual event
    only_one = (audio >= 0) ^ (video >= 0)
    share = only_one.float().mean().item()
    assert 0.15 < share < 0.5                                      # AVVP-like misalignment, not rare, not dominant
    assert data.prompts[0].split().count(f"noun{int(data.clip_label[0])}") == 1


def test_nuisance_is_strong_and_independent_of_the_event(world):
    data = world.sample(600, seed=2)
    train, test = torch.arange(400), torch.arange(400, 600)
    # a linear read-out of the per-clip nuisance from the raw features explains most of its variance ...
    raw = nuisance_r2({"audio": data.features["audio"][train], "video": data.features["video"][train]},
                      {"audio": data.features["audio"][test], "video": data.features["video"][test]},
                      {m: data.nuisance[m][train] for m in ("audio", "video")},
                      {m: data.nuisance[m][test] for m in ("audio", "video")})
    assert min(raw.values()) > 0.7
    # ... the class does not predict it: per-class means of the clip nuisance stay within sampling noise
    clip_nuisance = data.nuisance["audio"].mean(1)                  # (n k), std ≈ nuisance_scale
    per_class = torch.stack([clip_nuisance[data.clip_label == c].mean(0) for c in range(10)])
    assert per_class.abs().max() < 4 * 2.0 / (60 ** 0.5)
    # and audio's nuisance is independent of video's
    corr = torch.corrcoef(torch.cat([clip_nuisance, data.nuisance["video"].mean(1)], 1).T)[:16, 16:]
    assert corr.abs().max() < 0.2


# ---------------------------------------------------------------- rows and targets
def test_rows_switch_exactly_their_table_2_components():
    base = bench_model_config(SyntheticFeatureConfig())
    baseline = ROWS["baseline"].model_config(base).effective()
    assert baseline.variant == "baseline" and not (baseline.use_club or baseline.use_cpc or baseline.use_cmcm)
    assert baseline.quantizer.ema_mode == "plain" and not baseline.quantizer.reset
    assert baseline.loss.commit_partner == 0.0
    no_ema = ROWS["no_mm_ema"].model_config(base)
    assert no_ema.quantizer.ema_mode == "plain" and no_ema.loss.commit_partner == 0.0 and no_ema.quantizer.reset
    assert ROWS["full"].model_config(base) == base
    assert (ROWS["no_club"].model_config(base).use_club, ROWS["no_cpc"].model_config(base).use_cpc) == (False, False)
    assert not ROWS["no_reset"].model_config(base).quantizer.reset and not ROWS["no_cmcm"].model_config(base).use_cmcm


def test_table1_rows_pretrain_fccid_and_avt_uni_code_at_the_bench_widths():
    cfg = FidelityConfig()
    fccid = row_model_config(ROWS["fccid"], cfg)
    assert isinstance(fccid, FCCIDConfig) and task_name(fccid) == "fccid"
    assert fccid.feature_dims == {"audio": 64, "video": 64, "text": 32} and fccid.spatial_patches == {}
    assert (fccid.encoder.semantic_dim, fccid.encoder.specific_dim) == (64, 32)
    assert dataclasses.asdict(fccid.coarse) == {"hidden_dim": 64, "specific_dim": 32, "temperature": 0.1}
    assert (fccid.quantizer.num_codes, fccid.quantizer.dim) == (64, 64)
    assert fccid.club_estimators == ("fine_audio", "fine_video", "coarse_audiovisual", "coarse_text")
    assert fccid.club.lr == cfg.pretrain.lr == 1e-3                     # estimators learn at the encoders' rate
    assert row_model_config(ROWS["fccid_fine_club"], cfg).club_estimators == ("fine_audio", "fine_video")
    tau = row_model_config(ROWS["fccid_tau1"], cfg)                  # the temperature seed 003's text gives
    assert tau.coarse.temperature == 1.0 and dataclasses.replace(tau, coarse=fccid.coarse) == fccid
    avt = row_model_config(ROWS["unicode_avt"], cfg)
    assert isinstance(avt, UniCodeConfig) and task_name(avt) == "unicode"
    assert avt.modalities == ("audio", "video", "text") and avt.feature_dims["text"] == 32
    # the AVT row differs from the audio-visual full row by the text modality only
    full = row_model_config(ROWS["full"], cfg)
    assert dataclasses.replace(avt, modalities=full.modalities, feature_dims=full.feature_dims) == full
    # a TOC row trains nothing of its own: it reads its base row's model
    assert row_model_config(ROWS["fccid_toc"], cfg) == fccid and row_model_config(ROWS["unicode_avt_toc"], cfg) == avt
    assert row_model_config(ROWS["full"], FidelityConfig(pretrain=PretrainConfig(club_lr=4e-4))).club.lr == 4e-4
    assert cfg.toc.dims == 32 and cfg.world.text and cfg.world.text_length == cfg.world.segments


def test_row_selection_groups_and_shared_pretrainings():
    assert select_rows("table1") == list(TABLE1)
    assert select_rows("all") == list(ROWS)
    assert not any(ROWS[n].text or ROWS[n].toc_of or ROWS[n].task != "unicode" for n in select_rows("table2"))
    assert select_rows("fccid_toc,table1,fccid") == ["fccid_toc", *[n for n in TABLE1 if n != "fccid_toc"]]
    # a TOC row alone still pretrains its base row's model, once; with its base row it shares that run
    assert pretraining_jobs(["fccid_toc"]) == {"fccid": ["fccid_toc"]}
    assert pretraining_jobs(select_rows("full,fccid_toc,unicode_avt_toc,fccid")) == {
        "full": ["full"], "fccid": ["fccid_toc", "fccid"], "unicode_avt": ["unicode_avt_toc"]}
    with pytest.raises(ValueError, match="unknown row 'fcid'"):
        select_rows("full,fcid")


def _row(name, cross, in_modality=None):
    cells = [f"{t}/{d}" for t in ("classification", "localisation") for d in ("V→A", "A→V")]
    own = in_modality or cross
    return {"row": name, "results": {c: {"cross": x, "in_modality": y} for c, x, y in zip(cells, cross, own)}}


def _table1_row(name, cross, in_modality=None):
    return {**_row(name, cross, in_modality), "seeds": [0], "spread": dict.fromkeys(CELLS, 0.0), "same_code": 0.5,
            "nuisance_r2": {"audio": 0.2, "video": 0.4}, "active_codes": 30.0, "pretrain_s": 12.0}


def test_table1_averages_toc_gains_and_method_differences_by_hand():
    rows = [_table1_row("unicode_avt", [0.9, 0.8, 0.6, 0.5]), _table1_row("fccid", [0.8, 0.8, 0.4, 0.4]),
            _table1_row("unicode_avt_toc", [0.9, 0.9, 0.6, 0.6]), _table1_row("fccid_toc", [0.8, 0.8, 0.4, 0.3])]
    table = format_table1(rows, FidelityConfig()).splitlines()
    line = {text.split()[0]: text for text in table}
    assert "70.00" in line["unicode_avt"] and "60.00" in line["fccid"]              # mean of the four cells
    assert "75.00(+5.00)" in line["unicode_avt_toc"] and "57.50(-2.50)" in line["fccid_toc"]
    assert "Uni-Code+TOC" in line["unicode_avt_toc"] and "50.0%" in line["fccid"] and "0.30" in line["fccid"]
    assert compare_methods(rows) == [
        "fccid − unicode_avt: AVE V→A -10.0, A→V +0.0, AVVP V→A -20.0, A→V -10.0; mean -10.0 cross-modal, "
        "-10.0 in-modality",
        "fccid_toc − unicode_avt_toc: AVE V→A -10.0, A→V -10.0, AVVP V→A -20.0, A→V -30.0; mean -17.5 cross-modal, "
        "-17.5 in-modality"]
    # a TOC row without its base row in the table has no gain to show
    alone = next(text for text in format_table1(rows[3:], FidelityConfig()).splitlines()
                 if text.startswith("fccid_toc"))
    assert "57.50" in alone and "57.50(" not in alone


def test_claims_on_hand_made_tables():
    rows = [_row("baseline", [0.1, 0.1, 0.1, 0.1]), _row("full", [0.5, 0.3, 0.4, 0.4], [0.6, 0.6, 0.45, 0.45]),
            _row("no_cpc", [0.1, 0.1, 0.1, 0.1]), _row("no_club", [0.45, 0.35, 0.4, 0.4]),
            _row("unicode_avt", [0.5, 0.5, 0.5, 0.5]), _row("fccid", [0.6, 0.5, 0.5, 0.5])]
    after = ("unseen-pair Avg after phase 2", "unseen-pair Avg after phase 3", "forgetting")
    continual = {"dcid": dict(zip(after, (70.0, 60.0, 5.0))), "comet": dict(zip(after, (75.0, 60.0, 1.0)))}
    gap, ratio, cpc, club, fccid, phase2, phase3 = claims(rows, continual)
    assert (gap.value, gap.met, gap.detail) == (20.0, False, "gaps +40.0, +20.0, +30.0, +30.0")   # A→V AVE: +20 only
    assert ratio.value == pytest.approx(0.5) and not ratio.met and ratio.detail == "ratios 0.83, 0.50, 0.89, 0.89"
    assert cpc.value == pytest.approx(30.0) and cpc.met
    assert club.value == pytest.approx(0.0) and club.met                  # a tie: "w/o CLUB <= full" holds
    assert fccid.value == pytest.approx(2.5) and fccid.met
    assert phase2.value == pytest.approx(5.0) and phase2.met
    assert phase3.value == 0.0 and not phase3.met                         # strictly better is the claim
    # without a row, its claim is not made
    assert [c.text for c in claims(rows[:2])] == ["full >= baseline + 25 (smallest cell gap)",
                                                 "full >= 0.8 x in-modality (smallest cell ratio)"]


def test_claims_on_the_mean_over_worlds_and_their_table():
    a = [Target("x", 30.0, 25.0, False), Target("y", -1.0, 0.0, True)]
    b = [Target("x", 10.0, 25.0, False), Target("y", 3.0, 0.0, True)]
    mean = mean_claims([a, b])
    assert [(c.value, c.met, c.detail) for c in mean] == [(20.0, False, "met in 1 of 2 worlds"),
                                                        (1.0, True, "met in 1 of 2 worlds")]
    table = format_claims({"w1": a, "w2": b, "mean": mean}).splitlines()
    assert table[2].split() == ["x", "+30.0", "✓", "+10.0", "✗", "+20.0", "✗"]
    assert table[3].split() == ["y", "-1.0", "✗", "+3.0", "✓", "+1.0", "✓"]


def test_world_grid_spans_nuisance_classes_stickiness_and_the_modality_mix():
    worlds = {name: world_config(name) for name in WORLDS}
    assert worlds["default"] == SyntheticFeatureConfig()
    assert {w.nuisance_scale for w in worlds.values()} >= {1.0, 4.0}
    assert {w.classes for w in worlds.values()} >= {5, 15}
    assert len({w.kind_stay for w in worlds.values()}) >= 3 and len({w.kind_start for w in worlds.values()}) >= 2
    # a world keeps the base it is applied to (the bench's text settings)
    base = SyntheticFeatureConfig(text=True, text_length=10)
    assert world_config("easy", base).text_length == 10 and world_config("easy", base).classes == 5
    with pytest.raises(ValueError, match="unknown world 'hard'"):
        world_config("hard")
