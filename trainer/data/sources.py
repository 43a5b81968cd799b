"""Which shards a job reads: a URL pattern -> the shard list, and the data settings a saved stream position refers
to. Torch-free (as trainer/data/manifest.py is), so that the job's checks run in the supervisor without the training
stack (trainer/job.py)."""

from __future__ import annotations

import glob
import hashlib

from braceexpand import braceexpand

from trainer.configs.data import DataConfig


def expand_shard_urls(urls: str) -> list[str]:
    """Brace patterns and local globs (``'::'``-separated) -> the list of shard URLs.

    A part with a glob character (``*?[``) that is a local path is replaced by its matches, sorted (so the paper
    configs can name ``feats/vggsound40k/train-*.tar`` whatever shard count the conversion wrote); every other
    part is brace-expanded (``train-{000000..000009}.tar``, as webdataset expands it)."""
    shards: list[str] = []
    for part in urls.split("::"):
        if any(c in part for c in "*?[") and "://" not in part and not part.startswith("pipe:"):
            shards.extend(sorted(glob.glob(part)))
        else:
            shards.extend(braceexpand(part))
    return shards


def data_source(cfg: DataConfig) -> dict[str, str | int | bool]:
    """The data settings a saved stream position refers to, by the config key (``urls`` as a digest of the
    expanded shard list). A resume must keep them; one with another layout re-splits the epoch's rest."""
    urls = hashlib.sha256("\n".join(expand_shard_urls(cfg.urls)).encode()).hexdigest()[:16]
    return {"urls": urls, "shuffle_buffer": cfg.shuffle_buffer, "shuffle_shards": cfg.shuffle_shards,
            "resampled": cfg.resampled, "epoch_batches": cfg.epoch_batches}
