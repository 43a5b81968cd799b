"""The streaming data path: WebDataset shards of clips or of features -> batches on every rank.

    from trainer.data import ClipStream, DataConfig
    stream = ClipStream(DataConfig(urls="data/train-{000000..000009}.tar", batch_size=8))
    for batch in stream:          # one epoch; every rank gets len(stream) batches
        ...

Clip batch format, ``DataConfig.kind = "clips"`` (a dict; b = batch_size, t = DecodeConfig.seconds
one-second segments with video or audio, else 1 (``decode.segments_of``), f = frames per segment, h = w = frame_size,
s = sample_rate, c = len(COUNTER_NAMES)). Of the media, only the modalities the stream reads are there
(``ClipStream(..., modalities=...)``: the frozen backbones' modalities; default video and audio):

    "video"         uint8   (b t f h w 3)  RGB frames, frame j of segment t at (t + (j + 0.5)/f) s
    "audio"         float32 (b t s)        mono waveform at sample_rate, second t in row t
    "image"         uint8   (b h w 3)      RGB image (one segment)
    "caption"       list[str | None] (b)   None = the sample has no txt member; of several captions, the epoch's pick
    "video_labels"  int64   (b t)          per-second class index of the visual event, -1 = background
    "audio_labels"  int64   (b t)          per-second class index of the audible event, -1 = background
    "clip_label"    int64   (b)            the clip's event class (AVE-style clip label), -1 = none
    "labelled"      bool    (b)            False = the sample has no json member: its labels above are all -1
    "key"           list[str] (b)          sample keys (``__key__`` in the shards)
    "url"           list[str] (b)          the shard each clip was read from (``__url__``)
    "is_pad"        bool    (b)            True for a repeated clip that fills the epoch's last batches
    "skipped"       int64   (c)            counters since this worker's previous batch, by COUNTER_NAMES

Feature batch format, ``DataConfig.kind = "features"`` (feature shards from ``python -m shards.extract``;
t = the extraction's DecodeConfig.seconds, d / p = the backbones' feature sizes in the shards' manifest;
only the modalities of ``DataConfig.feature_modalities``):

    "video"         float32 (b t d) or (b t p d)   frozen video-backbone features per second
    "audio"         float32 (b t d)
    "text"          float32 (b l d)  caption token features, zero-padded to the batch's longest caption
    "text_mask"     bool    (b l)    True = real token
    "caption", "video_labels", "audio_labels", "clip_label", "labelled", "key", "url", "is_pad", "skipped"
                                     as above

``feature_batches(cfg, backbones)`` gives feature batches from either kind: for clip shards it runs the
frozen backbones on each clip batch in the training process (same keys as the feature batch).

Pretraining needs neither labels nor captions: json (labels) and txt (caption) members are optional. A
caption is required only where it is encoded (the frozen backbones include text: ``feature_batches`` skips a
clip without one as "missing_member"); labels only for downstream evaluation (``trainer.eval.encode``).

Labels are class indices (one event per modality per second in our data; AVVP-style per-modality):
a multi-hot target for a sigmoid head is ``F.one_hot(labels + 1, K + 1)[..., 1:]`` (background -> all
zeros). The trainer sums "skipped" over the batches it consumed and all-reduces it for logging
(``ClipStream.skip_totals(all_reduce_fn=trainer.distributed.all_reduce_sum_)`` does exactly this);
padded clips can be dropped from evaluation with ``is_pad``.
"""

from trainer.data.collate import COUNTER_NAMES, collate_samples
from trainer.data.decode import (
    BACKGROUND, SAMPLE_MODALITIES, SKIP_REASONS, CorruptSample, DecodedSample, SampleInfo, WholeClip, clip_seconds,
    decode_sample, decode_whole_sample, probe_sample,
)
from trainer.configs.data import DATA_KINDS, DataConfig, DecodeConfig
from trainer.data.features import FeatureClip, collate_feature_clips, decode_feature_sample
from trainer.data.stream import ClipStream, WorkerPlan, batches_per_rank, feature_batches

__all__ = [
    "BACKGROUND", "COUNTER_NAMES", "DATA_KINDS", "SAMPLE_MODALITIES", "SKIP_REASONS", "ClipStream", "CorruptSample",
    "DataConfig", "DecodeConfig", "DecodedSample", "FeatureClip", "SampleInfo", "WholeClip", "WorkerPlan",
    "batches_per_rank", "clip_seconds", "collate_feature_clips", "collate_samples", "decode_feature_sample",
    "decode_sample", "decode_whole_sample", "feature_batches", "probe_sample",
]
