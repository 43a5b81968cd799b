"""shards.extract over two ranks (fork workers over gloo; RANK / WORLD_SIZE from the environment) writes the same
feature shards as one rank."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from dist_utils import run_ranks
from feature_utils import CLIP_URLS, DECODE, FEATURE_URLS, TINY_YAML
from numerics import assert_reordered_close

from shards.extract import extract
from trainer.data.stream import ClipStream
from trainer.configs.data import DataConfig


def _extract_rank(rank, world, port, clip_dir, out_dir):
    # RANK / WORLD_SIZE come from the environment, as torchrun / accelerate launch set them
    extract(str(Path(clip_dir) / CLIP_URLS), TINY_YAML, str(Path(out_dir) / "f-%06d.tar"), batch_size=2,
            num_workers=0, decode=DECODE, progress=False, merge_timeout_s=60)


@pytest.mark.slow
def test_extract_over_two_ranks_matches_one_rank(clip_shards, feature_shards, tmp_path):
    run_ranks(_extract_rank, 2, str(clip_shards), str(tmp_path), timeout=120)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [(s["name"], s["samples"]) for s in manifest["shards"]] == [
        ("f-000000.tar", 2), ("f-000001.tar", 2), ("f-000002.tar", 1)]
    parts = {r: json.loads((tmp_path / f"manifest.rank-{r}-of-2.json").read_text()) for r in range(2)}
    assert [s["name"] for s in parts[0]["shards"]] == ["f-000000.tar", "f-000002.tar"]
    assert [s["name"] for s in parts[1]["shards"]] == ["f-000001.tar"]
    cfg = DataConfig(urls=str(feature_shards / FEATURE_URLS), kind="features", batch_size=1, num_workers=0,
                     shuffle_buffer=0, shuffle_shards=False)
    one = ClipStream(cfg, rank=0, world_size=1)
    two = ClipStream(dataclasses.replace(cfg, urls=str(tmp_path / FEATURE_URLS)), rank=0, world_size=1)
    for a, b in zip(one, two, strict=True):
        assert a["key"] == b["key"]
        for m in ("video", "audio", "text"):
            assert_reordered_close(a[m], b[m], what=f"{a['key']} {m}")
