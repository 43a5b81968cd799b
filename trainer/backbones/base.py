"""Loading a transformers encoder from a ``BackboneConfig`` and freezing it for real.

Frozen means: ``eval()`` forever (``train()`` cannot switch dropout back on), ``requires_grad=False``
on every weight, forward passes under ``torch.inference_mode``, outputs returned as ordinary fp32
tensors (cloned out of inference mode) so a trainable model can consume them and backprop into
itself. The weights are never handed to an optimizer and never saved: ``describe()`` records what
to rebuild them from (name/revision/config plus a fingerprint of the weights).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any

import torch
import transformers
from torch import nn
from transformers.utils import cached_file

from trainer.backbones.config import BackboneConfig, resolve_model_path

# family -> (class used with from_pretrained, class built from a config dict, config class)
_MODEL_CLASSES: dict[str, tuple[str, str, str]] = {
    "clip_vision": ("CLIPVisionModel", "CLIPVisionModel", "CLIPVisionConfig"),
    "vit": ("ViTModel", "ViTModel", "ViTConfig"),
    "ast": ("ASTModel", "ASTModel", "ASTConfig"),
    "wav2vec2": ("Wav2Vec2Model", "Wav2Vec2Model", "Wav2Vec2Config"),
    "hubert": ("HubertModel", "HubertModel", "HubertConfig"),
    # whisper checkpoints hold encoder + decoder: load the pair, keep the encoder
    "whisper": ("WhisperModel", "WhisperEncoder", "WhisperConfig"),
    "bert": ("AutoModel", "BertModel", "BertConfig"),   # AutoModel: any BERT-like (MiniLM, RoBERTa, ...)
    "clip_text": ("CLIPTextModel", "CLIPTextModel", "CLIPTextConfig"),
}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _model_class(name: str) -> Any:
    import transformers.models.whisper.modeling_whisper as whisper

    return whisper.WhisperEncoder if name == "WhisperEncoder" else getattr(transformers, name)


def load_model(cfg: BackboneConfig, dtype: torch.dtype) -> nn.Module:
    """``from_pretrained`` (honours HF_HUB_OFFLINE, ``revision``) or a seeded random init from ``config``."""
    pretrained_cls, config_cls_model, config_cls = _MODEL_CLASSES[cfg.family]
    if cfg.name_or_path is not None:
        model = _model_class(pretrained_cls).from_pretrained(
            resolve_model_path(cfg.name_or_path), revision=cfg.revision, dtype=dtype)
        if cfg.family == "whisper":
            model = model.get_encoder()
    else:
        model_config = getattr(transformers, config_cls)(**cfg.config)
        # fork_rng: the same seed gives the same weights on every rank and run, whatever the global RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = _model_class(config_cls_model)(model_config)
        model = model.to(dtype)
    return model


def load_processor_settings(cfg: BackboneConfig) -> dict[str, Any]:
    """The model's ``preprocessor_config.json`` (if it has one) updated with ``cfg.processor``."""
    settings: dict[str, Any] = {}
    if cfg.name_or_path is not None:
        path = cached_file(resolve_model_path(cfg.name_or_path), "preprocessor_config.json",
                           revision=cfg.revision, _raise_exceptions_for_missing_entries=False)
        if path is not None:
            with open(path) as f:
                settings = json.load(f)
    settings.update(cfg.processor)
    return settings


class FrozenEncoder(nn.Module):
    """Shared machinery of the video/audio/text backbones: freezing, layer choice, chunked forwards."""

    def __init__(self, cfg: BackboneConfig, device: torch.device | str = "cpu"):
        super().__init__()
        cfg.validate(cfg.family)
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.model = load_model(cfg, self.dtype).to(self.device)
        self.model.eval()
        self.model.requires_grad_(False)
        self._fingerprint: str | None = None

    def train(self, mode: bool = True) -> FrozenEncoder:
        # a parent module calling .train() must not re-enable dropout in a frozen encoder
        return super().train(False)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def hidden(self, outputs: Any) -> torch.Tensor:
        """The configured layer: the final output (layer None) or ``hidden_states[layer]``, ``(n l d)``."""
        if self.cfg.layer is None:
            return outputs.last_hidden_state
        states = outputs.hidden_states
        if not -len(states) <= self.cfg.layer < len(states):
            raise ValueError(f"{self.cfg.family}: layer {self.cfg.layer} out of range; the model has "
                             f"{len(states)} hidden states (0 = embeddings)")
        return states[self.cfg.layer]

    @property
    def wants_hidden_states(self) -> bool:
        return self.cfg.layer is not None

    def chunked(self, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        """``fn`` over row chunks of ``max_batch`` (bounded activation memory), concatenated."""
        n = inputs[0].shape[0]
        step = self.cfg.max_batch
        return torch.cat([fn(*(x[i:i + step] for x in inputs)) for i in range(0, n, step)], dim=0)

    @staticmethod
    def finish(features: torch.Tensor) -> torch.Tensor:
        # outside inference mode: a clone is a normal tensor that autograd may save for backward
        return features.float().clone()

    def fingerprint(self) -> str:
        """sha256 over all weights (names, shapes and bytes); computed once."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
                h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.cfg.family,
            "backbone_config": dataclasses.asdict(self.cfg),
            "model_class": type(self.model).__name__,
            "model_config": self.model.config.to_diff_dict(),
            "transformers_version": transformers.__version__,
            "weights_sha256": self.fingerprint(),
        }
