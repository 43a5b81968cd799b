"""Toy FCCID sizes, config and seeded batches shared by the FCCID tests (tests/unit/test_fccid.py,
tests/dist/test_codebook_dist.py, tests/dist/test_negatives_dist.py, tests/system/test_fccid_job.py)."""

import torch
from unicode_utils import small_encoder_config

from trainer.configs.model import CLUBConfig, CoarseConfig, FCCIDConfig, QuantizerConfig

B, T, L = 4, 5, 7
DIMS = {"audio": 12, "video": 16, "text": 20}
SWITCHES = {"a_club": "fine_audio", "v_club": "fine_video", "av_club": "coarse_audiovisual", "te_club": "coarse_text"}


def small_cfg(**overrides) -> FCCIDConfig:
    """Paper structure (spatial video map, 2-layer 4-head fine transformers) at toy widths."""
    base = dict(
        feature_dims=dict(DIMS),
        spatial_patches={"video": 4},
        encoder=small_encoder_config(),
        coarse=CoarseConfig(hidden_dim=16, specific_dim=6),
        quantizer=QuantizerConfig(num_codes=8, dim=16, reset_steps=2),
        club=CLUBConfig(hidden_dim=16, inner_steps=2),
    )
    base.update(overrides)
    return FCCIDConfig(**base)


def fccid_batch(clips: int, seed: int) -> dict[str, torch.Tensor]:
    """A global batch of ``clips`` clips drawn from ``seed``: 4 segments of audio and video features, captions of
    1 to ``L`` tokens (``text_mask``)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (clips,), generator=g)
    return {"audio": torch.randn(clips, 4, DIMS["audio"], generator=g),
            "video": torch.randn(clips, 4, 2, 2, DIMS["video"], generator=g),
            "text": torch.randn(clips, L, DIMS["text"], generator=g),
            "text_mask": torch.arange(L) < lengths.unsqueeze(1)}
