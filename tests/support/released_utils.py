"""Tiny sets in the CMG authors' released layouts (trainer/data/released.py), with the arrays they hold, shared by
tests/unit/test_released.py, tests/unit/test_convert.py and tests/system/test_convert_job.py.

File names, CSV columns, zip-of-pickle members and array shapes are the authors' (haihuangcode/CMG
code/src/dataset/*.py); the values are random. Every builder returns the paths and, per clip, what a reader
should find.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from trainer.data.released import AVE_CLASSES, AVVP_CLASSES

VGG_CLASSES = ["playing cello", "rope skipping", "dog barking"]
VGG_PROMPTS = {"playing cello": ["The deep, warm sound of a cello being played.", "Someone plays the cello."],
               "rope skipping": ["A rope slaps the ground, again and again.", "A child is skipping rope."],
               "dog barking": ["A dog barks loudly, then again.", "The dog is barking at the door."]}


# numpy 2's modules of the array reconstructors -> the names numpy 1.x gave them (numpy 1.x's numpy/core/multiarray.py
# sets ``_reconstruct.__module__ = scalar.__module__ = 'numpy.core.multiarray'`` so that pickles name that module)
NUMPY1_MODULES = {"numpy._core.multiarray": "numpy.core.multiarray", "numpy._core.numeric": "numpy.core.numeric"}


class Numpy1Pickler(pickle._Pickler):
    """Pickles as Python 3.7 with numpy 1.x did: the pure-Python pickler (whose opcodes the C pickler of 3.7 writes
    too) with numpy's reconstructors named by their numpy-1 modules (``NUMPY1_MODULES``). Nothing else of an array's
    pickle differs between numpy 1.x and 2 (``ndarray.__reduce__`` gives ``_reconstruct``, ``(ndarray, (0,), b'b')``
    and the state ``(1, shape, dtype, fortran, raw bytes)`` in both), so the bytes are what such a release holds:
    GLOBAL ``numpy.core.multiarray _reconstruct`` (protocols 2 and 3; 3 is Python 3.7's default), STACK_GLOBAL of the
    same strings (protocol 4, Python 3.7's highest), ``numpy ndarray``, ``numpy dtype``, and for protocol 2 the raw
    bytes as ``_codecs encode``."""

    def save_global(self, obj, name=None):
        module = NUMPY1_MODULES.get(getattr(obj, "__module__", ""))
        if module is None:
            return super().save_global(obj, name)
        name = name or obj.__qualname__
        if self.proto >= 4:
            self.save(module)
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)


def numpy1_pickle(obj: object, protocol: int = 3) -> bytes:
    """``obj`` pickled as Python 3.7 with numpy 1.x pickled it (``Numpy1Pickler``; protocols 2-4, 3.7 had no 5)."""
    if not 2 <= protocol <= 4:
        raise ValueError(f"Python 3.7 pickles with protocols up to 4, not {protocol}")
    out = io.BytesIO()
    Numpy1Pickler(out, protocol).dump(obj)
    data = out.getvalue()
    assert b"numpy._core" not in data, "a numpy-2 module name left in a numpy-1 pickle"
    return data


def pickle_zip(path: Path, array: np.ndarray, protocol: int = 3, member: str | None = None,
               numpy1: bool = False) -> None:
    """``path`` = a zip holding one pickled array, as the authors release every feature and label; ``numpy1``: as
    Python 3.7 with numpy 1.x pickled it (``numpy1_pickle``), else as this numpy does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = numpy1_pickle(array, protocol) if numpy1 else pickle.dumps(array, protocol=protocol)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member or f"{path.stem}.pkl", data)


def pickle_bytes_zip(path: Path, data: bytes, member: str) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)


class OpensAFileWhenUnpickled:
    """Pickles to ``open(path, "w")``: loading it with ``pickle.loads`` creates ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@dataclass
class Clip:
    category: str
    split: str
    audio: np.ndarray | None = None     # as released: (T, 128)
    video: np.ndarray | None = None     # (T, 7, 7, 512)
    avc: np.ndarray | None = None       # (10, 1)


@dataclass
class ZipSetFiles:
    root: Path
    meta: Path
    categories: Path
    audio_dir: Path
    video_dir: Path
    label_dir: Path
    prompts: Path
    clips: dict[str, Clip] = field(default_factory=dict)   # video_id -> its arrays, in CSV order


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_vggsound_avel(root: Path, splits: list[str], seed: int = 0) -> ZipSetFiles:
    """VGGSound-AVEL: one CSV row per entry of ``splits`` (its split), audio of 7..10 s, video (10, 7, 7, 512),
    AVC labels (10, 1); pickles of protocols 2..5 in turn, 2..4 as Python 3.7 with numpy 1.x wrote them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = ZipSetFiles(root, root / "vggsound-avel40k.csv", _write_lines(root / "VggsoundAVEL40kCategories.txt",
                                                                           VGG_CLASSES),
                        root / "audio" / "zip", root / "video" / "zip", root / "label" / "zip",
                        root / "vggsoundCategories2Prompts.csv")
    with open(files.prompts, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "prompt"])
        for label in VGG_CLASSES:
            for prompt in VGG_PROMPTS[label]:
                writer.writerow([label, prompt])
    with open(files.meta, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["category", "video_id", "split"])
        for n, split in enumerate(splits):
            video_id = f"-v{n:02d}_x{seed}Yz"
            clip = Clip(VGG_CLASSES[n % len(VGG_CLASSES)], split,
                        audio=rng.standard_normal((int(rng.integers(7, 11)), 128)).astype(np.float32),
                        video=rng.random((10, 7, 7, 512), dtype=np.float32),
                        avc=(rng.random((10, 1)) < 0.6).astype(np.int64))
            protocol = 2 + n % 4
            numpy1 = protocol <= 4      # as Python 3.7 with numpy 1.x wrote them; protocol 5 as numpy 2 does
            pickle_zip(files.audio_dir / f"{video_id}.zip", clip.audio, protocol, numpy1=numpy1)
            pickle_zip(files.video_dir / f"{video_id}.zip", clip.video, protocol, numpy1=numpy1)
            pickle_zip(files.label_dir / f"{video_id}.zip", clip.avc, protocol, numpy1=numpy1)
            writer.writerow([clip.category, video_id, split])
            files.clips[video_id] = clip
    return files


def make_ucf_side(root: Path, clips: int = 3, seed: int = 1) -> ZipSetFiles:
    """The UCF101 side of UCF101 <-> VGGSound: ucf2vggsound.csv without a split column, video of 8..12 s."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    classes = ["PlayingCello", "JumpRope"]
    files = ZipSetFiles(root, root / "ucf2vggsound.csv", _write_lines(root / "UCF101sameVGGSound.txt", classes),
                        Path(), root / "UCF101" / "feature" / "video" / "zip", Path(), Path())
    lengths = [8, 12, 10]
    with open(files.meta, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["category", "video_id"])
        for n in range(clips):
            video_id = f"v_{classes[n % 2]}_g{n + 1:02d}_c01"
            clip = Clip(classes[n % 2], "all", video=rng.random((lengths[n % 3], 7, 7, 512), dtype=np.float32))
            pickle_zip(files.video_dir / f"{video_id}.zip", clip.video)
            writer.writerow([clip.category, video_id])
            files.clips[video_id] = clip
    _write_lines(root / "VGGSoundsameUCF101.txt", ["playing cello", "rope skipping"])
    return files


@dataclass
class AVVPFiles:
    root: Path
    audio_annotations: Path
    visual_annotations: Path
    categories: Path
    audio_dir: Path
    video_dir: Path
    audio: dict[str, np.ndarray] = field(default_factory=dict)   # YouTube id -> (T, 128)
    video: dict[str, np.ndarray] = field(default_factory=dict)


# filename -> (audio events, visual events) as (label, onset, offset)
AVVP_EVENTS = {
    "IgN7v8nWmx8_30_40": ([("Speech", 0, 1), ("Speech", 5, 9), ("Violin_fiddle", 0, 5), ("Violin_fiddle", 6, 8),
                           ("Violin_fiddle", 9, 10)],
                          [("Violin_fiddle", 0, 10)]),
    "KSRjje7GH44_60_70": ([("Blender", 8, 10), ("Speech", 0, 8)], []),
    "H5WcJwyjxIg_2_12": ([("Baby_cry_infant_cry", 0, 0)], [("Dog", 3, 6), ("Cat", 4, 5)]),
}


def make_avvp(root: Path, seed: int = 2) -> AVVPFiles:
    """AVVP: the audio annotations as one row per video (comma-separated lists, the authors' *_combined files), the
    visual ones as one row per event (the original AVVP files); features named by the 11-character YouTube id."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = AVVPFiles(root, root / "AVVP_eval_audio_checked_combined.csv",
                      root / "AVVP_eval_visual_checked_combined.csv",
                      _write_lines(root / "AVVP_Categories.txt", list(AVVP_CLASSES)),
                      root / "AVVP" / "feature" / "audio" / "zip", root / "AVVP" / "feature" / "video" / "zip")
    audio_rows = ["filename\tonset\toffset\tevent_labels"]
    visual_rows = ["filename\tonset\toffset\tevent_labels"]
    for filename, (audio, visual) in AVVP_EVENTS.items():
        if audio:
            audio_rows.append("\t".join([filename, ",".join(str(e[1]) for e in audio),
                                         ",".join(str(e[2]) for e in audio), ",".join(e[0] for e in audio)]))
        visual_rows += [f"{filename}\t{onset}\t{offset}\t{label}" for label, onset, offset in visual]
        youtube_id = filename[:11]
        files.audio[youtube_id] = rng.standard_normal((9, 128)).astype(np.float64)
        files.video[youtube_id] = rng.random((10, 7, 7, 512), dtype=np.float32)
        pickle_zip(files.audio_dir / f"{youtube_id}.zip", files.audio[youtube_id], numpy1=True)   # Python 3.7's way
        pickle_zip(files.video_dir / f"{youtube_id}.zip", files.video[youtube_id], numpy1=True)
    _write_lines(files.audio_annotations, audio_rows)
    _write_lines(files.visual_annotations, visual_rows)
    return files


@dataclass
class AVEFiles:
    root: Path
    video: np.ndarray          # (n 10 7 7 512)
    audio: np.ndarray          # (n 10 128)
    per_second: np.ndarray     # (n 10) class or -1
    orders: dict[str, list[int]]


def make_ave(root: Path, n: int = 6, seed: int = 3) -> AVEFiles:
    """AVE-ECCV18-master/data: visual_feature.h5, audio_feature.h5, labels.h5 (one-hot, background last) and
    {train,val,test}_order.h5, dataset keys ``avadataset`` and ``order``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    video = rng.random((n, 10, 7, 7, 512), dtype=np.float32)
    audio = rng.standard_normal((n, 10, 128)).astype(np.float32)
    per_second = np.where(rng.random((n, 10)) < 0.7, rng.integers(0, len(AVE_CLASSES), (n, 1)), -1)
    labels = np.zeros((n, 10, len(AVE_CLASSES) + 1), np.float32)
    labels[np.arange(n)[:, None], np.arange(10)[None], np.where(per_second < 0, len(AVE_CLASSES), per_second)] = 1
    orders = {"train": [4, 0, 2], "val": [1], "test": [5, 3]}
    for name, array in (("visual_feature.h5", video), ("audio_feature.h5", audio), ("labels.h5", labels)):
        with h5py.File(root / name, "w") as f:
            f["avadataset"] = array
    for split, order in orders.items():
        with h5py.File(root / f"{split}_order.h5", "w") as f:
            f["order"] = np.array(order)
    return AVEFiles(root, video, audio, per_second, orders)


def fitted_audio(audio: np.ndarray) -> np.ndarray:
    """The authors' fit of released audio to 10 s (VGGSOUND_dataset.py): repeat the last row, or cut."""
    if audio.shape[0] < 10:
        return np.concatenate([audio, np.tile(audio[-1, :], (10 - audio.shape[0], 1))], axis=0)
    return audio[:10]



# --- the retrieval sets (trainer/data/released_pairs.py) ---

@dataclass
class PairRelease:
    """Paths of one retrieval set and, per item id, what a reader should find."""

    args: list[str]                                                  # the shards.convert arguments after the set
    features: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)   # id -> modality -> released array
    captions: dict[str, list[str]] = field(default_factory=dict)    # id -> its captions, in order


PAIR_WORDS = ("a dog barks", "rain falls on a roof", "a cello plays", "a car passes by", "children are laughing")


def make_pair_release(root: Path, kind: str, items: int = 6, seed: int = 0) -> PairRelease:
    """A tiny retrieval set ``kind`` in the authors' layout: arrays of random length (1-4 steps), video as the 7x7x512
    grid, audio (t 128), an image as one (7 7 512) grid; captions as the set has them (Clotho and MSCOCO 5 each)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    release = PairRelease([])
    dirs = {"video": root / "feature" / "video" / "zip", "audio": root / "feature" / "audio" / "zip"}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    modalities = {"mscoco": ("video",), "clotho": ("audio",), "flickrsound": ("audio", "video"),
                  "msvd": ("video",), "valor32k": ("video", "audio")}[kind]
    ids = {"mscoco": [f"{139 + 7 * i:012}" for i in range(items)], "clotho": [f"clip {i}" for i in range(items)],
           "flickrsound": [f"fs_{i}" for i in range(items)], "msvd": [f"vid{i}_0_5" for i in range(items)],
           "valor32k": [f"v{i:04d}" for i in range(items)]}[kind]
    for n, key in enumerate(ids):
        length = int(rng.integers(1, 5))
        arrays = {}
        for m in modalities:
            if m == "audio":
                arrays[m] = rng.normal(size=(length, 128))
            elif kind == "flickrsound":
                arrays[m] = rng.normal(size=(7, 7, 512)).astype(np.float32)        # one image, no time axis
            else:
                arrays[m] = rng.normal(size=(length, 7, 7, 512)).astype(np.float32)
            if n == 0:   # the first item as a Python 3.7 / numpy 1 release pickles it
                pickle_zip(dirs[m] / f"{key}.zip", arrays[m], 2, numpy1=True)
            else:
                pickle_zip(dirs[m] / f"{key}.zip", arrays[m])
        release.features[key] = arrays
        count = {"mscoco": 5, "clotho": 5, "flickrsound": 0, "msvd": 2, "valor32k": 1}[kind]
        release.captions[key] = [f"{PAIR_WORDS[(n + j) % len(PAIR_WORDS)]}, take {j}" for j in range(count)]
    if kind == "mscoco":
        annotations = [{"image_id": int(key), "id": 10 * n + j, "caption": c}
                       for j in range(5) for n, key in enumerate(ids) for c in release.captions[key][j:j + 1]]
        (root / "val_part_1.json").write_text(json.dumps({"annotations": annotations}))
        release.args = ["--captions", str(root / "val_part_1.json"), "--video-dir", str(dirs["video"])]
    elif kind == "clotho":
        with open(root / "clotho_captions_evaluation.csv", "w", newline="", encoding="utf-8-sig") as handle:  # a BOM
            writer = csv.writer(handle)
            writer.writerow(["file_name", *(f"caption_{j}" for j in range(1, 6))])
            writer.writerows([f"{key}.wav", *release.captions[key]] for key in ids)
        release.args = ["--captions", str(root / "clotho_captions_evaluation.csv"), "--audio-dir", str(dirs["audio"])]
    elif kind == "flickrsound":
        _write_lines(root / "test.csv", ["filename", *(f"{key}.wav" for key in ids)])
        release.args = ["--meta", str(root / "test.csv"), "--audio-dir", str(dirs["audio"]),
                        "--video-dir", str(dirs["video"])]
    elif kind == "msvd":
        with open(root / "msvd_test.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["video_name", "caption"])
            writer.writerows([key, c] for key in ids for c in release.captions[key])
        release.args = ["--captions", str(root / "msvd_test.csv"), "--video-dir", str(dirs["video"])]
    else:
        (root / "desc_test.json").write_text(json.dumps([{"video_id": key, "desc": release.captions[key][0]}
                                                         for key in ids]))
        release.args = ["--captions", str(root / "desc_test.json"), "--video-dir", str(dirs["video"]),
                        "--audio-dir", str(dirs["audio"])]
    return release
