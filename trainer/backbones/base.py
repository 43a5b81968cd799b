"""Loading a transformers encoder from a ``BackboneConfig`` and freezing it for real.

Frozen means: ``eval()`` forever (``train()`` cannot switch dropout back on), ``requires_grad=False``
on every weight, forward passes under ``torch.inference_mode``, outputs returned as ordinary fp32
tensors (cloned out of inference mode) so a trainable model can consume them and backprop into
itself. The weights are never handed to an optimizer and never saved: ``describe()`` records what
to rebuild them from (name/revision/config plus a fingerprint of the weights).

VGG-19 and VGGish (``NATIVE_FAMILIES``) are this package's own modules (trainer/backbones/vgg.py); their
weights come from a local ``.pth`` state dict read with ``torch.load(weights_only=True)``: tensors, numeric
numpy arrays and plain containers only, so a file holding a pickled object is refused, never run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn
from transformers.utils import cached_file

from trainer.configs.backbones import NATIVE_FAMILIES, BackboneConfig, resolve_model_path
from trainer.backbones.vgg import VGG, VGGConfig, VGGish, VGGishConfig, VGGishPostprocess

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
# family -> (module, its config dataclass) for NATIVE_FAMILIES
_NATIVE_CLASSES: dict[str, tuple[type[nn.Module], type]] = {
    "vgg19": (VGG, VGGConfig),
    "vggish": (VGGish, VGGishConfig),
}
# numpy's array pickling, allowlisted for weights_only loads: torchvggish's PCA file holds numpy arrays
# (torchvggish issue #11). The rebuild function lives in numpy.core (numpy < 2) or numpy._core (>= 2) and a
# file names the one it was pickled with. Numeric dtypes only: an object array stays refused.
_reconstruct = np.zeros(0).__reduce__()[0]
_NUMPY_ARRAY_GLOBALS = [(_reconstruct, "numpy.core.multiarray._reconstruct"),
                        (_reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype,
                        *{type(np.dtype(code)) for code in np.typecodes["AllFloat"] + np.typecodes["AllInteger"] + "?"}]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _model_class(name: str) -> Any:
    if name != "WhisperEncoder":
        return getattr(transformers, name)
    # imported only when asked for: the module costs about 1.5 s of start-up in every process that loads a backbone
    import transformers.models.whisper.modeling_whisper as whisper

    return whisper.WhisperEncoder


def load_state_file(path: str, family: str) -> dict[str, torch.Tensor]:
    """A local ``.pth`` state dict, as tensors; ``torch.load(weights_only=True)`` refuses pickled objects."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{family}: weights file {path!r} not found ({family} reads a local .pth state dict, "
                                f"not a hub id; see launch/configs/backbones/paper.yaml for where to get it)")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # UnpicklingError for a pickled object, RuntimeError for a non-torch file
        raise ValueError(f"{family}: {path} is not a plain state dict of tensors: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{family}: {path} holds a {type(state).__name__}, not a state dict")
    return {key: torch.as_tensor(value) for key, value in state.items()}


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Every key of ``module`` from ``state`` (as fp32), no extra key, same shapes; errors name the file."""
    try:
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit {type(module).__name__}: {err}") from err


def load_native_model(cfg: BackboneConfig) -> nn.Module:
    """VGG-19 / VGGish: a seeded random init from ``config``, or the full architecture with the weights of the
    ``.pth`` at ``name_or_path``; VGGish's PCA post-processing is added when ``processor.pca_params`` is set."""
    model_cls, config_cls = _NATIVE_CLASSES[cfg.family]
    try:
        model_config = config_cls(**(cfg.config or {}))
    except TypeError as err:
        raise ValueError(f"{cfg.family}: bad config {cfg.config}: {err}") from err
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = model_cls(model_config)
    if cfg.name_or_path is not None:
        state = load_state_file(cfg.name_or_path, cfg.family)
        # keep the modules the model has: torchvision's file also holds the classifier head (classifier.*),
        # which pool5 features never reach; within the kept modules every key must match (strict)
        own = {key.split(".")[0] for key in model.state_dict()}
        load_strict(model, {k: v for k, v in state.items() if k.split(".")[0] in own}, cfg.name_or_path)
    if "pca_params" in cfg.processor:
        path = cfg.processor["pca_params"]
        pca = load_state_file(path, cfg.family)
        model.pproc = VGGishPostprocess(model.config.hidden_size)
        # torchvggish stores the means as a flat vector and reshapes them into a column when loading
        means = pca.get("pca_means")
        load_strict(model.pproc, pca | ({} if means is None else {"pca_means": means.reshape(-1, 1)}), path)
    return model


def load_model(cfg: BackboneConfig) -> nn.Module:
    """``from_pretrained`` (honours HF_HUB_OFFLINE, ``revision``) or a seeded random init from ``config``, in fp32."""
    if cfg.family in NATIVE_FAMILIES:
        return load_native_model(cfg).float()
    pretrained_cls, config_cls_model, config_cls = _MODEL_CLASSES[cfg.family]
    if cfg.name_or_path is not None:
        model = _model_class(pretrained_cls).from_pretrained(
            resolve_model_path(cfg.name_or_path), revision=cfg.revision, dtype=torch.float32)
        if cfg.family == "whisper":
            model = model.get_encoder()
    else:
        model_config = getattr(transformers, config_cls)(**cfg.config)
        # fork_rng: the same seed gives the same weights on every rank and run, whatever the global RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = _model_class(config_cls_model)(model_config)
        model = model.float()
    return model


def load_processor_settings(cfg: BackboneConfig) -> dict[str, Any]:
    """The model's ``preprocessor_config.json`` (if it has one) updated with ``cfg.processor``."""
    settings: dict[str, Any] = {}
    if cfg.name_or_path is not None and cfg.family not in NATIVE_FAMILIES:
        path = cached_file(resolve_model_path(cfg.name_or_path), "preprocessor_config.json",
                           revision=cfg.revision, _raise_exceptions_for_missing_entries=False)
        if path is not None:
            with open(path) as f:
                settings = json.load(f)
    settings.update(cfg.processor)
    return settings


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over all weights of ``model`` (names, shapes, dtypes and bytes). ``FrozenEncoder`` takes it at fp32, the
    precision a checkpoint's weights are read at: a half-precision file's values are exact in fp32."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FrozenEncoder(nn.Module):
    """Shared machinery of the video/audio/text backbones: freezing, layer choice, chunked forwards."""

    def __init__(self, cfg: BackboneConfig, device: torch.device | str = "cpu"):
        super().__init__()
        cfg.validate(cfg.family)
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        # the fingerprint names the weights, not the compute dtype: it is taken of the fp32 weights before the cast
        # (bf16 rounds them), so a model trained on fp32 backbones on the CPU loads for encoding with bf16/auto
        # backbones on a GPU and the other way round (docs/performance.md, "GPU check")
        model = load_model(cfg)
        self._fingerprint = weights_fingerprint(model)
        self.model = model.to(self.device, self.dtype)
        self.model.eval()
        self.model.requires_grad_(False)

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
        """sha256 of the weights as loaded in fp32 (``weights_fingerprint``), whatever ``dtype`` computes with."""
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.cfg.family,
            "backbone_config": dataclasses.asdict(self.cfg),
            "model_class": type(self.model).__name__,
            "model_config": (dataclasses.asdict(self.model.config) if self.cfg.family in NATIVE_FAMILIES
                             else self.model.config.to_diff_dict()),
            "transformers_version": transformers.__version__,
            "weights_sha256": self.fingerprint(),
        }
