"""Pack samples into WebDataset tar shards and write their manifest.

    python -m shards.write --src DIR --out 'OUT/train-%06d.tar' [--modalities video,audio]
                           [--captions FILE.csv|.tsv|.jsonl --key-column K --caption-column C ...]
                           [--max-count 1000 --max-size 1e9] [--skip-bad]

A sample is the group of files of one stem in ``DIR``: ``KEY.mp4`` (video, and audio unless a wav/flac is there),
``KEY.wav``/``KEY.flac`` (audio), ``KEY.jpg|jpeg|png|webp`` (image), ``KEY.txt`` (captions, one per line) and
``KEY.json`` (labels). Its members are the files' bytes, unchanged; files with other suffixes are not packed.
``--modalities`` names what every sample must give (``trainer.data.decode.SAMPLE_MODALITIES``; default video,audio:
clips as pretraining corpora have them), e.g. ``image,text`` for Flickr30k or MSCOCO, ``audio,text`` for AudioCaps or
Clotho, ``image,audio`` for image-sound pairs, ``video,text`` for captioned clips. A stem that lacks one of them is
unpaired: the writer refuses the folder with the list of them, or with ``--skip-bad`` leaves them out (listed in the
manifest).

Captions come from each stem's ``KEY.txt``, or from one ``--captions`` file the way the corpora ship them: a CSV/TSV
(with a header row; ``--delimiter`` for another separator, e.g. ``'|'``) or a JSONL file, one row per caption or per
item, the stem in ``--key-column`` (a file name's known suffix is dropped: ``1000092795.jpg`` -> ``1000092795``) and the
caption in each ``--caption-column`` (Clotho: caption_1 ... caption_5). All captions of an item, in file order and
without repeats, are stored in its txt member, one per line; training picks one per epoch (seeded by ``data.seed``,
the epoch and the key: ``trainer.data.decode.pick_caption``), coding and evaluation use the first. A caption file row
whose stem has no file is unpaired too; a stem with both a txt file and caption rows is an error.

Every sample is probed on the way (``trainer.data.probe_sample``: json and captions parse where present, the video
opens and decodes one frame per second, the image decodes, the audio decodes); a sample that fails is an error naming
the file, or with ``--skip-bad`` is left out and listed in the manifest.

``OUT/manifest.json`` records the shards with their sample counts (the stream's equal-batches plan needs them), the
total, the media parameters seen, the skipped samples, and what the packed samples hold: ``modalities`` maps each
distinct modality set to its sample count (e.g. ``{"image+text": 1000}``), ``members`` each member set (e.g.
``{"mp4+json+txt": 90, "mp4": 6}``), ``captions`` the captions stored, ``labelled`` and ``captioned`` count the samples
with a json and with a txt member.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from shards.parsers import write_parser
from trainer.data.decode import (
    AUDIO, AUDIO_MEMBERS, CAPTION_MEMBER, CLIP_MODALITIES, KNOWN_MEMBERS, LABEL_MEMBER, TEXT, SampleInfo,
    check_modalities, media_members, member_set, probe_sample, sample_modalities,
)
from trainer.data.media_decoders import CorruptSample
from trainer.data.manifest import CLIP_FORMAT, ShardEntry, ShardManifest

UNPAIRED = "unpaired"   # the manifest's reason for a stem left out because it lacks a modality (--skip-bad)
LISTED = 20             # stems an error message lists before it says how many more there are


class BadClip(ValueError):
    """A source sample that cannot be packed (message names the file)."""


def collect_clips(src: Path) -> dict[str, dict[str, Path]]:
    """KEY -> {member suffix: file} for the files in ``src`` with a member suffix, keys sorted. A file whose name has
    a dot before its member suffix (``a.b.wav``) is an error: WebDataset cuts a key at its first dot."""
    if not src.is_dir():
        raise BadClip(f"{src}: not a directory")
    clips: dict[str, dict[str, Path]] = {}
    dotted = []
    for path in sorted(src.iterdir()):
        key, _, suffix = path.name.partition(".")
        if not path.is_file():
            continue
        if suffix.lower() not in KNOWN_MEMBERS:
            if path.name.rpartition(".")[2].lower() in KNOWN_MEMBERS:
                dotted.append(path.name)
            continue
        clips.setdefault(key, {})[suffix.lower()] = path
    if dotted:
        raise BadClip(f"{src}: {len(dotted)} file names have a dot before their suffix, which a WebDataset key "
                      f"cannot hold; rename them: {_listed(dotted)}")
    return clips


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def _caption_key(value: object, where: str) -> str:
    """A caption row's stem: the key column's value without a known member suffix."""
    if not isinstance(value, str) or not value.strip():
        raise BadClip(f"{where}: the key column is empty")
    key = Path(value.strip()).name
    stem, _, suffix = key.rpartition(".")
    return stem if stem and suffix.lower() in KNOWN_MEMBERS else key


def _caption_values(row: dict, columns: list[str], where: str) -> list[str]:
    values = []
    for column in columns:
        if column not in row:
            raise BadClip(f"{where}: no column {column!r} (columns: {sorted(row)})")
        value = row[column]
        for text in value if isinstance(value, list) else [value]:
            if not isinstance(text, str):
                raise BadClip(f"{where}: column {column!r} holds {type(text).__name__}, not a caption")
            values.append(" ".join(text.split()))   # one line per caption: newlines and runs of blanks become one
    return [v for v in values if v]


def _caption_rows(path: Path, delimiter: str | None):
    """(where, row) of each data row of a CSV/TSV (header first) or JSONL file."""
    if path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise BadClip(f"{path}:{number}: not a JSON object ({err})") from err
                if not isinstance(row, dict):
                    raise BadClip(f"{path}:{number}: not a JSON object")
                yield f"{path}:{number}", row
        return
    separator = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    with open(path, encoding="utf-8-sig", newline="") as f:   # -sig: a byte-order mark is not part of the header
        reader = csv.reader(f, delimiter=separator, skipinitialspace=True)
        header = [name.strip() for name in next(reader, [])]
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise BadClip(f"{where}: {len(row)} fields, the header has {len(header)} ({header}); quote a field "
                              "that holds the separator")
            yield where, {name: cell.strip() for name, cell in zip(header, row)}


def read_captions(path: Path, key_column: str, caption_columns: list[str],
                  delimiter: str | None = None) -> dict[str, list[str]]:
    """Stem -> its captions, in file order without repeats, from a CSV/TSV/JSONL caption file (module docstring);
    errors name the file and line."""
    if not path.is_file():
        raise BadClip(f"{path}: caption file not found")
    if path.suffix.lower() not in (".csv", ".tsv", ".jsonl"):
        raise BadClip(f"{path}: a caption file is .csv, .tsv or .jsonl")
    captions: dict[str, list[str]] = {}
    try:
        for where, row in _caption_rows(path, delimiter):
            if key_column not in row:
                raise BadClip(f"{where}: no key column {key_column!r} (columns: {sorted(row)}); set --key-column")
            kept = captions.setdefault(_caption_key(row[key_column], where), [])
            kept.extend(c for c in dict.fromkeys(_caption_values(row, caption_columns, where)) if c not in kept)
    except UnicodeDecodeError as err:
        raise BadClip(f"{path}: not UTF-8 ({err})") from err
    empty = [key for key, texts in captions.items() if not texts]
    if empty:
        raise BadClip(f"{path}: {len(empty)} stems have only empty captions: {_listed(empty)}")
    return captions


def _span(values: list[float]) -> dict | None:
    return {"min": round(min(values), 3), "max": round(max(values), 3)} if values else None


def _media_summary(infos: list[SampleInfo], audio_members: set[str]) -> dict:
    videos = [i for i in infos if i.fps is not None]
    images = [i for i in infos if "image" in i.modalities]
    return {
        "fps": sorted({round(i.fps, 3) for i in videos}),
        "width": sorted({i.width for i in videos}),
        "height": sorted({i.height for i in videos}),
        "clip_seconds": _span([i.seconds for i in infos if i.seconds is not None]),
        "audio_seconds": _span([i.audio_seconds for i in infos if i.audio_seconds is not None]),
        "image_width": _span([i.width for i in images]),
        "image_height": _span([i.height for i in images]),
        "label_seconds": sorted({i.label_seconds for i in infos if i.label_seconds is not None}),
        "num_classes": sorted({i.num_classes for i in infos if i.num_classes is not None}),
        "audio_members": sorted(audio_members),  # where the audio came from: mp4 track, wav, flac
    }


def _samples_with(member: str, member_sets: Counter[str]) -> int:
    """Samples whose member set (e.g. "mp4+json+txt") includes ``member``."""
    return sum(n for members, n in member_sets.items() if member in members.split("+"))


def pair(src: Path, modalities: tuple[str, ...], captions: dict[str, list[str]] | None,
         skip_bad: bool) -> tuple[dict[str, dict[str, Path]], list[dict]]:
    """The stems of ``src`` that give every one of ``modalities``, and the skip records of those that do not (an
    error listing them unless ``skip_bad``)."""
    clips = collect_clips(src)
    captions = captions or {}
    both = sorted(k for k in captions if CAPTION_MEMBER in clips.get(k, {}))
    if both:
        raise BadClip(f"{src}: {len(both)} stems have both a .txt file and rows in the caption file: {_listed(both)}")
    unpaired = {}   # stem -> what it lacks
    for key, files in clips.items():
        has = set(sample_modalities(files)) | ({TEXT} if key in captions else set())
        missing = [m for m in modalities if m not in has]
        if missing:
            unpaired[key] = f"no {' or '.join(missing)}"
    unpaired |= {key: "captions but no file" for key in captions if key not in clips}
    if unpaired and not skip_bad:
        listed = [f"{key} ({why})" for key, why in sorted(unpaired.items())]
        raise BadClip(f"{src}: {len(unpaired)} stems do not pair {'+'.join(modalities)}: {_listed(listed)}  "
                      "(use --skip-bad to leave them out)")
    skipped = [{"key": key, "reason": UNPAIRED, "error": f"{src / key}: {why}"}
               for key, why in sorted(unpaired.items())]
    return {k: f for k, f in clips.items() if k not in unpaired}, skipped


def write_shards(src: Path, pattern: str, max_count: int = 1000, max_size: float = 1e9, skip_bad: bool = False,
                 progress: bool = True, modalities: tuple[str, ...] = CLIP_MODALITIES,
                 captions: dict[str, list[str]] | None = None) -> ShardManifest:
    """Pack every sample of ``src`` that gives ``modalities`` into shards named by ``pattern`` (``%06d`` style), with
    ``captions`` (stem -> captions, ``read_captions``) as their txt members; returns the manifest."""
    if "%" not in Path(pattern).name:
        raise ValueError(f"--out {pattern!r} needs a shard-number placeholder such as train-%06d.tar")
    try:
        modalities = check_modalities(modalities, "--modalities")
    except ValueError as err:
        raise BadClip(str(err)) from err
    out_dir = Path(pattern).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    clips, skipped = pair(src, modalities, captions, skip_bad)
    if not clips:
        raise BadClip(f"{src}: no sample gives {'+'.join(modalities)} (files KEY.mp4, KEY.wav/.flac, KEY.jpg/.png/"
                      f".webp, KEY.txt, KEY.json)")
    records: list[ShardEntry] = []
    infos: list[SampleInfo] = []
    audio_members: set[str] = set()
    member_sets: Counter[str] = Counter()
    modality_sets: Counter[str] = Counter()
    stored_captions = 0

    def finished(fname: str) -> None:
        records.append(ShardEntry(Path(fname).name, sink.count, {"bytes": Path(fname).stat().st_size}))

    # encoder=False: members are written as the bytes read from the files, never re-encoded
    sink = wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_size, verbose=0, post=finished, encoder=False)
    try:
        for key, files in tqdm(clips.items(), desc="write", unit="sample", disable=not progress):
            sample = {"__key__": key, **{member: path.read_bytes() for member, path in files.items()}}
            if captions and key in captions:
                sample[CAPTION_MEMBER] = "\n".join(captions[key]).encode("utf-8")
            try:
                info = probe_sample(sample)
                media_members(sample, modalities)   # the stream's rule: e.g. an image and an mp4 where jobs read images
                if AUDIO in modalities and AUDIO not in info.modalities:
                    raise CorruptSample("missing_member", f"{key}.mp4", "the mp4 has no audio track and there is no "
                                        f"{'/'.join(AUDIO_MEMBERS)} file")
            except CorruptSample as err:
                # the message starts with "KEY.member", which is the file's name inside src
                if not skip_bad:
                    raise BadClip(f"{src / str(err)}  (use --skip-bad to leave such samples out)") from err
                skipped.append({"key": key, "reason": err.reason, "error": f"{src / str(err)}"})
                continue
            infos.append(info)
            if AUDIO in info.modalities:
                audio_members.add(next((m for m in AUDIO_MEMBERS if m in files), "mp4"))
            member_sets[member_set(sample)] += 1
            modality_sets["+".join(info.modalities)] += 1
            stored_captions += info.captions
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
    manifest = ShardManifest(CLIP_FORMAT, records, sum(r.samples for r in records),
                             modalities=dict(modality_sets.most_common()), details={
        "source": str(src),
        "pattern": Path(pattern).name,
        "seconds": round(sum(i.seconds for i in infos if i.seconds is not None), 3),
        "media": _media_summary(infos, audio_members),
        "skipped": skipped,
        "members": dict(member_sets.most_common()),
        "captions": stored_captions,
        "labelled": _samples_with(LABEL_MEMBER, member_sets),
        "captioned": _samples_with(CAPTION_MEMBER, member_sets),
    })
    manifest.write(out_dir)
    return manifest


def main(argv: list[str] | None = None) -> int:
    a = write_parser().parse_args(argv)   # torch-free, for `cmg shards write --help`
    try:
        captions = read_captions(a.captions, a.key_column, a.caption_column or ["caption"], a.delimiter) \
            if a.captions else None
        manifest = write_shards(a.src, a.out, a.max_count, a.max_size, a.skip_bad,
                                modalities=tuple(a.modalities.split(",")), captions=captions)
    except BadClip as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    kinds = ", ".join(f"{n} {m}" for m, n in manifest.modalities.items())
    details = manifest.details
    print(f"wrote {manifest.total} samples ({kinds}; {details['seconds']:.1f} s) into {len(manifest.shards)} "
          f"shards in {Path(a.out).parent}; skipped {len(details['skipped'])}; {details['labelled']} labelled, "
          f"{details['captioned']} captioned ({details['captions']} captions)")
    for entry in details["skipped"]:
        print(f"  skipped {entry['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
