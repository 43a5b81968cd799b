"""Downstream cross-modal generalisation of a pretraining checkpoint (ALGORITHMS.md §5): the datasets an evaluation
reads, the protocols it runs on the frozen model's codes, and its report (a JSON-able dict, its table and its flat
metrics). ``python -m trainer.programs.evaluate`` (``cmg eval``) runs it on a checkpoint from the command line, writes
the report and logs it to MLflow; its docstring says which option gives which dataset to which protocol.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from trainer.data.features import FeatureError, PublicFeatureConfig
from trainer.data.manifest import ShardManifest
from trainer.data.released import AVE_AVVP_SHARED_CLASSES, AVE_CLASSES, AVVP_CLASSES, shared_class_map
from trainer.data.sources import expand_shard_urls
from trainer.configs.data import DataConfig
from trainer.eval.frozen_codes import (
    LabelledFeatures, Pretrained, encode_split, read_public_features, read_shard_features, split_indices,
)
from trainer.eval.paper import PAPER_HEADS, checkpoint_stage, checkpoint_switches
from trainer.eval.probes import (
    SPLITS, CodeSplit, ProbeResult, class_retrieval, classification_probe, code_agreement,
    cross_dataset_classification, cross_dataset_probe, localisation_probe, paired_clip_retrieval,
)
from trainer.configs.eval import ProbeConfig, TOCConfig
from trainer.eval.retrieval import read_feature_items, read_retrieval_items, retrieval_sets, zero_shot_retrieval
from trainer.job import read_run_config
from trainer.configs.job import JobConfig
from trainer.pretrained import CMGModel, frozen_backbones
from trainer.eval.toc import toc_scores
from trainer.configs.eval import SourceConfig, TASKS

LABELLED_MODALITIES = ("audio", "video")   # the modalities that carry per-segment event labels
# the datasets a protocol needs beyond --data, and the options that give them
NEEDS = {"cross_dataset": ("cross",), "ucf_vgg": ("ucf", "vgg"), "zero_shot_retrieval": ("retrieval",)}
OPTIONS = {"cross": "--cross-data or --cross-public", "ucf": "--ucf-data", "vgg": "--vgg-data",
           "retrieval": "--retrieval-data"}
UCF_VGG_CLASSES = 16    # the authors' 16-way UCF↔VGGSound head (haihuangcode/CMG code/src/ucf_vggsound.py)


@dataclass
class EvaluateConfig:
    source: SourceConfig = field(default_factory=SourceConfig)   # AVE's role (see the module docstring)
    cross: SourceConfig | None = None                     # AVVP's role: localisation and AVE→AVVP's test set
    ucf: SourceConfig | None = None                       # UCF(v)↔VGG(a): the video dataset...
    vgg: SourceConfig | None = None                       # ...and the audio dataset
    retrieval: SourceConfig | None = None                 # unlabelled pairs for zero_shot_retrieval (else: source)
    class_map: dict[str, int] = field(default_factory=dict)     # AVE→AVVP {data class: cross class}; {}: the 12
    ucf_vgg_map: dict[str, int] = field(default_factory=dict)   # {UCF class: VGGSound class}; {}: line by line
    tasks: tuple[str, ...] = ()                           # () = every protocol whose data is given
    suite: Literal["", "paper"] = ""                      # "paper": also the seed tables
    pretrain_set: Literal["24K", "40K", "81K"] = "40K"    # seed 001 Table 1's column group for this checkpoint
    classes: int = 0                                      # classes of --data (0 = largest label + 1)
    heads: dict[str, ProbeConfig] = field(default_factory=lambda: dict(PAPER_HEADS))   # per protocol
    toc: TOCConfig | None = None
    tracking: bool = True


# ---------------------------------------------------------------------- data

def run_config(pretrained: Pretrained) -> JobConfig:
    """The pretraining job's resolved config (defaults if the run directory has no config.yaml)."""
    return read_run_config(pretrained.run_dir)


def data_config(src: SourceConfig, job: JobConfig) -> DataConfig:
    """The pretraining job's data settings for the shards of ``src`` (their own manifest when ``src`` names them)."""
    return dataclasses.replace(job.data, urls=src.urls or job.data.urls, kind=src.kind or job.data.kind,
                               manifest="" if src.urls else job.data.manifest)


def class_names(src: SourceConfig, job: JobConfig) -> list[str] | None:
    """The class of each label index, as a converted release's manifest lists them (``released.classes``,
    shards.convert); None for sets that do not name their classes (the public layout, shards.extract's output)."""
    if src.public:
        return None
    cfg = data_config(src, job)
    classes = ShardManifest.of_shards(expand_shard_urls(cfg.urls), cfg.manifest).released_value("classes")
    return list(classes) if classes else None


def read_source(src: SourceConfig, job: JobConfig, pretrained: Pretrained,
                modalities: tuple[str, ...]) -> dict[str, LabelledFeatures]:
    """train/val/test ``LabelledFeatures`` of one source (official public splits, else a seeded split): the
    ``modalities`` of shards (the public layout always has audio and video)."""
    if src.public:
        root = Path(src.public)
        official = root.is_dir() and all((root / PublicFeatureConfig.order_file.format(split=s)).is_file()
                                         for s in SPLITS)
        if official:
            return {s: read_public_features(PublicFeatureConfig(root=str(root), split=s)) for s in SPLITS}
        data = read_public_features(PublicFeatureConfig(root=str(root), split=None))
    else:
        data_cfg = data_config(src, job)
        backbones = None
        if data_cfg.kind == "clips":
            backbones = _backbones(src.backbones or job.backbones, pretrained, modalities)
        data = read_shard_features(data_cfg, modalities, backbones)
    parts = split_indices(len(data), src.split, src.split_seed)
    return {name: data.subset(index) for name, index in parts.items()}


def _backbones(path: str, pretrained: Pretrained, modalities: tuple[str, ...]):
    """The frozen backbones of ``path``, refused unless they are the ones the checkpoint was trained on."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"backbones file not found: {path} (pass --backbones)")
    # older runs also list backbones of modalities the model never used: only the model's are built and compared
    return frozen_backbones(pretrained.meta.backbones, modalities, yaml=path)


def number_of_classes(parts: list[LabelledFeatures]) -> int:
    top = max(max(int(p.clip_label.max()), *(int(v.max()) for v in p.segment_labels.values())) for p in parts)
    if top < 0:
        raise ValueError("the data carry no event label at all")
    return top + 1


@dataclass
class EncodedDataset:
    """One dataset's frozen codes per split, its number of event classes and their names (when it names them)."""

    splits: dict[str, CodeSplit]
    classes: int
    names: list[str] | None = None

    def report(self) -> dict[str, Any]:
        return {"clips": {name: len(split) for name, split in self.splits.items()}, "classes": self.classes}


# ---------------------------------------------------------------------- the run

def selected_tasks(cfg: EvaluateConfig) -> tuple[str, ...]:
    """``cfg.tasks`` (each refused without its data), or every protocol whose data is given; ``ValueError`` names
    the missing option."""
    given = {name for name in OPTIONS if getattr(cfg, name) is not None}
    half = {"ucf", "vgg"} & given
    if len(half) == 1:
        raise ValueError(f"UCF(v)↔VGG(a) needs both datasets: {OPTIONS[next(iter({'ucf', 'vgg'} - half))]} is missing")
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown} in --tasks; choose from {list(TASKS)}")
    for task in cfg.tasks:
        if task == "zero_shot_retrieval":     # named: reads --retrieval-data, else --data
            continue
        missing = [OPTIONS[name] for name in NEEDS.get(task, ()) if name not in given]
        if missing:
            raise ValueError(f"task '{task}' needs its data: give {' and '.join(missing)}")
    return cfg.tasks or tuple(t for t in TASKS if set(NEEDS.get(t, ())) <= given)


def datasets_needed(tasks: tuple[str, ...], cfg: EvaluateConfig) -> list[str]:
    """The datasets (``data``, ``cross``, ``ucf``, ``vgg``) that ``tasks`` read."""
    localise_on = "cross" if cfg.cross is not None else "data"
    needed = {"data"} if set(tasks) & {"classification", "retrieval", "class_retrieval", "cross_dataset"} else set()
    needed |= {localise_on} if "localisation" in tasks else set()
    needed |= {name for task in tasks for name in NEEDS.get(task, ()) if name != "retrieval"}
    return [name for name in ("data", "cross", "ucf", "vgg") if name in needed]


def directions(modalities: tuple[str, ...]) -> list[tuple[str, str]]:
    """Ordered (source, target) pairs of the modalities with per-segment labels (audio, video)."""
    labelled = [m for m in modalities if m in LABELLED_MODALITIES]
    return [(a, b) for a in labelled for b in labelled if a != b]


def clip_directions(modalities: tuple[str, ...]) -> list[tuple[str, str]]:
    """The directions of the clip-label probes: those between audio and video where a model codes both, else every
    ordered pair of its modalities (a pair model: image↔text, audio↔text, video↔text, whose items carry a class)."""
    return directions(modalities) or [(a, b) for a in modalities for b in modalities if a != b]


def read_datasets(pretrained: Pretrained, cfg: EvaluateConfig, job: JobConfig, roles: list[str],
                  dims: Tensor | None) -> dict[str, EncodedDataset]:
    """Read and encode each dataset of ``roles`` (UCF: video only, VGGSound: audio only), keeping the code dimensions
    ``dims`` (TOC) when given."""
    model = pretrained.model
    modalities = model.downstream_modalities
    only = {"ucf": ("video",), "vgg": ("audio",)}
    absent = [m for name in roles for m in only.get(name, ()) if m not in modalities]
    if absent:
        raise ValueError(f"UCF(v)↔VGG(a) needs a model that encodes {sorted(set(absent))} "
                         f"(this one encodes {list(modalities)})")
    out = {}
    for name in roles:
        src = getattr(cfg, "source" if name == "data" else name)
        try:
            parts = read_source(src, job, pretrained, only.get(name, modalities))
            vocabulary = class_names(src, job)
        except (FeatureError, FileNotFoundError, KeyError, ValueError) as err:
            if name == "data":        # the default dataset: its errors read as they always did
                raise
            raise ValueError(f"{OPTIONS[name]}: {err.args[0] if err.args else err}") from err
        classes = (cfg.classes if name == "data" else 0) or number_of_classes(list(parts.values()))
        splits = {split: encode_split(model, part) for split, part in parts.items()}
        if dims is not None:
            splits = {split: codes.select_dims(dims) for split, codes in splits.items()}
        out[name] = EncodedDataset(splits, classes, vocabulary)
    return out


def shared_classes(task: str, cfg: EvaluateConfig,
                   data: Mapping[str, EncodedDataset]) -> tuple[list[str], dict[int, int]]:
    """(names, {dataset-1 class: dataset-2 class}) of the classes the two datasets of ``task`` share.

    ``--class-map`` / ``--ucf-vgg-map`` when given. Else AVE→AVVP: the 12 classes of seed 000 §B.2
    (trainer/data/released.py ``AVE_AVVP_SHARED_CLASSES``) found by name in the two datasets' class lists (their
    manifests', else ``AVE_CLASSES`` / ``AVVP_CLASSES``); UCF(v)↔VGG(a): class i of one is class i of the other, as
    the authors pair line i of UCF101sameVGGSound.txt with line i of VGGSoundsameUCF101.txt (16 classes).
    """
    given = {"cross_dataset": cfg.class_map, "ucf_vgg": cfg.ucf_vgg_map}[task]
    if given:
        pairs = {int(k): v for k, v in sorted(given.items(), key=lambda item: int(item[0]))}
        return [f"{a}:{b}" for a, b in pairs.items()], pairs
    if task == "cross_dataset":
        first, second = data["data"].names or AVE_CLASSES, data["cross"].names or AVVP_CLASSES
        return ([s.name for s in AVE_AVVP_SHARED_CLASSES],
                shared_class_map(AVE_AVVP_SHARED_CLASSES, first, second))
    ucf, vgg = data["ucf"].names, data["vgg"].names
    if ucf is None or vgg is None:
        return [f"class {i}" for i in range(UCF_VGG_CLASSES)], {i: i for i in range(UCF_VGG_CLASSES)}
    if len(ucf) != len(vgg):
        raise ValueError(f"the UCF-101 shards name {len(ucf)} classes, the VGGSound shards {len(vgg)}: class i of one "
                         "must be class i of the other (or give --ucf-vgg-map)")
    return [f"{a} ↔ {b}" for a, b in zip(ucf, vgg)], {i: i for i in range(len(ucf))}


def run_probes(tasks: tuple[str, ...], data: dict[str, EncodedDataset], heads: Mapping[str, ProbeConfig],
               shared: Mapping[str, dict[int, int]], modalities: tuple[str, ...]) -> list[ProbeResult]:
    """The trained-head protocols, in both directions between audio and video (classification: ``clip_directions``);
    ``shared``: each cross-dataset protocol's {dataset-1 class: dataset-2 class}."""
    results: list[ProbeResult] = []
    if "classification" in tasks:
        for source, target in clip_directions(modalities):
            results.append(classification_probe(data["data"].splits, source, target, data["data"].classes,
                                                heads["classification"]))
    for source, target in directions(modalities):
        if "localisation" in tasks:
            localise = data["cross" if "cross" in data else "data"]
            results.append(localisation_probe(localise.splits, source, target, localise.classes,
                                              heads["localisation"]))
        if "cross_dataset" in tasks:
            class_map = shared["cross_dataset"]
            classes = max(data["data"].classes, max(class_map) + 1)   # the head scores every shared class
            results.append(cross_dataset_probe(data["data"].splits, data["cross"].splits["test"], source, target,
                                               classes, class_map, heads["cross_dataset"]))
        if "ucf_vgg" in tasks:
            ucf_to_vgg = shared["ucf_vgg"]
            first, second, class_map = ((data["ucf"], data["vgg"], ucf_to_vgg) if source == "video" else
                                        (data["vgg"], data["ucf"], {b: a for a, b in ucf_to_vgg.items()}))
            results.append(cross_dataset_classification(first.splits, second.splits["test"], source, target,
                                                        class_map, heads["ucf_vgg"]))
    return results


def run_retrieval(tasks: tuple[str, ...], test: CodeSplit, modalities: tuple[str, ...],
                  seen: set[frozenset[str]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Zero-shot retrieval on ``test``: X↔audio recall@k (clip i's own counterpart is the match), and every pair's
    class-level precision@k with seed 004's seen/unseen mark and Avg. (the mean of its six numbers)."""
    present = [m for m in modalities if m in test.vectors]
    retrieval = {}
    if "retrieval" in tasks and "audio" in present:
        # audio-visual pairs share the time axis; text tokens do not, so text retrieves by clip-mean codes
        for m in (m for m in present if m != "audio"):
            aligned = m in LABELLED_MODALITIES
            retrieval[m] = {
                direction: {f"R@{k}": v for k, v in paired_clip_retrieval(test, q, g, aligned=aligned).items()}
                for direction, q, g in (("to_audio", m, "audio"), ("from_audio", "audio", m))}
    pairs = {}
    if "class_retrieval" in tasks:
        for a, b in combinations(present, 2):
            precision = {f"{q}→{g}": {f"P@{k}": v for k, v in class_retrieval(test, q, g).items()}
                         for q, g in ((a, b), (b, a))}
            values = [v for scores in precision.values() for v in scores.values()]
            pairs[f"{a}↔{b}"] = {"seen": frozenset((a, b)) in seen, "precision": precision,
                                 "avg": sum(values) / len(values)}
    return retrieval, pairs


def run_zero_shot_retrieval(pretrained: Pretrained, spec: str, src: SourceConfig, job: JobConfig,
                            dims: Tensor | None) -> dict[str, Any]:
    """Seed 003 Table 2's protocol on every item of each set of ``spec`` (``--retrieval-data``; "": ``src``'s shards,
    one set): clip shards of any pairs (image+text, audio+text, image+audio, video+text, audio-video) or feature shards
    (the authors' released retrieval sets, ``shards.convert``), every pair of the model's modalities present,
    R@1/5/10 both ways and their mean (trainer/eval/retrieval.py), on the code dimensions ``dims`` (TOC) when given."""
    sets = retrieval_sets(spec) if spec else [("data", data_config(src, job).urls)]
    held: dict[str, set[str] | None] = {}       # the data streams each set's manifest says its samples hold
    features: dict[str, bool] = {}              # feature shards (a converted release) rather than media
    for name, urls in sets:
        try:
            manifest = ShardManifest.of_shards(expand_shard_urls(urls))
        except ValueError:
            manifest = None
        features[name] = manifest is not None and manifest.is_features
        text = ["text"] if manifest is not None and manifest.released_value("captions") else []
        kinds = {"+".join([*(manifest.feature_shapes or {}), *text]): 1} if features[name] else \
            (manifest.modalities if manifest is not None else None)
        held[name] = {m for kind in kinds for m in kind.split("+")} if isinstance(kinds, dict) else None
    coder = CMGModel.from_pretrained(pretrained.checkpoint, backbones=src.backbones or None)
    seen = pretrained.model.trained_pairs
    datasets = {}
    for name, urls in sets:
        # media need the model's backbone of their stream; feature shards only their modality's encoder
        candidates = list(coder.streams) if features[name] else coder.modalities
        coded = [m for m in candidates if held[name] is None or coder.streams[m] in held[name]]
        if len(coded) < 2:   # e.g. audio-text pairs before the phase that adds audio: nothing to rank
            datasets[name] = {"urls": urls, "items": 0, "skipped": 0, "pairs": {},
                              "note": f"the model codes {coded or 'none'} of its modalities {sorted(held[name])}"}
            continue
        items = read_feature_items(coder, urls) if features[name] else \
            read_retrieval_items(coder, urls, streams=[coder.streams[m] for m in coded])
        if dims is not None:
            items = items.select_dims(dims)
        datasets[name] = {"urls": urls, "items": len(items.keys), "skipped": len(items.skipped),
                          "pairs": zero_shot_retrieval(items, seen),
                          "code_counts": {m: c.tolist() for m, c in items.code_counts.items()}}
    return {"datasets": datasets}


def positive_rate(dataset: EncodedDataset) -> float:
    """The share of (clip, segment, class) cells of the test split that carry an event: the micro F1 of random
    per-segment tags drawn at the labels' own rate (precision = recall = that rate), localisation's chance."""
    labels = [y for m, y in dataset.splits["test"].segment_labels.items() if m in LABELLED_MODALITIES]
    cells = dataset.classes * sum(y.numel() for y in labels)
    return sum(int((y >= 0).sum()) for y in labels) / max(1, cells)


def evaluate(pretrained: Pretrained, cfg: EvaluateConfig, job: JobConfig) -> dict[str, Any]:
    """Encode, optionally apply TOC, run every selected protocol; a JSON-able dict of the results."""
    model = pretrained.model
    tasks = selected_tasks(cfg)
    start = time.perf_counter()
    toc = None if cfg.toc is None else toc_scores(model.quantizer.codebook, cfg.toc)
    data = read_datasets(pretrained, cfg, job, datasets_needed(tasks, cfg), None if toc is None else toc.selected)
    encoded = time.perf_counter()
    modalities = model.downstream_modalities        # a continual model's carried modalities included
    shared = {task: shared_classes(task, cfg, data) for task in ("cross_dataset", "ucf_vgg") if task in tasks}
    results = run_probes(tasks, data, cfg.heads, {task: pairs for task, (_, pairs) in shared.items()}, modalities)
    retrieval, pairs = ({}, {}) if "data" not in data else \
        run_retrieval(tasks, data["data"].splits["test"], modalities, model.trained_pairs)
    zero_shot = run_zero_shot_retrieval(pretrained, cfg.retrieval.urls if cfg.retrieval else "", cfg.source, job,
                                        None if toc is None else toc.selected) if "zero_shot_retrieval" in tasks else {}

    localised = data.get("cross") or data.get("data")       # the dataset localisation reads
    agreement = None
    if "data" in data and {"audio", "video"} <= set(data["data"].splits["test"].indices):
        # over every labelled clip, not the test split alone: no head is trained for this number and no clip of the
        # evaluation data was pretrained on, and on 24 test clips the share of one checkpoint moved by up to
        # 13 points from one split to another (docs/recipe_sweep.md)
        every_clip = CodeSplit.concat(list(data["data"].splits.values()))
        agreement = code_agreement(every_clip, "audio", "video", data["data"].classes)[1]
    primary = data["data"].report() if "data" in data else {"clips": {}, "classes": 0}
    return {
        "checkpoint": str(pretrained.checkpoint), "task": pretrained.meta.task,
        "step": pretrained.step, "tasks": list(tasks), "classes": primary["classes"], "clips": primary["clips"],
        "datasets": {name: dataset.report() for name, dataset in data.items()},
        "shared_classes": {task: names for task, (names, _) in shared.items()},
        "switches": checkpoint_switches(pretrained.meta.model_config or {}),
        "stage": checkpoint_stage(pretrained.meta.model_config or {}),
        "toc": None if toc is None else {"dims": toc.selected.tolist(), "lambda": cfg.toc.balance,
                                         "normalize": cfg.toc.normalize},
        "probes": [dataclasses.asdict(r) | {"direction": r.direction} for r in results],
        "retrieval": retrieval, "class_retrieval": pairs, "zero_shot_retrieval": zero_shot,
        "same_code_share": agreement, "positive_rate": 0.0 if localised is None else positive_rate(localised),
        "encode_s": encoded - start, "probe_s": time.perf_counter() - encoded,
    }


def _initials(name: str) -> str:
    """"video→audio" -> "V→A", "audio↔text" -> "A↔T"."""
    arrow = "↔" if "↔" in name else "→"
    return arrow.join(m[0].upper() for m in name.split(arrow))


def format_table(report: dict[str, Any]) -> str:
    toc = report["toc"]
    toc_text = "off" if toc is None else f"{len(toc['dims'])} dims (λ={toc['lambda']})"
    lines = [f"cross-modal generalisation of {report['checkpoint']} ({report['task']}, step {report['step']}), "
             f"TOC: {toc_text}"]
    roles = {"data": "--data", "cross": "--cross (AVVP)", "ucf": "--ucf-data", "vgg": "--vgg-data"}
    for name, dataset in report["datasets"].items():
        clips = dataset["clips"]
        lines.append(f"  {roles[name]}: {dataset['classes']} classes, train/val/test = "
                     f"{clips['train']}/{clips['val']}/{clips['test']} clips")
    if report["probes"] or report["retrieval"] or report["class_retrieval"]:
        lines += ["epoch chosen on the source modality's val split; 'cross' = target modality's test split, "
                  "'in-modality' = source modality's test split (same head)",
                  f"{'task':<16}{'dir':<6}{'metric':<10}{'cross':>8}{'in-modality':>13}{'val':>8}{'epoch':>7}"
                  f"{'precision':>11}{'recall':>8}"]
        lines.append("-" * len(lines[-1]))
    for p in report["probes"]:
        extra = (f"{100 * p['details']['precision']:>11.1f}{100 * p['details']['recall']:>8.1f}"
                 if "precision" in p["details"] else "")
        lines.append(f"{p['task']:<16}{p['direction']:<6}{p['metric']:<10}{100 * p['cross']:>8.1f}"
                     f"{100 * p['in_modality']:>13.1f}{100 * p['val']:>8.1f}{p['epoch']:>7}{extra}")
    notes = dict.fromkeys(f"{p['task']} head: {p['head']['note']}" for p in report["probes"] if p["head"].get("note"))
    lines += [f"note: {note}" for note in notes]     # once per protocol (both directions train on one split's size)
    for m, scores in report["retrieval"].items():
        for direction, recall in scores.items():
            name = _initials(f"{m}→audio" if direction == "to_audio" else f"audio→{m}")
            ranks = "  ".join(f"{k} {100 * v:.1f}" for k, v in recall.items())
            lines.append(f"{'retrieval':<16}{name:<6}{'zero-shot':<10}{ranks:>30}  (test split)")
    for pair, scores in report["class_retrieval"].items():
        seen = "seen" if scores["seen"] else "unseen"
        for direction, precision in scores["precision"].items():
            ranks = "  ".join(f"{k} {100 * v:.1f}" for k, v in precision.items())
            lines.append(f"{'class retrieval':<16}{_initials(direction):<6}{seen:<10}{ranks:>30}")
        average = f"Avg. {100 * scores['avg']:.1f}"
        lines.append(f"{'class retrieval':<16}{_initials(pair):<6}{seen:<10}{average:>30}")
    if report["zero_shot_retrieval"]:
        lines += zero_shot_lines(report["zero_shot_retrieval"])
    if report["same_code_share"] is not None:
        lines.append(f"same code at (clip, segment) cells where audio and video carry the same event (every split): "
                     f"{100 * report['same_code_share']:.1f}%")
    lines.append(f"encoding {report['encode_s']:.1f} s, heads and retrieval {report['probe_s']:.1f} s")
    return "\n".join(lines)


def zero_shot_lines(zero_shot: dict[str, Any]) -> list[str]:
    """The zero-shot retrieval table: per set and pair, R@1/5/10 each way, their mean (the seeds' number) and chance."""
    lines = []
    for name, dataset in zero_shot["datasets"].items():
        if "note" in dataset:
            lines.append(f"zero-shot retrieval on {name}: nothing to rank, {dataset['note']}")
            continue
        lines += [f"zero-shot retrieval on {name}: {dataset['items']} items of {dataset['urls']} "
                  f"({dataset['skipped']} corrupt samples skipped); pooled code vectors, cosine; R@1 / R@5 / R@10 (%)",
                  f"{'pair':<8}{'':<8}{'dir':<8}{'R@1':>7}{'R@5':>7}{'R@10':>7}   chance R@1/5/10   queries"]
        for pair, scores in dataset["pairs"].items():
            seen = "seen" if scores["seen"] else "unseen"
            for direction, recall in scores["directions"].items():
                chance = " / ".join(f"{100 * v:.1f}" for v in scores["chance"][direction].values())
                lines.append(f"{_initials(pair):<8}{seen:<8}{_initials(direction):<8}"
                             + "".join(f"{100 * v:>7.1f}" for v in recall.values())
                             + f"   {chance:<17} {scores['queries'][direction]}")
            lines.append(f"{_initials(pair):<8}{seen:<8}{'mean':<8}" + "".join(f"{100 * v:>7.1f}"
                                                                             for v in scores["mean"].values())
                         + (f"   ({scores['without']} items lack one of the two)" if scores["without"] else ""))
    return lines


def _metric_key(direction: str) -> str:
    return direction.replace("→", "_to_").replace("↔", "_")


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics: ``eval/<task>/<V_to_A>/<cross|in_modality|val>``, retrieval ``R@k`` both ways and the
    pairs' class-level ``P@k`` and ``avg``."""
    metrics = {}
    for p in report["probes"]:
        for key in ("cross", "in_modality", "val"):
            metrics[f"eval/{p['task']}/{_metric_key(p['direction'])}/{key}"] = p[key]
    for m, scores in report["retrieval"].items():
        for direction, recall in scores.items():
            name = f"{m}_to_audio" if direction == "to_audio" else f"audio_to_{m}"
            metrics.update({f"eval/retrieval/{name}/{k}": v for k, v in recall.items()})
    for pair, scores in report["class_retrieval"].items():
        for direction, precision in scores["precision"].items():
            metrics.update({f"eval/class_retrieval/{_metric_key(direction)}/{k}": v for k, v in precision.items()})
        metrics[f"eval/class_retrieval/{_metric_key(pair)}/avg"] = scores["avg"]
    for name, dataset in report["zero_shot_retrieval"].get("datasets", {}).items():
        for pair, scores in dataset["pairs"].items():
            for direction, recall in scores["directions"].items():
                metrics.update({f"eval/zero_shot_retrieval/{name}/{_metric_key(direction)}/{k}": v
                                for k, v in recall.items()})
            metrics.update({f"eval/zero_shot_retrieval/{name}/{_metric_key(pair)}/mean_{k}": v
                            for k, v in scores["mean"].items()})
    if report["same_code_share"] is not None:
        metrics["eval/same_code_share"] = report["same_code_share"]
    return metrics
