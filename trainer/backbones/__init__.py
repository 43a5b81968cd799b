"""Frozen pretrained encoders that turn decoded clips into per-second features, on the fly.

    cfg = load_backbones_config("launch/configs/backbones/tiny.yaml")
    backbones = FrozenBackbones(cfg, device)          # loaded once per process, eval, no grads
    feats = backbones.encode(batch)                   # video (b t d)|(b t p d), audio (b t d), text (b l d) + text_mask
"""

from trainer.backbones.audio import AudioBackbone
from trainer.configs.backbones import (
    BackboneConfig,
    BackbonesConfig,
    backbones_config_from_dict,
    config_to_dict,
    load_backbones_config,
)
from trainer.backbones.frozen import FrozenBackbones, load_backbone
from trainer.backbones.prompts import LabelPrompts, PromptConfig
from trainer.backbones.text import TextBackbone, masked_mean
from trainer.backbones.video import VideoBackbone

__all__ = [
    "AudioBackbone", "BackboneConfig", "BackbonesConfig", "FrozenBackbones", "LabelPrompts", "PromptConfig",
    "TextBackbone", "VideoBackbone", "backbones_config_from_dict", "config_to_dict", "load_backbone",
    "load_backbones_config", "masked_mean",
]
