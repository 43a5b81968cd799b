"""``DecodeCache``: the decoded media (video, audio, image) of samples kept on disk after their first decode
(``data.decode_cache``), the format of which this module alone reads and writes.

A training job reads every clip once per epoch, and decoding it is most of the CPU a small model costs: at the demo's
settings a training process consumes what more than one decoding core supplies (docs/performance.md, "Decoding and
data supply", written by ``python -m shards.bench``).
The decode of a clip is deterministic (no random crop or augmentation: ``trainer.data.decode.decode_sample``), so the
arrays of its first decode are kept and later epochs read them back: the batches, and so the run, are bit for bit
those of a job without the cache (tests/unit/test_stream.py checks it). What is kept is the whole clip, every second
of it; each epoch's window (a long clip's window moves from epoch to epoch) is cut from it.

Layout: ``<root>/<2 hex>/<32 hex>.npz``, one uncompressed ``numpy.savez`` file per sample with a member per decoded
modality (``video.npy`` ``(S f h w 3)`` uint8 and ``audio.npy`` ``(S s)`` float32 for the clip's S seconds,
``image.npy`` ``(h w 3)`` uint8), read with ``allow_pickle=False``. The name is a digest of
what the arrays depend on: the shard (its URL, and for a local file its size and modification time, so a rewritten
shard is decoded again), the sample's key and every ``DecodeConfig`` field (a job that reads other modalities of the
sample decodes it again and keeps what it decoded). Files are written under a temporary name
and renamed, so workers of several ranks may share a root; a file that does not load or has other shapes is decoded
again and replaced. Only the media are kept: the labels and the caption are parsed from the sample every time, and a
sample that fails to decode is never cached, so it is skipped and counted in every epoch as without the cache.

A clip costs its decoded size on disk (the demo's: 10 s of 16-kHz float32 audio and 20 frames of 32 px, about 0.7 MB;
a long clip, its every second).
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

from trainer.data.decode import AUDIO, IMAGE, VIDEO
from trainer.configs.data import DecodeConfig


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

    def _layout(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """dtype and shape of each modality's array, without the leading seconds of video and audio."""
        cfg = self.cfg
        return {VIDEO: (np.dtype(np.uint8), (cfg.frames_per_segment, cfg.frame_size, cfg.frame_size, 3)),
                AUDIO: (np.dtype(np.float32), (cfg.sample_rate,)),
                IMAGE: (np.dtype(np.uint8), (cfg.frame_size, cfg.frame_size, 3))}

    def load(self, sample: Mapping[str, Any], modalities: list[str]) -> dict[str, np.ndarray] | None:
        """The ``modalities``' arrays of ``sample`` as first decoded, or None (not kept yet, unreadable, lacking one of
        them, or of other shapes: video and audio of one length of at least a second)."""
        layout = self._layout()
        try:
            with np.load(self.path(sample), allow_pickle=False) as kept:
                media = {m: kept[m] for m in modalities}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None
        timed = {m: a for m, a in media.items() if m in (VIDEO, AUDIO)}
        if any((a.dtype, a.shape[1:] if m in timed else a.shape) != layout[m] for m, a in media.items()) \
                or any(a.ndim == 0 or len(a) == 0 for a in timed.values()) or len({len(a) for a in timed.values()}) > 1:
            return None
        return media

    def save(self, sample: Mapping[str, Any], media: Mapping[str, np.ndarray]) -> None:
        """Keep the media of ``sample``: written to a temporary name, then renamed (another writer may win)."""
        path = self.path(sample)
        path.parent.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **media)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
