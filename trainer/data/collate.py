"""Stacking decoded samples into the batch dict documented in ``trainer/data/__init__.py``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from trainer.data.decode import SKIP_REASONS, DecodedSample

if TYPE_CHECKING:
    from trainer.data.features import FeatureClip

# Counters carried by every batch of the stream ("skipped"), in this order. The SKIP_REASONS entries
# count samples skipped by reason; "unreadable" counts samples the manifest lists but the shard reader
# never produced (missing or truncated shard); "ignored_member" counts members of delivered samples that
# were ignored (never decoded: an unknown suffix, e.g. .pyd, or a member of a modality the job does not read).
# A stream's saved state keeps them by name (``ClipStream.state_dict``), so that new reasons can be added.
COUNTER_NAMES = SKIP_REASONS + ("unreadable", "ignored_member")
COUNTER_INDEX = {name: i for i, name in enumerate(COUNTER_NAMES)}


def collate_annotations(clips: Sequence[DecodedSample | FeatureClip]) -> dict:
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


def collate_samples(samples: Sequence[DecodedSample], is_pad: Sequence[bool]) -> dict:
    """Decoded ``samples`` of one batch (the same media modalities) -> tensors (the stream adds the batch's "skipped"
    counters)."""
    if len(samples) != len(is_pad):
        raise ValueError(f"{len(samples)} samples but {len(is_pad)} pad flags")
    media = {m: torch.from_numpy(np.stack([s.media[m] for s in samples])) for m in samples[0].media}
    return collate_annotations(samples) | media | {"is_pad": torch.tensor(list(is_pad), dtype=torch.bool)}
