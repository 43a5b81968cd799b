"""``DecodeCache``: the decoded video and audio of clips kept on disk after their first decode (``data.decode_cache``),
the format of which this module alone reads and writes.

A training job reads every clip once per epoch, and decoding it is most of the CPU a small model costs: at the demo's
settings a training process consumes what two decoding cores supply (``python -m shards.bench``, "Supply and demand").
The decode of a clip is deterministic (no random crop or augmentation: ``trainer.data.decode.decode_sample``), so the
arrays of its first decode are kept and later epochs read them back: the batches, and so the run, are bit for bit
those of a job without the cache (tests/unit/test_stream.py checks it).

Layout: ``<root>/<2 hex>/<32 hex>.npz``, one uncompressed ``numpy.savez`` file per clip with the members ``video.npy``
``(t f h w 3)`` uint8 and ``audio.npy`` ``(t s)`` float32, read with ``allow_pickle=False``. The name is a digest of
what the arrays depend on: the shard (its URL, and for a local file its size and modification time, so a rewritten
shard is decoded again), the sample's key and every ``DecodeConfig`` field. Files are written under a temporary name
and renamed, so workers of several ranks may share a root; a file that does not load or has other shapes is decoded
again and replaced. Only the media are kept: the labels and the caption are parsed from the sample every time, and a
sample that fails to decode is never cached, so it is skipped and counted in every epoch as without the cache.

A clip costs its decoded size on disk (the demo's: 10 s of 16-kHz float32 audio and 20 frames of 32 px, about 0.7 MB).
Nothing removes the files: delete the root when the shards or the disk space go.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.decode import DecodeConfig


class DecodeCache:
    """The decoded media of clips under ``root`` for the decode settings ``cfg`` (module docstring)."""

    def __init__(self, root: str | Path, cfg: DecodeConfig):
        self.root, self.cfg = Path(root), cfg
        self._settings = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"data.decode_cache: cannot create {self.root} ({err})") from err

    def path(self, sample: Mapping[str, Any]) -> Path:
        """Where the media of ``sample`` (a raw sample with ``__key__`` and ``__url__``) are kept."""
        url = str(sample.get("__url__", ""))
        try:
            stat = os.stat(url)
            shard = f"{url}\0{stat.st_size}\0{stat.st_mtime_ns}"
        except OSError:   # a pipe: URL, or no shard at all
            shard = url
        digest = hashlib.sha256(f"{shard}\0{sample.get('__key__')}\0{self._settings}".encode()).hexdigest()[:32]
        return self.root / digest[:2] / f"{digest}.npz"

    def _shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        cfg = self.cfg
        return ((cfg.seconds, cfg.frames_per_segment, cfg.frame_size, cfg.frame_size, 3),
                (cfg.seconds, cfg.sample_rate))

    def load(self, sample: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """``(video, audio)`` of ``sample`` as first decoded, or None (not kept yet, unreadable, or of other shapes)."""
        try:
            with np.load(self.path(sample), allow_pickle=False) as kept:
                video, audio = kept["video"], kept["audio"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None
        video_shape, audio_shape = self._shapes()
        if video.dtype != np.uint8 or video.shape != video_shape or audio.dtype != np.float32 or \
                audio.shape != audio_shape:
            return None
        return video, audio

    def save(self, sample: Mapping[str, Any], video: np.ndarray, audio: np.ndarray) -> None:
        """Keep the media of ``sample``: written to a temporary name, then renamed (another writer may win)."""
        path = self.path(sample)
        path.parent.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, video=video, audio=audio)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
