"""Checkpoints of every task written by the real main job on tiny clip shards, for the codes-out tests
(tests/unit/test_pretrained.py, tests/dist/test_encode_dist.py).

    clips = clip_corpus(root)      # 8 labelled, captioned 10-s clips (KEY.mp4 + KEY.json + KEY.txt) and their shards
    run = train_run(root / "unicode", clips, "unicode")   # trainer.loop.train in this process, 2 steps, tiny model
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from job_utils import REPO, make_clip_shards

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

TINY_YAML = REPO / "launch" / "configs" / "backbones" / "tiny.yaml"
SECONDS = 10     # the tiny text backbone gives 10 tokens: Uni-Code and COMET pair them with 10 segments
ENCODER = {"semantic_dim": 16, "specific_dim": 8, "ff_dim": 32, "heads": 2, "dropout": 0.0, "se_reduction": 4,
           "pool_hidden": 8, "specific_hidden": 16, "spatial_specific_channels": 8, "decoder_hidden": 16}
COMMON = {"encoder": ENCODER, "quantizer": {"num_codes": 8, "dim": 16, "reset_steps": 50},
          "club": {"hidden_dim": 16, "inner_steps": 1}}
MODELS = {
    "unicode": {"modalities": ["audio", "video"], **COMMON},
    "fccid": {"coarse": {"hidden_dim": 16, "specific_dim": 8}, **COMMON},
    "comet": {"modalities": ["audio", "text"], "adapter": {"experts": 2}, **COMMON},
}
DECODE = {"seconds": SECONDS, "frames_per_segment": 1, "frame_size": 32}


@dataclass
class Corpus:
    clips: Path        # KEY.mp4 (+ KEY.json, KEY.txt)
    urls: str          # the same clips in shards (shards.write)
    keys: list[str]    # sorted

    def mp4s(self) -> list[Path]:
        return [self.clips / f"{k}.mp4" for k in self.keys]

    def captions(self) -> list[str]:
        return [(self.clips / f"{k}.txt").read_text().strip() for k in self.keys]


def clip_corpus(root: Path, num_clips: int = 8, clips_per_shard: int = 4) -> Corpus:
    urls = make_clip_shards(root, num_clips=num_clips, seconds=SECONDS, clips_per_shard=clips_per_shard)
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    keys = sorted(p.stem for p in (root / "clips").glob("*.mp4"))
    assert manifest["total"] == len(keys) == num_clips
    return Corpus(root / "clips", urls, keys)


def train_run(run_dir: Path, corpus: Corpus, task: str, steps: int = 2) -> Path:
    """``task`` trained for ``steps`` by the main job's loop on the corpus's clip shards through the tiny backbones
    (one process, plain torch, no tracking); returns the run directory."""
    from trainer.configs.load import build_config
    from trainer.job import validate_job
    from trainer.configs.job import JobConfig
    from trainer.loop import train
    from trainer.runtime import create_accelerator, prepare_process_environment

    cfg = build_config(JobConfig, {
        "run": {"dir": str(run_dir), "max_steps": steps, "ckpt_every": steps, "resume": "", "progress": False,
                "keep_freed_host_memory": False},   # pytest's own process keeps glibc's default malloc
        "data": {"urls": corpus.urls, "batch_size": 2, "num_workers": 0, "shuffle_buffer": 0, "decode": DECODE},
        "backbones": str(TINY_YAML), "task": task, "model": MODELS[task], "optim": {"lr": 1e-3},
        "tracking": {"enabled": False}}, source="tests/support/encode_utils.py")
    validate_job(cfg)
    prepare_process_environment(cfg)
    code = train(cfg, create_accelerator(cfg))
    assert code == 0, f"training {task} ended with exit code {code}"
    return run_dir
