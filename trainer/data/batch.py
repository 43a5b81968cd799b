"""The batch the data streams produce and the tasks consume: a ``Batch`` (a ``TypedDict``, so a plain dict at run
time, which accelerate and DeepSpeed move to the device like any other).

Dimensions: b = batch_size; t = DecodeConfig.seconds one-second segments with video or audio, else 1
(``decode.segments_of``); f = frames per segment, h = w = frame_size, s = sample_rate (clip batches); d / p = the
backbones' feature sizes (feature batches: the shards' manifest, or the frozen backbones applied to a clip batch);
l = the batch's longest caption in tokens; c = len(COUNTER_NAMES).

Media and features are keyed by modality name, and only the modalities the stream reads are there: for clip
shards (``DataConfig.kind = "clips"``) those ``ClipStream(..., modalities=...)`` decodes (the frozen backbones'
modalities; default video and audio), for feature shards ``DataConfig.feature_modalities``.
``feature_batches(cfg, backbones)`` turns clip batches into feature batches (same keys, features for media).
``trainer.data.memory.MemoryStream`` yields feature batches with only the features, ``is_pad`` and ``skipped``.

Pretraining needs neither labels nor captions: json (labels) and txt (caption) members are optional. A caption is
required only where it is encoded (the frozen backbones include text: ``feature_batches`` skips a clip without one
as "missing_member"); labels only for downstream evaluation (``trainer.eval.frozen_codes``). Labels are class indices
(one event per modality per second in our data; AVVP-style per-modality): a multi-hot target for a sigmoid head is
``F.one_hot(labels + 1, K + 1)[..., 1:]`` (background -> all zeros). The trainer sums ``skipped`` over the batches
it consumed and all-reduces it for logging (``ClipStream.skip_totals(all_reduce_fn=...)``); padded clips can be
dropped from evaluation with ``is_pad``.
"""

from __future__ import annotations

from typing import TypedDict

from torch import Tensor


class Batch(TypedDict, total=False):
    """One batch of a stream (module docstring). Keys not marked "every batch" are there when the stream has them."""

    # media of a clip batch / features of a feature batch, by modality name
    video: Tensor          # uint8 (b t f h w 3) RGB frames, frame j of segment t at (t + (j + 0.5)/f) s |
    #                        float32 (b t d) or (b t p d) frozen video-backbone features per second
    audio: Tensor          # float32 (b t s) mono waveform, second t in row t | (b t d) features
    image: Tensor          # uint8 (b h w 3) RGB image (one segment) | float32 (b 1 d) or (b 1 p d) features
    text: Tensor           # float32 (b l d) caption token features, zero-padded to the batch's longest caption
    text_mask: Tensor      # bool (b l) True = real token
    segment_mask: Tensor   # bool (b t) True = a real second (clips padded to the window, whole clips; inputs.py)
    # annotations: every batch of a shard stream
    caption: list[str | None]  # (b) None = no txt member; of several captions, the epoch's pick
    video_labels: Tensor   # int64 (b t) per-second class index of the visual event, -1 = background
    audio_labels: Tensor   # int64 (b t) per-second class index of the audible event, -1 = background
    clip_label: Tensor     # int64 (b) the clip's event class (AVE-style clip label), -1 = none
    labelled: Tensor       # bool (b) False = no json member: its labels above are all -1
    key: list[str]         # (b) sample keys (``__key__`` in the shards)
    url: list[str]         # (b) the shard each clip was read from (``__url__``)
    # every batch
    is_pad: Tensor         # bool (b) True for a repeated clip that fills the epoch's last batches
    skipped: Tensor        # int64 (c) counters since this worker's previous batch, by COUNTER_NAMES
