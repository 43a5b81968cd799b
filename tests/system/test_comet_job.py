"""COMET through whole programs: two continual phases of the real main job (trainer/main.py on synthetic clip
shards, then trainer.programs.evaluate on the second), and the continual bench's two-phase run."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from job_utils import REPO, make_clip_shards, read_metrics, run_job  # noqa: E402

from trainer.eval.frozen_codes import load_pretrained  # noqa: E402
from trainer.programs.evaluate import main as evaluate_main  # noqa: E402
from trainer.checkpoint import read_model_state, read_task_extra  # noqa: E402
from trainer.configs.eval import ProbeConfig


# ---------------------------------------------------------------- the main job, two phases

def _phase_config(tmp_path, modalities, new_codes: int, num_codes: int):
    vocab = REPO / "launch" / "configs" / "backbones" / "tiny-wordpiece-vocab.txt"
    backbones = yaml.safe_load((REPO / "launch" / "configs" / "backbones" / "tiny.yaml").read_text())
    backbones["text"].update(tokenizer=str(vocab), max_text_length=4)   # one token per 1-s segment of 4-s clips
    (tmp_path / "backbones.yaml").write_text(yaml.safe_dump(backbones))
    config = {"backbones": str(tmp_path / "backbones.yaml"), "task": "comet",
              "run": {"max_steps": 3, "ckpt_every": 100},
              "data": {"decode": {"seconds": 4, "frames_per_segment": 2, "frame_size": 32}},
              "model": {"modalities": list(modalities),
                        "encoder": {"semantic_dim": 16, "specific_dim": 8, "ff_dim": 32, "heads": 2, "pool_hidden": 8,
                                    "specific_hidden": 16, "spatial_specific_channels": 8, "decoder_hidden": 16},
                        "quantizer": {"num_codes": num_codes, "dim": 16, "reset_steps": 2},
                        "club": {"hidden_dim": 16, "inner_steps": 1}, "adapter": {"experts": 2},
                        "replay": {"new_codes": new_codes}, "ewc": {"fisher_batches": 2}},
              "tracking": {"experiment": "comet-test"}}
    path = tmp_path / f"{'_'.join(modalities)}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_two_phases_through_the_main_job(tmp_path):
    urls = make_clip_shards(tmp_path / "data", num_clips=8, seconds=4, clips_per_shard=4)
    first = run_job(tmp_path / "vt", urls, processes=1, config=_phase_config(tmp_path, ("video", "text"), 0, 8))
    vt_final = tmp_path / "vt" / "checkpoints" / "step_00000003"
    assert read_task_extra(vt_final), first.stdout[-2000:]
    second = run_job(tmp_path / "at", urls, processes=2, zero=2,
                     config=_phase_config(tmp_path, ("audio", "text"), 4, 8),
                     overrides=[f"run.init_from={tmp_path / 'vt' / 'checkpoints'}"])
    at_final = tmp_path / "at" / "checkpoints" / "step_00000003"
    meta = json.loads((at_final / "meta.json").read_text())
    assert meta["model_config"]["carried"] == ["video"] and meta["model_config"]["quantizer"]["num_codes"] == 12
    state, before = read_model_state(at_final), read_model_state(vt_final)
    assert state["quantizer.codebook"].shape == (12, 16) and int(state["inherited_codes"]) == 8
    video_keys = [k for k in before if k.startswith("semantic.encoders.video.")]
    assert video_keys and all(torch.equal(state[k], before[k]) for k in video_keys)   # carried, frozen
    extra = read_task_extra(at_final)
    # video is encoded by phase 1's adapter snapshot, so EWC anchors the live layers of the modalities trained since
    assert {"common.weight", "specific.audio", "specific.text"} <= set(extra["ewc_fisher"])
    assert "specific.video" not in extra["ewc_fisher"]
    assert all(torch.equal(state[f"semantic.carried.video.{k}"], before[f"semantic.adapter.{k}"])
               for k in ("common.weight", "common.bias", "router.weight", "specific.video"))
    logged = read_metrics(tmp_path / "at")
    assert {"pm", "ewc", "gate", "pm_old_share"} <= set(logged[-1]), second.stdout[-2000:]
    assert logged[0]["ewc"] == pytest.approx(0.0, abs=1e-9)        # the first step starts at the phase-1 snapshot
    pretrained = load_pretrained(tmp_path / "at")                   # what trainer.programs.evaluate loads
    assert pretrained.model.downstream_modalities == ("audio", "text", "video")
    assert set(meta["backbones"]) == {"audio", "text", "video"}     # the carried video's backbone is named too
    # the unseen pair: trainer.programs.evaluate probes video <-> audio with phase 1's (carried) video encoder
    assert evaluate_main([str(tmp_path / "at"), "--epochs", "1", "--split", "0.5,0.25,0.25", "--no-tracking"]) == 0
    report = json.loads((tmp_path / "at" / "evaluation" / "step_00000003" / "report.json").read_text())
    assert {(p["task"], p["direction"]) for p in report["probes"]} == \
        {(t, d) for t in ("classification", "localisation") for d in ("A→V", "V→A")}
    assert set(report["retrieval"]) == {"video", "text"}


# ---------------------------------------------------------------- the continual bench

@pytest.mark.slow
def test_continual_bench_runs_two_phases_and_prints_both_tables():
    from trainer.programs.bench.continual_features import format_tables, run_method
    from trainer.programs.bench.config import METHODS, ContinualConfig
    from trainer.programs.bench.config import PretrainConfig

    cfg = ContinualConfig(order=("vt", "at"), phase_clips=96, downstream_clips=80, new_codes=8,
                          train=PretrainConfig(steps=2, batch_size=32), probe=ProbeConfig(epochs=1))
    row = run_method(METHODS["comet"], cfg)
    first, second = row["phases"]
    assert (first["codes"], second["codes"]) == (64, 72) and not first["unseen"]
    assert {"classification/V→A", "localisation/A→V", "cross_dataset/V→A"} <= set(second["unseen"])
    assert set(second["seen"]) == {"video", "audio"} and "codebook/active_codes" in second["last"]
    table = format_tables([row], cfg)
    assert "after phase 2 (AT)" in table and "comet" in table
