"""The synthetic feature generator, the fidelity bench's rows and target checks, and the end-to-end variant
on shards.synth clips (decode + tiny backbones): full Uni-Code beats the baseline there too."""

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from trainer.bench.fidelity import (  # noqa: E402
    ROWS, PretrainConfig, bench_model_config, check_targets, nuisance_r2, pretrain, probe_all,
)
from trainer.bench.synthetic_features import BACKGROUND, SyntheticFeatureConfig, SyntheticWorld  # noqa: E402
from trainer.eval.encode import encode_split, split_indices  # noqa: E402
from trainer.eval.probes import ProbeConfig  # noqa: E402
from trainer.models.club import CLUBConfig  # noqa: E402
from trainer.models.encoders import EncoderConfig  # noqa: E402
from trainer.models.quantizer import QuantizerConfig  # noqa: E402
from trainer.models.unicode import UniCodeConfig  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def _row(name, cross, in_modality=None):
    cells = [f"{t}/{d}" for t in ("classification", "localisation") for d in ("V→A", "A→V")]
    own = in_modality or cross
    return {"row": name, "results": {c: {"cross": x, "in_modality": y} for c, x, y in zip(cells, cross, own)}}


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
