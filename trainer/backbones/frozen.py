"""``FrozenBackbones``: the per-modality frozen encoders of a run, loaded once per process.

It is deliberately not an ``nn.Module``: a trainable model holding it as an attribute does not
register the backbones as children, so their weights never reach ``parameters()``, an optimizer,
the DeepSpeed engine (ZeRO would otherwise partition and save them) or a checkpoint. Checkpoints
keep ``state_dict()`` = ``describe()`` (name/revision/config and a weights fingerprint), and
``load_state_dict`` refuses to resume with different backbones.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import torch

from trainer.backbones.audio import AudioBackbone
from trainer.backbones.base import FrozenEncoder
from trainer.configs.backbones import BackboneConfig, BackbonesConfig
from trainer.backbones.text import TextBackbone
from trainer.backbones.video import ImageBackbone, VideoBackbone

_ENCODER_CLASSES: dict[str, type[FrozenEncoder]] = {
    "video": VideoBackbone, "audio": AudioBackbone, "image": ImageBackbone, "text": TextBackbone,
}
# one instance per (config, device) per process: large models are loaded once, not per batch
_LOADED: dict[tuple[str, str], FrozenEncoder] = {}


def load_backbone(cfg: BackboneConfig, device: torch.device | str = "cpu",
                  modality: str | None = None) -> FrozenEncoder:
    """The encoder of ``modality`` (default: the family's, ``cfg.modality``; "image" for a video family applied to
    images), loaded once per process."""
    modality = modality or cfg.modality
    key = (modality, json.dumps(dataclasses.asdict(cfg), sort_keys=True), str(torch.device(device)))
    if key not in _LOADED:
        _LOADED[key] = _ENCODER_CLASSES[modality](cfg, device)
    return _LOADED[key]


class FrozenBackbones:
    """Decoded batch -> features: ``video (b t d)|(b t p d)``, ``audio (b t d)``, ``image (b 1 d)|(b 1 p d)``,
    ``text (b l d)`` and ``text_mask (b l)``, all fp32 on the backbones' device."""

    def __init__(self, cfg: BackbonesConfig, device: torch.device | str = "cpu"):
        cfg.validate()
        self.config = cfg
        self.device = torch.device(device)
        self.encoders: dict[str, FrozenEncoder] = {m: load_backbone(c, self.device, m) for m, c in cfg.items()}

    def on(self, device: torch.device | str) -> FrozenBackbones:
        """These backbones on ``device`` (``self`` if they are there): the same weights in the same dtype, each
        encoder's resolved dtype pinned in its config (``auto`` would resolve anew on the device: bf16 on CUDA, fp32
        on the CPU, and the fingerprint covers the dtype), loaded once per process there as every encoder is (the
        shared instances here are left where they are), and refused unless their fingerprints match these."""
        device = torch.device(device)
        if device == self.device:
            return self
        pinned = dataclasses.replace(self.config, **{
            m: dataclasses.replace(e.cfg, dtype=str(e.dtype).removeprefix("torch.")) for m, e in self.encoders.items()})
        moved = FrozenBackbones(pinned, device)
        moved.load_state_dict(self.state_dict())
        return moved

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        for encoder in self.encoders.values():
            yield from encoder.parameters()

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-segment (video, audio, image) or per-token (text) feature shape of each modality."""
        shapes: dict[str, tuple[int, ...]] = {}
        for modality, encoder in self.encoders.items():
            shapes[modality] = encoder.feature_shape if modality in ("video", "image") else (encoder.hidden_size,)
        return shapes

    def encode(self, batch: Mapping[str, Any], modalities: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """Decoded batch (keys video, audio, image, caption) -> features of every configured modality (or of
        ``modalities`` among them)."""
        out: dict[str, torch.Tensor] = {}
        for modality, encoder in self.encoders.items():
            if modalities is not None and modality not in modalities:
                continue
            source = "caption" if modality == "text" else modality
            if source not in batch:
                raise KeyError(f"batch has no {source!r} for the {modality} backbone (keys: {sorted(batch)})")
            if modality == "text":
                out["text"], out["text_mask"] = encoder(batch[source])
            else:
                out[modality] = encoder(batch[source])
        return out

    def describe(self) -> dict[str, Any]:
        return {modality: encoder.describe() for modality, encoder in self.encoders.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"backbones": self.describe()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check that a checkpoint was trained on these very backbones (nothing is loaded)."""
        saved, current = state["backbones"], self.describe()
        if set(saved) != set(current):
            raise ValueError(f"checkpoint backbones cover {sorted(saved)}, this run has {sorted(current)}")
        for modality in current:
            for key in ("family", "model_class", "weights_sha256"):
                if saved[modality][key] != current[modality][key]:
                    raise ValueError(f"checkpoint {modality} backbone differs in {key}: "
                                     f"{saved[modality][key]!r} != {current[modality][key]!r}")
