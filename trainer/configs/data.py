"""The ``data`` section of a job: the shard stream (``DataConfig``) and how clips are decoded (``DecodeConfig``).

Torch-free, like every module of ``trainer.configs``: the stream itself is trainer/data/stream.py, the decoder
trainer/data/decode.py, the feature shards' reader trainer/data/features.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# the modalities a feature shard (``python -m shards.extract``) can hold, as ``{modality}.npy`` members
FEATURE_MODALITIES = ("video", "audio", "text")
# "memory": feature tensors a program hands to ``trainer.loop.train`` (trainer/data/memory.py), never from a YAML
DATA_KINDS = ("clips", "features", "memory")


@dataclass
class DecodeConfig:
    seconds: int = 10  # T: the window of one-second segments a training batch holds per clip
    # the shortest clip trained on: a clip of min_seconds <= S < seconds is padded to the window with a segment
    # mask; shorter ones are skipped (too_short). None: seconds (only whole windows: the paper's setting, and every
    # batch without a mask). Models with Cross-CPC need more than its K prediction steps (trainer/job.py checks).
    min_seconds: int | None = None
    frames_per_segment: int = 4  # F: frames sampled per segment, centred in F equal slices
    frame_size: int = 64  # frames are resized to frame_size x frame_size (aspect not kept)
    sample_rate: int = 16000  # audio is resampled to this rate, mono
    # AAC/decoder rounding can leave the audio a little short; up to this much is zero-padded
    audio_shortfall_s: float = 0.1

    def __post_init__(self) -> None:
        for name in ("seconds", "frames_per_segment", "frame_size", "sample_rate"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"decode.{name} must be >= 1, got {value}")
        if self.min_seconds is not None and not 1 <= self.min_seconds <= self.seconds:
            raise ValueError(f"decode.min_seconds must be in [1, decode.seconds={self.seconds}] or null, "
                             f"got {self.min_seconds}")
        # not (0 <= x < seconds) also refuses NaN; a shortfall of a whole clip would accept clips without audio
        if not 0.0 <= self.audio_shortfall_s < self.seconds:
            raise ValueError(f"decode.audio_shortfall_s must be in [0, decode.seconds={self.seconds}), "
                             f"got {self.audio_shortfall_s}")

    @property
    def shortest(self) -> int:
        """The fewest seconds of a clip that training reads (``min_seconds``, or the whole window)."""
        return self.seconds if self.min_seconds is None else self.min_seconds

    @property
    def pads(self) -> bool:
        """Whether clips shorter than the window are padded (and clip batches carry a ``segment_mask``)."""
        return self.shortest < self.seconds


@dataclass
class DataConfig:
    # brace pattern(s), '::'-separated: local paths or webdataset 'pipe:' URLs
    urls: str = field(default="", metadata={"path": True})
    # "clips": mp4/wav [+ json + txt] shards (shards.write); "features": feature shards (shards.extract);
    # "memory": in-memory tensors passed by a program to trainer.loop.train (the synthetic benchmarks)
    kind: Literal["clips", "features", "memory"] = "clips"
    # kind "features": the modalities whose {modality}.npy members are read (and batched under that key)
    feature_modalities: list[str] = field(default_factory=lambda: list(FEATURE_MODALITIES),
                                          metadata={"choices": FEATURE_MODALITIES})
    # the shards' manifest.json (per-shard counts; feature shapes for kind "features"); default: next to
    # the first local shard. Not read for kind "clips" in resampled mode.
    manifest: str = field(default="", metadata={"path": True})
    batch_size: int = 8  # clips per batch on each rank
    num_workers: int = 2  # DataLoader worker processes per rank (0 = decode in the training process)
    shuffle_buffer: int = 64  # raw samples in each worker's shuffle buffer; 0 or 1 keeps shard order
    shuffle_shards: bool = True  # reshuffle the shard list every epoch (non-resampled)
    resampled: bool = False  # draw shards with replacement; an epoch is epoch_batches batches
    epoch_batches: int = 0  # batches per rank per epoch in resampled mode
    seed: int = 0
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # kind "clips" only
    # kind "clips": a directory where each clip's decoded video and audio are kept after its first decode and read
    # back in later epochs, bit for bit the same batches ("" = decode every time; trainer/data/cache.py)
    decode_cache: str = field(default="", metadata={"path": True})

    def validate(self) -> None:
        """Raise ``ValueError`` naming the key of the first bad setting."""
        if self.kind not in DATA_KINDS:
            raise ValueError(f"DataConfig.kind: {self.kind!r} is not one of {list(DATA_KINDS)}")
        if self.kind == "memory":
            raise ValueError("DataConfig.kind 'memory' is for programs that pass feature tensors to "
                             "trainer.loop.train(..., memory=...); a job reads shards: set kind 'clips' or 'features'")
        if not self.urls:
            raise ValueError("DataConfig.urls is empty: give shard URLs, e.g. 'data/train-{000000..000009}.tar'")
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"DataConfig.batch_size must be >= 1 and DataConfig.num_workers >= 0, got "
                             f"{self.batch_size}, {self.num_workers}")
        if self.resampled and self.epoch_batches < 1:
            raise ValueError("resampled mode needs DataConfig.epoch_batches >= 1 (batches per rank per epoch)")
        if self.kind == "features":
            names = self.feature_modalities
            if not names or len(set(names)) < len(names) or any(m not in FEATURE_MODALITIES for m in names):
                raise ValueError(f"DataConfig.feature_modalities: {self.feature_modalities} must be distinct "
                                 f"names from {list(FEATURE_MODALITIES)}, at least one")
