"""The streaming data path: WebDataset shards of clips or of features -> batches on every rank.

    from trainer.configs.data import DataConfig
    from trainer.data.stream import ClipStream
    stream = ClipStream(DataConfig(urls="data/train-{000000..000009}.tar", batch_size=8))
    for batch in stream:          # one epoch; every rank gets len(stream) batches
        ...

Every batch is a ``Batch`` (trainer/data/batch.py: its keys, dtypes and shapes, clip and feature batches alike).
``feature_batches(cfg, backbones)`` (stream.py) gives feature batches from either kind of shards: for clip shards it
runs the frozen backbones on each clip batch in the training process. The package imports nothing itself: its
torch-free modules (sources.py, manifest.py) serve the supervisor's checks without the training stack.
"""
