"""Decoded batches of raw clip samples, read whole input unit by whole input unit (a shard URL, or the media files
of one folder): what runs a frozen model or frozen backbones over clips outside training (``shards.extract``'s
feature shards, ``trainer.programs.encode``'s codes, ``trainer.eval.retrieval``'s zero-shot retrieval). A corrupt
clip is skipped and recorded (``skip_record``) as the training stream skips it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from trainer.configs.data import DecodeConfig
from trainer.data.collate import collate_samples
from trainer.data.decode import decode_sample
from trainer.data.media_decoders import CorruptSample, free_unreachable_readers

# The clips of one input unit given as files rather than a shard: (KEY, {member suffix: file}) in order, as
# shards.write.collect_clips finds them (``trainer.programs.encode`` reads media files this way).
ClipFiles = Sequence[tuple[str, Mapping[str, Path]]]


def raw_samples(source: str | ClipFiles) -> Iterator[dict]:
    """The raw samples (member suffix -> bytes, ``__key__``, ``__url__``) of a shard URL, or of clip files read
    into the very samples ``shards.write`` would pack them into."""
    if isinstance(source, str):
        yield from wds.tarfile_to_samples()(iter([{"url": source}]))
        return
    for key, files in source:
        yield {"__key__": key, "__url__": str(next(iter(files.values())).parent),
               **{member: path.read_bytes() for member, path in files.items()}}


def skip_record(err: CorruptSample) -> dict[str, str]:
    """What a manifest says of a skipped input: where (``shard:key.member`` or ``folder:key.member``), the reason
    (one of ``trainer.data.media_decoders.SKIP_REASONS``) and the decoder's detail."""
    return {"where": err.where, "reason": err.reason, "detail": err.detail}


def collate_batch(clips: list) -> dict:
    """Decoded clips of one length -> a batch (``collate_samples``, none of them a pad)."""
    return collate_samples(clips, [False] * len(clips))


class ShardBatches(IterableDataset):
    """Decoded clip batches of whole input units (a shard URL, or ``ClipFiles``); a batch never spans two units.

    Yields ``(unit index, batch or None, skips, last)``: ``skips`` are the ``skip_record`` of the clips skipped since
    the previous yield; ``last`` closes the unit (its batch may be None when the unit's tail was all corrupt).
    DataLoader worker w takes this rank's units ``[w::W]``. ``decoder`` decodes the ``modalities`` of a raw
    sample (default: the training's window, ``decode_sample``) and ``collate`` makes the batch of ``batch_size``
    decoded clips (default: ``collate_batch``; ``list`` keeps the clips, e.g. whole clips of several lengths).
    """

    def __init__(self, shards: list[tuple[int, str | ClipFiles]], decode: DecodeConfig, batch_size: int,
                 modalities: Sequence[str], decoder: Callable[..., Any] = decode_sample,
                 collate: Callable[[list], Any] = collate_batch):
        super().__init__()
        self.shards, self.decode, self.batch_size = shards, decode, batch_size
        self.modalities, self.decoder, self.collate = tuple(modalities), decoder, collate

    def __iter__(self) -> Iterator[tuple[int, dict | None, int, bool]]:
        info = get_worker_info()
        mine = self.shards[info.id::info.num_workers] if info is not None else self.shards
        for index, source in mine:
            clips, skips = [], []
            for raw in raw_samples(source):
                try:
                    clips.append(self.decoder(raw, self.decode, self.modalities))
                except CorruptSample as err:
                    print(f"[cmg] skipping {err}", file=sys.stderr)
                    skips.append(skip_record(err))
                    continue
                if len(clips) == self.batch_size:
                    yield index, self.collate(clips), skips, False
                    clips, skips = [], []
            yield index, self.collate(clips) if clips else None, skips, True


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def decoding_loader(batches: ShardBatches, num_workers: int) -> DataLoader:
    """A DataLoader whose ``num_workers`` workers (one thread each) produce ``batches``; make it where the loop over it
    starts, since the loop forks the workers (``free_unreachable_readers`` runs here, first)."""
    if num_workers > 0:
        free_unreachable_readers()
    return DataLoader(batches, batch_size=None, num_workers=num_workers, worker_init_fn=_one_thread)
