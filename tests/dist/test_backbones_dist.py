"""The frozen backbones give identical features on two ranks (gloo, fork workers), whatever each rank's global RNG."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from backbone_utils import CAPTIONS, random_audio, random_video, tiny_backbones
from dist_utils import init_gloo, run_ranks

from trainer.backbones import FrozenBackbones
from trainer.distributed import all_gather_cat

pytestmark = pytest.mark.usefixtures("no_network")   # connections refused (tests/support/backbone_utils.py)


def _rank_features(rank, world, port, vocab):
    init_gloo(rank, world, port)
    torch.manual_seed(rank)                         # different global RNG on each rank
    cfg = tiny_backbones(vocab)
    for modality, c in cfg.items():                 # a seed no other test uses: built here, not inherited
        setattr(cfg, modality, dataclasses.replace(c, seed=77))
    fb = FrozenBackbones(cfg)
    feats = fb.encode({"video": random_video(), "audio": random_audio(), "caption": CAPTIONS})
    flat = torch.cat([feats["video"].flatten(), feats["audio"].flatten(), feats["text"].flatten()])
    gathered = all_gather_cat(flat[None])
    assert torch.equal(gathered[0], gathered[1])


@pytest.mark.slow
def test_backbones_identical_on_two_ranks(vocab_file):
    run_ranks(_rank_features, 2, vocab_file, timeout=90)
