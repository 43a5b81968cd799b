"""The real job with ``task: fccid`` (trainer/main.py on synthetic clip shards): exact resume, a checkpoint that
gives segment codes, and ZeRO-2 on 2 ranks keeping the codebook and the CLUB estimators bit-identical."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from fccid_utils import SWITCHES
from job_utils import REPO, make_clip_shards, read_metrics, run_job

from trainer.checkpoint_format import CheckpointManager, read_meta
from trainer.configs.load import build_config
from trainer.models.fccid import FCCIDModel
from trainer.configs.model import FCCIDConfig

DEMO_FCCID = REPO / "launch" / "configs" / "demo_fccid.yaml"
JOB_OVERRIDES = ["model.quantizer.reset_steps=2"]   # codes unused for 2 steps are reset: the runs include resets


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_clip_shards(tmp_path_factory.mktemp("data"))


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


def _latest(run_dir: Path) -> Path:
    return CheckpointManager(run_dir / "checkpoints").latest()


@pytest.mark.slow
def test_main_job_trains_fccid_resumes_exactly_and_its_checkpoint_gives_segment_codes(tmp_path, shards):
    reference, split = tmp_path / "reference", tmp_path / "split"
    run_job(reference, shards, config=DEMO_FCCID, overrides=["run.max_steps=4", *JOB_OVERRIDES])
    run_job(split, shards, config=DEMO_FCCID, overrides=["run.max_steps=2", *JOB_OVERRIDES])
    run_job(split, shards, config=DEMO_FCCID, overrides=["run.max_steps=4", *JOB_OVERRIDES])   # resumes at 2
    rows = read_metrics(reference)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "recon_text", "nce_audio_text", "nce_video_text", "cpc_audio2video", "mi_fine",
                "mi_coarse", "cmcm_audio_text", "club_log_likelihood", "codebook/codes_used_text"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert sum(r["codebook/resets"] for r in rows) > 0
    assert _losses(split) == _losses(reference)                              # every step, bit for bit
    final = {name: torch.load(_latest(run) / "model.pt", map_location="cpu", weights_only=True)
             for name, run in (("reference", reference), ("split", split))}
    assert final["reference"].keys() == final["split"].keys()
    assert all(torch.equal(v, final["split"][k]) for k, v in final["reference"].items())

    ckpt = _latest(reference)
    meta = read_meta(ckpt)
    assert meta.step == 4 and meta.task == "fccid"
    cfg = build_config(FCCIDConfig, meta.model_config, "model_config")
    assert dataclasses.asdict(cfg.coarse) == {"hidden_dim": 64, "specific_dim": 32, "temperature": 0.1}   # demo's
    model = FCCIDModel(cfg)
    model.load_state_dict(final["reference"])
    model.eval()
    assert bool(model.quantizer.initialized) and int(model.quantizer.step) == 4
    dims = cfg.feature_dims
    with torch.no_grad():
        video = torch.randn(2, 4, cfg.spatial_patches["video"], dims["video"])
        codes, vectors = model.segment_codes({"video": video}, "video")
        text_codes, _ = model.segment_codes({"text": torch.randn(2, 6, dims["text"])}, "text")
    assert codes.shape == (2, 4) and vectors.shape == (2, 4, cfg.encoder.semantic_dim) and text_codes.shape == (2, 6)
    rank_state = torch.load(ckpt / "rank_00000.pt", map_location="cpu", weights_only=True)
    assert {key.split(".")[0] for key in rank_state["task"]["club"]} == set(SWITCHES.values())


@pytest.mark.slow
def test_zero2_two_ranks_keep_fccid_codebook_and_club_bit_identical(tmp_path, shards):
    run_dir = tmp_path / "zero2"
    run_job(run_dir, shards, processes=2, zero=2, config=DEMO_FCCID, overrides=["run.max_steps=3", *JOB_OVERRIDES])
    states = [torch.load(p, map_location="cpu", weights_only=True) for p in sorted(_latest(run_dir).glob("rank_*.pt"))]
    assert len(states) == 2
    replicas = [s["replicas"] for s in states]
    assert {k.split(".")[0] for k in replicas[0]} == {"quantizer", "club"}
    assert {k.split(".")[1] for k in replicas[0] if k.startswith("club.")} == set(SWITCHES.values())
    assert replicas[0].keys() == replicas[1].keys()
    different = [k for k in replicas[0] if not torch.equal(replicas[0][k], replicas[1][k])]
    assert not different, f"replicated state differs between ranks: {different[:10]}"
