"""The streaming data path: WebDataset shards of clips or of features -> batches on every rank.

    from trainer.data import ClipStream, DataConfig
    stream = ClipStream(DataConfig(urls="data/train-{000000..000009}.tar", batch_size=8))
    for batch in stream:          # one epoch; every rank gets len(stream) batches
        ...

Every batch is a ``Batch`` (trainer/data/batch.py: its keys, dtypes and shapes, clip and feature batches alike).
``feature_batches(cfg, backbones)`` gives feature batches from either kind of shards: for clip shards it runs the
frozen backbones on each clip batch in the training process.
"""

from trainer.data.batch import Batch
from trainer.data.collate import COUNTER_NAMES, collate_samples
from trainer.data.decode import (
    BACKGROUND, SAMPLE_MODALITIES, DecodedSample, SampleInfo, WholeClip, decode_sample, decode_whole_sample,
    probe_sample,
)
from trainer.data.media_decoders import SKIP_REASONS, CorruptSample, clip_seconds
from trainer.configs.data import DATA_KINDS, DataConfig, DecodeConfig
from trainer.data.features import FeatureClip, collate_feature_clips, decode_feature_sample
from trainer.data.stream import ClipStream, WorkerPlan, batches_per_rank, feature_batches

__all__ = [
    "BACKGROUND", "COUNTER_NAMES", "DATA_KINDS", "SAMPLE_MODALITIES", "SKIP_REASONS", "Batch", "ClipStream",
    "CorruptSample", "DataConfig", "DecodeConfig", "DecodedSample", "FeatureClip", "SampleInfo", "WholeClip",
    "WorkerPlan", "batches_per_rank", "clip_seconds", "collate_feature_clips", "collate_samples",
    "decode_feature_sample", "decode_sample", "decode_whole_sample", "feature_batches", "probe_sample",
]
