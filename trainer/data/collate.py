"""Stacking decoded clips into the batch dict documented in ``trainer/data/__init__.py``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from trainer.data.decode import SKIP_REASONS, DecodedClip

if TYPE_CHECKING:
    from trainer.data.features import FeatureClip

# Counters carried by every batch of the stream ("skipped"), in this order. The SKIP_REASONS entries
# count samples skipped by reason; "unreadable" counts samples the manifest lists but the shard reader
# never produced (missing or truncated shard); "ignored_member" counts members of delivered samples that
# were ignored (unknown suffix, e.g. .pyd: never decoded).
COUNTER_NAMES = SKIP_REASONS + ("unreadable", "ignored_member")
COUNTER_INDEX = {name: i for i, name in enumerate(COUNTER_NAMES)}


def collate_annotations(clips: Sequence[DecodedClip | FeatureClip]) -> dict:
    """The entries clip and feature batches share: key, url, caption, the labels and ``labelled``."""
    return {
        "key": [c.key for c in clips],
        "url": [c.url for c in clips],
        "caption": [c.caption for c in clips],
        "video_labels": torch.from_numpy(np.stack([c.labels.video for c in clips])),
        "audio_labels": torch.from_numpy(np.stack([c.labels.audio for c in clips])),
        "clip_label": torch.tensor([c.labels.clip for c in clips], dtype=torch.int64),
        "labelled": torch.tensor([c.labels.labelled for c in clips], dtype=torch.bool),
    }


def collate_clips(clips: Sequence[DecodedClip], is_pad: Sequence[bool]) -> dict:
    """Decoded ``clips`` of one batch -> tensors (the stream adds the batch's "skipped" counters)."""
    if len(clips) != len(is_pad):
        raise ValueError(f"{len(clips)} clips but {len(is_pad)} pad flags")
    return collate_annotations(clips) | {
        "video": torch.from_numpy(np.stack([c.video for c in clips])),
        "audio": torch.from_numpy(np.stack([c.audio for c in clips])),
        "is_pad": torch.tensor(list(is_pad), dtype=torch.bool),
    }
