"""Precomputed features: feature shards written by ``shards.extract`` and the public h5/npz layout.

Feature shard members of a clip ``KEY`` (what ``shards.extract`` writes, and ``shards.convert`` from the CMG authors'
released features, trainer/data/released.py):
    video.npy   float32/16 (t d) or (t p d)  frozen-backbone video features, one row per 1-s segment
    audio.npy   float32/16 (t d)
    text.npy    float32/16 (l d)             caption token features, real tokens only (no padding)
    json        the clip's labels, same schema as the clip shards (clip_label, video_labels, audio_labels; from
                shards.convert also num_classes and, for AVVP, audio_events / video_events: every class per second);
                absent for an unlabelled clip (then: no labels, as for clip shards, see trainer/data/decode.py)
    txt         the caption; absent for a clip without one (text.npy holds the encoded caption when text is used)
plus ``manifest.json`` (``trainer.data.manifest``, format ``FEATURE_FORMAT``) with the per-shard sample counts, the
feature shapes and the extraction's ``DecodeConfig``. ``ClipStream`` reads them with ``DataConfig(kind="features")``:
``decode_feature_sample`` is its per-sample decoder and ``collate_feature_clips`` its collate function.
``.npy`` members are decoded with ``numpy.load(allow_pickle=False)``; an object array (which would need
unpickling), an unreadable member or one whose shape disagrees with the manifest is a ``CorruptSample``
("bad_feature", naming shard, key and member) that the stream skips and counts. No other member is read.

Public precomputed features (AVE, VGGSound-AVEL converted to arrays) in the AVE release layout:
    visual_feature.h5 ["avadataset"] (n 10 7 7 512)   VGG19 pool5, 16 frames averaged per second
    audio_feature.h5  ["avadataset"] (n 10 128)       VGGish per second
    labels.h5         ["avadataset"] (n 10 c+1)       one-hot per second, last column = background
    {split}_order.h5  ["order"]      (m)              clip indices of the split
or one ``.npz`` with arrays video, audio, labels (same shapes) and optionally order.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.configs.data import FEATURE_MODALITIES
from trainer.data.batch import Batch
from trainer.data.collate import collate_annotations
from trainer.data.manifest import FEATURE_FORMAT, ShardManifest
from trainer.data.decode import (
    META_KEYS, OPTIONAL_MEMBERS, ClipLabels, check_member, member_where, sample_caption, sample_labels,
)
from trainer.data.media_decoders import CorruptSample

KNOWN_FEATURE_MEMBERS = frozenset({f"{m}.npy" for m in FEATURE_MODALITIES} | set(OPTIONAL_MEMBERS))


class FeatureError(ValueError):
    """A public-layout feature file that cannot be used; the message names the file and key."""


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes, where: str) -> np.ndarray:
    """One ``.npy`` member -> a numeric array (never unpickles); raises ``CorruptSample`` ("bad_feature")."""
    try:
        # the .npy reader only (np.load would also open .npz archives); it refuses object arrays
        array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:   # bad magic or header, truncated data, or an object array
        raise CorruptSample("bad_feature", where, f"not a numeric .npy array loadable without unpickling ({err})") \
            from err
    if array.dtype.kind not in "fiu":
        raise CorruptSample("bad_feature", where, f"expected a numeric array, got dtype {array.dtype}")
    return array


@dataclass(frozen=True)
class FeatureLayout:
    """What every sample of a set of feature shards holds, from its manifest."""

    seconds: int                          # t: segments per clip (the extraction's DecodeConfig.seconds)
    dims: dict[str, tuple[int, ...]]      # modality read -> feature shape after the leading (t or l) axis

    def check(self, modality: str, array: np.ndarray, where: str) -> None:
        """``video (t d)|(t p d)``, ``audio (t d)`` with this t and dims, ``text (l d)`` with l >= 1."""
        if modality == "text":
            leading_ok = array.ndim > 0 and array.shape[0] >= 1
        else:
            leading_ok = array.ndim > 0 and array.shape[0] == self.seconds
        if not leading_ok or array.shape[1:] != self.dims[modality]:
            leading = "l>=1" if modality == "text" else str(self.seconds)
            raise CorruptSample("bad_feature", where, f"shape {array.shape}, the manifest says "
                                f"({', '.join([leading, *map(str, self.dims[modality])])})")


def feature_layout(manifest: ShardManifest, modalities: Sequence[str]) -> FeatureLayout:
    """The layout of ``modalities`` in the feature shards that ``manifest`` describes."""
    where = manifest.where
    if not manifest.is_features:
        raise ValueError(f"manifest {where} has format {manifest.format!r}, not {FEATURE_FORMAT!r}: "
                         "DataConfig.kind='features' reads feature shards written by `python -m shards.extract` "
                         "or `python -m shards.convert`")
    try:
        shapes = {str(m): tuple(int(v) for v in shape) for m, shape in (manifest.feature_shapes or {}).items()}
        seconds = int(manifest.decode["seconds"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"manifest {where}: expected feature_shapes {{modality: [dims]}} and decode.seconds "
                         f"({err!r})") from err
    missing = [m for m in modalities if m not in shapes]
    if missing:
        raise ValueError(f"DataConfig.feature_modalities asks for {missing}, but the feature shards of manifest "
                         f"{where} hold only {sorted(shapes)}")
    return FeatureLayout(seconds, {m: shapes[m] for m in modalities})


@dataclass
class FeatureClip:
    key: str
    features: dict[str, np.ndarray]   # modality -> (t d) | (t p d) | text (l d), float32
    caption: str | None               # None: no txt member
    labels: ClipLabels
    ignored_members: int = 0          # members present but never decoded (feature shards)
    url: str = ""                     # the shard (or public-layout file) it was read from


def decode_feature_sample(sample: Mapping[str, Any], layout: FeatureLayout) -> FeatureClip:
    """One raw feature-shard sample -> ``FeatureClip`` with the layout's modalities; raises ``CorruptSample``
    (cheap members first): missing/empty member, bad json or caption, unreadable or misshapen ``.npy``.
    json and txt are optional: without them the clip has no labels and caption None."""
    members = [f"{m}.npy" for m in layout.dims]
    for member in [m for m in OPTIONAL_MEMBERS if m in sample] + members:
        check_member(sample, member)
    labels = sample_labels(sample, layout.seconds)
    caption = sample_caption(sample)
    features = {}
    for modality, member in zip(layout.dims, members):
        where = member_where(sample, member)
        array = decode_npy(bytes(sample[member]), where)
        layout.check(modality, array, where)
        features[modality] = array.astype(np.float32, copy=False)
    ignored = sum(1 for m in sample if m not in KNOWN_FEATURE_MEMBERS and m not in META_KEYS)
    return FeatureClip(str(sample.get("__key__")), features, caption, labels, ignored, str(sample.get("__url__", "")))


def pad_tokens(arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length ``(l d)`` token features -> ``(b L d)`` zero-padded and mask ``(b L)``, L = longest."""
    longest = max(a.shape[0] for a in arrays)
    dim = arrays[0].shape[1]
    tokens = torch.zeros(len(arrays), longest, dim, dtype=torch.float32)
    mask = torch.zeros(len(arrays), longest, dtype=torch.bool)
    for i, a in enumerate(arrays):
        tokens[i, :a.shape[0]] = torch.from_numpy(a)
        mask[i, :a.shape[0]] = True
    return tokens, mask


def collate_feature_clips(clips: Sequence[FeatureClip], is_pad: Sequence[bool] | None = None) -> Batch:
    """Feature clips -> the feature batch: ``video (b t d)|(b t p d)``, ``audio (b t d)``, ``text (b l d)`` +
    ``text_mask (b l)`` (zero-padded to the longest caption), and the clip batch's other entries (key, url,
    caption, labels, labelled, is_pad), features instead of media."""
    if is_pad is not None and len(clips) != len(is_pad):
        raise ValueError(f"{len(clips)} clips but {len(is_pad)} pad flags")
    batch = collate_annotations(clips)
    for modality in clips[0].features:
        arrays = [c.features[modality] for c in clips]
        if modality == "text":
            batch["text"], batch["text_mask"] = pad_tokens(arrays)
        else:
            batch[modality] = torch.from_numpy(np.stack(arrays))
    batch["is_pad"] = torch.tensor(list(is_pad) if is_pad is not None else [False] * len(clips), dtype=torch.bool)
    return batch


# --- the public AVE / VGGSound-AVEL array layout ---

@dataclass
class PublicFeatureConfig:
    root: str = ""                    # directory of the h5 files, or the path of one .npz
    split: str | None = "train"       # selects {split}_order.h5 / the npz "order" array (None: all clips)
    video_file: str = "visual_feature.h5"
    audio_file: str = "audio_feature.h5"
    labels_file: str = "labels.h5"
    order_file: str = "{split}_order.h5"
    dataset_key: str = "avadataset"
    order_key: str = "order"


def one_hot_to_class(labels: np.ndarray, where: str) -> np.ndarray:
    """``(t c+1)`` one-hot with background last -> ``(t)`` class index, -1 for background."""
    if labels.ndim != 2 or labels.shape[1] < 2:
        raise FeatureError(f"{where}: labels must be (t classes+1), got {labels.shape}")
    classes = labels.argmax(axis=1).astype(np.int64)
    classes[classes == labels.shape[1] - 1] = -1
    return classes


def clip_label(per_second: np.ndarray) -> int:
    """The clip's event: the most frequent non-background class (-1 if none)."""
    events = per_second[per_second >= 0]
    return int(np.bincount(events).argmax()) if events.size else -1


class PublicFeatureDataset(torch.utils.data.Dataset):
    """Map-style reader of the public layout: ``FeatureClip`` items; batch them with ``collate_feature_clips``.

    ``video`` (10 7 7 512) becomes ``(t p d)`` = (10 49 512), the row-major patch grid of a video
    backbone with ``pooling: patch``. AVE labels are audio-visual events, so video_labels and
    audio_labels are the same per-second classes.
    """

    def __init__(self, cfg: PublicFeatureConfig):
        self.cfg = cfg
        root = Path(cfg.root)
        self._h5: dict[str, Any] | None = None
        if root.suffix == ".npz":
            with np.load(root, allow_pickle=False) as npz:
                self._arrays = {name: npz[name] for name in npz.files}
            missing = {"video", "audio", "labels"} - set(self._arrays)
            if missing:
                raise FeatureError(f"{root}: missing arrays {sorted(missing)} (has {sorted(self._arrays)})")
            order = self._arrays.get("order") if cfg.split is not None else None
            self._sources = {m: f"{root}[{m}]" for m in ("video", "audio", "labels")}
        else:
            self._arrays = None
            self._paths = {"video": root / cfg.video_file, "audio": root / cfg.audio_file,
                           "labels": root / cfg.labels_file}
            for path in self._paths.values():
                if not path.is_file():
                    raise FeatureError(f"{path}: file not found (public AVE layout, see trainer/data/features.py)")
            self._sources = {m: f"{p}[{cfg.dataset_key}]" for m, p in self._paths.items()}
            order = None
            if cfg.split is not None:
                order_path = root / cfg.order_file.format(split=cfg.split)
                order = self._read_h5(order_path, cfg.order_key)[()]
        self.num_total = self._length()
        self.order = np.arange(self.num_total) if order is None else np.asarray(order, dtype=np.int64).reshape(-1)
        if self.order.size and (self.order.min() < 0 or self.order.max() >= self.num_total):
            raise FeatureError(f"{cfg.root}: split {cfg.split!r} order has indices outside 0..{self.num_total - 1}")

    @staticmethod
    def _read_h5(path: Path, key: str) -> Any:
        import h5py

        if not path.is_file():
            raise FeatureError(f"{path}: file not found")
        handle = h5py.File(path, "r")
        if key not in handle:
            raise FeatureError(f"{path}: no dataset {key!r} (has {sorted(handle.keys())})")
        return handle[key]

    def _dataset(self, name: str) -> Any:
        if self._arrays is not None:
            return self._arrays[name]
        if self._h5 is None:   # opened lazily: h5py handles must not cross a fork into DataLoader workers
            self._h5 = {m: self._read_h5(p, self.cfg.dataset_key) for m, p in self._paths.items()}
        return self._h5[name]

    def _length(self) -> int:
        lengths = {m: len(self._dataset(m)) for m in ("video", "audio", "labels")}
        if len(set(lengths.values())) != 1:
            raise FeatureError(f"{self.cfg.root}: video/audio/labels hold different numbers of clips {lengths}")
        if self._arrays is None:
            self._h5 = None   # reopen in the process that reads items
        return lengths["video"]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> FeatureClip:
        index = int(self.order[i])
        video = np.asarray(self._dataset("video")[index], dtype=np.float32)
        audio = np.asarray(self._dataset("audio")[index], dtype=np.float32)
        labels = np.asarray(self._dataset("labels")[index])
        if video.ndim != 4 or audio.ndim != 2 or video.shape[0] != audio.shape[0]:
            raise FeatureError(f"{self._sources['video']} / {self._sources['audio']}: clip {index} has video "
                               f"{video.shape} and audio {audio.shape}; expected (t h w d) and (t d)")
        per_second = one_hot_to_class(labels, f"{self._sources['labels']} clip {index}")
        t, h, w, d = video.shape
        labels = ClipLabels(per_second, per_second.copy(), clip_label(per_second), labels.shape[-1] - 1)
        # (t h w d) -> (t p d), row-major patches, as a video backbone with pooling: patch gives them
        features = {"video": video.reshape(t, h * w, d), "audio": audio}
        return FeatureClip(f"{self.cfg.split or 'all'}:{index}", features, None, labels, url=self.cfg.root)
