"""The cross-modal generalisation protocol on frozen codes (ALGORITHMS.md §5, seed 000 §B.2).

A head is trained on the codes of modality A (the *source*) of the train split, the epoch is chosen on
A's validation split, and the chosen head is scored on the held-out test split of modality B (the
*target*: the cross-modal number, "A→B") and of A itself (the in-modality upper bound, the paper's
"evaluation results of the labeled modality"). This fixes two leaks of the authors' code: their AVE score
was on the training split, and they picked the best epoch on the target modality's test scores.

Tasks:
- ``classification_probe`` (AVE): ``EventClassifier`` + softmax cross-entropy on clip labels; accuracy;
- ``localisation_probe`` (AVVP): ``SegmentTagger`` + sigmoid BCE on each modality's own per-segment
  labels (trained on A's labels, scored against B's); micro F1 over all segments (``metrics.micro_prf``);
- ``cross_dataset_probe`` (AVE→AVVP): ``EventClassifier`` trained weakly (BCE on the max over T) on
  dataset 1's clip labels, scored per segment on dataset 2's labels of the shared classes; micro F1;
- ``cross_dataset_classification`` (UCF(v)↔VGG(a), seed 001 §5.1): ``EventClassifier`` + softmax cross-entropy
  over the classes both datasets share, trained on dataset 1's source modality, scored on dataset 2's target
  modality; accuracy;
- ``paired_clip_retrieval`` (X→audio and audio→X): no training; each query clip's code sequence is matched against
  every gallery clip of the split by the mean over segments of the code vectors' cosine similarity (clip
  means for text), and its own counterpart is the relevant item; recall@1/5/10 (the paper trains a retrieval
  model on one query modality first; this zero-shot form needs no second training run);
- ``class_retrieval`` (seen and unseen modality pairs, seed 004 §4.3): zero-shot too, by the cosine of the clips'
  mean code vectors; a hit is a gallery clip of the query's event class; class-level precision@1/5/10;
- ``code_agreement``: a diagnostic, not a paper metric: per event class, how often the two modalities
  pick the very same code at a (clip, segment) where both carry that event.

Heads only ever see precomputed code tensors: nothing here can reach the encoder or the codebook.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.eval.heads import EventClassifier, SegmentTagger
from trainer.eval.metrics import BACKGROUND, accuracy, class_precision_at_k, micro_prf, multi_hot, recall_at_k
from trainer.configs.eval import ProbeConfig

SPLITS = ("train", "val", "test")
TIMED = ("video", "audio")     # the modalities whose codes are per second (a whole clip's may be padded)


@dataclass
class CodeSplit:
    """Frozen codes and labels of one split (clips in the same order in every field)."""

    vectors: dict[str, Tensor]          # modality -> (n t d) quantised code vectors ẑ (fp32)
    indices: dict[str, Tensor]          # modality -> (n t) int64 code index
    segment_labels: dict[str, Tensor]   # modality -> (n t) int64 class per segment, −1 = background
    clip_label: Tensor                  # (n) int64, −1 = no event
    # (n t) bool: whole clips of several lengths, True on each clip's real seconds of its video and audio codes (past
    # its end: code -1, zero vectors, background labels); None: every segment is real
    mask: Tensor | None = None

    def __len__(self) -> int:
        return int(self.clip_label.shape[0])

    def real(self, modality: str) -> Tensor | None:
        """The real segments of ``modality``'s codes ``(n t)``, or None (all real: no mask, or text, an image)."""
        if self.mask is None or self.vectors[modality].shape[1] != self.mask.shape[1] or modality not in TIMED:
            return None
        return self.mask

    def select_dims(self, dims: Tensor) -> CodeSplit:
        """The same split with only code dimensions ``dims`` (TOC, seed 003 §3.2)."""
        return dataclasses.replace(self, vectors={m: v.index_select(-1, dims) for m, v in self.vectors.items()})

    @staticmethod
    def concat(splits: Sequence[CodeSplit]) -> CodeSplit:
        """The clips of ``splits`` in order, as one split (their clips have the same number of segments)."""
        fields = ("vectors", "indices", "segment_labels")
        masks = [s.mask for s in splits]
        return CodeSplit(*({m: torch.cat([getattr(s, f)[m] for s in splits]) for m in getattr(splits[0], f)}
                           for f in fields), torch.cat([s.clip_label for s in splits]),
                         None if masks[0] is None else torch.cat(masks))

    def subset(self, keep: Tensor) -> CodeSplit:
        """Clips where ``keep`` ``(n)`` bool is True."""
        return CodeSplit({m: v[keep] for m, v in self.vectors.items()}, {m: v[keep] for m, v in self.indices.items()},
                         {m: v[keep] for m, v in self.segment_labels.items()}, self.clip_label[keep],
                         None if self.mask is None else self.mask[keep])


@dataclass
class ProbeResult:
    task: str
    source: str
    target: str
    metric: str                  # "accuracy" or "f1"
    cross: float                 # the target modality's test split: the A→B number
    in_modality: float           # the source modality's test split, same head: the upper bound
    val: float                   # the source validation score of the chosen epoch
    epoch: int                   # the chosen epoch (1-based)
    details: dict[str, float] = field(default_factory=dict)   # precision / recall of the F1 tasks
    head: dict[str, Any] = field(default_factory=dict)        # how the head was trained: ``HeadSchedule.report``

    @property
    def direction(self) -> str:
        return f"{self.source[0].upper()}→{self.target[0].upper()}"


def _check_splits(splits: Mapping[str, CodeSplit], modalities: Sequence[str], segment_labels: bool = True) -> None:
    """Every split is there, holds clips and the codes of ``modalities`` (and, with ``segment_labels``, their
    per-segment labels: an image or a caption has only its item's class)."""
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise KeyError(f"probe needs splits {list(SPLITS)}, missing {missing}")
    for name in SPLITS:
        split = splits[name]
        if len(split) == 0:
            raise ValueError(f"split '{name}' has no clips")
        absent = [m for m in modalities if m not in split.vectors or (segment_labels and m not in split.segment_labels)]
        if absent:
            raise KeyError(f"split '{name}' has no codes{' or segment labels' if segment_labels else ''} for "
                           f"modalities {absent} (codes of {sorted(split.vectors)}, segment labels of "
                           f"{sorted(split.segment_labels)})")


# a probe's loss of the head's output, the targets and the inputs' real segments (None: all)
ProbeLoss = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def _fit(head: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: ProbeLoss, validate: Callable[[nn.Module], float],
         cfg: ProbeConfig, generator: torch.Generator, real: Tensor | None = None) -> tuple[int, float]:
    """Adam on ``(inputs, targets)`` (``real`` ``(n t)``: their real segments, None: all) for ``cfg.epochs``; keeps the
    weights of the best validation epoch.

    Returns (best epoch, its validation score); the first epoch reaching the best score wins.
    """
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_epoch, best_score, best_state = 0, -1.0, None
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        order = torch.randperm(inputs.shape[0], generator=generator)
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            batch_real = None if real is None else real[batch]
            loss_fn(head(inputs[batch], batch_real), targets[batch], batch_real).backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            score = validate(head)
        if score > best_score:
            best_epoch, best_score = epoch, score
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    head.eval()
    return best_epoch, best_score


@dataclass(frozen=True)
class HeadSchedule:
    """How a head trains on ``clips`` training clips: at ``batch_size`` (``configured`` unless cut), ``epochs``."""

    clips: int
    batch_size: int
    configured: int
    epochs: int
    min_steps_per_epoch: int

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.clips / self.batch_size)

    def note(self) -> str | None:
        """What a reader of the head's numbers must know: its batch was cut, or its epochs are a handful of steps."""
        plan = (f"{self.clips} training clips at batch {self.batch_size}: {_steps(self.steps_per_epoch)} an epoch, "
                f"{self.steps_per_epoch * self.epochs} in {self.epochs} epochs")
        few = self.steps_per_epoch < self.min_steps_per_epoch
        if self.batch_size != self.configured:
            return (f"batch cut from {self.configured} ({_steps(math.ceil(self.clips / self.configured))} an epoch) to "
                    f"give {self.min_steps_per_epoch} steps an epoch: {plan}"
                    + (" (too few clips for more)" if few else "") + "; --exact-head-batch keeps the batch")
        if few:
            return (f"{plan}, fewer than {self.min_steps_per_epoch} steps an epoch: the head may stay at chance "
                    "(a smaller --batch-size gives more)")
        return None

    def report(self) -> dict[str, Any]:
        return {"clips": self.clips, "batch_size": self.batch_size, "configured_batch_size": self.configured,
                "steps_per_epoch": self.steps_per_epoch, "steps": self.steps_per_epoch * self.epochs,
                "note": self.note()}


def _steps(n: int) -> str:
    return f"{n} step{'s' * (n != 1)}"


def head_schedule(clips: int, cfg: ProbeConfig) -> HeadSchedule:
    """``cfg``'s batch, or with ``cfg.adapt_batch`` the largest batch that gives ``cfg.min_steps_per_epoch`` steps an
    epoch where ``cfg.batch_size`` gives fewer (one clip a step at the least)."""
    batch = cfg.batch_size
    if cfg.adapt_batch and math.ceil(clips / batch) < cfg.min_steps_per_epoch:
        batch = max(1, clips // cfg.min_steps_per_epoch)
    return HeadSchedule(clips, batch, cfg.batch_size, cfg.epochs, cfg.min_steps_per_epoch)


def _train_head(make_head: Callable[[], nn.Module], inputs: Tensor, targets: Tensor, loss_fn: ProbeLoss,
                validate: Callable[[nn.Module], float], cfg: ProbeConfig,
                real: Tensor | None = None) -> tuple[nn.Module, int, float, dict[str, Any]]:
    """Build and fit a head under ``cfg.seed`` without touching the caller's global RNG, at ``head_schedule``'s
    batch; returns the head, its epoch and validation score, and the schedule's report."""
    schedule = head_schedule(inputs.shape[0], cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = make_head()
        epoch, score = _fit(head, inputs, targets, loss_fn, validate,
                            dataclasses.replace(cfg, batch_size=schedule.batch_size),
                            torch.Generator().manual_seed(cfg.seed), real)
    return head, epoch, score, schedule.report()


def _clip_cross_entropy(logits: Tensor, labels: Tensor, real: Tensor | None) -> Tensor:
    del real                     # clip logits: the head's max ran over the real segments already
    return F.cross_entropy(logits, labels)


def _segment_bce(logits: Tensor, targets: Tensor, real: Tensor | None) -> Tensor:
    """Per-segment multi-label loss over the real segments."""
    if real is not None:
        logits, targets = logits[real], targets[real]
    return F.binary_cross_entropy_with_logits(logits, targets)


def _labelled(split: CodeSplit) -> CodeSplit:
    return split.subset(split.clip_label != BACKGROUND)


def classification_probe(splits: Mapping[str, CodeSplit], source: str, target: str, num_classes: int,
                         cfg: ProbeConfig) -> ProbeResult:
    """AVE-style: train on ``source`` clip labels, choose the epoch on source val, test source and target."""
    _check_splits(splits, (source, target), segment_labels=False)
    train, val, test = (_labelled(splits[s]) for s in SPLITS)
    in_dim = train.vectors[source].shape[-1]

    def score(head: nn.Module, split: CodeSplit, modality: str) -> float:
        return accuracy(head(split.vectors[modality], split.real(modality)), split.clip_label)

    head, epoch, val_score, schedule = _train_head(lambda: EventClassifier(in_dim, num_classes, cfg.head),
                                                   train.vectors[source], train.clip_label, _clip_cross_entropy,
                                                   lambda h: score(h, val, source), cfg, train.real(source))
    with torch.no_grad():
        return ProbeResult("classification", source, target, "accuracy", score(head, test, target),
                           score(head, test, source), val_score, epoch, head=schedule)


def _tag_f1(logits: Tensor, labels: Tensor, num_classes: int, threshold: float, real: Tensor | None = None):
    """Micro P/R/F1 of the per-segment tags over the real segments."""
    if real is not None:
        logits, labels = logits[real], labels[real]
    return micro_prf(torch.sigmoid(logits) > threshold, multi_hot(labels, num_classes))


def localisation_probe(splits: Mapping[str, CodeSplit], source: str, target: str, num_classes: int,
                       cfg: ProbeConfig) -> ProbeResult:
    """AVVP-style: per-segment multi-label head on source labels; micro F1 on source and target test."""
    _check_splits(splits, (source, target))
    train, val, test = (splits[s] for s in SPLITS)
    in_dim = train.vectors[source].shape[-1]

    def prf(head: nn.Module, split: CodeSplit, modality: str):
        return _tag_f1(head(split.vectors[modality]), split.segment_labels[modality], num_classes, cfg.threshold,
                       split.real(modality))

    targets = multi_hot(train.segment_labels[source], num_classes).float()
    head, epoch, val_score, schedule = _train_head(lambda: SegmentTagger(in_dim, num_classes, cfg.head),
                                                   train.vectors[source], targets, _segment_bce,
                                                   lambda h: prf(h, val, source).f1, cfg, train.real(source))
    with torch.no_grad():
        cross, own = prf(head, test, target), prf(head, test, source)
    return ProbeResult("localisation", source, target, "f1", cross.f1, own.f1, val_score, epoch,
                       {"precision": cross.precision, "recall": cross.recall,
                        "in_modality_precision": own.precision, "in_modality_recall": own.recall}, schedule)


def map_classes(labels: Tensor, class_map: Mapping[int, int]) -> Tensor:
    """Dataset-2 class indices -> dataset-1 indices of the shared classes; unshared classes -> background."""
    lookup = torch.full((int(labels.max().clamp_min(0)) + 2,), BACKGROUND, dtype=torch.int64)
    for first, second in class_map.items():
        if second + 1 < lookup.numel():
            lookup[second + 1] = first
    return lookup[labels + 1]


def cross_dataset_probe(first: Mapping[str, CodeSplit], second_test: CodeSplit, source: str, target: str,
                        num_classes: int, class_map: Mapping[int, int], cfg: ProbeConfig) -> ProbeResult:
    """AVE→AVVP: weakly supervised localisation trained on dataset 1, scored per segment on dataset 2.

    ``first``: dataset 1's train/val/test splits (clip labels are enough: the epoch is chosen on the val
    split's clip-level micro F1 at the threshold); ``second_test``: dataset 2's held-out split with
    per-segment labels; ``class_map``: {dataset-1 class: dataset-2 class} of the
    shared classes (seed 000 §B.2 lists 12 for AVE/AVVP). Only the shared classes are scored.
    """
    _check_splits(first, (source,))
    if not class_map:
        raise ValueError("cross-dataset probe needs at least one shared class in class_map")
    train, val = _labelled(first["train"]), _labelled(first["val"])
    in_dim = train.vectors[source].shape[-1]
    shared = torch.tensor(sorted(class_map), dtype=torch.int64)

    def weak_loss(logits: Tensor, labels: Tensor, real: Tensor | None) -> Tensor:
        del real                 # clip logits: the head's max ran over the real segments already
        return F.binary_cross_entropy_with_logits(logits, multi_hot(labels, num_classes).float())

    def weak_f1(head: nn.Module) -> float:
        # the epoch is chosen on what the test scores (events above the threshold), at the clip level, where
        # dataset 1 has labels: argmax accuracy peaks in early epochs whose sigmoids are all still below the
        # threshold, and such a head localises nothing (F1 = 0) on dataset 2
        predicted = torch.sigmoid(head(val.vectors[source], val.real(source))) > cfg.threshold
        return micro_prf(predicted, multi_hot(val.clip_label, num_classes)).f1

    head, epoch, val_score, schedule = _train_head(lambda: EventClassifier(in_dim, num_classes, cfg.head),
                                                   train.vectors[source], train.clip_label, weak_loss, weak_f1, cfg,
                                                   train.real(source))

    def prf(modality: str):
        if modality not in second_test.vectors:
            raise KeyError(f"dataset 2 has no codes for '{modality}' (has {sorted(second_test.vectors)})")
        logits = head.segment_logits(second_test.vectors[modality]).index_select(-1, shared)
        labels = map_classes(second_test.segment_labels[modality], class_map)
        real = second_test.real(modality)
        if real is not None:
            logits, labels = logits[real], labels[real]
        truth = multi_hot(labels, num_classes).index_select(-1, shared)
        return micro_prf(torch.sigmoid(logits) > cfg.threshold, truth)

    with torch.no_grad():
        cross, own = prf(target), prf(source)
    return ProbeResult("cross_dataset", source, target, "f1", cross.f1, own.f1, val_score, epoch,
                       {"precision": cross.precision, "recall": cross.recall}, schedule)


def cross_dataset_classification(first: Mapping[str, CodeSplit], second_test: CodeSplit, source: str, target: str,
                                 class_map: Mapping[int, int], cfg: ProbeConfig) -> ProbeResult:
    """UCF(v)→VGG(a) (and back): a classifier of the shared classes on dataset 1's ``source`` codes, scored on
    dataset 2's ``target`` codes.

    ``class_map``: {dataset-1 class: dataset-2 class} of the shared classes; both datasets keep the clips of those
    classes only, labelled by the shared class's rank in ``class_map``. The head is trained on dataset 1's train
    split, its epoch chosen on dataset 1's val split (``source``), and it is scored on dataset 2's test split
    (``target``: the cross number) and dataset 1's (``source``: the in-modality number).
    """
    _check_splits(first, (source,))
    if target not in second_test.vectors:
        raise KeyError(f"dataset 2 has no codes for '{target}' (has {sorted(second_test.vectors)})")
    if not class_map:
        raise ValueError("cross-dataset classification needs at least one shared class in class_map")
    firsts = sorted(class_map)

    def shared(split: CodeSplit, lookup: Mapping[int, int]) -> CodeSplit:
        labels = map_classes(split.clip_label, lookup)      # dataset class -> shared rank, others -> background
        return _labelled(dataclasses.replace(split, clip_label=labels))

    to_rank = {rank: c for rank, c in enumerate(firsts)}
    train, val, test = (shared(first[s], to_rank) for s in SPLITS)
    other = shared(second_test, {rank: class_map[c] for rank, c in enumerate(firsts)})
    empty = [name for name, split in (("train", train), ("val", val), ("test", test), ("dataset 2 test", other))
             if len(split) == 0]
    if empty:
        raise ValueError(f"no clip of a shared class in {empty} (class_map {dict(class_map)})")
    in_dim = train.vectors[source].shape[-1]

    def score(head: nn.Module, split: CodeSplit, modality: str) -> float:
        return accuracy(head(split.vectors[modality], split.real(modality)), split.clip_label)

    head, epoch, val_score, schedule = _train_head(lambda: EventClassifier(in_dim, len(firsts), cfg.head),
                                                   train.vectors[source], train.clip_label, _clip_cross_entropy,
                                                   lambda h: score(h, val, source), cfg, train.real(source))
    with torch.no_grad():
        return ProbeResult("ucf_vgg", source, target, "accuracy", score(head, other, target),
                           score(head, test, source), val_score, epoch, head=schedule)


def paired_clip_retrieval(split: CodeSplit, query: str, gallery: str = "audio",
                        ks: Sequence[int] = (1, 5, 10), aligned: bool | None = None) -> dict[int, float]:
    """query→gallery recall@k in the unified code space (X→audio, audio→X), clip i's own gallery item being the
    match of query clip i.

    Similarity of query clip i and gallery clip j: with ``aligned`` (the two modalities share their time
    axis: audio-visual), mean_t cos(ẑ^query_{i,t}, ẑ^gallery_{j,t}), so the temporal pattern counts; else
    (text tokens vs audio segments) the cosine of the two clips' mean code vectors. ``aligned=None``: aligned
    when both code sequences have the same length.
    """
    q, g = split.vectors[query], split.vectors[gallery]   # (n t d), (n t' d)
    if aligned is None:
        aligned = q.shape[1] == g.shape[1]
    if aligned:
        if q.shape[1] != g.shape[1]:
            raise ValueError(f"aligned retrieval needs equal segments, got {query} {q.shape[1]}, "
                             f"{gallery} {g.shape[1]}")
        similarity = torch.einsum("itd,jtd->ij", F.normalize(q, dim=-1), F.normalize(g, dim=-1)) / q.shape[1]
    else:
        similarity = F.normalize(q.mean(1), dim=-1) @ F.normalize(g.mean(1), dim=-1).T
    return recall_at_k(similarity, torch.arange(len(split)), ks)


def class_retrieval(split: CodeSplit, query: str, gallery: str, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """query→gallery class-level precision@k over the split's clips with an event class: similarity = cosine of
    the clips' mean code vectors (captions and segments are not aligned in time), a hit = a gallery clip of the
    query's class (a caption names the event, so one clip's caption is no better a match than another of its
    class; seed 004's seen/unseen pairs)."""
    labelled = _labelled(split)
    q = F.normalize(labelled.vectors[query].mean(1), dim=-1)
    g = F.normalize(labelled.vectors[gallery].mean(1), dim=-1)
    return class_precision_at_k(q @ g.T, labelled.clip_label, labelled.clip_label, ks)


def code_agreement(split: CodeSplit, first: str, second: str, num_classes: int) -> tuple[list[float], float]:
    """Per class c: share of (clip, segment) cells where both modalities carry event c and chose the same
    code (NaN for a class with no such cell); plus the share over all such cells."""
    both = (split.segment_labels[first] == split.segment_labels[second]) & (split.segment_labels[first] >= 0)
    same = split.indices[first] == split.indices[second]
    per_class = []
    for c in range(num_classes):
        cells = both & (split.segment_labels[first] == c)
        per_class.append((same & cells).sum().item() / cells.sum().item() if cells.any() else float("nan"))
    overall = (same & both).sum().item() / max(1, both.sum().item())
    return per_class, overall
