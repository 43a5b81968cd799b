"""Toy FCCID sizes and config shared by the FCCID tests (tests/unit/test_fccid.py, tests/dist/test_fccid_dist.py,
tests/system/test_fccid_job.py)."""

from trainer.configs.model import CLUBConfig, CoarseConfig, EncoderConfig, FCCIDConfig, QuantizerConfig

B, T, L = 4, 5, 7
DIMS = {"audio": 12, "video": 16, "text": 20}
SWITCHES = {"a_club": "fine_audio", "v_club": "fine_video", "av_club": "coarse_audiovisual", "te_club": "coarse_text"}


def small_cfg(**overrides) -> FCCIDConfig:
    """Paper structure (spatial video map, 2-layer 4-head fine transformers) at toy widths."""
    base = dict(
        feature_dims=dict(DIMS),
        spatial_patches={"video": 4},
        encoder=EncoderConfig(semantic_dim=16, specific_dim=8, ff_dim=32, dropout=0.0, se_reduction=4,
                              pool_hidden=8, specific_hidden=16, spatial_specific_channels=8, decoder_hidden=16),
        coarse=CoarseConfig(hidden_dim=16, specific_dim=6),
        quantizer=QuantizerConfig(num_codes=8, dim=16, reset_steps=2),
        club=CLUBConfig(hidden_dim=16, inner_steps=2),
    )
    base.update(overrides)
    return FCCIDConfig(**base)
