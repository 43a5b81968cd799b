"""The CMG authors' released feature sets, read clip by clip, and the class lists of their cross-dataset protocols.

The authors of CMG (github.com/haihuangcode/CMG; download links in its README) release precomputed features: VGGish
audio (128-d per second) and VGG-19 pool5 video (7 x 7 x 512 per second). Their layouts, as the authors' readers in
``code/src/dataset/`` of that repository use them (file names are theirs; every path is given on the command line):

VGGSound-AVEL 24K / 40K / 81K, the pretraining sets (``VGGSOUND_dataset.py``):
    meta CSV            columns ``category, video_id, split`` (train / val / test; 40K = every row, 24K = the train
                        rows), e.g. ``vggsound-avel40k.csv``
    categories txt      one class name a line, class index = line number (``VggsoundAVEL40kCategories.txt``, 141)
    <audio dir>/<video_id>.zip   one ``.pkl`` member: a pickled numpy array (T <= 10, 128)
    <video dir>/<video_id>.zip   (10, 7, 7, 512)
    <label dir>/<video_id>.zip   (10, 1): 1 where the clip's event is both audible and visible (the AVC label)
    prompts CSV         columns ``label`` and the category's descriptive sentence (``vggsoundCategories2Prompts.csv``);
                        the authors take the first row of the label (``.values[0][1]``), so does ``read_prompts``
    81K (``VGGSOUND_dataset179k.py``): ``video_name_vggsound81k_checked.csv`` lists only ``id`` (the video file
    name; features are named without ``.mp4``), no category, split or AVC labels: unlabelled pretraining clips
AVVP (``AVVP_dataset.py``):
    one annotation file per modality (``AVVP_eval_audio_checked_combined.csv``, ``..._visual_...``), tab-separated,
    columns ``filename`` (<11-character YouTube id>_<start>_<end>), ``onset``, ``offset``, ``event_labels``: one row
    per video with comma-separated lists, or one row per event; event e covers seconds onset <= s < offset
    <dir>/<filename[:11]>.zip    audio and video features as above
    categories txt      ``AVVP_Categories.txt`` (25 classes)
UCF101 <-> VGGSound (``UCF_VGGSOUND_datasets.py``):
    ``ucf2vggsound.csv`` (category, video_id) with UCF101 video features (T, 7, 7, 512);
    ``vggsound2ucf.csv`` (category, video_id, split) with VGGSound audio features (T, 128);
    ``UCF101sameVGGSound.txt`` / ``VGGSoundsameUCF101.txt``: the 16 shared classes (see ``read_shared_classes``).
    Every second carries the clip's class (the authors' ``avc_label = np.ones(10)``).
AVE (``AVE_dataset.py``, ``AVE_AVVP_dataset.py``): h5 files with dataset ``avadataset`` and order files with
    ``order``; ``AVESet`` reads them through ``trainer.data.features.PublicFeatureDataset``, the evaluation's reader.

Every modality is fitted to ``SECONDS`` the way the authors fit audio (and UCF101 video): shorter arrays repeat their
last row, longer ones are cut (``fit_seconds``); a clip reports what was fitted. Video (t, 7, 7, 512) becomes
(t, 49, 512), the row-major patch grid that a video backbone with ``pooling: patch`` gives (``FEATURE_SHAPES``).

The zip members and the metadata tables are read by ``trainer.data.released_files`` (a restricted unpickler that
admits numpy arrays only; the csv module, with line numbers in its errors). Any unusable input (a missing or corrupt
zip, a refused pickle, a wrong shape, a class the categories file lacks) raises ``ReleasedFormatError`` naming the
file and member.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from trainer.data.decode import BACKGROUND, ClipLabels
from trainer.data.features import PublicFeatureConfig, PublicFeatureDataset
from trainer.data.released_files import ReleasedFormatError, read_table, read_zip_array

SECONDS = 10                                              # every released clip is 10 one-second segments
VIDEO_GRID = (7, 7, 512)                                  # VGG-19 pool5 per second
FEATURE_SHAPES = {"audio": (128,), "video": (49, 512)}    # per second, as the feature shards store them
KEY_PATTERN = re.compile(r"[^./\\\s]+")   # a shard key: webdataset splits member names at the first dot


# --- feature arrays ---

def fit_seconds(array: np.ndarray, seconds: int = SECONDS) -> tuple[np.ndarray, str | None]:
    """(t ...) -> (seconds ...) as the authors fit audio: the last row repeated, or the tail cut. Returns the
    array and "padded", "truncated" or None. ``array`` must have at least one row."""
    t = array.shape[0]
    if t < seconds:
        return np.concatenate([array, np.repeat(array[-1:], seconds - t, axis=0)]), "padded"
    if t > seconds:
        return array[:seconds], "truncated"
    return array, None


def feature_array(modality: str, array: np.ndarray, where: str) -> tuple[np.ndarray, str | None]:
    """A released audio (t, 128) or video (t, 7, 7, 512) array -> float32 (10, 128) / (10, 49, 512)."""
    trailing = VIDEO_GRID if modality == "video" else FEATURE_SHAPES["audio"]
    if array.ndim != 1 + len(trailing) or array.shape[1:] != trailing or array.shape[0] == 0:
        raise ReleasedFormatError(f"{where}: {modality} features of shape {array.shape}, expected "
                                  f"(t>=1, {', '.join(map(str, trailing))})")
    if not np.isfinite(array).all():
        raise ReleasedFormatError(f"{where}: {modality} features hold NaN or infinite values")
    array, fitted = fit_seconds(array.astype(np.float32, copy=False))
    return array.reshape(SECONDS, *FEATURE_SHAPES[modality]), fitted


def avc_seconds(array: np.ndarray, where: str) -> np.ndarray:
    """The AVC label (10, 1) (or (10,), (1, 10)) -> (10) bool: the event is audible and visible in that second."""
    flat = array.reshape(-1)
    if flat.size != SECONDS or not np.isin(flat, (0, 1)).all():
        raise ReleasedFormatError(f"{where}: AVC label of shape {array.shape} with values {np.unique(flat)[:5]}, "
                                  f"expected {SECONDS} values of 0 or 1")
    return flat.astype(bool)


# --- metadata files ---

def read_categories(path: str | Path) -> list[str]:
    """Class names, one a line (stripped; trailing blank lines dropped): class index = line number."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    blank = [n + 1 for n, line in enumerate(lines) if not line]
    if blank or not lines:
        raise ReleasedFormatError(f"{path}: blank class name on lines {blank}" if blank else f"{path}: no class")
    twice = sorted(name for name, n in Counter(lines).items() if n > 1)
    if twice:
        raise ReleasedFormatError(f"{path}: class names listed twice: {twice}")
    return lines


@dataclass(frozen=True)
class MetaRow:
    category: str | None   # None: the CSV has no category column (81K)
    video_id: str
    split: str


def read_meta(path: str | Path, split: str) -> list[MetaRow]:
    """A ``category, video_id[, split]`` CSV -> its rows in file order; ``split`` for rows of a CSV without a split
    column (ucf2vggsound.csv has none). The 81K list (``video_name_vggsound81k_checked.csv``) has an ``id`` column
    holding the video's file name instead, and no category: its ids drop ``.mp4`` (``VGGSOUND_dataset179k.py``)."""
    header, table = read_table(path)
    if "video_id" not in header and "id" not in header:
        raise ReleasedFormatError(f"{path}: no column video_id (or id) in the header {header}")
    column = "video_id" if "video_id" in header else "id"
    rows = []
    for line, row in table:
        video_id = row[column].removesuffix(".mp4") if column == "id" else row[column]
        rows.append(MetaRow(row["category"] if "category" in header else None, video_id, row.get("split") or split))
        if not video_id or rows[-1].category == "":
            raise ReleasedFormatError(f"{path}:{line}: empty category or {column}")
    if not rows:
        raise ReleasedFormatError(f"{path}: lists no clip")
    return rows


def read_prompts(path: str | Path) -> dict[str, str]:
    """``label, <prompt>`` CSV -> {label: its first prompt} (the authors read ``.values[0][1]``)."""
    header, rows = read_table(path)
    if not header or header[0] != "label" or len(header) < 2:
        raise ReleasedFormatError(f"{path}: expected a header 'label,<prompt>', got {header}")
    prompts: dict[str, str] = {}
    for line, row in rows:
        label, prompt = row[header[0]], row[header[1]]
        if not prompt:
            raise ReleasedFormatError(f"{path}:{line}: no prompt for {label!r}")
        prompts.setdefault(label, prompt)
    return prompts


@dataclass(frozen=True)
class Event:
    label: str
    onset: int    # first second
    offset: int   # one past the last second


def read_annotations(path: str | Path) -> dict[str, list[Event]]:
    """AVVP annotations (``filename onset offset event_labels``, tab-separated, one row per video with
    comma-separated lists or one row per event) -> {filename: its events in file order}."""
    events: dict[str, list[Event]] = {}
    for line, row in read_table(path, ("filename", "onset", "offset", "event_labels"), "\t")[1]:
        labels, onsets, offsets = (row[c].split(",") for c in ("event_labels", "onset", "offset"))
        if not (len(labels) == len(onsets) == len(offsets)):
            raise ReleasedFormatError(f"{path}:{line}: {len(labels)} labels, {len(onsets)} onsets, "
                                      f"{len(offsets)} offsets")
        for label, onset, offset in zip(labels, onsets, offsets):
            try:
                event = Event(label.strip(), int(onset), int(offset))
            except ValueError:
                raise ReleasedFormatError(f"{path}:{line}: onset {onset!r} / offset {offset!r} not integers") from None
            if not 0 <= event.onset <= event.offset <= SECONDS:
                raise ReleasedFormatError(f"{path}:{line}: {label} spans {onset}..{offset}, outside 0..{SECONDS}")
            events.setdefault(row["filename"], []).append(event)
    return events


# --- clips and sets ---

@dataclass
class ReleasedClip:
    key: str
    features: dict[str, np.ndarray]     # audio (10 128), video (10 49 512): float32
    labels: ClipLabels                  # per-second audio/video class (BACKGROUND: none) and the clip's class
    caption: str | None = None          # the category's prompt, where the set has prompts
    events: dict[str, list[list[int]]] = field(default_factory=dict)   # AVVP: every annotated class per second
    fitted: dict[str, str] = field(default_factory=dict)   # modality -> "padded" | "truncated" (``fit_seconds``)


class ReleasedSet(Protocol):
    """A released set as ``python -m shards.convert`` reads it: clip keys by split from the metadata files,
    then one clip at a time."""

    kind: str                       # the set's name in the converted manifest
    classes: list[str]              # class index -> name
    modalities: tuple[str, ...]     # the feature modalities its clips carry
    labels: str                     # where the per-second labels come from (recorded in the manifest)
    captions: bool                  # its clips carry a caption (the category's prompt)

    def splits(self) -> dict[str, list[str]]: ...             # split -> clip keys, in the metadata's order
    def read(self, split: str, key: str) -> ReleasedClip: ...
    def metadata_files(self) -> list[Path]: ...              # the small files that fix keys, classes and labels


def _check_keys(keys: Sequence[str], where: str) -> None:
    bad = [k for k in keys if not KEY_PATTERN.fullmatch(k)]
    if bad:
        raise ReleasedFormatError(f"{where}: ids {bad[:3]} cannot be shard keys (no '.', '/', '\\' or blanks)")
    twice = sorted(k for k, n in Counter(keys).items() if n > 1)
    if twice:
        raise ReleasedFormatError(f"{where}: ids listed more than once: {twice[:5]} ({len(twice)} in all)")


def _read_features(dirs: Mapping[str, str], zip_id: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    features, fitted = {}, {}
    for modality, directory in dirs.items():
        features[modality], how = feature_array(modality, *read_zip_array(Path(directory) / f"{zip_id}.zip"))
        if how:
            fitted[modality] = how
    return features, fitted


@dataclass(frozen=True)
class ZipSetConfig:
    """A set listed by a ``category, video_id[, split]`` CSV with one zip per clip and modality: VGGSound-AVEL,
    or either side of UCF101 <-> VGGSound."""

    meta: str                 # the CSV
    categories: str = ""      # class names, one a line ("" for a CSV without categories: unlabelled clips)
    audio_dir: str = ""       # <audio_dir>/<video_id>.zip; "" = no audio
    video_dir: str = ""
    label_dir: str = ""       # per-second AVC labels (VGGSound-AVEL); "" = every second carries the clip's class
    prompts: str = ""         # label -> prompt CSV: the clip's caption; "" = no captions
    split: str = "all"        # the split of every row when the CSV has no split column


class ZipSet:
    """A ``ZipSetConfig`` set. With a categories file every clip is labelled: the clip label is its category's line,
    and each second carries it where the AVC label says so (or everywhere, without label zips). Without one (the
    81K list has no categories) the clips are unlabelled: no json member, as pretraining corpora have them."""

    def __init__(self, cfg: ZipSetConfig, kind: str):
        self.cfg, self.kind = cfg, kind
        self._dirs = {m: d for m, d in (("audio", cfg.audio_dir), ("video", cfg.video_dir)) if d}
        if not self._dirs:
            raise ValueError(f"{kind}: give an audio or a video feature directory")
        self.modalities = tuple(self._dirs)
        self.captions = bool(cfg.prompts)
        rows = read_meta(cfg.meta, cfg.split)
        _check_keys([r.video_id for r in rows], cfg.meta)
        self._rows = {row.video_id: row for row in rows}
        named = rows[0].category is not None
        if named != bool(cfg.categories):
            raise ValueError(f"{cfg.meta}: " + ("names categories: give their class list (--categories)" if named else
                                                "has no category column: it cannot take --categories"))
        if not named and (cfg.label_dir or cfg.prompts):
            raise ValueError(f"{cfg.meta}: AVC labels and prompts need the clips' categories, which it does not name")
        self.labels = ("none: the meta CSV names no category" if not named else
                       "AVC label zips: the clip's class where its event is audible and visible" if cfg.label_dir
                       else "the clip's class on every second (no AVC labels)")
        self.classes = read_categories(cfg.categories) if named else []
        unknown = sorted({r.category for r in rows} - set(self.classes)) if named else []
        if unknown:
            raise ReleasedFormatError(f"{cfg.meta}: categories missing from {cfg.categories}: {unknown[:5]}")
        self._prompts = read_prompts(cfg.prompts) if cfg.prompts else None
        if self._prompts is not None:
            missing = sorted({r.category for r in rows} - set(self._prompts))
            if missing:
                raise ReleasedFormatError(f"{cfg.prompts}: no prompt for the categories {missing[:5]}")
        self._splits: dict[str, list[str]] = {}
        for row in rows:
            self._splits.setdefault(row.split, []).append(row.video_id)

    def splits(self) -> dict[str, list[str]]:
        return self._splits

    def metadata_files(self) -> list[Path]:
        return [Path(p) for p in (self.cfg.meta, self.cfg.categories, self.cfg.prompts) if p]

    def read(self, split: str, key: str) -> ReleasedClip:
        row = self._rows[key]
        features, fitted = _read_features(self._dirs, key)
        if row.category is None:
            return ReleasedClip(key, features, ClipLabels.unlabelled(SECONDS), fitted=fitted)
        cls = self.classes.index(row.category)
        events = np.ones(SECONDS, bool)
        if self.cfg.label_dir:
            events = avc_seconds(*read_zip_array(Path(self.cfg.label_dir) / f"{key}.zip"))
        per_second = np.where(events, cls, BACKGROUND).astype(np.int64)
        labels = ClipLabels(per_second, per_second.copy(), cls, len(self.classes))
        caption = self._prompts[row.category] if self._prompts is not None else None
        return ReleasedClip(key, features, labels, caption, fitted=fitted)


@dataclass(frozen=True)
class AVVPConfig:
    audio_annotations: str    # AVVP_eval_audio_checked_combined.csv: the audible events
    visual_annotations: str   # AVVP_eval_visual_checked_combined.csv: the visible events
    categories: str           # AVVP_Categories.txt
    audio_dir: str = ""       # <audio_dir>/<filename[:11]>.zip
    video_dir: str = ""
    split: str = "all"        # the split the clips are recorded under (the annotations carry none)


class AVVPSet:
    """AVVP with per-modality labels: ``audio_labels`` from the audio annotations, ``video_labels`` from the visual
    ones. A second can carry several events; the feature shards' labels hold one class per second (the first
    annotated event covering it, in file order) and the json members keep every class in ``audio_events`` /
    ``video_events``. A clip missing from one file has no event in that modality. The clip label is the class
    annotated on the most (modality, second) cells, ties to the lower index; without any such cell (an empty span
    like 0..0) it is the first annotated event's class."""

    kind = "avvp"
    labels = "AVVP onset/offset annotations, per modality"
    captions = False

    def __init__(self, cfg: AVVPConfig):
        self.cfg = cfg
        self._dirs = {m: d for m, d in (("audio", cfg.audio_dir), ("video", cfg.video_dir)) if d}
        if not self._dirs:
            raise ValueError("avvp: give an audio or a video feature directory")
        self.modalities = tuple(self._dirs)
        self.classes = read_categories(cfg.categories)
        self._events = {"audio": read_annotations(cfg.audio_annotations),
                        "video": read_annotations(cfg.visual_annotations)}
        for modality, path in (("audio", cfg.audio_annotations), ("video", cfg.visual_annotations)):
            unknown = sorted({e.label for events in self._events[modality].values() for e in events}
                             - set(self.classes))
            if unknown:
                raise ReleasedFormatError(f"{path}: event labels missing from {cfg.categories}: {unknown[:5]}")
        keys = list(dict.fromkeys([*self._events["audio"], *self._events["video"]]))
        _check_keys(keys, f"{cfg.audio_annotations} + {cfg.visual_annotations}")
        self._keys = keys

    def splits(self) -> dict[str, list[str]]:
        return {self.cfg.split: self._keys}

    def metadata_files(self) -> list[Path]:
        return [Path(p) for p in (self.cfg.audio_annotations, self.cfg.visual_annotations, self.cfg.categories)]

    def read(self, split: str, key: str) -> ReleasedClip:
        features, fitted = _read_features(self._dirs, key[:11])   # the features are named by the YouTube id
        events: dict[str, list[list[int]]] = {}
        for modality in ("audio", "video"):
            seconds: list[list[int]] = [[] for _ in range(SECONDS)]
            for event in self._events[modality].get(key, []):
                cls = self.classes.index(event.label)
                for s in range(event.onset, event.offset):
                    if cls not in seconds[s]:
                        seconds[s].append(cls)
            events[modality] = seconds
        first = {m: np.array([s[0] if s else BACKGROUND for s in events[m]], np.int64) for m in events}
        cells = [c for m in events for second in events[m] for c in second]
        if cells:
            clip = int(np.bincount(cells).argmax())
        else:
            annotated = self._events["audio"].get(key) or self._events["video"][key]
            clip = self.classes.index(annotated[0].label)
        labels = ClipLabels(first["video"], first["audio"], clip, len(self.classes))
        return ReleasedClip(key, features, labels, events=events, fitted=fitted)


@dataclass(frozen=True)
class AVEConfig:
    root: str                                  # visual_feature.h5 and audio_feature.h5
    labels: str = "labels.h5"                  # per-second one-hot (n 10 c+1); relative to root, or absolute
    order: str = "{split}_order.h5"            # a split's clip indices; relative to root, or absolute
    splits: tuple[str, ...] = ("train", "val", "test")
    categories: str = ""                       # class names of the label columns; "" = AVE_CLASSES


class AVESet:
    """The AVE h5 layout (also the AVE side of the authors' AVE -> AVVP task: ``labels`` =
    ``AVE_AVVP/ave_avvp_labels.h5``, ``order`` = ``AVE_AVVP/{split}_order.h5``, split ``ave_avvp``, categories
    ``AVE_AVVP_Categories.txt``). Keys are the clips' row numbers in the h5 files; video and audio labels are the
    same per-second classes (AVE events are audio-visual)."""

    kind = "ave"
    modalities = ("audio", "video")
    labels = "AVE per-second one-hot labels (audio-visual events)"
    captions = False

    def __init__(self, cfg: AVEConfig):
        self.cfg = cfg
        self.classes = read_categories(cfg.categories) if cfg.categories else list(AVE_CLASSES)
        self._root = Path(cfg.root)
        self._datasets = {s: PublicFeatureDataset(PublicFeatureConfig(root=cfg.root, split=s, labels_file=cfg.labels,
                                                                      order_file=cfg.order)) for s in cfg.splits}
        self._keys = {s: [f"{int(i):05d}" for i in ds.order] for s, ds in self._datasets.items()}
        _check_keys([k for keys in self._keys.values() for k in keys], f"{cfg.root}: the order files")
        self._position = {s: {k: n for n, k in enumerate(keys)} for s, keys in self._keys.items()}

    def splits(self) -> dict[str, list[str]]:
        return self._keys

    def metadata_files(self) -> list[Path]:
        files = [self._root / self.cfg.labels] + [self._root / self.cfg.order.format(split=s) for s in self.cfg.splits]
        return files + ([Path(self.cfg.categories)] if self.cfg.categories else [])

    def read(self, split: str, key: str) -> ReleasedClip:
        clip = self._datasets[split][self._position[split][key]]
        if clip.labels.num_classes != len(self.classes):
            raise ReleasedFormatError(f"{self._root / self.cfg.labels}: {clip.labels.num_classes} event columns + "
                                      f"background, but {len(self.classes)} class names "
                                      f"({self.cfg.categories or 'AVE_CLASSES'})")
        where = f"{self._root} clip {key}"
        for modality, shape in FEATURE_SHAPES.items():
            if clip.features[modality].shape != (SECONDS, *shape):
                raise ReleasedFormatError(f"{where}: {modality} of shape {clip.features[modality].shape}, "
                                          f"expected {(SECONDS, *shape)}")
        return ReleasedClip(key, clip.features, clip.labels)


# --- class lists of the cross-dataset protocols ---

# AVE's 28 event classes in the order of its label columns (column 28 is background): the order of
# YapengTian/AVE-ECCV18 data/Annotations.txt, which also fixes labels.h5.
AVE_CLASSES = (
    "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane", "Race car, auto racing",
    "Female speech, woman speaking", "Helicopter", "Violin, fiddle", "Flute", "Ukulele", "Frying (food)", "Truck",
    "Shofar", "Motorcycle", "Acoustic guitar", "Train horn", "Clock", "Banjo", "Goat", "Baby cry, infant cry", "Bus",
    "Chainsaw", "Cat", "Horse", "Toilet flush", "Rodents, rats, mice", "Accordion", "Mandolin",
)
# AVVP's 25 event classes as YapengTian/AVVP-ECCV20 dataloader.py (``categories``) indexes them. The authors' AVVP
# release indexes classes by its own AVVP_Categories.txt, which is not in their repository: convert AVVP with that
# file and map classes by name (``shared_class_map``), not by these positions.
AVVP_CLASSES = (
    "Speech", "Car", "Cheering", "Dog", "Cat", "Frying_(food)", "Basketball_bounce", "Fire_alarm", "Chainsaw", "Cello",
    "Banjo", "Singing", "Chicken_rooster", "Violin_fiddle", "Vacuum_cleaner", "Baby_laughter", "Accordion",
    "Lawn_mower", "Motorcycle", "Helicopter", "Acoustic_guitar", "Telephone_bell_ringing", "Baby_cry_infant_cry",
    "Blender", "Clapping",
)


@dataclass(frozen=True)
class SharedClass:
    name: str      # the class as the paper names it
    first: str     # its name in the first dataset (AVE; UCF101)
    second: str    # its name in the second dataset (AVVP; VGGSound)


# The 12 event classes AVE and AVVP share (seed 000 §B.2 lists them, in this order), as each dataset names them.
AVE_AVVP_SHARED_CLASSES = (
    SharedClass("dog", "Bark", "Dog"),
    SharedClass("car", "Race car, auto racing", "Car"),
    SharedClass("helicopter", "Helicopter", "Helicopter"),
    SharedClass("violin fiddle", "Violin, fiddle", "Violin_fiddle"),
    SharedClass("frying food", "Frying (food)", "Frying_(food)"),
    SharedClass("motorcycle", "Motorcycle", "Motorcycle"),
    SharedClass("acoustic guitar", "Acoustic guitar", "Acoustic_guitar"),
    SharedClass("banjo", "Banjo", "Banjo"),
    SharedClass("baby cry", "Baby cry, infant cry", "Baby_cry_infant_cry"),
    SharedClass("chainsaw", "Chainsaw", "Chainsaw"),
    SharedClass("cat", "Cat", "Cat"),
    SharedClass("accordion", "Accordion", "Accordion"),
)


def shared_class_map(shared: Sequence[SharedClass], first: Sequence[str], second: Sequence[str]) -> dict[int, int]:
    """{class index in ``first``: class index in ``second``} of the shared classes (what ``trainer.programs.evaluate``'s
    ``--class-map`` takes), by name, so it holds for any class order the two datasets' files give."""
    missing = [s.first for s in shared if s.first not in first] + [s.second for s in shared if s.second not in second]
    if missing:
        raise ValueError(f"shared classes missing from the class lists: {missing}")
    return {list(first).index(s.first): list(second).index(s.second) for s in shared}


# AVE labels.h5 (AVE_CLASSES) -> AVVP in AVVP_CLASSES order
AVE_AVVP_CLASS_MAP = shared_class_map(AVE_AVVP_SHARED_CLASSES, AVE_CLASSES, AVVP_CLASSES)


def read_shared_classes(first: str | Path, second: str | Path) -> tuple[SharedClass, ...]:
    """The shared classes of two paired category files: line i of ``first`` is the class of line i of ``second``.

    This is how the authors pair UCF101 and VGGSound (``ucf_vggsound.py``): one 16-way head trained on UCF101 labels
    indexed by ``UCF101sameVGGSound.txt`` is tested on VGGSound labels indexed by ``VGGSoundsameUCF101.txt``, so the
    two files list the 16 shared classes in the same order, and sets converted with them share class indices
    (``trainer.programs.evaluate``'s default identity ``--class-map``). The files ship with the authors' data, not
    with their code; their public OSCMG subsets (``ICCV25-OSCMG/data/UCF_VGG_OSCMG/*.csv``) show 12 of the classes, e.g.
    PlayingCello / playing cello, JumpRope / rope skipping, Typing / typing on typewriter."""
    a, b = read_categories(first), read_categories(second)
    if len(a) != len(b):
        raise ReleasedFormatError(f"{first} lists {len(a)} classes, {second} {len(b)}: they must pair line by line")
    return tuple(SharedClass(x, x, y) for x, y in zip(a, b))

