"""Image encoder applied per frame; frames of a 1-s segment are mean-pooled after the encoder.

The seeds averaged VGG19 pool5 maps over 16 frames per second (seed 000 §B.1; the AVE paper's extraction,
which the CMG authors' README points to). ``vgg19`` is that network (trainer/backbones/vgg.py): its
7x7x512 pool5 map per frame becomes ``(49 512)``, cells row-major like the released ``(7 7 512)`` maps,
or its global average ``(512)`` with pooling mean. A CLIP vision tower or ViT can play the same role,
optionally keeping its patch grid ``(b t p d)`` for the CMG video semantic encoder (SE gating + spatial
attention over positions). Preprocessing follows the model's image-processor settings (resize, centre
crop, rescale, mean/std) as batched tensor ops on the model's device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

from trainer.backbones.base import FrozenEncoder, load_processor_settings
from trainer.configs.backbones import BackboneConfig

# PIL resample ids as stored in preprocessor_config.json -> interpolate modes
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def family_image_defaults(family: str, image_size: int) -> dict[str, Any]:
    """What the family's image processor does when the model ships no preprocessor_config.json."""
    if family == "clip_vision":
        return {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size},
                "do_center_crop": True, "resample": 3, "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD}
    # vgg19: torchvision's ImageNet statistics (what vgg19-dcbb9e9d.pth was trained with); the whole frame is
    # resized to image_size x image_size (no crop: decoded frames are already squashed to a square)
    imagenet = family == "vgg19"
    return {"size": {"height": image_size, "width": image_size}, "do_center_crop": False, "resample": 2,
            "image_mean": IMAGENET_DEFAULT_MEAN if imagenet else IMAGENET_STANDARD_MEAN,
            "image_std": IMAGENET_DEFAULT_STD if imagenet else IMAGENET_STANDARD_STD}


def _as_hw(size: Any) -> dict[str, int]:
    # old processor configs store a bare int for a square size
    return {"height": size, "width": size} if isinstance(size, int) else dict(size)


class ImagePreprocessor:
    """uint8 frames ``(n h w 3)`` -> normalised ``pixel_values (n 3 s s)`` on the model's device."""

    def __init__(self, settings: dict[str, Any], image_size: int, device: torch.device):
        self.size = _as_hw(settings["size"])
        self.crop = _as_hw(settings["crop_size"]) if settings.get("do_center_crop") else None
        resample = settings.get("resample", 2)
        if resample not in _RESAMPLE:
            raise ValueError(f"image processor resample={resample} is not supported; use one of {_RESAMPLE}")
        self.mode = _RESAMPLE[resample]
        self.rescale = float(settings.get("rescale_factor", 1 / 255))
        self.mean = torch.tensor(settings["image_mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(settings["image_std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.image_size = image_size
        self.device = device

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        if "shortest_edge" in self.size and self.size["shortest_edge"]:
            short = self.size["shortest_edge"]
            # the processor's rule: the short side becomes `short`, the long side int(short * long / short_side)
            if h <= w:
                return short, int(short * w / h)
            return int(short * h / w), short
        return self.size["height"], self.size["width"]

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(self.device).permute(0, 3, 1, 2).float() * self.rescale
        out_h, out_w = self.output_hw(x.shape[2], x.shape[3])
        if (out_h, out_w) != tuple(x.shape[2:]):
            antialias = self.mode != "nearest"
            x = F.interpolate(x, size=(out_h, out_w), mode=self.mode, antialias=antialias,
                              **({} if self.mode == "nearest" else {"align_corners": False}))
            # the processors resize uint8 images, which clips bicubic overshoot to the valid range
            x = x.clamp(0.0, 255.0 * self.rescale)
        if self.crop is not None:
            ch, cw = self.crop["height"], self.crop["width"]
            top, left = (x.shape[2] - ch) // 2, (x.shape[3] - cw) // 2
            x = x[:, :, top:top + ch, left:left + cw]
        if x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"image processor settings give {tuple(x.shape[2:])} images but the model expects "
                             f"{self.image_size}x{self.image_size}; fix `processor` in the backbone config")
        return (x - self.mean) / self.std


class VideoBackbone(FrozenEncoder):
    """``video (b t f h w 3) uint8`` -> ``(b t d)`` (pooling cls|mean) or ``(b t p d)`` (pooling patch)."""

    def __init__(self, cfg: BackboneConfig, device: torch.device | str = "cpu"):
        super().__init__(cfg, device)
        mc = self.model.config
        settings = family_image_defaults(cfg.family, mc.image_size) | load_processor_settings(cfg)
        self.preprocess = ImagePreprocessor(settings, mc.image_size, self.device)
        self.grid = mc.image_size // mc.patch_size     # vgg19: patch_size is the conv stack's stride (32)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Per-segment feature shape: ``(d,)`` or ``(p, d)`` with p = grid² patches (row-major)."""
        if self.cfg.resolved_pooling == "patch":
            return (self.grid * self.grid, self.hidden_size)
        return (self.hidden_size,)

    def select_frames(self, f: int) -> torch.Tensor:
        """Evenly spaced indices of the ``frames_per_segment`` frames encoded out of ``f`` decoded ones."""
        n = self.cfg.frames_per_segment or f
        if n > f:
            raise ValueError(f"video: the batch has {f} frames per segment but the backbone config asks for "
                             f"frames_per_segment={n}; decode more frames or lower it")
        return torch.linspace(0, f - 1, n).round().long()

    def _encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``(n h w 3) uint8`` -> ``(n d)`` or ``(n p d)``."""
        pixels = self.preprocess(frames).to(self.dtype)
        pooling = self.cfg.resolved_pooling
        if self.cfg.family == "vgg19":
            cells = self.model(pixel_values=pixels).flatten(2).transpose(1, 2)   # pool5 (n d h w) -> (n h·w d)
            return cells.mean(dim=1) if pooling == "mean" else cells
        out = self.model(pixel_values=pixels, output_hidden_states=self.wants_hidden_states)
        h = self.hidden(out)                   # (n 1+p d): CLS first, then the patches row-major
        if pooling == "cls":
            return h[:, 0]
        if pooling == "mean":
            return h[:, 1:].mean(dim=1)
        return h[:, 1:]

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dtype != torch.uint8 or video.dim() != 6 or video.shape[-1] != 3:
            raise ValueError(f"video: expected uint8 (b t f h w 3), got {video.dtype} {tuple(video.shape)}")
        b, t, f = video.shape[:3]
        picked = video[:, :, self.select_frames(f)]
        n = picked.shape[2]
        with torch.inference_mode():
            per_frame = self.chunked(self._encode_frames, picked.reshape(b * t * n, *picked.shape[3:]))
            # mean over the frames of each segment, after the encoder (seed 000 §B.1)
            per_segment = per_frame.float().reshape(b, t, n, *per_frame.shape[1:]).mean(dim=2)
        return self.finish(per_segment)


class ImageBackbone(VideoBackbone):
    """``image (b h w 3) uint8`` -> ``(b 1 d)`` or ``(b 1 p d)``: a video family's encoder applied to each image as a
    segment of one frame (its own modality and config key, ``backbones.image``, not a still clip of the video's)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8 or image.dim() != 4 or image.shape[-1] != 3:
            raise ValueError(f"image: expected uint8 (b h w 3), got {image.dtype} {tuple(image.shape)}")
        return super().forward(image[:, None, None])
