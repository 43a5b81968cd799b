"""Synthetic clip shards and the feature shards ``shards.extract`` makes of them (tiny backbones), shared by the
feature-cache tests (tests/unit/test_features.py, tests/dist/test_features_dist.py).

The module-scoped fixtures ``clip_shards`` and ``feature_shards`` are registered for the whole suite
(``pytest_plugins`` in tests/conftest.py): a test names them, and each test module that does builds its own once.
``shards.extract`` (the backbones, transformers) is imported where features are extracted, not here: every pytest run
imports this module.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from shards.synth import SynthConfig, synthesise  # noqa: E402
from shards.write import write_shards  # noqa: E402
from trainer.configs.data import DecodeConfig

TINY_YAML = "launch/configs/backbones/tiny.yaml"
SECONDS = 2
DECODE = DecodeConfig(seconds=SECONDS, frames_per_segment=2, frame_size=32)


@pytest.fixture(scope="module")
def clip_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    synthesise(SynthConfig(num_clips=5, classes=3, seconds=SECONDS, size=32, seed=3), root / "src", progress=False)
    write_shards(root / "src", str(root / "shards" / "train-%06d.tar"), max_count=2, progress=False)
    return root / "shards"           # 3 shards: 2 + 2 + 1 clips


CLIP_URLS = "train-{000000..000002}.tar"
FEATURE_URLS = "f-{000000..000002}.tar"


@pytest.fixture(scope="module")
def feature_shards(clip_shards, tmp_path_factory) -> Path:
    from shards.extract import extract

    out = tmp_path_factory.mktemp("feats")
    extract(str(clip_shards / CLIP_URLS), TINY_YAML, str(out / "f-%06d.tar"), batch_size=2, num_workers=0,
            decode=DECODE, rank=0, world_size=1, progress=False)
    return out
