"""Clips held in memory as feature tensors: the data source of programs that make their own data.

The synthetic benchmarks (``trainer.programs.bench``) generate per-segment features instead of reading shards; they
train through the main job's loop (``trainer.loop.train(cfg, accelerator, memory=features)``, with
``data.kind = "memory"``) and this stream hands that loop the same feature batches a feature-shard stream
would: the modality tensors and masks, ``is_pad`` (always False) and the ``skipped`` counters (always zero).

Epoch plan, identical on every rank without communication: a permutation of the n clips seeded by
(``seed``, epoch) is cut into global batches of ``batch_size × world_size`` clips (an incomplete last one is
dropped), and rank r takes rows ``[r·batch_size, (r + 1)·batch_size)`` of each. The ranks together therefore
see exactly the batches one process with the global batch size sees. Resumable: the state is (seed, epoch,
position) plus the layout it is only valid with.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from trainer.data.batch import Batch
from trainer.data.collate import COUNTER_NAMES
from trainer.data.stream import stable_seed


class MemoryStream:
    """This rank's feature batches of in-memory clips, one epoch per ``iter()`` (see the module docstring).

    ``features``: ``(n ...)`` tensors keyed like a feature batch (``audio (n t d)``, ``video (n t d)`` or
    ``(n t p d)``, ``text (n l d)`` with ``text_mask (n l)``...); every tensor holds the same n clips.
    """

    def __init__(self, features: Mapping[str, Tensor], batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        sizes = {name: value.shape[0] for name, value in features.items()}
        if not sizes or len(set(sizes.values())) != 1:
            raise ValueError(f"in-memory features must hold the same number of clips in every tensor, got {sizes}")
        self.clips = next(iter(sizes.values()))
        if batch_size < 1 or self.clips < batch_size * world_size:
            raise ValueError(f"{self.clips} in-memory clips cannot fill one global batch of {batch_size} x "
                             f"{world_size} ranks")
        self.features, self.batch_size = dict(features), batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.epoch, self.position = seed, 0, 0

    @property
    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-segment shape of every modality (mask tensors excluded): what the model's input dims derive from."""
        return {name: tuple(value.shape[2:]) for name, value in self.features.items() if value.is_floating_point()}

    def __len__(self) -> int:
        return self.clips // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[Batch]:
        total = len(self)
        order = torch.randperm(self.clips, generator=torch.Generator().manual_seed(stable_seed(self.seed, self.epoch)))
        while self.position < total:
            start = (self.position * self.world_size + self.rank) * self.batch_size
            rows = order[start:start + self.batch_size]
            self.position += 1
            yield {name: value[rows] for name, value in self.features.items()} | {
                "is_pad": torch.zeros(self.batch_size, dtype=torch.bool),
                "skipped": torch.zeros(len(COUNTER_NAMES), dtype=torch.int64)}
        self.epoch, self.position = self.epoch + 1, 0

    def skip_totals(self, all_reduce_fn=lambda t: t) -> dict[str, int]:
        """Nothing is ever skipped; the collective still runs so every rank issues the same calls."""
        totals = all_reduce_fn(torch.zeros(len(COUNTER_NAMES), dtype=torch.int64))
        return {name: int(v) for name, v in zip(COUNTER_NAMES, totals.tolist())}

    def _layout(self) -> dict[str, int]:
        return {"rank": self.rank, "world_size": self.world_size, "batch_size": self.batch_size, "clips": self.clips}

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, **self._layout()}

    def load_state_dict(self, state: Mapping) -> None:
        for name, ours in self._layout().items():
            if state[name] != ours:
                raise ValueError(f"in-memory stream state has {name}={state[name]} but this stream has {ours}")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
