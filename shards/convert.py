"""Convert the CMG authors' released feature sets into feature shards (what ``python -m shards.extract`` writes).

    python -m shards.convert vggsound-avel --meta vggsound-avel40k.csv --categories VggsoundAVEL40kCategories.txt \\
        --audio-dir audio/zip --video-dir video/zip --label-dir label/zip \\
        --prompts vggsoundCategories2Prompts.csv --out feats/vggsound40k
    python -m shards.convert avvp --audio-annotations AVVP_eval_audio_checked_combined.csv \\
        --visual-annotations AVVP_eval_visual_checked_combined.csv --categories AVVP_Categories.txt \\
        --audio-dir AVVP/feature/audio/zip --video-dir AVVP/feature/video/zip --out feats/avvp
    python -m shards.convert ucf-vggsound --meta ucf2vggsound.csv --categories UCF101sameVGGSound.txt \\
        --video-dir UCF101/feature/video/zip --out feats/ucf101      # the VGGSound side: vggsound2ucf.csv,
                                                                     # VGGSoundsameUCF101.txt, --audio-dir
    python -m shards.convert ave --root AVE-ECCV18-master/data --out feats/ave
    python -m shards.convert clotho --captions clotho_captions_evaluation.csv --audio-dir clotho2.1/feature/zip \
        --out feats/clotho      # the retrieval sets: mscoco, clotho, flickrsound, msvd, valor32k
                                # (trainer/data/released_pairs.py; zero-shot retrieval reads them)
  every set: [--clips-per-shard 256] [--dtype float32|float16] [--skip-bad] [--text-backbones YAML]
             [--max-shards N] [--no-progress]

The layouts and how each becomes labels are in trainer/data/released.py. ``--out DIR`` receives, per split, shards
``SPLIT-000000.tar``, ``SPLIT-000001.tar``, ... of ``--clips-per-shard`` clips each (the last one fewer) in the
metadata's order, and one ``manifest.json`` (format ``FEATURE_FORMAT`` of trainer/data/manifest.py) listing every
shard with its split:
train on one split with ``data.kind=features data.urls='DIR/train-{000000..000093}.tar'`` (the command prints the
pattern of each split). Splits: VGGSound-AVEL's ``split`` column (train/val/test: 24K = train, 40K = all three),
AVE's order files, and ``--split NAME`` (default ``all``) for sets without one. Members of a clip (the feature-shard
format of trainer/data/features.py, written by ``shards.extract.output_samples``):

    audio.npy   (10 128)      VGGish per second          video.npy  (10 49 512)  VGG-19 pool5, 7x7 grid row-major
    json        clip_label, video_labels, audio_labels (one class per second, -1 = none), num_classes, and for AVVP
                audio_events / video_events (every annotated class per second)
    txt         the category's prompt (sets with --prompts)
    text.npy    the prompt's token features, with --text-backbones (its text backbone; needed to train on text)

Resuming: ``DIR/convert-state.json`` records the arguments (set, inputs, shard size, dtype, ``--skip-bad``, text
backbone; metadata files by their sha256) and every finished shard. A shard is written to ``NAME.partial`` and
renamed when complete, so an interrupted run leaves only whole shards; running the same command again keeps the
finished ones, redoes the rest, and writes ``manifest.json`` once every shard is done (so nothing trains on a half
conversion). A run with other arguments into the same directory is refused. ``--max-shards N`` stops after N new
shards (a conversion in several time-limited jobs).

Bad input (a missing or corrupt zip, a pickle that is not a numeric array, a wrong shape, an unknown class) stops
the conversion with an error naming the file and zip member; with ``--skip-bad`` the clip is left out instead, and
listed with its error in the manifest (``skipped``, ``released.skipped_clips``) and in the summary. Audio or video
shorter or longer than 10 s is fitted as the authors fit audio (last row repeated / cut) and counted per modality.

Exit codes: 0 converted (or stopped by --max-shards: run it again to continue); 2 bad arguments, nothing written;
1 failed, 130 interrupted (Ctrl-C): the last line says how many shards were finished and are kept (fix the input,
or add --skip-bad, and run the same command again; the rerun says how many finished shards it keeps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

from shards.parsers import convert_parser
from shards.extract import output_samples
from trainer.configs.data import DecodeConfig
from trainer.data.features import FeatureError, PublicFeatureConfig
from trainer.data.manifest import FEATURE_FORMAT, MANIFEST_NAME, ShardEntry, ShardManifest
from trainer.data.released import (
    FEATURE_SHAPES, SECONDS, AVEConfig, AVESet, AVVPConfig, AVVPSet, ReleasedClip, ReleasedSet, ZipSet, ZipSetConfig,
)
from trainer.data.released_files import ReleasedFormatError
from trainer.data.released_pairs import PAIR_SETS, PairSet, PairSetConfig

STATE_NAME = "convert-state.json"
STATE_FORMAT = "cmg-trainer-convert-state/1"
LOCK_NAME = "convert.lock"
SPLIT_ORDER = ("train", "val", "test")        # splits in this order first, others after them by name
SPLIT_PATTERN = re.compile(r"[A-Za-z0-9_]+")
# the released features' extractors, named in the manifest where extract names its backbones (the families of
# launch/configs/backbones/paper.yaml, which makes such features from clips)
RELEASED_BACKBONES = {
    "audio": {"family": "vggish", "features": "128-d per second", "source": "released by haihuangcode/CMG"},
    "video": {"family": "vgg19", "pooling": "patch", "features": "pool5 7x7x512 per second",
              "source": "released by haihuangcode/CMG"},
}


SetConfig = ZipSetConfig | AVVPConfig | AVEConfig | PairSetConfig


class ConvertError(Exception):
    """Arguments, or an output directory, that forbid converting (exit 2; nothing written)."""


class ConvertStopped(Exception):
    """A conversion stopped before its last shard by ``cause`` (a bad clip, or Ctrl-C). The ``finished`` shards (this
    run's and earlier runs') stay in ``out``; the shard being written is discarded; the same command resumes."""

    def __init__(self, cause: BaseException, finished: int, total: int, out: Path):
        super().__init__(str(cause))
        self.cause, self.finished, self.total, self.out = cause, finished, total, out

    def kept(self) -> str:
        if not self.finished:
            return f"no shard of {self.total} was finished"
        return f"{self.finished} of {self.total} shards finished, kept in {self.out}"


@dataclass
class ConvertConfig:
    out: str                          # the output directory
    clips_per_shard: int = 256
    dtype: str = "float32"            # stored feature dtype: float32 | float16
    skip_bad: bool = False            # leave unusable clips out (listed) instead of stopping
    text_backbones: str = ""          # backbones YAML whose text backbone encodes the prompts into text.npy
    max_shards: int | None = None     # stop after this many new shards (not part of the resume fingerprint)
    progress: bool = True


@dataclass(frozen=True)
class ShardPlan:
    name: str
    split: str
    keys: tuple[str, ...]


def plan_shards(splits: dict[str, list[str]], clips_per_shard: int) -> list[ShardPlan]:
    """Every split's keys cut into shards ``SPLIT-%06d.tar`` of ``clips_per_shard`` keys, splits in order."""
    bad = [s for s in splits if not SPLIT_PATTERN.fullmatch(s)]
    if bad:
        raise ConvertError(f"split names {bad} cannot name shards (letters, digits and _ only)")
    ordered = sorted(splits, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
    return [ShardPlan(f"{split}-{n:06d}.tar", split, tuple(splits[split][start:start + clips_per_shard]))
            for split in ordered for n, start in enumerate(range(0, len(splits[split]), clips_per_shard))]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b": leaf}: the arguments compared key by key."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@contextlib.contextmanager
def exclusive(path: Path):
    """Hold an exclusive ``flock`` on ``path`` for the block (the kernel drops it when the process ends, however it
    ends), so two conversions never write into one directory at once."""
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConvertError(f"{path.parent}: another shards.convert is writing there ({path} is locked)") from None
        yield


class Ledger:
    """``convert-state.json``: the arguments a conversion runs with and the shards it has finished."""

    def __init__(self, out_dir: Path, arguments: dict[str, Any]):
        self.path = out_dir / STATE_NAME
        arguments = json.loads(json.dumps(arguments))   # as it reads back (tuples become lists)
        if not self.path.exists():
            stray = sorted(p.name for p in out_dir.iterdir() if p.suffix == ".tar" or p.name == MANIFEST_NAME)
            if stray:
                raise ConvertError(f"{out_dir} holds {stray[:3]} but no {STATE_NAME}: not a conversion to resume; "
                                   "choose an empty directory")
            self.state = {"format": STATE_FORMAT, "arguments": arguments, "shards": {}}
            return
        self.state = json.loads(self.path.read_text(encoding="utf-8"))
        if self.state.get("format") != STATE_FORMAT:
            raise ConvertError(f"{self.path}: format {self.state.get('format')!r}, not {STATE_FORMAT!r}")
        before, now = flatten(self.state["arguments"]), flatten(arguments)
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if changed:
            detail = "; ".join(f"{k}: {json.dumps(before.get(k))} then, {json.dumps(now.get(k))} now" for k in changed)
            raise ConvertError(f"{self.path.parent} holds a conversion started with other arguments ({detail}). "
                               "Run the same command to continue it, or convert into another directory")

    def finished(self, plan: ShardPlan) -> dict[str, Any] | None:
        """The shard's record if it was written completely (and the file is still the one written)."""
        entry = self.state["shards"].get(plan.name)
        path = self.path.parent / plan.name
        if entry and path.is_file() and path.stat().st_size == entry["bytes"]:
            return entry
        return None

    def record(self, plan: ShardPlan, entry: dict[str, Any]) -> None:
        self.state["shards"][plan.name] = entry
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.state, indent=1) + "\n", encoding="utf-8")
        os.replace(partial, self.path)


class PromptEncoder:
    """Prompt -> its text features ``(1 l d)`` and mask ``(1 l)`` from a text backbone; each distinct prompt is
    encoded once (a set has one prompt per class)."""

    def __init__(self, yaml_path: str):
        from trainer.backbones import FrozenBackbones, load_backbones_config

        self.backbones = FrozenBackbones(load_backbones_config(yaml_path).only(["text"]))
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    def __call__(self, prompt: str) -> dict[str, torch.Tensor]:
        if prompt not in self._cache:
            self._cache[prompt] = {k: v.cpu() for k, v in self.backbones.encode({"caption": [prompt]}).items()}
        return self._cache[prompt]


def clip_samples(clip: ReleasedClip, num_classes: int, dtype: np.dtype,
                 text: PromptEncoder | None) -> list[dict[str, Any]]:
    """The clip's feature-shard sample, written by ``shards.extract.output_samples`` (a batch of one)."""
    labels = clip.labels
    extra = {"num_classes": num_classes} | {f"{m}_events": e for m, e in clip.events.items()}
    batch = {"key": [clip.key], "labelled": [labels.labelled], "clip_label": [labels.clip],
             "video_labels": [labels.video], "audio_labels": [labels.audio], "caption": [clip.caption],
             "label_extra": [extra]}
    feats = {m: torch.from_numpy(a)[None] for m, a in clip.features.items()}
    if text is not None:
        feats |= text(clip.caption)
    return list(output_samples(batch, feats, dtype))


def item_shapes(clip: ReleasedClip, expected: dict[str, list[int]]) -> dict[str, list[int]]:
    """The clip's feature shape after the time axis per modality, refused unless it is the set's (``expected``: the
    first item's; {} before any) — items of a retrieval set vary in length only."""
    shapes = {m: list(a.shape[1:]) for m, a in clip.features.items()}
    wrong = {m: s for m, s in shapes.items() if m in expected and s != expected[m]}
    if wrong:
        raise ReleasedFormatError(f"{clip.key}: feature shape after the time axis {wrong}, but the set's items have "
                                  f"{ {m: expected[m] for m in wrong} }")
    return shapes


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def write_shard(source: ReleasedSet, plan: ShardPlan, path: Path, cfg: ConvertConfig, text: PromptEncoder | None,
                bar: tqdm, shapes: dict[str, list[int]]) -> dict[str, Any]:
    """Read the plan's clips and write them to ``path.partial`` (removed if anything, Ctrl-C included, stops it);
    returns the ledger record. The caller records the shard, then renames it to ``path``: a shard file is always
    one the ledger lists. ``shapes``: the items' shapes after the time axis so far (filled from this shard's first
    item when empty)."""
    partial = partial_path(path)
    samples, skipped, fitted = 0, [], Counter()
    try:
        # mtime fixed: a shard's bytes depend on its clips only, so a resumed conversion equals an uninterrupted one
        with wds.TarWriter(str(partial), encoder=False, mtime=0.0) as sink:
            for key in plan.keys:
                try:
                    clip = source.read(plan.split, key)
                    shapes |= item_shapes(clip, shapes)
                except FeatureError as err:        # ReleasedFormatError, or the AVE reader's FeatureError
                    if not cfg.skip_bad:
                        raise
                    skipped.append({"key": key, "split": plan.split, "error": str(err)})
                    bar.write(f"[shards.convert] skipping {plan.split}/{key}: {err}", file=sys.stderr)
                else:
                    for sample in clip_samples(clip, len(source.classes), np.dtype(cfg.dtype), text):
                        sink.write(sample)
                    samples += 1
                    fitted.update(f"{m}/{how}" for m, how in clip.fitted.items())
                bar.update(1)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return {"split": plan.split, "samples": samples, "bytes": partial.stat().st_size, "skipped": skipped,
            "fitted": dict(sorted(fitted.items())), "shapes": dict(shapes)}


def split_urls(names: list[str]) -> str:
    """Shard names of one split -> its brace pattern, e.g. ``train-{000000..000093}.tar``."""
    split = names[0].rsplit("-", 1)[0]
    return names[0] if len(names) == 1 else f"{split}-{{000000..{len(names) - 1:06d}}}.tar"


def build_manifest(source: ReleasedSet, plans: list[ShardPlan], ledger: Ledger, cfg: ConvertConfig,
                   text: PromptEncoder | None) -> ShardManifest:
    records = [(p, ledger.state["shards"][p.name]) for p in plans]
    variable = getattr(source, "variable_length", False)
    recorded = next((e["shapes"] for _, e in records if e.get("shapes")), {})
    shapes = {m: recorded.get(m) if variable else list(FEATURE_SHAPES[m]) for m in source.modalities}
    backbones: dict[str, Any] = {m: None if variable else RELEASED_BACKBONES[m] for m in source.modalities}
    if text is not None:
        shapes["text"] = list(text.backbones.feature_shapes()["text"])
        backbones["text"] = text.backbones.describe()["text"]
    splits: dict[str, dict[str, Any]] = {}
    for plan, entry in records:
        split = splits.setdefault(plan.split, {"shards": [], "samples": 0})
        split["shards"].append(plan.name)
        split["samples"] += entry["samples"]
    fitted = Counter()
    for _, entry in records:
        fitted.update(entry["fitted"])
    skipped = [clip for _, entry in records for clip in entry["skipped"]]
    return ShardManifest(
        FEATURE_FORMAT, [ShardEntry(p.name, e["samples"], {"split": p.split}) for p, e in records],
        sum(e["samples"] for _, e in records), feature_shapes=shapes,
        # a retrieval set's items vary in length: no decode window (None)
        decode=None if variable else dataclasses.asdict(DecodeConfig(seconds=SECONDS)), backbones=backbones,
        released={
            "set": source.kind, "classes": source.classes, "num_classes": len(source.classes), "labels": source.labels,
            "captions": source.captions,
            "splits": {s: {"urls": split_urls(v["shards"]), "shards": len(v["shards"]), "samples": v["samples"]}
                       for s, v in splits.items()},
            "fitted": dict(sorted(fitted.items())), "skipped_clips": skipped,
            "arguments": ledger.state["arguments"],
        },
        details={"skipped": len(skipped), "dtype": cfg.dtype})


def convert(source: ReleasedSet, set_config: SetConfig, cfg: ConvertConfig) -> dict[str, Any]:
    """Convert (or continue converting) ``source`` into ``cfg.out``. Returns ``{"manifest": ..., "written": n,
    "remaining": n}``; the manifest is None while shards remain (``cfg.max_shards`` reached)."""
    if cfg.clips_per_shard < 1:
        raise ConvertError(f"--clips-per-shard must be >= 1, got {cfg.clips_per_shard}")
    if cfg.dtype not in ("float32", "float16"):
        raise ConvertError(f"--dtype must be float32 or float16, got {cfg.dtype!r}")
    if cfg.text_backbones and not source.captions:
        raise ConvertError(f"--text-backbones encodes the prompts, but these {source.kind} clips have none "
                           "(vggsound-avel: give --prompts)")
    text = PromptEncoder(cfg.text_backbones) if cfg.text_backbones else None
    arguments = {
        "set": source.kind, "config": dataclasses.asdict(set_config),
        "metadata_sha256": {str(p): sha256(p) for p in source.metadata_files()},
        "clips_per_shard": cfg.clips_per_shard, "dtype": cfg.dtype, "skip_bad": cfg.skip_bad,
        "text_backbone": text.backbones.describe()["text"] if text is not None else None,
    }
    plans = plan_shards(source.splits(), cfg.clips_per_shard)
    if not plans:
        raise ConvertError(f"{source.kind}: the metadata lists no clip")
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(out_dir / LOCK_NAME):
        return convert_locked(source, plans, arguments, out_dir, cfg, text)


def convert_locked(source: ReleasedSet, plans: list[ShardPlan], arguments: dict[str, Any], out_dir: Path,
                   cfg: ConvertConfig, text: PromptEncoder | None) -> dict[str, Any]:
    ledger = Ledger(out_dir, arguments)
    for stale in out_dir.glob("*.tar.partial"):   # a shard an interrupted run was writing
        stale.unlink()
    todo = [p for p in plans if ledger.finished(p) is None]
    kept = len(plans) - len(todo)
    if kept and todo:
        print(f"[shards.convert] kept {kept} finished shard{'s' * (kept != 1)} from an earlier run in {out_dir}; "
              f"{len(todo)} to write", file=sys.stderr)
    done = sum(len(p.keys) for p in plans) - sum(len(p.keys) for p in todo)
    written = 0
    # the items' shapes after the time axis, as the finished shards recorded them (a resumed run checks against them)
    shapes = next((dict(e["shapes"]) for e in ledger.state["shards"].values() if e.get("shapes")), {})
    try:
        with tqdm(total=sum(len(p.keys) for p in plans), initial=done, desc=f"convert {source.kind}", unit="clip",
                  disable=not cfg.progress) as bar:
            for plan in todo:
                if cfg.max_shards is not None and written >= cfg.max_shards:
                    break
                path = out_dir / plan.name
                ledger.record(plan, write_shard(source, plan, path, cfg, text, bar, shapes))
                os.replace(partial_path(path), path)   # stopped before this line: the shard is redone
                written += 1
    except (FeatureError, KeyboardInterrupt) as err:   # a bad clip (without --skip-bad), or Ctrl-C
        raise ConvertStopped(err, kept + written, len(plans), out_dir) from err
    remaining = len(todo) - written
    manifest = None
    if remaining == 0:
        manifest = build_manifest(source, plans, ledger, cfg, text)
        manifest.write(out_dir)
    return {"manifest": manifest, "written": written, "remaining": remaining}


# --- command line ---

def _path(text: str) -> str:
    """A path argument, absolute (the resume fingerprint must not depend on the working directory)."""
    return str(Path(text).expanduser().resolve()) if text else ""


def parse_args(argv: list[str] | None) -> tuple[SetConfig, str, ConvertConfig]:
    """(the set's config, its name, the conversion settings); raises ``ConvertError`` (exit 2)."""
    a = convert_parser().parse_args(argv)   # torch-free, for `cmg shards convert --help`

    if a.clips_per_shard < 1 or (a.max_shards is not None and a.max_shards < 1):
        raise ConvertError("--clips-per-shard and --max-shards must be >= 1")
    files, dirs = {}, {}
    if a.set in ("vggsound-avel", "ucf-vggsound"):
        set_config: SetConfig = ZipSetConfig(_path(a.meta), _path(a.categories), _path(a.audio_dir), _path(a.video_dir),
                                       _path(getattr(a, "label_dir", "")), _path(getattr(a, "prompts", "")), a.split)
        files = {"--meta": set_config.meta, "--categories": set_config.categories, "--prompts": set_config.prompts}
        dirs = {"--audio-dir": set_config.audio_dir, "--video-dir": set_config.video_dir,
                "--label-dir": set_config.label_dir}
        if a.set == "ucf-vggsound" and bool(a.audio_dir) == bool(a.video_dir):
            raise ConvertError("ucf-vggsound: give --video-dir (the UCF101 side) or --audio-dir (the VGGSound side)")
    elif a.set in PAIR_SETS:
        set_config = PairSetConfig(_path(getattr(a, "captions", "")), _path(getattr(a, "meta", "")),
                                   _path(getattr(a, "video_dir", "")), _path(getattr(a, "audio_dir", "")), a.split)
        files = {"--captions": set_config.captions, "--meta": set_config.meta}
        dirs = {"--audio-dir": set_config.audio_dir, "--video-dir": set_config.video_dir}
    elif a.set == "avvp":
        set_config = AVVPConfig(_path(a.audio_annotations), _path(a.visual_annotations), _path(a.categories),
                                _path(a.audio_dir), _path(a.video_dir), a.split)
        files = {"--audio-annotations": set_config.audio_annotations,
                 "--visual-annotations": set_config.visual_annotations, "--categories": set_config.categories}
        dirs = {"--audio-dir": set_config.audio_dir, "--video-dir": set_config.video_dir}
    else:
        set_config = AVEConfig(_path(a.root), a.labels, a.order, tuple(s for s in a.splits.split(",") if s),
                               _path(a.categories))
        root = Path(set_config.root)
        files = {"--categories": set_config.categories, "--labels": str(root / set_config.labels),
                 **{f"--order ({s})": str(root / set_config.order.format(split=s)) for s in set_config.splits},
                 "--root video": str(root / PublicFeatureConfig.video_file),
                 "--root audio": str(root / PublicFeatureConfig.audio_file)}
        dirs = {"--root": set_config.root}
    if a.set != "ave" and not (set_config.audio_dir or set_config.video_dir):
        raise ConvertError(f"{a.set}: give --audio-dir and/or --video-dir")
    missing = [f"{flag} {path}" for flag, path in files.items() if path and not Path(path).is_file()]
    missing += [f"{flag} {path}" for flag, path in dirs.items() if path and not Path(path).is_dir()]
    if missing:
        raise ConvertError(f"not found: {', '.join(missing)}")
    if a.text_backbones and not Path(a.text_backbones).is_file():
        raise ConvertError(f"--text-backbones: file not found: {a.text_backbones}")
    cfg = ConvertConfig(a.out, a.clips_per_shard, a.dtype, a.skip_bad, _path(a.text_backbones), a.max_shards,
                        not a.no_progress)
    return set_config, a.set, cfg


def open_set(set_config: SetConfig, kind: str) -> ReleasedSet:
    """The released set of ``set_config`` with its metadata read (raises ``ReleasedFormatError`` on bad metadata)."""
    if isinstance(set_config, ZipSetConfig):
        return ZipSet(set_config, kind)
    if isinstance(set_config, AVVPConfig):
        return AVVPSet(set_config)
    if isinstance(set_config, PairSetConfig):
        return PairSet(set_config, kind)
    return AVESet(set_config)


def summary(manifest: ShardManifest, out: str) -> str:
    released = manifest.released
    lines = [f"{released['set']}: {manifest.total} items ({released['num_classes']} classes) in "
             f"{len(manifest.shards)} shards in {out}; {manifest.details['skipped']} skipped; "
             f"features {', '.join(f'{m} {tuple(s)}' for m, s in manifest.feature_shapes.items())} "
             f"{manifest.details['dtype']}"]
    if released["fitted"]:
        lines.append("fitted to 10 s: " + ", ".join(f"{k} {n}" for k, n in released["fitted"].items()))
    for clip in released["skipped_clips"]:
        lines.append(f"  skipped {clip['split']}/{clip['key']}: {clip['error']}")
    urls = {split: str(Path(out) / info["urls"]) for split, info in released["splits"].items()}
    for split, info in released["splits"].items():
        lines.append(f"  {split:<6} {info['samples']:>7} clips  data.urls='{urls[split]}'")
    if len(urls) > 1:
        lines.append(f"  {'every':<6} {manifest.total:>7} clips  data.urls='{'::'.join(urls.values())}'")
    modalities = ",".join(manifest.feature_shapes)
    if manifest.decode is None:     # a retrieval set (trainer/data/released_pairs.py)
        lines.append(f"rank it: python -m trainer.programs.evaluate RUN --tasks zero_shot_retrieval --retrieval-data "
                     f"'{released['set']}={'::'.join(urls.values())}'")
    else:
        train = urls.get("train", next(iter(urls.values())))
        lines.append(f"train on a split: python trainer/main.py --config CONFIG.yaml data.kind=features "
                     f"data.feature_modalities=[{modalities}] data.urls='{train}'")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        set_config, kind, cfg = parse_args(argv)
    except ConvertError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        source = open_set(set_config, kind)
        result = convert(source, set_config, cfg)
    except ConvertError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ConvertStopped as stop:
        if isinstance(stop.cause, KeyboardInterrupt):
            print(f"\ninterrupted: {stop.kept()}; run the same command again to resume", file=sys.stderr)
            return 130
        print(f"error: {stop.cause}\n({stop.kept()}: fix the input or add --skip-bad, then run the same command "
              "again)", file=sys.stderr)
        return 1
    except FeatureError as err:   # the metadata files (CSV, categories, annotations, h5 order files)
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:     # arguments the metadata does not fit (e.g. --categories for a CSV without any)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:     # before the first clip: reading or hashing the metadata, loading a text backbone
        print(f"\ninterrupted before any clip was converted; nothing written to {cfg.out}", file=sys.stderr)
        return 130
    if result["manifest"] is None:
        print(f"stopped after {result['written']} new shards (--max-shards); {result['remaining']} remain: run the "
              "same command again to continue")
        return 0
    print(summary(result["manifest"], cfg.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
