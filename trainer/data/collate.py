"""Stacking decoded samples into the ``Batch`` of trainer/data/batch.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from trainer.data.decode import BACKGROUND, TIMED_MODALITIES, DecodedSample
from trainer.data.media_decoders import SKIP_REASONS
from trainer.models.inputs import SEGMENT_MASK

if TYPE_CHECKING:
    from trainer.data.batch import Batch
    from trainer.data.features import FeatureClip

# Counters carried by every batch of the stream ("skipped"), in this order. The SKIP_REASONS entries
# count samples skipped by reason; "unreadable" counts samples the manifest lists but the shard reader
# never produced (missing or truncated shard); "ignored_member" counts members of delivered samples that
# were ignored (never decoded: an unknown suffix, e.g. .pyd, or a member of a modality the job does not read).
# A stream's saved state keeps them by name (``ClipStream.state_dict``), so that new reasons can be added.
COUNTER_NAMES = SKIP_REASONS + ("unreadable", "ignored_member")
COUNTER_INDEX = {name: i for i, name in enumerate(COUNTER_NAMES)}


def collate_annotations(clips: Sequence[DecodedSample | FeatureClip]) -> Batch:
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


def collate_samples(samples: Sequence[DecodedSample], is_pad: Sequence[bool], segment_mask: bool = False) -> Batch:
    """Decoded ``samples`` of one batch (the same media modalities) -> tensors (the stream adds the batch's "skipped"
    counters). Video, audio and labels are zero-padded (BACKGROUND for labels) to the longest sample's seconds
    (whole clips of any length; training windows all have the window's). ``segment_mask``: add ``segment_mask``
    ``(b t)`` bool, True on each sample's real seconds (trainer/models/inputs.py says what padding is to a model)."""
    if len(samples) != len(is_pad):
        raise ValueError(f"{len(samples)} samples but {len(is_pad)} pad flags")
    segments = max(len(s.labels.video) for s in samples)
    samples = [_padded_to(s, segments) for s in samples]
    media = {m: torch.from_numpy(np.stack([s.media[m] for s in samples])) for m in samples[0].media}
    batch = collate_annotations(samples) | media | {"is_pad": torch.tensor(list(is_pad), dtype=torch.bool)}
    if segment_mask:
        batch[SEGMENT_MASK] = torch.arange(segments) < torch.tensor([s.seconds for s in samples]).unsqueeze(1)
    return batch


def _padded_to(sample: DecodedSample, segments: int) -> DecodedSample:
    """``sample`` with its video, audio and labels padded to ``segments`` seconds (as it is if it has them)."""
    extra = segments - len(sample.labels.video)
    if extra == 0:
        return sample
    media = {m: np.pad(a, [(0, extra)] + [(0, 0)] * (a.ndim - 1)) if m in TIMED_MODALITIES else a
             for m, a in sample.media.items()}
    labels = dataclasses.replace(sample.labels, **{name: np.pad(getattr(sample.labels, name), (0, extra),
                                                                constant_values=BACKGROUND)
                                                   for name in ("video", "audio")})
    return dataclasses.replace(sample, media=media, labels=labels)
