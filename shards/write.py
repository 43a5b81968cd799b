"""Pack clips into WebDataset tar shards and write their manifest.

    python -m shards.write --src DIR --out 'OUT/train-%06d.tar' [--max-count 1000 --max-size 1e9] [--skip-bad]

A clip is the group of files ``DIR/KEY.mp4`` and optionally ``KEY.wav`` or ``KEY.flac`` (audio),
``KEY.json`` (labels) and ``KEY.txt`` (caption): a bare mp4 is an unlabelled clip, as pretraining corpora
have them. It becomes one sample whose members are the files' bytes, unchanged. Files with other suffixes
are not packed. Every clip is probed on the way (``trainer.data.probe_sample``: json and caption parse
where present, the video opens and decodes one frame per second, the audio decodes); a clip that fails is
an error naming the file, or with ``--skip-bad`` is left out and listed in the manifest.

``OUT/manifest.json`` records the shards with their sample counts (the stream's equal-batches plan needs
them), the total, the media parameters seen, the skipped clips, and what the packed samples hold:
``members`` maps each distinct member set to its sample count (e.g. ``{"mp4+json+txt": 90, "mp4": 6}``),
``labelled`` and ``captioned`` count the samples with a json and with a txt member.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from shards.cli import write_parser
from trainer.data.decode import (
    AUDIO_MEMBERS, CAPTION_MEMBER, KNOWN_MEMBERS, LABEL_MEMBER, ClipInfo, CorruptSample, member_set, probe_sample,
)
from trainer.data.stream import MANIFEST_NAME

MANIFEST_FORMAT = "cmg-trainer-shards/1"


class BadClip(ValueError):
    """A source clip that cannot be packed (message names the file)."""


@dataclass
class ShardRecord:
    name: str
    samples: int
    bytes: int


def collect_clips(src: Path) -> dict[str, dict[str, Path]]:
    """KEY -> {member suffix: file} for the files in ``src`` with a member suffix, keys sorted."""
    if not src.is_dir():
        raise BadClip(f"{src}: not a directory")
    clips: dict[str, dict[str, Path]] = {}
    for path in sorted(src.iterdir()):
        key, _, suffix = path.name.partition(".")
        if not path.is_file() or suffix.lower() not in KNOWN_MEMBERS:
            continue
        clips.setdefault(key, {})[suffix.lower()] = path
    return clips


def _media_summary(infos: list[ClipInfo], audio_members: set[str]) -> dict:
    def distinct(values):
        return sorted(set(values))

    def span(values):
        return {"min": round(min(values), 3), "max": round(max(values), 3)} if values else None

    return {
        "fps": distinct(round(i.fps, 3) for i in infos),
        "width": distinct(i.width for i in infos),
        "height": distinct(i.height for i in infos),
        "clip_seconds": span([i.seconds for i in infos]),
        "audio_seconds": span([i.audio_seconds for i in infos]),
        "label_seconds": distinct(i.label_seconds for i in infos if i.label_seconds is not None),
        "num_classes": distinct(i.num_classes for i in infos if i.num_classes is not None),
        "audio_members": sorted(audio_members),  # where the audio came from: mp4 track, wav, flac
    }


def _samples_with(member: str, member_sets: Counter[str]) -> int:
    """Samples whose member set (e.g. "mp4+json+txt") includes ``member``."""
    return sum(n for members, n in member_sets.items() if member in members.split("+"))


def write_shards(src: Path, pattern: str, max_count: int = 1000, max_size: float = 1e9,
                 skip_bad: bool = False, progress: bool = True) -> dict:
    """Pack every clip of ``src`` into shards named by ``pattern`` (``%06d`` style); returns the manifest."""
    if "%" not in Path(pattern).name:
        raise ValueError(f"--out {pattern!r} needs a shard-number placeholder such as train-%06d.tar")
    out_dir = Path(pattern).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = collect_clips(src)
    if not clips:
        raise BadClip(f"{src}: no clip files (KEY.mp4, optionally with KEY.json, KEY.txt, KEY.wav)")
    records: list[ShardRecord] = []
    infos: list[ClipInfo] = []
    skipped: list[dict] = []
    audio_members: set[str] = set()
    member_sets: Counter[str] = Counter()

    def finished(fname: str) -> None:
        records.append(ShardRecord(Path(fname).name, sink.count, Path(fname).stat().st_size))

    # encoder=False: members are written as the bytes read from the files, never re-encoded
    sink = wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_size, verbose=0, post=finished, encoder=False)
    try:
        for key, files in tqdm(clips.items(), desc="write", unit="clip", disable=not progress):
            sample = {"__key__": key, **{member: path.read_bytes() for member, path in files.items()}}
            try:
                infos.append(probe_sample(sample))
            except CorruptSample as err:
                # the message starts with "KEY.member", which is the file's name inside src
                if not skip_bad:
                    raise BadClip(f"{src / str(err)}  (use --skip-bad to leave such clips out)") from err
                skipped.append({"key": key, "reason": err.reason, "error": f"{src / str(err)}"})
                continue
            audio_members.add(next((m for m in AUDIO_MEMBERS if m in files), "mp4"))
            member_sets[member_set(sample)] += 1
            sink.write(sample)
    except BaseException:
        sink.close()
        for record in records:
            (out_dir / record.name).unlink(missing_ok=True)
        raise
    sink.close()
    empty = [r for r in records if r.samples == 0]  # ShardWriter opens its first shard before any write
    for record in empty:
        (out_dir / record.name).unlink()
    records = [r for r in records if r.samples > 0]
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": str(src),
        "pattern": Path(pattern).name,
        "shards": [vars(r) for r in records],
        "total": sum(r.samples for r in records),
        "seconds": round(sum(i.seconds for i in infos), 3),
        "media": _media_summary(infos, audio_members),
        "skipped": skipped,
        "members": dict(member_sets.most_common()),
        "labelled": _samples_with(LABEL_MEMBER, member_sets),
        "captioned": _samples_with(CAPTION_MEMBER, member_sets),
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    a = write_parser().parse_args(argv)   # torch-free, for `cmg shards write --help`
    try:
        manifest = write_shards(a.src, a.out, a.max_count, a.max_size, a.skip_bad)
    except BadClip as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {manifest['total']} samples ({manifest['seconds']:.1f} s) into {len(manifest['shards'])} shards "
          f"in {Path(a.out).parent}; skipped {len(manifest['skipped'])}; {manifest['labelled']} labelled, "
          f"{manifest['captioned']} captioned")
    for entry in manifest["skipped"]:
        print(f"  skipped {entry['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
