"""The synthetic feature generator, the fidelity bench's rows and target checks, and the end-to-end variant
on shards.synth clips (decode + tiny backbones): full Uni-Code beats the baseline there too."""

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from trainer.bench.fidelity import (  # noqa: E402
    CELLS, ROWS, TABLE1, FidelityConfig, PretrainConfig, bench_model_config, check_targets, compare_methods,
    format_table1, nuisance_r2, pretrain, pretraining_jobs, probe_all, row_model_config, run_rows, select_rows,
    task_class,
)
from trainer.bench.synthetic_features import BACKGROUND, SyntheticFeatureConfig, SyntheticWorld  # noqa: E402
from trainer.eval.encode import encode_split, split_indices  # noqa: E402
from trainer.eval.probes import ProbeConfig  # noqa: E402
from trainer.models.club import CLUBConfig  # noqa: E402
from trainer.models.encoders import EncoderConfig  # noqa: E402
from trainer.models.fccid import FCCIDConfig  # noqa: E402
from trainer.models.quantizer import QuantizerConfig  # noqa: E402
from trainer.models.unicode import UniCodeConfig  # noqa: E402
from trainer.tasks import FCCIDTask, UniCodeTask  # noqa: E402


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
    assert isinstance(fccid, FCCIDConfig) and task_class(fccid) is FCCIDTask
    assert fccid.feature_dims == {"audio": 64, "video": 64, "text": 32} and fccid.spatial_patches == {}
    assert (fccid.encoder.semantic_dim, fccid.encoder.specific_dim) == (64, 32)
    assert dataclasses.asdict(fccid.coarse) == {"hidden_dim": 64, "specific_dim": 32, "temperature": 1.0}
    assert (fccid.quantizer.num_codes, fccid.quantizer.dim) == (64, 64)
    assert fccid.club_estimators == ("fine_audio", "fine_video", "coarse_audiovisual", "coarse_text")
    assert fccid.club.lr == cfg.pretrain.lr == 1e-3                     # estimators learn at the encoders' rate
    assert row_model_config(ROWS["fccid_fine_club"], cfg).club_estimators == ("fine_audio", "fine_video")
    tau = row_model_config(ROWS["fccid_tau0.1"], cfg)
    assert tau.coarse.temperature == 0.1 and dataclasses.replace(tau, coarse=fccid.coarse) == fccid
    avt = row_model_config(ROWS["unicode_avt"], cfg)
    assert isinstance(avt, UniCodeConfig) and task_class(avt) is UniCodeTask
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


def test_fccid_row_and_its_toc_row_share_one_pretraining():
    """run_rows end to end at toy sizes: one FCCID pretraining, probed on all code dims and on TOC's Q."""
    cfg = FidelityConfig(pretrain_clips=96, downstream_clips=80, pretrain=PretrainConfig(steps=3, batch_size=32),
                         probe=ProbeConfig(epochs=1))
    plain, toc = run_rows(["fccid", "fccid_toc"], cfg)
    assert (plain["row"], toc["row"]) == ("fccid", "fccid_toc")
    assert plain["toc_dims"] is None and len(toc["toc_dims"]) == 32 and len(set(toc["toc_dims"])) == 32
    for key in ("same_code", "nuisance_r2", "codebook", "pretrain_s"):
        assert plain[key] == toc[key], key                          # one model: TOC changes only what heads read
    assert set(plain["results"]) == {f"{t}/{d}" for t in ("classification", "localisation") for d in ("V→A", "A→V")}
    assert "codebook/codes_used_text" in plain["codebook"]          # the quantizer saw audio, video and text
    with pytest.raises(ValueError, match="do not read one pretraining"):
        run_rows(["fccid", "unicode_avt_toc"], cfg)


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


def test_target_checks_on_hand_made_tables():
    rows = [_row("baseline", [0.1, 0.1, 0.1, 0.1]), _row("full", [0.5, 0.3, 0.4, 0.4], [0.6, 0.6, 0.45, 0.45]),
            _row("no_cpc", [0.1, 0.1, 0.1, 0.1]), _row("no_club", [0.45, 0.35, 0.4, 0.4])]
    (_, gap_met, gaps), (_, ratio_met, ratios), (_, order_met, costs) = check_targets(rows)
    assert not gap_met and gaps == "gaps +40.0, +20.0, +30.0, +30.0"          # A→V AVE gains only 20 points
    assert not ratio_met and ratios == "ratios 0.83, 0.50, 0.89, 0.89"
    assert order_met and costs == "mean cost: w/o Cross-CPC +30.0, w/o CLUB +0.0 points"
    rows[1] = _row("full", [0.5, 0.5, 0.4, 0.4], [0.6, 0.6, 0.45, 0.45])
    rows[3] = _row("no_cpc_wins", [0.5, 0.5, 0.4, 0.4])
    assert [met for _, met, _ in check_targets(rows)] == [True, True]    # no CLUB row: the third check is skipped


# ---------------------------------------------------------------- end to end on decoded clips
@pytest.mark.slow
def test_full_beats_baseline_end_to_end_on_synth_clips(tmp_path):
    """shards.synth clips -> clip shards -> decode -> tiny random backbones -> pretrain -> frozen codes -> probes.

    The pretraining corpus is the same 96 clips (pretraining never reads labels); the probes split them.
    """
    from job_utils import make_clip_shards

    from trainer.backbones import FrozenBackbones, load_backbones_config
    from trainer.data import DataConfig, DecodeConfig
    from trainer.eval.encode import read_shard_features

    seconds, classes = 4, 4
    urls = make_clip_shards(tmp_path, num_clips=96, seconds=seconds, clips_per_shard=16, classes=classes)
    data_cfg = DataConfig(urls=urls, batch_size=16, num_workers=1,
                          decode=DecodeConfig(seconds=seconds, frames_per_segment=2, frame_size=32))
    backbones = FrozenBackbones(load_backbones_config("launch/configs/backbones/tiny.yaml"))
    data = read_shard_features(data_cfg, ("audio", "video"), backbones)
    shapes = backbones.feature_shapes()                             # video (16 patches, 32), audio (32,)
    base = UniCodeConfig(
        modalities=("audio", "video"), feature_dims={"audio": shapes["audio"][-1], "video": shapes["video"][-1]},
        spatial_patches={"video": shapes["video"][0]},
        encoder=EncoderConfig(semantic_dim=32, specific_dim=16, ff_dim=64, pool_hidden=16, specific_hidden=32,
                              spatial_specific_channels=16, decoder_hidden=32),
        quantizer=QuantizerConfig(num_codes=32, dim=32, reset_steps=20), club=CLUBConfig(hidden_dim=32))
    parts = split_indices(len(data), (0.5, 0.25, 0.25), 0)
    scores = {}
    for variant in ("baseline", "full"):
        model, _ = pretrain(dataclasses.replace(base, variant=variant),
                            {m: data.features[m] for m in ("audio", "video")},
                            PretrainConfig(steps=800, batch_size=32))
        splits = {name: encode_split(model, data.subset(index)) for name, index in parts.items()}
        results = probe_all(splits, classes, ProbeConfig(epochs=20, batch_size=16))
        scores[variant] = {cell: r["cross"] for cell, r in results.items()}
    mean = {v: sum(s.values()) / len(s) for v, s in scores.items()}
    # measured: full 0.67 vs baseline 0.26 (mean of the four cross-modal cells; chance is 0.25 for AVE)
    assert mean["full"] >= mean["baseline"] + 0.25, scores
    assert all(scores["full"][cell] > scores["baseline"][cell] for cell in scores["full"]), scores
