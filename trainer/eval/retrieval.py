"""Zero-shot cross-modal retrieval over the unified codes (seed 003 Table 2, seed 004 Tables 1-4): no training, every
item of an evaluation set ranked against every query of another modality (docs/evaluation.md, "Zero-shot retrieval").

    model = CMGModel.from_pretrained("runs/clotho")
    items = read_retrieval_items(model, "data/clotho-eval/eval-{000000..000003}.tar")
    scores = pair_retrieval(items, "audio", "text")     # R@1/5/10 of audio→text, text→audio and their mean

What is compared: an item's **code vectors averaged over its real segments** (ẑ = e[code] of every second of an audio
clip or a video, of the one segment of an image, of every token of a caption; quantize first, then mean), by cosine
similarity, the metric of the authors' ``retrieval_utils.py`` (haihuangcode/CMG ``ACL25-FCID&TOC``, derived from
vsepp); which vectors their unpublished evaluation scripts compared, and why this choice, is in docs/evaluation.md.

An item with several captions (Clotho and MSCOCO: 5) gives one text row per caption: a caption query has one correct
item; an audio or image query is a hit when any of its captions ranks within k (``trainer.eval.metrics.recall_at_k``,
which also ranks ties in random order and reports the expectation). A pair is scored on the items that have both
modalities; the others are counted in ``without``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.data.raw_batches import ShardBatches, raw_samples, skip_record
from trainer.data.decode import decode_whole_sample, member_where, sample_captions
from trainer.data.media_decoders import CorruptSample
from trainer.data.features import decode_npy
from trainer.eval.frozen_codes import encode_segments
from trainer.data.manifest import ShardManifest
from trainer.data.sources import expand_shard_urls
from trainer.eval.metrics import recall_at_k
from trainer.pretrained import CMGModel, Codes

KS = (1, 5, 10)


def pooled(codes: Codes) -> Tensor:
    """``(D)``: the mean of one item's code vectors over its real segments (or tokens)."""
    quantized = codes.quantized if codes.mask is None else codes.quantized[codes.mask]
    return quantized.float().mean(0)


@dataclass
class ModalityRows:
    """One modality's rows: a pooled code vector each and the item it belongs to (text: a row per caption)."""

    vectors: Tensor          # (rows D)
    items: Tensor            # (rows) int64, an index into ``RetrievalItems.keys``


@dataclass
class RetrievalItems:
    """Every item of an evaluation set, per model modality present in it."""

    keys: list[str]
    rows: dict[str, ModalityRows]
    # corrupt samples (trainer.data.raw_batches.skip_record)
    skipped: list[dict[str, str]] = field(default_factory=list)
    # modality -> (M) how often each code was chosen over every real segment or token (the code-usage figure)
    code_counts: dict[str, Tensor] = field(default_factory=dict)

    def select_dims(self, dims: Tensor) -> RetrievalItems:
        """The same items with only the code dimensions ``dims`` (TOC, trainer/eval/toc.py)."""
        return RetrievalItems(self.keys, {m: ModalityRows(r.vectors[:, dims], r.items) for m, r in self.rows.items()},
                              self.skipped, self.code_counts)


class CodeCounter:
    """Per modality, how often each of the codebook's M codes is chosen."""

    def __init__(self, num_codes: int):
        self.num_codes, self.counts = num_codes, {}

    def add(self, modality: str, codes: Tensor) -> None:
        """``codes`` of real segments or tokens (padding, code -1, is left out)."""
        codes = codes[codes >= 0].flatten()
        self.counts[modality] = self.counts.get(modality, torch.zeros(self.num_codes)) + \
            torch.bincount(codes, minlength=self.num_codes).double()


def read_retrieval_items(model: CMGModel, urls: str, batch_size: int = 16,
                         streams: Sequence[str] | None = None) -> RetrievalItems:
    """Decode every sample of the shards ``urls`` whole (``decode_whole_sample``: clips of any length, images, audio,
    every caption) and pool the codes ``model`` gives each of its modalities (only those of the data ``streams``
    when given: the ones the set holds). Corrupt samples are skipped, each named on stderr and counted in
    ``skipped``."""
    shards = expand_shard_urls(urls)
    streams = sorted({model.streams[m] for m in model.modalities} & set(streams or model.streams.values()))
    text = [m for m in model.modalities if model.streams[m] == "text" and "text" in streams]
    keys: list[str] = []
    vectors: dict[str, list[Tensor]] = {}
    items: dict[str, list[int]] = {}
    skipped: list[dict[str, str]] = []

    counter = CodeCounter(model.codebook.shape[0])

    def add(modality: str, item: int, codes: Codes) -> None:
        vectors.setdefault(modality, []).append(pooled(codes))
        items.setdefault(modality, []).append(item)
        counter.add(modality, codes.codes if codes.mask is None else codes.codes[codes.mask])

    batches = ShardBatches(list(enumerate(shards)), model.decode, batch_size, streams, decoder=decode_whole_sample,
                           collate=list)
    for _, clips, skips, _ in batches:
        skipped += skips
        if clips is None:
            continue
        first = len(keys)
        keys += [clip.key for clip in clips]
        media = model.encode_whole_clips(clips, batch_size, streams=[s for s in streams if s != "text"])
        for m, coded in media.items():
            for i, codes in enumerate(coded):
                if codes is not None:
                    add(m, first + i, codes)
        captions = [(first + i, caption) for i, clip in enumerate(clips) for caption in clip.captions]
        if text and captions:
            encoded = model.encode(text=[caption for _, caption in captions], batch_size=batch_size)
            for m in text:
                for row, (item, _) in enumerate(captions):
                    add(m, item, Codes(*(getattr(encoded[m], f)[row] for f in ("codes", "quantized", "semantic",
                                                                                 "mask"))))
    if not keys:
        raise ValueError(f"{urls}: no items to retrieve (skipped {len(skipped)} corrupt samples)")
    if skipped:
        print(f"[cmg] zero-shot retrieval: skipped {len(skipped)} corrupt samples of {urls}", file=sys.stderr)
    rows = {m: ModalityRows(torch.stack(vectors[m]), torch.tensor(items[m])) for m in model.modalities if m in vectors}
    return RetrievalItems(keys, rows, skipped, counter.counts)


def read_feature_items(model: CMGModel, urls: str, batch_size: int = 64) -> RetrievalItems:
    """Every sample of feature shards (``shards.convert``'s retrieval sets, ``shards.extract``'s output): each
    ``<stream>.npy`` the model codes, ``(t ...)`` of any length, encoded as ``CMGModel`` encodes clips (windows of the
    training's ``data.decode.seconds``), and every caption of the txt member through the model's text backbone. A
    member that does not decode (``decode_npy``: numeric arrays only, never unpickled) or does not fit the model is
    skipped, named on stderr and counted."""
    keys: list[str] = []
    arrays: dict[str, list[tuple[int, Tensor]]] = {}
    captions: list[tuple[int, str]] = []
    skipped: list[dict[str, str]] = []
    by_stream = {stream: m for m, stream in model.streams.items()}     # features need no backbone, captions do
    if "text" in by_stream and (model.backbones is None or "text" not in model.backbones.modalities):
        del by_stream["text"]
    for url in expand_shard_urls(urls):
        for sample in raw_samples(url):
            item, members = len(keys), {}
            try:
                for stream, m in by_stream.items():
                    member = f"{stream}.npy"
                    if stream != "text" and member in sample:
                        members[m] = torch.from_numpy(decode_npy(sample[member], member_where(sample, member)))
                texts = sample_captions(sample) if "text" in by_stream else []
            except CorruptSample as err:
                print(f"[cmg] skipping {err}", file=sys.stderr)
                skipped.append(skip_record(err))
                continue
            keys.append(str(sample["__key__"]))
            for m, x in members.items():
                arrays.setdefault(m, []).append((item, x.float()))
            captions += [(item, c) for c in texts]
    if not keys:
        raise ValueError(f"{urls}: no items to retrieve (skipped {len(skipped)} corrupt samples)")
    vectors: dict[str, list[Tensor]] = {}
    items: dict[str, list[int]] = {}
    counter = CodeCounter(model.codebook.shape[0])
    for m, rows in arrays.items():
        by_length: dict[tuple[int, ...], list[tuple[int, Tensor]]] = {}
        for item, x in rows:
            by_length.setdefault(tuple(x.shape), []).append((item, x))
        for group in by_length.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                try:
                    coded = encode_segments(model.model, m, torch.stack([x for _, x in chunk]),
                                            window=model.decode.seconds)
                except RuntimeError as err:      # a feature size the model's encoder does not take
                    raise ValueError(f"{urls}: {m} features of shape {tuple(chunk[0][1].shape)} do not fit the "
                                     f"model's {m} encoder ({err})") from err
                counter.add(m, coded.codes)
                for j, (item, _) in enumerate(chunk):
                    vectors.setdefault(m, []).append(coded.quantized[j].float().mean(0))
                    items.setdefault(m, []).append(item)
    text = by_stream.get("text")
    if text is not None and captions:
        encoded = model.encode(text=[c for _, c in captions], batch_size=batch_size)[text]
        counter.add(text, encoded.codes)
        for row, (item, _) in enumerate(captions):
            vectors.setdefault(text, []).append(pooled(Codes(encoded.codes[row], encoded.quantized[row],
                                                             encoded.semantic[row], encoded.mask[row])))
            items.setdefault(text, []).append(item)
    rows_of = {m: ModalityRows(torch.stack(vectors[m]), torch.tensor(items[m])) for m in model.streams if m in vectors}
    return RetrievalItems(keys, rows_of, skipped, counter.counts)


def _direction(similarity: Tensor, relevant: Tensor, ks: Sequence[int]) -> dict[str, float]:
    return {f"R@{k}": v for k, v in recall_at_k(similarity, relevant, ks).items()}


def pair_retrieval(data: RetrievalItems, first: str, second: str, ks: Sequence[int] = KS) -> dict[str, Any]:
    """R@k of ``first``→``second`` and ``second``→``first`` on the items that have both, their mean per k, and what
    chance (a constant similarity) would score in each direction."""
    a, b = data.rows[first], data.rows[second]
    both = torch.tensor(sorted(set(a.items.tolist()) & set(b.items.tolist())), dtype=torch.int64)
    if len(both) < 2:
        raise ValueError(f"zero-shot retrieval {first}↔{second}: {len(both)} items have both modalities")
    keep_a, keep_b = torch.isin(a.items, both), torch.isin(b.items, both)
    va, ia = F.normalize(a.vectors[keep_a], dim=-1), a.items[keep_a]
    vb, ib = F.normalize(b.vectors[keep_b], dim=-1), b.items[keep_b]
    similarity = va @ vb.T                                      # (rows of first, rows of second): cosine
    relevant = ia[:, None] == ib[None, :]
    forward, backward = f"{first}→{second}", f"{second}→{first}"
    scores = {forward: _direction(similarity, relevant, ks), backward: _direction(similarity.T, relevant.T, ks)}
    chance = {forward: _direction(torch.zeros_like(similarity), relevant, ks),
              backward: _direction(torch.zeros_like(similarity.T), relevant.T, ks)}
    items_with = set(a.items.tolist()) | set(b.items.tolist())
    return {"directions": scores,
            "mean": {k: (scores[forward][k] + scores[backward][k]) / 2 for k in scores[forward]},
            "chance": chance, "items": len(both), "queries": {forward: int(keep_a.sum()), backward: int(keep_b.sum())},
            "without": len(items_with) - len(both)}


def retrieval_sets(spec: str) -> list[tuple[str, str]]:
    """``--retrieval-data``: ``'::'``-separated sets, each ``NAME=URLS`` or ``URLS`` -> [(name, urls)]. An unnamed set
    takes the name its manifest gives (``released.set`` of ``shards.convert``'s output), else its folder's name."""
    sets = []
    for part in (p for p in spec.split("::") if p):
        name, _, urls = part.partition("=") if re.fullmatch(r"[A-Za-z0-9_.-]+=.+", part) else ("", "", part)
        if not name:
            shards = expand_shard_urls(urls)
            try:
                name = ShardManifest.of_shards(shards).released_value("set") or ""
            except ValueError:
                name = ""
            name = name or (Path(shards[0]).parent.name if shards else urls)
        if name in dict(sets):
            raise ValueError(f"--retrieval-data names the set {name!r} twice: give each set a name, NAME=URLS")
        sets.append((name, urls))
    return sets


def zero_shot_retrieval(data: RetrievalItems, seen: set[frozenset[str]], ks: Sequence[int] = KS) -> dict[str, Any]:
    """Every pair of modalities present in ``data``: ``pair_retrieval`` and whether the model trained the pair (seed
    004's seen / unseen)."""
    present = list(data.rows)
    return {f"{a}↔{b}": pair_retrieval(data, a, b, ks) | {"seen": frozenset((a, b)) in seen}
            for a, b in combinations(present, 2)}
