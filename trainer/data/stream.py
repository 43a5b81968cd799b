"""WebDataset shards -> decoded batches, split over ranks and DataLoader workers, resumable.

One stream for both kinds of shards (``DataConfig.kind``): "clips" (samples of any subset of video, audio, image
and text [+ json], the modalities a job reads decoded by ``decode.decode_sample`` and stacked by
``collate.collate_samples``) and "features" (the ``.npy`` feature
shards that ``python -m shards.extract`` writes, decoded by ``features.decode_feature_sample`` with the
shapes their manifest lists and stacked by ``features.collate_feature_clips``). Everything below holds
for both: only the per-sample decoder and the collate function differ.

Epoch plan (identical on every rank, computed without communication):
- non-resampled: the shard list is shuffled with a seed of (seed, epoch); rank r takes shards
  ``[r::world]`` and its logical worker l takes ``[r::world][l::W]`` (W = max(1, num_workers)): shards
  are disjoint across ranks and workers and together cover the list. The manifest's per-shard sample
  counts give every (rank, worker) its sample count n.
- every rank yields the same number N of batches, all of exactly ``batch_size`` clips. Batch i of a
  rank comes from its logical worker i mod W, so worker l yields ``len(range(l, N, W))`` batches; N is
  the smallest number that lets every worker of every rank deliver all of its samples (``batches_per_rank``).
  A worker whose own samples run out first fills the rest of its batches by reading its shards again;
  those repeated clips have ``is_pad = True``. So each epoch delivers every good sample exactly once with
  ``is_pad = False`` on exactly one rank (the DistributedSampler policy, with the repeats marked), and no
  rank waits for another at the end of an epoch.
- resampled: every worker draws shards with replacement from the whole list (``wds.ResampledShards``,
  seeded by seed, epoch, rank and logical worker); an epoch is ``epoch_batches`` batches per rank.

Inside a worker, webdataset reads the tars (``tarfile_to_samples``: local paths or ``pipe:`` URLs) and
shuffles raw samples in a buffer with a seeded RNG; decoding comes after the shuffle, so skipping a
consumed prefix needs no decoding.

Resumption: each batch carries its logical worker and that worker's cursor (pass over its shards, raw
samples consumed in that pass). ``ClipStream`` keeps, per logical worker, the cursor of the last batch it
handed out, plus (seed, epoch, position). A restored stream restarts its workers with logical roles
rotated by ``position`` (physical worker k plays logical worker (k + position) mod W, so the DataLoader's
round-robin, which starts at worker 0, yields batch ``position`` first), and each worker skips its raw
prefix. The batches that follow are exactly those the uninterrupted stream would have yielded.

Elastic resumption (another world size, ``num_workers`` or ``batch_size``; non-resampled): the samples of all
shards are numbered (shard i's are ``offsets[i] ..`` in read order), and each rank records which samples of
the current epoch it has consumed: read into a batch it handed out or skipped as corrupt, and, once a worker
is through its shards' first pass, all of them (those a truncated shard lost included, counted as unreadable
then). ``load_resplit`` takes every old rank's state: the union of what they consumed is *excluded* from the
rest of the epoch, which is planned again for the new layout as above from the samples left (a worker leaves
out the excluded ones before its shuffle buffer). So every sample of that epoch is still delivered unflagged
exactly once over the old and new ranks together. Resampled mode keeps the epoch's position: each rank draws
its remaining batches afresh (with replacement anyway).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import itertools
import random
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from trainer import distributed
from trainer.configs.data import DataConfig
from trainer.data.batch import Batch
from trainer.data.cache import DecodeCache
from trainer.data.collate import COUNTER_INDEX, COUNTER_NAMES, collate_samples
from trainer.data.decode import CLIP_MODALITIES, MEDIA_MODALITIES, TIMED_MODALITIES, check_modalities, decode_sample
from trainer.data.media_decoders import SKIP_REASONS, CorruptSample, free_unreachable_readers
from trainer.data.features import collate_feature_clips, decode_feature_sample, feature_layout
from trainer.data.manifest import ShardManifest
from trainer.data.sources import data_source, expand_shard_urls

if TYPE_CHECKING:
    from trainer.backbones import FrozenBackbones



@dataclass
class WorkerPlan:
    shards: list[str]  # this logical worker's shards (resampled: the pool it draws from)
    samples: int  # samples the manifest lists for them (-1 in resampled mode)
    batches: int  # batches it yields in the epoch


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` that is the same in every process and Python run (fits an int64)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def batches_per_rank(samples: list[list[int]], batch_size: int, finished_ok: bool = False) -> int:
    """Smallest N with len(range(l, N, W)) >= ceil(n[r][l] / B) for every rank r and logical worker l.

    ``samples[r][l]`` is n, the samples of worker l on rank r; W = len(samples[r]). Worker l yields
    the batches i < N with i mod W == l, and len(range(l, N, W)) >= k  <=>  N >= W·(k − 1) + l + 1.
    ``finished_ok``: n = 0 is a worker whose shards an elastic resume found consumed (it needs no batch and
    pads any it gets); otherwise a worker without samples is an error.
    """
    need = 0
    for row in samples:
        workers = len(row)
        for logical, n in enumerate(row):
            if n < 0 or (n == 0 and not finished_ok):
                raise ValueError(f"worker {logical} of a rank has no samples (manifest counts {row})")
            need = max(need, workers * (-(-n // batch_size) - 1) + logical + 1)
    return need


_INDEX = "__index__"   # a raw sample's number in the epoch's sample space (non-resampled), added before the shuffle


@dataclass(frozen=True)
class SampleNumbering:
    """Numbers every sample of the shard list: shard i's samples, in read order, are ``offsets[i]`` to
    ``offsets[i + 1] - 1`` (``offsets`` from the manifest's per-shard counts)."""

    shard: dict[str, int]   # url -> its index in the shard list
    offsets: np.ndarray     # (shards + 1) int64

    @classmethod
    def of(cls, urls: list[str], counts: list[int]) -> SampleNumbering:
        twice = sorted(url for url, n in collections.Counter(urls).items() if n > 1)
        if twice:
            raise ValueError(f"DataConfig.urls lists {len(twice)} shards more than once, e.g. {twice[:3]}")
        return cls({url: i for i, url in enumerate(urls)}, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def span(self, url: str) -> slice:
        i = self.shard[url]
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def per_shard(self, flags: np.ndarray) -> np.ndarray:
        """How many of each shard's samples ``flags`` (one bool per sample) marks."""
        cumulative = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
        return cumulative[self.offsets[1:]] - cumulative[self.offsets[:-1]]

    def number(self, samples: Iterator[dict], excluded: np.ndarray) -> Iterator[dict]:
        """``samples`` (raw, in read order) with their number under ``_INDEX``, less those ``excluded`` marks."""
        ordinals: dict[str, int] = {}
        for sample in samples:
            url = sample["__url__"]
            ordinal = ordinals[url] = ordinals.get(url, -1) + 1
            where = self.span(url)
            if where.start + ordinal >= where.stop:
                raise RuntimeError(f"shard {url} holds more than the {where.stop - where.start} samples its manifest "
                                   "lists; rewrite it")
            if not excluded[where.start + ordinal]:
                yield sample | {_INDEX: where.start + ordinal}


def _packed(flags: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.packbits(flags))


def _unpacked(packed: torch.Tensor, size: int) -> np.ndarray:
    if packed.numel() != -(-size // 8):
        raise ValueError(f"stream state marks {packed.numel() * 8} samples, the shards hold {size}")
    return np.unpackbits(packed.numpy(), count=size).astype(bool)


class _EpochSource(IterableDataset):
    """One rank's batches for one epoch from ``position`` on; runs inside each DataLoader worker."""

    def __init__(self, cfg: DataConfig, decode: Callable[[dict], Any], collate: Callable[[list, list[bool]], dict],
                 seed: int, epoch: int, rank: int, plans: list[WorkerPlan], total: int, position: int,
                 cursors: list[list[int]], numbering: SampleNumbering | None, excluded: np.ndarray):
        super().__init__()
        self.cfg, self.decode, self.collate = cfg, decode, collate
        self.seed, self.epoch, self.rank, self.plans = seed, epoch, rank, plans
        self.total, self.position, self.cursors = total, position, cursors
        self.numbering, self.excluded = numbering, excluded

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        workers = len(self.plans)
        logical = (physical + self.position) % workers
        consumed = len(range(logical, self.position, workers))  # this worker's batches already handed out
        return self._batches(logical, consumed, tuple(self.cursors[logical]))

    def _raw_samples(self, logical: int, pass_index: int) -> Iterator[dict]:
        cfg, plan = self.cfg, self.plans[logical]
        seed = stable_seed(self.seed, self.epoch, self.rank, logical, pass_index)
        if cfg.resampled:
            shards = iter(wds.ResampledShards(plan.shards, seed=seed, deterministic=True, worker_seed=lambda: 0))
        else:
            shards = iter([{"url": url} for url in plan.shards])
        samples = wds.tarfile_to_samples(handler=_warn_and_continue)(shards)
        if self.numbering is not None and pass_index == 0:   # padding passes re-read everything, excluded or not
            samples = self.numbering.number(samples, self.excluded)
        if cfg.shuffle_buffer > 1:
            samples = wds.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_buffer, rng=random.Random(seed))(samples)
        return samples

    def _batches(self, logical: int, consumed: int, cursor: tuple[int, int]) -> Iterator[dict]:
        cfg, plan = self.cfg, self.plans[logical]
        todo = plan.batches - consumed
        pass_index, raw_index = cursor
        skipped = np.zeros(len(COUNTER_NAMES), np.int64)
        taken: list[int] = []  # numbers of the epoch's samples read since the previous batch (delivered or skipped)
        clips: list = []  # DecodedSample (kind clips) or FeatureClip (kind features)
        # of an item's several captions, each epoch trains on the one a seed of (seed, epoch) picks (pick_caption),
        # and on the window of a long clip that seed places (decode.window_start)
        decode = functools.partial(self.decode, sample_seed=stable_seed(self.seed, self.epoch)) \
            if self.cfg.kind == "clips" else self.decode
        pads: list[bool] = []
        while todo > 0:
            # Pass 0 is the epoch's real data; later passes (non-resampled only) re-read it as padding,
            # whose clips are flagged and whose skips are not counted again.
            real = cfg.resampled or pass_index == 0
            samples = itertools.islice(self._raw_samples(logical, pass_index), raw_index, None)
            whole_pass, good_in_pass = raw_index == 0, 0
            for raw in samples:
                raw_index += 1
                if real and not cfg.resampled and raw_index > plan.samples:
                    raise RuntimeError(_more_than_manifest(plan))
                index = raw.pop(_INDEX, None)   # numbered in pass 0 of a non-resampled epoch only
                if real and index is not None:
                    taken.append(index)
                try:
                    clip = decode(raw)
                except CorruptSample as err:
                    if real:
                        skipped[COUNTER_INDEX[err.reason]] += 1
                        _name_skip(err, int(skipped[:len(SKIP_REASONS)].sum()))
                    continue
                good_in_pass += 1
                if real:
                    skipped[COUNTER_INDEX["ignored_member"]] += clip.ignored_members
                clips.append(clip)
                pads.append(not real)
                if len(clips) < cfg.batch_size:
                    continue
                todo -= 1
                if todo == 0 and real and not cfg.resampled and next(samples, None) is not None:
                    raise RuntimeError(_more_than_manifest(plan))
                batch = self.collate(clips, pads)
                batch["skipped"] = torch.from_numpy(skipped)
                batch["_worker"], batch["_cursor"] = logical, (pass_index, raw_index)
                batch["_taken"] = torch.tensor(taken, dtype=torch.int64)
                yield batch
                clips, pads, skipped, taken = [], [], np.zeros_like(skipped), []
                if todo == 0:
                    return
            # Only a finite pass gets here: the manifest's count minus what the reader produced is what
            # a missing or truncated shard lost.
            if real:
                skipped[COUNTER_INDEX["unreadable"]] += plan.samples - raw_index
            elif whole_pass and good_in_pass == 0:
                raise RuntimeError(f"no decodable sample in shards {plan.shards} to fill the epoch's last batches")
            pass_index, raw_index = pass_index + 1, 0


def _more_than_manifest(plan: WorkerPlan) -> str:
    return f"shards {plan.shards} hold more than the {plan.samples} samples their manifest lists; rewrite it"


NAMED_SKIPS = 20   # skipped samples a worker names on stderr per batch window before it only counts them


def _name_skip(err: CorruptSample, since_last_batch: int) -> None:
    """Name a skipped sample (shard:key.member: reason: detail) on stderr; past ``NAMED_SKIPS`` since the worker's
    previous batch, say once that the rest are only counted (``data/skipped_<reason>``; ``shards.inspect`` lists
    every one)."""
    if since_last_batch <= NAMED_SKIPS:
        print(f"[trainer.data] skipping {err}", file=sys.stderr)
    elif since_last_batch == NAMED_SKIPS + 1:
        print("[trainer.data] more skipped samples before this worker's next batch: counted in data/skipped_<reason>, "
              "not named (python -m shards.inspect lists every one)", file=sys.stderr)


def _warn_and_continue(exn: Exception) -> bool:
    """webdataset handler: report an unreadable shard or tar member and go on (the non-resampled stream
    counts the samples it lost as "unreadable", from the manifest)."""
    print(f"[trainer.data] skipping unreadable shard data: {exn!r}", file=sys.stderr)
    return True


# The stop signals of trainer/runtime.py (StopRequest) and the terminal's ^C. A launcher or `scancel` sends them to
# the rank's whole process group: a worker that died of one would crash the rank ("DataLoader worker ... killed
# by signal") before the rank could agree on the stop and checkpoint. Workers leave them to their rank, which
# ends them when it ends.
WORKER_IGNORED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Around the fork of the DataLoader workers: they start with the stop signals blocked.

    torch's worker loop installs its own SIGTERM handler (print, then die) before it calls ``worker_init_fn``; a
    signal to the process group in between killed a worker that an epoch had just started (seen in CI). A blocked
    signal stays pending in the new worker until ``_worker_init`` ignores it, which discards it. The rank's own
    mask is restored at once, so a signal sent to the rank meanwhile is delivered to it then, not lost.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_IGNORED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    for sig in WORKER_IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_IGNORED_SIGNALS)


class ClipStream:
    """The rank's batches, one epoch per ``iter()``; stateful (seed, epoch, position) and resumable.

    ``cfg.kind`` picks the shards' decoder and collate function (clip or feature ``Batch``es,
    trainer/data/batch.py). ``transform``, if given, maps each batch in this process after the
    stream's bookkeeping (e.g. frozen backbones on the GPU, see ``feature_batches``). ``modalities`` (kind "clips"):
    those decoded into each batch (``trainer.data.decode.SAMPLE_MODALITIES``; a sample lacking one is skipped as
    "missing_member"); without ``text`` among them a caption is read where present (None otherwise). json and txt
    members are optional for kind "features". ``whole_clips`` (kind "clips"): every second of each clip instead of a
    training window (evaluation), batches padded to their longest clip with a ``segment_mask``.

    Iterating to the end of an epoch advances ``epoch``; stopping early (``break``) keeps the position,
    and the next ``iter()`` continues from the next unconsumed batch (a state saved after the last batch
    of an epoch resumes as an empty iteration that rolls over to the next epoch). ``len()`` is the
    current epoch's batch count; epochs differ when the shard order changes which worker reads what.

    A state of the same layout resumes exactly (``load_state_dict``); the states of every rank of another
    layout continue the epoch re-split over this one (``needs_resplit``, ``load_resplit``; module docstring).
    """

    def __init__(self, cfg: DataConfig, rank: int | None = None, world_size: int | None = None,
                 transform: Callable[[Batch], Batch] | None = None, modalities: Sequence[str] = CLIP_MODALITIES,
                 whole_clips: bool = False):
        cfg.validate()
        self.cfg, self.transform = cfg, transform
        self.rank = distributed.rank() if rank is None else rank
        self.world_size = distributed.world_size() if world_size is None else world_size
        self.workers = max(1, cfg.num_workers)
        self.urls = expand_shard_urls(cfg.urls)
        if not self.urls:
            raise ValueError(f"DataConfig.urls {cfg.urls!r} expands to no shard")
        if not cfg.resampled and len(self.urls) < self.world_size * self.workers:
            raise ValueError(f"{len(self.urls)} shards cannot give each of {self.world_size} ranks x "
                             f"{self.workers} workers its own shard: write smaller shards (--max-count) "
                             "or use fewer workers")
        # counts for the epoch plan (non-resampled); feature shapes for kind "features" (any mode)
        needs_manifest = cfg.kind == "features" or not cfg.resampled
        manifest = ShardManifest.of_shards(self.urls, cfg.manifest) if needs_manifest else None
        self.counts = None if manifest is None or cfg.resampled else manifest.counts(self.urls)
        self.numbering = None if cfg.resampled else SampleNumbering.of(self.urls, self.counts)
        # picklable (module-level functions and partials), should a DataLoader ever spawn its workers
        if cfg.kind == "features":
            layout = feature_layout(manifest, cfg.feature_modalities)
            self.decode, self.collate = functools.partial(decode_feature_sample, layout=layout), collate_feature_clips
        else:
            if manifest is not None and manifest.is_features:
                raise ValueError(f"manifest {manifest.where} describes feature shards (format {manifest.format!r}), "
                                 "but DataConfig.kind is 'clips': set DataConfig.kind='features'")
            cache = DecodeCache(cfg.decode_cache, cfg.decode) if cfg.decode_cache else None
            modalities = check_modalities(modalities, "the stream's modalities")
            self.decode = functools.partial(decode_sample, cfg=cfg.decode, modalities=modalities, cache=cache,
                                            whole=whole_clips)
            # a job that pads short clips marks the real seconds of every clip batch (config-wide: every rank's
            # batches carry the same keys, which the in-batch negatives' all-gather relies on)
            timed = any(m in TIMED_MODALITIES for m in modalities)
            self.collate = functools.partial(collate_samples,
                                             segment_mask=timed and (cfg.decode.pads or whole_clips))
        self.seed, self.epoch, self.position = cfg.seed, 0, 0
        self.cursors = self._fresh_cursors()
        self.skipped = np.zeros(len(COUNTER_NAMES), np.int64)  # this rank's totals over all batches handed out
        # one flag per sample of the shard list (none in resampled mode), for the current epoch: the samples this
        # rank consumed, and those consumed before an elastic resume re-planned the epoch without them
        samples = self.numbering.size if self.numbering is not None else 0
        self.consumed, self.excluded = np.zeros(samples, bool), np.zeros(samples, bool)

    def _fresh_cursors(self) -> list[list[int]]:
        return [[0, 0] for _ in range(self.workers)]

    def _next_epoch(self) -> None:
        self.epoch, self.position, self.cursors = self.epoch + 1, 0, self._fresh_cursors()
        self.consumed[:], self.excluded[:] = False, False

    def plan(self, epoch: int) -> tuple[int, list[WorkerPlan]]:
        """(batches per rank N, this rank's per-logical-worker plans) for ``epoch``."""
        cfg, w = self.cfg, self.workers
        if cfg.resampled:
            total = cfg.epoch_batches
            return total, [WorkerPlan(list(self.urls), -1, len(range(worker, total, w))) for worker in range(w)]
        order = list(range(len(self.urls)))
        if cfg.shuffle_shards:
            random.Random(stable_seed(self.seed, epoch)).shuffle(order)
        split = [[order[r::self.world_size][worker::w] for worker in range(w)] for r in range(self.world_size)]
        replanned = epoch == self.epoch and self.excluded.any()   # by an elastic resume: without those samples
        counts = np.array(self.counts) - (self.numbering.per_shard(self.excluded) if replanned else 0)
        samples = [[int(sum(counts[i] for i in shard_ids)) for shard_ids in row] for row in split]
        total = batches_per_rank(samples, cfg.batch_size, finished_ok=replanned)
        plans = [WorkerPlan([self.urls[i] for i in split[self.rank][worker]], samples[self.rank][worker],
                            len(range(worker, total, w))) for worker in range(w)]
        return total, plans

    def __len__(self) -> int:
        return self.plan(self.epoch)[0]

    def __iter__(self) -> Iterator[Batch]:
        total, plans = self.plan(self.epoch)
        source = _EpochSource(self.cfg, self.decode, self.collate, self.seed, self.epoch, self.rank, plans, total,
                              self.position, [list(c) for c in self.cursors], self.numbering, self.excluded)
        # A private generator: DataLoader draws its workers' base seed from it, so starting an epoch (or a
        # resumed one) never advances the global torch RNG that dropout uses: resume stays bit-exact.
        generator = torch.Generator().manual_seed(stable_seed(self.seed, self.epoch, self.rank, "loader"))
        loader = DataLoader(source, batch_size=None, num_workers=self.cfg.num_workers, worker_init_fn=_worker_init,
                            generator=generator)
        if self.cfg.num_workers > 0:
            free_unreachable_readers()
        with _stop_signals_held():
            batches = iter(loader)   # forks the workers
        for batch in batches:
            worker = batch.pop("_worker")
            self.cursors[worker] = [int(v) for v in batch.pop("_cursor")]
            self.consumed[batch.pop("_taken").numpy()] = True
            self.position += 1
            # a worker past its first pass (or done) has consumed all of its shards, samples a truncated shard
            # lost included (its pass counted them as unreadable)
            finished = self.cursors[worker][0] > 0 or len(range(worker, self.position, self.workers)) == \
                plans[worker].batches
            if finished and self.numbering is not None:
                for url in plans[worker].shards:
                    self.consumed[self.numbering.span(url)] = True
            self.skipped += batch["skipped"].numpy()
            yield batch if self.transform is None else self.transform(batch)
        if self.position != total:
            raise RuntimeError(f"epoch {self.epoch} ended after {self.position} of {total} batches")
        self._next_epoch()

    def skip_totals(self, all_reduce_fn: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, int]:
        """Counters summed over the batches handed out; pass ``distributed.all_reduce_sum_`` for all ranks."""
        totals = all_reduce_fn(torch.from_numpy(self.skipped.copy()))
        return {name: int(v) for name, v in zip(COUNTER_NAMES, totals.tolist())}

    def _source(self) -> dict[str, int]:
        """What any resumed stream must read too (``data_source``): the same shards, the same way."""
        return {"shards_fingerprint": stable_seed(*data_source(self.cfg).values())}

    def _layout(self) -> dict[str, int]:
        """What the cursors and position mean only together with: an exactly resumed stream must match it."""
        cfg = self.cfg
        return {"rank": self.rank, "world_size": self.world_size, "num_workers": cfg.num_workers,
                "batch_size": cfg.batch_size}

    def state_dict(self) -> dict:
        return {
            "seed": self.seed, "epoch": self.epoch, "position": self.position,
            "cursors": [list(c) for c in self.cursors], "skipped": dict(zip(COUNTER_NAMES, self.skipped.tolist())),
            "consumed": _packed(self.consumed), "excluded": _packed(self.excluded), **self._source(), **self._layout(),
        }

    def _check(self, state: dict, ours: dict[str, int], meaning: str) -> None:
        for name, value in ours.items():
            if state[name] != value:
                raise ValueError(f"stream state has {name}={state[name]} but this stream has {value}: {meaning}")

    def needs_resplit(self, state: dict) -> bool:
        """Whether this rank's saved ``state`` is of another layout (world size, workers, batch size), so that
        resuming needs every rank's state (``load_resplit``); a state of other data is an error."""
        self._check(state, self._source(), "it was saved reading other shards or with other shuffle settings")
        return any(state[name] != value for name, value in self._layout().items())

    def load_state_dict(self, state: dict) -> None:
        self._check(state, self._source() | self._layout(), "the saved position cannot be resumed exactly")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self.cursors = [[int(p), int(r)] for p, r in state["cursors"]]
        self.skipped = saved_counters(state["skipped"])
        if len(self.cursors) != self.workers:
            raise ValueError(f"stream state has {len(self.cursors)} cursors, expected {self.workers}")
        self.consumed = _unpacked(state["consumed"], len(self.consumed))
        self.excluded = _unpacked(state["excluded"], len(self.excluded))

    def load_resplit(self, states: list[dict]) -> None:
        """Continue the epoch that ``states`` (every rank's, of another layout, in rank order) were in, re-split over
        this stream's layout: the samples any of them consumed are left out of the epoch's new plan (resampled mode:
        the epoch's remaining batches are drawn afresh). The skip counters of all old ranks go to rank 0, so
        their sum over ranks carries on. Not bit-exact: which clips share a batch and their order differ."""
        for state in states:
            self._check(state, self._source(), "it was saved reading other shards or with other shuffle settings")
        positions = {(int(s["seed"]), int(s["epoch"]), int(s["position"])) for s in states}
        if len(positions) != 1:
            raise ValueError(f"the ranks' stream states are at different (seed, epoch, position): {sorted(positions)}")
        (self.seed, self.epoch, position), = positions
        self.cursors = self._fresh_cursors()
        self.position = position if self.cfg.resampled else 0   # a re-planned epoch starts at its first batch
        self.excluded = np.zeros_like(self.excluded)
        for state in states:
            self.excluded |= _unpacked(state["excluded"], len(self.excluded))
            self.excluded |= _unpacked(state["consumed"], len(self.consumed))
        self.consumed = np.zeros_like(self.consumed)
        skipped = sum(saved_counters(s["skipped"]) for s in states)
        self.skipped = skipped if self.rank == 0 else np.zeros_like(skipped)


# the counters of a stream state saved before they were kept by name (a list in this order)
_POSITIONAL_COUNTERS = ("missing_member", "empty_member", "bad_video", "bad_audio", "bad_json", "bad_text",
                        "bad_feature", "unreadable", "ignored_member")


def saved_counters(saved: Mapping[str, int] | list[int]) -> np.ndarray:
    """A state's skip counters in ``COUNTER_NAMES`` order: saved by name (a reason it lacks counts 0), or as the
    positional list of older checkpoints."""
    if isinstance(saved, list):
        if len(saved) != len(_POSITIONAL_COUNTERS):
            raise ValueError(f"stream state has {len(saved)} counters, expected {len(_POSITIONAL_COUNTERS)}")
        saved = dict(zip(_POSITIONAL_COUNTERS, saved))
    unknown = sorted(set(saved) - set(COUNTER_NAMES))
    if unknown:
        raise ValueError(f"stream state counts skip reasons {unknown} this version does not know: "
                         f"{list(COUNTER_NAMES)}")
    return np.array([int(saved.get(name, 0)) for name in COUNTER_NAMES], np.int64)


def _media_to_features(backbones: FrozenBackbones, batch: Batch, window: int | None = None) -> Batch:
    """A clip batch with its decoded media replaced by the backbones' features (the feature-shard keys). ``window``:
    video and audio longer than that many seconds (whole clips) go through the backbones in consecutive windows of
    it, zero-padded past the end, as training gave them its windows (a backbone that attends across seconds, e.g. an
    audio encoder with ``audio_window: clip``, never sees more than a window); per-second backbones give the same
    features either way."""
    timed = [m for m in TIMED_MODALITIES if m in backbones.modalities]
    seconds = max((batch[m].shape[1] for m in timed), default=0)
    if window is None or seconds <= window:
        features = backbones.encode(batch)
    else:
        windows = -(-seconds // window)
        cut = {}
        for m in timed:
            x = batch[m]
            x = torch.cat([x, x.new_zeros(x.shape[0], windows * window - seconds, *x.shape[2:])], dim=1)
            cut[m] = x.reshape(x.shape[0] * windows, window, *x.shape[2:])
        features = {m: f.reshape(batch[m].shape[0], windows * window, *f.shape[2:])[:, :seconds]
                    for m, f in backbones.encode(cut, timed).items()}
        features |= backbones.encode(batch, [m for m in backbones.modalities if m not in timed])
    return {name: value for name, value in batch.items() if name not in MEDIA_MODALITIES} | features


def feature_batches(cfg: DataConfig, backbones: FrozenBackbones | None = None, rank: int | None = None,
                    world_size: int | None = None, whole_clips: bool = False) -> ClipStream:
    """This rank's feature batches (``video``/``audio``/``text`` + ``text_mask`` features, labels, ``is_pad``,
    ``skipped``): feature shards as they are (kind "features"), or clip shards through ``backbones``,
    applied in this process on their device (kind "clips"). Clips need a caption only when ``backbones``
    encode text; labels are never needed. ``whole_clips`` (kind "clips"): every second of each clip (evaluation),
    through the backbones in windows of ``decode.seconds`` (``_media_to_features``), with a ``segment_mask``."""
    if (cfg.kind == "clips") != (backbones is not None):
        raise ValueError(f"DataConfig.kind={cfg.kind!r}: clip shards need the frozen backbones to become features, "
                         "feature shards already hold them (pass backbones exactly for kind 'clips')")
    if backbones is None:
        return ClipStream(cfg, rank, world_size)
    transform = functools.partial(_media_to_features, backbones, window=cfg.decode.seconds if whole_clips else None)
    return ClipStream(cfg, rank, world_size, transform, modalities=backbones.modalities, whole_clips=whole_clips)
