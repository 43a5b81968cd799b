"""The authors' released retrieval sets (MSCOCO, Clotho, FlickrSound, MSVD, VALOR32K) as their loaders read them, for
``python -m shards.convert mscoco|clotho|flickrsound|msvd|valor32k`` (zero-shot retrieval: seed 003 Table 2, seed 004
Tables 1-4; docs/data.md "Released retrieval sets").

The layouts are those of haihuangcode/CMG ``ACL25-FCID&TOC/src/dataset/{MSCOCO,Clotho,FlickrSound,MSVD,VALOR32K}_
dataset.py``: one zip per item, ``<dir>/<id>.zip``, whose ``.pkl`` member holds one numpy array, time first, of any
length (read by ``trainer.data.released_files.read_zip_array``: a restricted unpickler that admits numpy arrays
only), and the captions in a JSON or CSV file:

    mscoco       --captions val_part_1.json   {"annotations": [{"image_id": 139, "caption": "..."}, ...]}; an image has
                                              several annotations (its captions); id = f"{image_id:012}"
                 --video-dir feature/zip      the image's features (the authors feed them to the video encoder)
    clotho       --captions <split>.csv       columns file_name, caption_1 .. caption_5; id = file_name without its
                                              extension
                 --audio-dir feature/zip
    flickrsound  --meta test.csv              column filename; id = filename without its extension; no captions
                 --audio-dir feature/audio/zip --video-dir feature/image/zip   (the image, read as video)
    msvd         --captions <split>.csv       columns video_name, caption: one row per caption; id = video_name
                 --video-dir feature/zip
    valor32k     --captions desc_test.json    [{"video_id": "...", "desc": "..."}, ...]: one caption per video
                 --video-dir feature/video/zip --audio-dir feature/audio/zip

Item ids become shard keys with dots, slashes and blanks made "_" (``shard_key``). Arrays: video (t d), (t p d) or a
7×7 grid (t 7 7 d) -> (t 49 d); one image without a time axis ((7 7 d) or (49 d)) -> one segment; audio (t d) (a
vector (d) -> one segment). Every item of a set must have the same shape after the time axis (the manifest's
``feature_shapes``); lengths vary. Items are unlabelled: a retrieval set has no classes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.decode import ClipLabels
from trainer.data.released import ReleasedClip, _check_keys
from trainer.data.released_files import ReleasedFormatError, read_table, read_zip_array

PAIR_SETS = ("mscoco", "clotho", "flickrsound", "msvd", "valor32k")
GRID = (7, 7)     # VGG-19 pool5 per frame, as the authors' audio-visual features


@dataclass(frozen=True)
class PairSetConfig:
    """Where one released retrieval set lies (which files each set reads: the module docstring)."""

    captions: str = ""        # mscoco, valor32k: JSON; clotho, msvd: CSV
    meta: str = ""            # flickrsound: the CSV of its items
    video_dir: str = ""       # <video_dir>/<id>.zip: video, or an image read as video
    audio_dir: str = ""
    split: str = "test"       # the split the items are recorded under


# per set: the feature directories it needs and whether its items have captions
NEEDS = {"mscoco": (("video",), True), "clotho": (("audio",), True), "flickrsound": (("audio", "video"), False),
         "msvd": (("video",), True), "valor32k": (("video", "audio"), True)}


def _json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ReleasedFormatError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReleasedFormatError(f"{path}: not valid JSON ({err})") from None


def _stem(name: str) -> str:
    """The authors' id of a file name: its extension stripped (``[:-4]``)."""
    return name.rsplit(".", 1)[0] if "." in name else name


def shard_key(item_id: str) -> str:
    """The shard key of an item id: the characters a key cannot hold (dots, slashes, blanks: Clotho's file names have
    blanks) made "_", "Rain on a roof" -> "Rain_on_a_roof"; two ids that meet are refused (``_check_keys``)."""
    return re.sub(r"[./\\\s]", "_", item_id)


def _field(row: Mapping[str, str], column: str, path: str, line: int) -> str:
    value = (row.get(column) or "").strip()
    if not value:
        raise ReleasedFormatError(f"{path}:{line}: {column} is empty")
    return value


def read_items(kind: str, cfg: PairSetConfig) -> dict[str, list[str]]:
    """Item id (the name of its zips) -> its captions ([] for a set without captions), in the file's order of first
    appearance."""
    items: dict[str, list[str]] = {}
    if kind == "mscoco":
        data = _json(cfg.captions)
        annotations = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(annotations, list):
            raise ReleasedFormatError(f"{cfg.captions}: expected {{\"annotations\": [{{\"image_id\", \"caption\"}}]}}")
        for i, entry in enumerate(annotations):
            if not isinstance(entry, dict) or not isinstance(entry.get("image_id"), int) or \
                    not str(entry.get("caption", "")).strip():
                raise ReleasedFormatError(f"{cfg.captions}: annotations[{i}] needs an integer image_id and a caption")
            items.setdefault(f"{entry['image_id']:012}", []).append(str(entry["caption"]).strip())
    elif kind == "valor32k":
        data = _json(cfg.captions)
        if not isinstance(data, list):
            raise ReleasedFormatError(f"{cfg.captions}: expected a list of {{\"video_id\", \"desc\"}}")
        ids = []
        for i, entry in enumerate(data):
            if not isinstance(entry, dict) or not str(entry.get("video_id", "")).strip() or \
                    not str(entry.get("desc", "")).strip():
                raise ReleasedFormatError(f"{cfg.captions}: [{i}] needs a video_id and a desc")
            ids.append(str(entry["video_id"]).strip())
            items[ids[-1]] = [str(entry["desc"]).strip()]
        _check_keys([shard_key(i) for i in ids], cfg.captions)
    elif kind == "clotho":
        columns = ("file_name", *(f"caption_{n}" for n in range(1, 6)))
        rows = read_table(cfg.captions, columns)[1]
        ids = [_stem(_field(row, "file_name", cfg.captions, line)) for line, row in rows]
        _check_keys([shard_key(i) for i in ids], cfg.captions)
        for key, (line, row) in zip(ids, rows):
            items[key] = [_field(row, c, cfg.captions, line) for c in columns[1:]]
    elif kind == "msvd":
        for line, row in read_table(cfg.captions, ("video_name", "caption"))[1]:
            items.setdefault(_field(row, "video_name", cfg.captions, line), []).append(
                _field(row, "caption", cfg.captions, line))
    elif kind == "flickrsound":
        rows = read_table(cfg.meta, ("filename",))[1]
        ids = [_stem(_field(row, "filename", cfg.meta, line)) for line, row in rows]
        _check_keys([shard_key(i) for i in ids], cfg.meta)
        items = {key: [] for key in ids}
    else:
        raise ValueError(f"unknown retrieval set {kind!r}; choose from {list(PAIR_SETS)}")
    _check_keys([shard_key(i) for i in items], cfg.captions or cfg.meta)
    return items


def pair_feature(modality: str, array: np.ndarray, where: str) -> np.ndarray:
    """One item's released array -> ``(t ...)`` float32 as the feature shards store it (module docstring)."""
    if array.dtype.kind not in "fiu" or array.size == 0:
        raise ReleasedFormatError(f"{where}: expected a non-empty numeric array, got {array.dtype} {array.shape}")
    if modality == "video":
        if array.ndim == 3 and array.shape[:2] == GRID or array.ndim == 2 and array.shape[0] == GRID[0] * GRID[1]:
            array = array[None]                                     # one image
        if array.ndim == 4 and array.shape[1:3] == GRID:
            array = array.reshape(array.shape[0], GRID[0] * GRID[1], array.shape[3])
        if array.ndim not in (2, 3):
            raise ReleasedFormatError(f"{where}: a video array is (t d), (t p d) or (t 7 7 d), got {array.shape}")
    else:
        array = array[None] if array.ndim == 1 else array
        if array.ndim != 2:
            raise ReleasedFormatError(f"{where}: an audio array is (t d), got {array.shape}")
    if not np.isfinite(array).all():
        raise ReleasedFormatError(f"{where}: holds NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


class PairSet:
    """A released retrieval set in the authors' layout, read item by item (``trainer.data.released.ReleasedSet``)."""

    classes: list[str] = []
    labels = "none: a retrieval set (items are matched by their pairs, not by classes)"
    variable_length = True          # items of any length: the manifest records the shape after the time axis

    def __init__(self, cfg: PairSetConfig, kind: str):
        if kind not in NEEDS:
            raise ValueError(f"unknown retrieval set {kind!r}; choose from {list(PAIR_SETS)}")
        self.cfg, self.kind = cfg, kind
        needed, self.captions = NEEDS[kind]
        self._dirs = {"video": cfg.video_dir, "audio": cfg.audio_dir}
        missing = [f"--{m}-dir" for m in needed if not self._dirs[m]]
        if missing or not (cfg.captions if self.captions else cfg.meta):
            files = "--captions" if self.captions else "--meta"
            raise ValueError(f"{kind}: give {' and '.join([files, *missing])} (python -m shards.convert {kind} --help)")
        self.modalities = needed
        items = read_items(kind, cfg)
        if not items:
            raise ReleasedFormatError(f"{cfg.captions or cfg.meta}: lists no item")
        self._items = {shard_key(item_id): (item_id, captions) for item_id, captions in items.items()}

    def splits(self) -> dict[str, list[str]]:
        return {self.cfg.split: list(self._items)}

    def metadata_files(self) -> list[Path]:
        return [Path(p) for p in (self.cfg.captions, self.cfg.meta) if p]

    def read(self, split: str, key: str) -> ReleasedClip:
        """Item ``key``: each modality's array from its zip, and its captions (one per line of the txt member)."""
        item_id, captions = self._items[key]
        features = {m: pair_feature(m, *read_zip_array(Path(self._dirs[m]) / f"{item_id}.zip"))
                    for m in self.modalities}
        length = max(len(a) for a in features.values())
        # one caption per line of the txt member (trainer/data/decode.py decode_captions)
        return ReleasedClip(key, features, ClipLabels.unlabelled(length),
                            "\n".join(" ".join(c.split()) for c in captions) if captions else None)
