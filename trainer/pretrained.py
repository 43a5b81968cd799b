"""``CMGModel``: a trained codebook model with the frozen backbones it was trained on (clips in, codes out), and the
export format, which this module alone reads and writes.

    from trainer import CMGModel
    model = CMGModel.from_pretrained("runs/demo")              # run / checkpoints / step dir, model.pt, or an export
    out = model.encode(video="clip.mp4", audio="clip.mp4")    # paths, mp4 bytes or decoded tensors; lists for batches
    out["video"].codes                                        # (b t) int64: the code of every one-second segment
    out["video"].quantized, out["video"].semantic             # (b t D): its code vector e[code], the z it encodes
    out["video"].mask                                         # (b t) True = a real second (None: clips of one length)
    model.save_pretrained("exports/demo")                     # model.safetensors + config.json, movable

Any registered task works (Uni-Code, FCCID, COMET: ``trainer.tasks.TASKS``): codes come from the model's
``segment_encoding`` through ``trainer.eval.frozen_codes.encode_features``, the path evaluation encodes with, so a
clip gets the codes evaluation gives it. Media are decoded with the run's ``data.decode`` settings (frames per segment,
frame size, sample rate) and go through the frozen backbones the checkpoint names, rebuilt from its record and refused
unless their weights' fingerprints match it (``FrozenBackbones.load_state_dict``).

Every second of a clip is coded, whatever its length (``trainer.data.media_decoders.clip_seconds``: a 3-s clip gives 3
codes, a 95-s one 95). The encoders were trained on windows of ``data.decode.seconds`` (T), and they attend across the
seconds of their input, so a longer clip is coded as consecutive windows of T seconds, the last one shorter, each
encoded on its own as in training, and their codes are concatenated (``encode_windows``); a clip of at most T seconds
is one window. Clips of several lengths come back padded to the longest: code -1 and zero vectors past a clip's end,
and ``mask`` False there.

Export format (``EXPORT_FORMAT``), a directory:

    model.safetensors   the task model's state dict: every parameter and buffer, the codebook ``quantizer.codebook``
                        included (safetensors: raw tensors, nothing pickled)
    config.json         format      EXPORT_FORMAT
                        task        the name in trainer.tasks.TASKS that rebuilds the model from model_config
                        model_config the resolved model config, as the checkpoint's meta.json holds it
                        modalities  the modalities ``encode`` gives codes for, each with its data stream
                        backbones   per data stream (video/audio/text) the frozen backbone as recorded in training
                                    (``FrozenEncoder.describe``: its BackboneConfig, model class and config,
                                    weights_sha256), or null for a model trained on feature shards naming none
                        decode      the DecodeConfig the training decoded clips with
                        codebook    {"tensor": "quantizer.codebook", "num_codes": M, "dim": D}
                        source      the checkpoint it came from and its step (information)
    backbones/<stream>/ a local tokenizer file or directory a backbone names, copied: the weights fingerprint does not
                        cover the vocabulary, and ``./`` paths in config.json are read relative to the export

The backbones' weights are not copied: a hub id is fetched as in training, a local path must exist where the record
says (or ``from_pretrained(..., backbones=YAML)`` points elsewhere; the fingerprints are checked all the same).
Every file is written atomically with the mode the umask gives a new file (``trainer.atomic_write``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn

from trainer.backbones import FrozenBackbones, backbones_config_from_dict, load_backbones_config
from trainer.data.decode import WholeClip
from trainer.data.media_decoders import decode_image, decode_whole_audio, decode_whole_video
from trainer.configs.data import DecodeConfig
from trainer.atomic_write import write_atomic
from trainer.eval.frozen_codes import compute_dtype, encode_features, frozen_model, load_pretrained
from trainer.models.inputs import mask_key

EXPORT_FORMAT = "cmg-trainer-pretrained/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CODEBOOK_TENSOR = "quantizer.codebook"
# batch key of each data stream (trainer/data/collate.py)
STREAM_INPUT = {"video": "video", "audio": "audio", "image": "image", "text": "caption"}
# what the task model may compute in (``CMGModel``'s docstring)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# What ``encode`` takes for a video, an audio track or an image: a file path, the file's bytes (mp4; wav/flac for
# audio; jpg/png/webp for an image), a decoded clip (video (t f h w 3) uint8, audio (t s) float) or image
# ((h w 3) uint8), a batch of them, or a list of any of these.
Media = str | os.PathLike | bytes | np.ndarray | Tensor | Sequence[Any]


@dataclass
class Codes:
    """One modality's encoding of a batch of clips (CPU tensors)."""

    codes: Tensor                 # (b t) int64: the code of each segment (text: each token); -1 past a clip's end
    quantized: Tensor             # (b t D) float32: the codes' vectors e[codes]
    semantic: Tensor              # (b t D) float32: the semantic vectors z^m the codes were chosen for
    mask: Tensor | None = None    # (b t) bool, True = a real segment or token; None: every segment is real


class CMGModel:
    """A frozen codebook model and its frozen backbones; build it with ``from_pretrained``.

    Inference only: the weights are frozen and the model is always in eval mode (``eval()`` returns it as it is);
    ``train()`` refuses, since training it further means the trainer's loop, optimizer and codebook updates (a new run
    from its checkpoint: ``run.init_from``, docs/training.md). Codes are computed under ``torch.no_grad``, not
    ``inference_mode``: the vectors it returns are ordinary tensors a probe trained on them may use in autograd.

    ``to(device)`` / ``to(dtype)`` / ``to(device, dtype)`` move or cast it in place and return it, as
    ``nn.Module.to`` does. The dtype (``dtype``; float32 by default, or ``from_pretrained(..., dtype=)``) is the one the
    task model's encoders compute in; the codebook and the nearest-code search stay float32 whatever it is, as in
    bf16 training (``MMEMAQuantizer.distances``). bfloat16 and float16 round the semantic vectors, so a vector nearly
    equidistant from two codes may get the other one: float32 gives exactly the codes evaluation gives, a lower
    dtype mostly the same (docs/codes.md, "Devices and dtypes"). A cast is lossy: casting back to float32 does not
    bring the weights back (load the model again). The backbones keep the dtype they were loaded in, which their
    recorded fingerprint covers (``BackboneConfig.dtype``); a move loads them on the new device in that dtype.
    """

    def __init__(self, model: nn.Module, task: str, model_config: dict[str, Any], decode: DecodeConfig,
                 backbones: FrozenBackbones | None, source: dict[str, Any], loaded_from: Path | None = None):
        self.model, self.task, self.model_config = model, task, model_config
        self.decode, self.backbones, self.source, self.loaded_from = decode, backbones, source, loaded_from
        self.streams = modality_streams(model, model_config)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        backbones: str | Path | None = None, dtype: torch.dtype | str = torch.float32) -> CMGModel:
        """The model of an export directory (``save_pretrained``), or of a checkpoint: a run, checkpoints or step
        directory, or a ``model.pt`` (as ``trainer.eval.frozen_codes.load_pretrained`` resolves them).

        ``device``: where it runs, refused before anything is read unless this machine has it (``ValueError``).
        ``backbones``: a backbones YAML to load the frozen backbones from instead of the recorded specs (weights
        moved, or a model trained on feature shards that names none); recorded fingerprints are still enforced.
        ``dtype``: what the task model computes in (``DTYPES``; the class docstring says what it changes). Named
        as transformers names it since 4.56 (``dtype``, formerly ``torch_dtype``) and as ``BackboneConfig.dtype``.
        """
        path, device, dtype = Path(path), available_device(device), model_dtype(dtype)
        if is_export(path):
            config = read_export_config(path)
            state = safetensors.torch.load_file(path / WEIGHTS_FILE)
            model = frozen_model(config["task"], config["model_config"], state, str(path / CONFIG_FILE),
                                 str(path / WEIGHTS_FILE))
            task, model_config, records = config["task"], config["model_config"], config["backbones"]
            decode, source, base_dir = DecodeConfig(**config["decode"]), config["source"], path
        else:
            pretrained = load_pretrained(path)
            task, model_config = pretrained.meta.task, pretrained.meta.model_config
            model, (records, decode) = pretrained.model, _training_media(pretrained)
            source = {"checkpoint": str(pretrained.checkpoint.resolve()), "step": pretrained.step}
            base_dir = None
        streams = sorted(set(modality_streams(model, model_config).values()))
        return cls(_cast(model, dtype).to(device), task, model_config, decode,
                   frozen_backbones(records, streams, backbones, base_dir, device), source, path)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the export directory (module docstring): ``model.safetensors`` and ``config.json``."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        state = {name: t.detach().cpu().contiguous() for name, t in self.model.state_dict().items()}
        # bytes, written by write_atomic: safetensors' save_file leaves the file 0o600 whatever the umask
        # (trainer/atomic_write.py); the task model is small, the backbones' weights are not in it
        write_atomic(out / WEIGHTS_FILE, safetensors.torch.save(state, metadata={"format": EXPORT_FORMAT}))
        records = None if self.backbones is None else _portable(self.backbones.describe(), out)
        codebook = self.codebook
        config = {
            "format": EXPORT_FORMAT, "task": self.task, "model_config": self.model_config,
            "modalities": {m: {"stream": s} for m, s in self.streams.items()}, "backbones": records,
            "decode": dataclasses.asdict(self.decode),
            "codebook": {"tensor": CODEBOOK_TENSOR, "num_codes": codebook.shape[0], "dim": codebook.shape[1]},
            "source": self.source,
        }
        write_atomic(out / CONFIG_FILE, (json.dumps(config, indent=1) + "\n").encode())
        return out

    # ------------------------------------------------------------------ where it runs, and how
    def to(self, *args: str | torch.device | torch.dtype, device: str | torch.device | None = None,
           dtype: torch.dtype | str | None = None) -> CMGModel:
        """Move it to ``device`` and/or cast the task model to ``dtype``, in place, like ``nn.Module.to``:
        ``to("cuda")``, ``to(torch.bfloat16)``, ``to("cuda", torch.bfloat16)``. The backbones move with it, in their
        own dtype (class docstring). An unavailable device is refused (``ValueError``) before anything moves."""
        dtypes = [a for a in args if isinstance(a, torch.dtype)]
        devices = [a for a in args if not isinstance(a, torch.dtype)]
        if len(dtypes) + (dtype is not None) > 1 or len(devices) + (device is not None) > 1:
            raise TypeError(f"to() takes one device and/or one dtype, got {args}, device={device}, dtype={dtype}")
        device, dtype = next(iter(devices), device), next(iter(dtypes), dtype)
        if device is not None:
            device = available_device(device)
            backbones = None if self.backbones is None else self.backbones.on(device)
            self.model.to(device)
            self.backbones = backbones
        if dtype is not None:
            _cast(self.model, model_dtype(dtype))
        return self

    def eval(self) -> CMGModel:
        """It as it is: a CMGModel is always in eval mode (class docstring)."""
        return self

    def train(self, mode: bool = True) -> CMGModel:
        """``train(False)`` is ``eval()``; ``train()`` refuses: a CMGModel is inference-only (class docstring)."""
        if mode:
            raise RuntimeError(f"a CMGModel is inference-only (frozen weights, always in eval mode): to train it "
                               f"further, start a run from its checkpoint ({self.source.get('checkpoint')}) with "
                               "run.init_from=<checkpoint> (docs/training.md)")
        return self

    @property
    def device(self) -> torch.device:
        return self.model.quantizer.codebook.device

    @property
    def dtype(self) -> torch.dtype:
        """What the task model's encoders compute in (the codebook stays float32)."""
        return compute_dtype(self.model)

    # ------------------------------------------------------------------ what it is
    def __repr__(self) -> str:
        codebook = self.codebook
        backbones = {} if self.backbones is None else {
            s: f"{e.cfg.family} {e.cfg.name_or_path or f'(random init, seed {e.cfg.seed})'} "
               f"{str(e.dtype).removeprefix('torch.')}" for s, e in self.backbones.encoders.items()}
        return (f"CMGModel(task={self.task!r}, modalities={self.modalities}, "
                f"codebook={codebook.shape[0]} codes x {codebook.shape[1]} dims, backbones={backbones}, "
                f"device={self.device}, dtype={str(self.dtype).removeprefix('torch.')}, "
                f"loaded_from={None if self.loaded_from is None else str(self.loaded_from)!r}, "
                f"checkpoint={self.source.get('checkpoint')!r}, step={self.source.get('step')})")

    @property
    def codebook(self) -> Tensor:
        """``(M D)`` the shared codebook, on the CPU (``codebook[codes]`` = the codes' vectors)."""
        return self.model.quantizer.codebook.detach().cpu()

    @property
    def modalities(self) -> list[str]:
        """The modalities ``encode`` gives codes for: those whose data stream has a backbone."""
        have = set(self.backbones.modalities) if self.backbones is not None else set()
        return [m for m, stream in self.streams.items() if stream in have]

    def describe(self) -> dict[str, Any]:
        """What encoded a set of codes: task, source checkpoint and step, backbone fingerprints (JSON-able)."""
        fingerprints = {} if self.backbones is None else \
            {s: d["weights_sha256"] for s, d in self.backbones.describe().items()}
        return {"task": self.task, "source": self.source, "backbones": fingerprints,
                "decode": dataclasses.asdict(self.decode)}

    # ------------------------------------------------------------------ encoding
    def _backbones(self) -> FrozenBackbones:
        if self.backbones is None:
            raise ValueError("this model names no backbones (trained on feature shards without a record of them): "
                             "load it with CMGModel.from_pretrained(..., backbones=YAML)")
        return self.backbones

    def encode(self, video: Media | None = None, audio: Media | None = None, text: str | Sequence[str] | None = None,
               image: Media | None = None, batch_size: int = 16) -> dict[str, Codes]:
        """Codes of the clips given per data stream, keyed by model modality (only the modalities whose stream
        was given; an image is one segment). ``batch_size`` clips are decoded and encoded at a time."""
        given = {s: v for s, v in {"video": video, "audio": audio, "image": image, "text": text}.items()
                 if v is not None}
        if not given:
            raise ValueError("give video=, audio=, image= and/or text= (paths, file bytes, decoded tensors or "
                             "captions)")
        unknown = [s for s in given if s not in self.streams.values() or s not in self._backbones().modalities]
        if unknown:
            raise ValueError(f"the model encodes no {unknown} (its modalities: {self.modalities})")
        out: dict[str, Codes] = {}
        for stream, value in given.items():
            if stream == "text":
                captions = [value] if isinstance(value, str) else list(value)
                parts: dict[str, list[Codes]] = {}
                for start in range(0, len(captions), batch_size):
                    for m, codes in self.encode_batch({"caption": captions[start:start + batch_size]}).items():
                        parts.setdefault(m, []).append(codes)
                out |= {m: _concat(chunks) for m, chunks in parts.items()}
            elif stream == "image":
                out |= {m: _stacked(coded) for m, coded in self.encode_images(_images(value, self.decode),
                                                                              batch_size).items()}
            else:
                out |= {m: _stacked(clips) for m, clips in
                        self.encode_windows(stream, _clips(stream, value, self.decode), batch_size).items()}
        return out

    @torch.no_grad()
    def encode_windows(self, stream: str, clips: Sequence[Tensor], batch_size: int = 16) -> dict[str, list[Codes]]:
        """Per model modality of ``stream`` (video or audio), the codes of each decoded clip ``(t ...)`` of any length:
        ``Codes`` of one clip, ``codes (t)``, ``quantized`` and ``semantic (t D)``. A clip is cut into consecutive
        windows of ``decode.seconds`` (the last one shorter), windows of one length are encoded together,
        ``batch_size`` at a time, and each clip's windows are concatenated again (module docstring)."""
        window = self.decode.seconds
        pieces = [(i, start, clip[start:start + window]) for i, clip in enumerate(clips)
                  for start in range(0, len(clip), window)]
        by_length: dict[int, list[tuple[int, int, Tensor]]] = {}
        for piece in pieces:
            by_length.setdefault(len(piece[2]), []).append(piece)
        coded: dict[str, dict[tuple[int, int], Codes]] = {}
        for group in by_length.values():
            for first in range(0, len(group), batch_size):
                chunk = group[first:first + batch_size]
                batch = {STREAM_INPUT[stream]: torch.stack([piece for _, _, piece in chunk])}
                for m, codes in self.encode_batch(batch).items():
                    for j, (i, start, _) in enumerate(chunk):
                        coded.setdefault(m, {})[i, start] = Codes(codes.codes[j], codes.quantized[j],
                                                                  codes.semantic[j])
        return {m: [Codes(*(torch.cat([getattr(parts[i, start], name) for start in range(0, len(clip), window)])
                            for name in ("codes", "quantized", "semantic")))
                    for i, clip in enumerate(clips)]
                for m, parts in coded.items()}

    def encode_images(self, images: Tensor, batch_size: int = 16) -> dict[str, list[Codes]]:
        """Per model modality of the image stream, the codes of each decoded image of ``images`` ``(b h w 3)``: one
        segment each (``Codes`` of ``codes (1)``, ``quantized`` and ``semantic (1 D)``)."""
        coded: dict[str, list[Codes]] = {}
        for start in range(0, len(images), batch_size):
            for m, codes in self.encode_batch({"image": images[start:start + batch_size]}).items():
                coded.setdefault(m, []).extend(Codes(codes.codes[j], codes.quantized[j], codes.semantic[j])
                                               for j in range(len(codes.codes)))
        return coded

    def encode_whole_clips(self, clips: Sequence[WholeClip], batch_size: int = 16,
                           streams: Sequence[str] | None = None) -> dict[str, list[Codes | None]]:
        """Per model modality, the codes of each clip decoded by ``trainer.data.decode.decode_whole_sample`` (one
        clip's ``Codes`` as in ``encode_windows``; an image: one segment; text: its first caption's real tokens), or
        None where the clip lacks the modality's stream (an mp4 without an audio track, an image+text sample's video).
        ``streams``: only the modalities of these data streams (None: every stream the model codes)."""
        out: dict[str, list[Codes | None]] = {}
        for stream in sorted({self.streams[m] for m in self.modalities} & set(streams or self.streams.values())):
            if stream == "text":
                for m, codes in self.encode(text=[c.caption for c in clips], batch_size=batch_size).items():
                    out[m] = [Codes(codes.codes[i][real], codes.quantized[i][real], codes.semantic[i][real])
                              for i, real in enumerate(codes.mask)]
                continue
            have = [i for i, clip in enumerate(clips) if getattr(clip, stream) is not None]
            out |= {m: [None] * len(clips) for m in self.modalities if self.streams[m] == stream}
            media = [torch.from_numpy(_writable(getattr(clips[i], stream))) for i in have]
            if not media:
                continue
            coded_stream = self.encode_images(torch.stack(media), batch_size) if stream == "image" else \
                self.encode_windows(stream, media, batch_size)
            for m, coded in coded_stream.items():
                for i, codes in zip(have, coded):
                    out[m][i] = codes
        return out

    @torch.no_grad()
    def encode_batch(self, batch: Mapping[str, Any]) -> dict[str, Codes]:
        """Codes of a decoded batch of clips of one length (``trainer.data.collate_samples``'s keys: ``video (b t f h w
        3)`` uint8, ``audio (b t s)`` float, ``caption`` list of str) for every modality of the model whose stream the
        batch holds (other keys are ignored), each clip encoded as one window."""
        streams = [s for s in self._backbones().modalities if STREAM_INPUT[s] in batch]
        # the encoders of these streams only; each is loaded once per process and shared (trainer.backbones)
        backbones = FrozenBackbones(self.backbones.config.only(streams), self.backbones.device)
        features = backbones.encode({STREAM_INPUT[s]: batch[STREAM_INPUT[s]] for s in streams})
        wanted = [m for m in self.modalities if self.streams[m] in streams]
        inputs = {m: features[self.streams[m]] for m in wanted}
        inputs |= {mask_key(m): features[mask_key(self.streams[m])] for m in wanted
                   if mask_key(self.streams[m]) in features}
        encoded = encode_features(self.model, inputs, wanted)
        out = {}
        for m, e in encoded.items():
            mask = inputs.get(mask_key(m))
            codes = e.codes if mask is None else e.codes.masked_fill(~mask, -1)
            out[m] = Codes(codes.cpu(), e.quantized.float().cpu(), e.semantic.float().cpu(),
                           None if mask is None else mask.cpu())
        return out


def modality_streams(model: nn.Module, model_config: Mapping[str, Any]) -> dict[str, str]:
    """Model modality -> the data stream (video/audio/text) its features come from: the same name, except where
    a COMET phase trained a stream under another name (``rename``, e.g. video -> image)."""
    renamed = {name: stream for stream, name in model_config.get("rename", {}).items()}
    return {m: renamed.get(m, m) for m in model.downstream_modalities}


# ---------------------------------------------------------------------- devices and dtypes
def available_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, refused (``ValueError``, one line naming what this machine has) unless it is
    here: the CPU, or an index of this machine's accelerator (CUDA, ...). An accelerator without an index is its
    current one (``cuda`` -> ``cuda:0``), so that one device has one name."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device torch knows: {err}") from None
    if device.type == "cpu":
        return device
    accelerator = torch.accelerator.current_accelerator()
    count = torch.accelerator.device_count() if accelerator is not None and accelerator.type == device.type else 0
    if count == 0:
        backend = getattr(torch, device.type, None)
        why = f"torch.{device.type}.is_available() is False" if hasattr(backend, "is_available") else \
            f"no {device.type} device"
        have = "" if accelerator is None else f", {accelerator.type}"
        raise ValueError(f"device '{device}' is not available here ({why}; this machine has cpu{have}); "
                         f"use device='cpu'" + (f" or '{accelerator.type}'" if accelerator is not None else ""))
    index = torch.accelerator.current_device_index() if device.index is None else device.index
    if index >= count:
        raise ValueError(f"device '{device}' is not available here: this machine has {count} {device.type} "
                         f"device(s), {device.type}:0 to {device.type}:{count - 1}")
    return torch.device(device.type, index)


def model_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``dtype`` (a torch dtype or its name, ``"bfloat16"``) if the task model may compute in it (``DTYPES``)."""
    found = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if found not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: a CMGModel computes in one of {[str(d) for d in DTYPES]}")
    return found


def _cast(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` with every submodule but the quantizer cast to ``dtype``, in place: the codebook and its statistics
    stay float32, as a bf16 engine leaves them (``CodebookTask.attach_engine_``); casting them too would round the
    codebook. (A task model keeps its tensors in submodules: tests/unit/test_pretrained.py checks every task.)"""
    for child in model.children():
        if child is not model.quantizer:
            child.to(dtype)
    return model


# ---------------------------------------------------------------------- the export format
def is_export(path: Path) -> bool:
    """Whether ``path`` is an export directory (its config.json names ``EXPORT_FORMAT``)."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == EXPORT_FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def read_export_config(path: Path) -> dict[str, Any]:
    """config.json of an export directory, checked for the keys ``from_pretrained`` reads."""
    config = json.loads((Path(path) / CONFIG_FILE).read_text())
    missing = [k for k in ("task", "model_config", "backbones", "decode", "source") if k not in config]
    if missing or not (Path(path) / WEIGHTS_FILE).is_file():
        raise ValueError(f"{path}: not a complete {EXPORT_FORMAT} export (config.json lacks {missing}, or no "
                         f"{WEIGHTS_FILE})")
    return config


def _portable(records: dict[str, Any], out: Path) -> dict[str, Any]:
    """Backbone records with each local tokenizer copied under ``out/backbones/<stream>/`` and named relative
    to ``out`` (``backbones_config_from_dict`` resolves ``./`` paths against the export when loading it)."""
    records = json.loads(json.dumps(records))   # a deep copy
    for stream, record in records.items():
        tokenizer = record["backbone_config"].get("tokenizer")
        if not tokenizer or not Path(tokenizer).exists():
            continue   # none, or a hub id
        target = out / "backbones" / stream / Path(tokenizer).name
        target.parent.mkdir(parents=True, exist_ok=True)
        # copyfile: a new file gets the mode the umask gives (trainer/atomic_write.py), not the source's
        if Path(tokenizer).is_dir():
            shutil.copytree(tokenizer, target, copy_function=shutil.copyfile, dirs_exist_ok=True)
        else:
            shutil.copyfile(tokenizer, target)
        record["backbone_config"]["tokenizer"] = "./" + target.relative_to(out).as_posix()
    return records


# ---------------------------------------------------------------------- what a checkpoint's training used
def _training_media(pretrained: Any) -> tuple[dict[str, Any] | None, DecodeConfig]:
    """(backbone records, DecodeConfig) of the run that wrote ``pretrained``: the checkpoint's meta.json and the
    run's config.yaml; for a run on feature shards, what their manifest says the extraction used."""
    from trainer.data.manifest import ShardManifest
    from trainer.data.sources import expand_shard_urls
    from trainer.job import RESOLVED_CONFIG_FILE, read_run_config

    if not (pretrained.run_dir / RESOLVED_CONFIG_FILE).is_file():
        print(f"[cmg] {pretrained.run_dir / RESOLVED_CONFIG_FILE} not found: decoding media with the default "
              "data.decode settings, which may not be the training's", file=sys.stderr)
    job = read_run_config(pretrained.run_dir)
    records, decode = pretrained.meta.backbones, job.data.decode
    if job.data.kind == "features":
        try:
            manifest = ShardManifest.of_shards(expand_shard_urls(job.data.urls), job.data.manifest)
        except ValueError:   # the feature shards are not reachable from here
            manifest = None
        if manifest is not None:
            records = records or manifest.backbones
            decode = DecodeConfig(**manifest.decode) if manifest.decode is not None else decode
    return records, decode


def frozen_backbones(records: Mapping[str, Any] | None, streams: Sequence[str], yaml: str | Path | None = None,
                     base_dir: Path | None = None, device: str | torch.device = "cpu") -> FrozenBackbones | None:
    """The frozen backbones of ``streams`` as ``records`` describe them (a checkpoint's meta.json ``backbones``; their
    ``./`` paths relative to ``base_dir``), or as the backbones YAML ``yaml`` configures them, refused unless their
    weights match the recorded fingerprints (``FrozenBackbones.load_state_dict``). None: nothing to build them from."""
    # a record without a backbone_config names an extractor this project cannot rebuild (the authors' VGGish and VGG-19
    # of a released feature set): the model then codes that stream's features only, not its media
    recorded = {s: r for s, r in (records or {}).items() if s in streams and "backbone_config" in (r or {})}
    if yaml is not None:
        config = load_backbones_config(yaml).only(list(streams))
    elif recorded:
        config = backbones_config_from_dict({s: r["backbone_config"] for s, r in recorded.items()}, "backbones",
                                            base_dir)
    else:
        return None
    backbones = FrozenBackbones(config, device)
    if recorded:
        backbones.load_state_dict({"backbones": recorded})
    return backbones


# ---------------------------------------------------------------------- inputs and outputs
# per media stream: how a file of it is decoded (every second of a clip; an image at the frame size), and the dims of
# one decoded item: video (t f h w 3) uint8, audio (t s) float, image (h w 3) uint8
STREAM_DECODERS: dict[str, tuple[Callable[[bytes, DecodeConfig, str], np.ndarray], int, str]] = {
    "video": (decode_whole_video, 5, "(t f h w 3)"), "audio": (decode_whole_audio, 2, "(t s)"),
    "image": (decode_image, 3, "(h w 3)")}


def _decoded(stream: str, value: Any, decode: DecodeConfig) -> list[Tensor]:
    """One media stream's input as decoded items (``STREAM_DECODERS``): files and bytes are decoded (a clip whole,
    every second), a decoded item or batch is taken as it is."""
    decoder, dims, layout = STREAM_DECODERS[stream]
    if isinstance(value, (np.ndarray, Tensor)):
        tensor = torch.as_tensor(value)
        if tensor.ndim not in (dims, dims + 1):
            raise ValueError(f"{stream}: a decoded item is {layout} and a batch has one more dim, got a tensor of "
                             f"shape {tuple(tensor.shape)}")
        return list(tensor.unsqueeze(0) if tensor.ndim == dims else tensor)
    items = [value] if isinstance(value, (str, os.PathLike, bytes, bytearray)) else list(value)
    decoded = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            item = decoder(Path(item).read_bytes(), decode, str(item))
        elif isinstance(item, (bytes, bytearray)):
            item = decoder(bytes(item), decode, f"{stream} bytes")
        decoded.append(torch.as_tensor(_writable(np.asarray(item))))
    return decoded


def _clips(stream: str, value: Any, decode: DecodeConfig) -> list[Tensor]:
    """One time stream's input as decoded clips ``(t ...)`` of any length (video uint8, audio float32)."""
    return [clip if stream == "video" else clip.float() for clip in _decoded(stream, value, decode)]


def _images(value: Any, decode: DecodeConfig) -> Tensor:
    """``encode``'s image input as decoded images ``(b h w 3)`` uint8 (files and bytes decoded at the training's
    ``frame_size``)."""
    return torch.stack(_decoded("image", value, decode))


def _stacked(clips: list[Codes]) -> Codes:
    """One clip's ``Codes`` each -> a batch, padded to the longest clip (code -1, zero vectors, ``mask`` False) when
    their lengths differ."""
    return _concat([Codes(c.codes[None], c.quantized[None], c.semantic[None],
                          torch.ones(1, len(c.codes), dtype=torch.bool)) for c in clips],
                   keep_mask=len({len(c.codes) for c in clips}) > 1)


def _concat(parts: list[Codes], keep_mask: bool = True) -> Codes:
    """Batches of one modality, in order, padded to the longest (code -1, zero vectors, mask False); ``keep_mask``
    False drops the mask (every segment is real)."""
    if len(parts) == 1:
        return parts[0] if keep_mask else dataclasses.replace(parts[0], mask=None)
    longest = max(p.codes.shape[1] for p in parts)

    def cat(name: str, fill: float) -> Tensor:
        tensors = [getattr(p, name) for p in parts]
        padded = [torch.nn.functional.pad(t.to(torch.float32 if t.dtype == torch.bool else t.dtype),
                                          (0, 0) * (t.ndim - 2) + (0, longest - t.shape[1]), value=fill)
                  for t in tensors]
        return torch.cat(padded).to(tensors[0].dtype)

    masked = keep_mask and parts[0].mask is not None
    return Codes(cat("codes", -1), cat("quantized", 0.0), cat("semantic", 0.0), cat("mask", 0.0) if masked else None)


def _writable(array: np.ndarray) -> np.ndarray:
    """``array``, copied when it is read-only (a decoder's view of its buffer): torch tensors assume they may write."""
    return array if array.flags.writeable else array.copy()
