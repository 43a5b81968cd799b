"""The shard manifest: ``manifest.json`` next to a set of WebDataset shards, the one home of its name and layout.

Every writer builds a ``ShardManifest`` and ``write``s it (``shards.write``: clip shards; ``shards.extract``,
``shards.convert`` and the scaling bench: feature shards; ``trainer.programs.encode``: code shards); every reader
(the stream, the job's checks, evaluation, ``shards.inspect``, the tracker's dataset digest) gets one from
``ShardManifest.read`` or ``ShardManifest.of_shards``. The JSON layout::

    {"format": "cmg-trainer-shards/1" | "cmg-trainer-features/1" | "cmg-trainer-codes/1",
     "shards": [{"name": "train-000000.tar", "samples": 1000, ...}, ...],   # name: the shard's file name
     "total": 1000,
     "feature_shapes": {modality: [dims after the time axis]},     # feature shards
     "decode": {DecodeConfig of the extraction} | null,               # feature shards (null: a retrieval set)
     "backbones": {modality: backbone record} | "...",                # feature shards: what made the features
     "released": {"set", "classes", "splits", ...},                  # shards.convert: the released set
     "modalities": {...},                                            # clip shards: samples per modality set
     ...}                                                            # each writer's own description (``details``)

A shard entry's keys besides ``name`` and ``samples`` (``bytes`` from shards.write, ``split`` from shards.convert,
trainer.programs.encode's unit record) are its ``details``. ``format`` names the layout and its version; a manifest
without one (hand-written, e.g. in tests) is read as clip shards, and ``total`` defaults to the sum of the shards'
samples. Reading validates every key it types and names the file and the key in its error (``ManifestError``); writing
goes through a temporary file and ``os.replace``, so a reader never sees half a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
CLIP_FORMAT = "cmg-trainer-shards/1"        # shards.write
FEATURE_FORMAT = "cmg-trainer-features/1"   # shards.extract, shards.convert
CODES_FORMAT = "cmg-trainer-codes/1"        # trainer.programs.encode
FORMATS = (CLIP_FORMAT, FEATURE_FORMAT, CODES_FORMAT)
_TYPED = ("format", "shards", "total", "feature_shapes", "decode", "backbones", "released", "modalities")


class ManifestError(ValueError):
    """A shard manifest that is missing, unreadable or malformed; the message names the file (and the key)."""


def shard_name(url: str) -> str:
    """The ``*.tar`` file name inside a local path or a ``pipe:`` command (the manifest's key)."""
    names = re.findall(r"[^/\s'\"]+\.tar\b", url)
    if not names:
        raise ValueError(f"shard URL {url!r} names no .tar file")
    return names[-1]


def locate(urls: Sequence[str], manifest: str | Path = "") -> Path:
    """The manifest of shard ``urls``: ``manifest`` if given, else manifest.json next to the first (local) shard."""
    if manifest:
        return Path(manifest)
    if not urls or ":" in urls[0].split("/")[0]:
        raise ManifestError(f"cannot locate a manifest for {urls[0] if urls else 'no shard'!r}: set "
                            "DataConfig.manifest")
    return Path(urls[0]).parent / MANIFEST_NAME


@dataclass(frozen=True)
class ShardEntry:
    name: str                                                # the shard's file name (``shard_name`` of its URL)
    samples: int                                             # the samples it holds
    details: dict[str, Any] = field(default_factory=dict)   # the writer's other keys (bytes, split, ...)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "samples": self.samples, **self.details}


@dataclass
class ShardManifest:
    format: str
    shards: list[ShardEntry]
    total: int
    feature_shapes: dict[str, list[int] | None] | None = None   # feature shards: modality -> dims after time
    decode: dict[str, Any] | None = None                         # feature shards: the extraction's DecodeConfig
    backbones: dict[str, Any] | str | None = None                # feature shards: what made the features
    released: dict[str, Any] | None = None                       # shards.convert: the released set it came from
    modalities: dict[str, Any] | None = None                     # clip shards: samples per modality set
    details: dict[str, Any] = field(default_factory=dict)        # the writer's other top-level keys
    path: Path | None = field(default=None, compare=False)       # the file it was read from or written to
    digest: str = field(default="", compare=False)               # sha256 of that file's bytes

    @property
    def is_features(self) -> bool:
        return self.format == FEATURE_FORMAT

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else "(unwritten manifest)"

    def counts(self, urls: Sequence[str]) -> list[int]:
        """Samples per shard of ``urls``; a ``ManifestError`` naming the shards it does not list."""
        listed = {entry.name: entry.samples for entry in self.shards}
        missing = [url for url in urls if shard_name(url) not in listed]
        if missing:
            raise ManifestError(f"manifest {self.where} lists no sample count for {missing[:3]} ({len(missing)} "
                                "shards)")
        return [listed[shard_name(url)] for url in urls]

    def to_json(self) -> dict[str, Any]:
        optional = {"feature_shapes": self.feature_shapes, "backbones": self.backbones, "released": self.released,
                    "modalities": self.modalities}
        return {"format": self.format, "shards": [s.to_json() for s in self.shards], "total": self.total,
                # a feature manifest always says its decode window (null: a retrieval set's items have none)
                **({"decode": self.decode} if self.is_features or self.decode is not None else {}),
                **{key: value for key, value in optional.items() if value is not None}, **self.details}

    def write(self, directory: str | Path) -> Path:
        """Write ``directory/manifest.json`` atomically (a temporary file, then ``os.replace``); its path."""
        target = Path(directory) / MANIFEST_NAME
        data = (json.dumps(self.to_json(), indent=2) + "\n").encode("utf-8")
        tmp = target.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        self.path, self.digest = target, hashlib.sha256(data).hexdigest()
        return target

    @classmethod
    def read(cls, path: str | Path) -> ShardManifest:
        """The manifest at ``path`` (a manifest file, or a directory holding manifest.json), validated."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            data = path.read_bytes()
        except FileNotFoundError as err:
            raise ManifestError(f"manifest {path} not found (it gives the per-shard sample counts and, for feature "
                                "shards, their shapes: write shards with `python -m shards.write` or `python -m "
                                "shards.extract`, or set DataConfig.manifest)") from err
        except OSError as err:
            raise ManifestError(f"manifest {path}: unreadable ({err})") from err
        try:
            contents = json.loads(data.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ManifestError(f"manifest {path}: not valid JSON ({err!r})") from err
        manifest = cls.from_json(contents, str(path))
        manifest.path, manifest.digest = path, hashlib.sha256(data).hexdigest()
        return manifest

    @classmethod
    def of_shards(cls, urls: Sequence[str], manifest: str | Path = "") -> ShardManifest:
        """The manifest of shard ``urls`` (``locate``), validated."""
        return cls.read(locate(urls, manifest))

    @classmethod
    def from_json(cls, contents: Any, where: str) -> ShardManifest:
        """A parsed manifest, validated: a ``ManifestError`` naming ``where`` and the bad key."""
        if not isinstance(contents, dict):
            raise ManifestError(f"manifest {where}: expected a JSON object, got {type(contents).__name__}")
        fmt = contents.get("format", CLIP_FORMAT)
        if fmt not in FORMATS:
            raise ManifestError(f"manifest {where}: format {fmt!r} is not one this version reads ({list(FORMATS)})")
        shards = contents.get("shards")
        if not isinstance(shards, list) or not all(_entry_ok(e) for e in shards):
            raise ManifestError(f"manifest {where}: 'shards' must be [{{'name': str, 'samples': int >= 0}}, ...]")
        entries = [ShardEntry(e["name"], e["samples"], {k: v for k, v in e.items() if k not in ("name", "samples")})
                   for e in shards]
        total = contents.get("total", sum(e.samples for e in entries))
        if not isinstance(total, int):
            raise ManifestError(f"manifest {where}: 'total' must be an integer, got {total!r}")
        shapes = contents.get("feature_shapes")
        if shapes is not None and not (isinstance(shapes, dict) and all(
                s is None or (isinstance(s, list) and all(isinstance(d, int) for d in s)) for s in shapes.values())):
            raise ManifestError(f"manifest {where}: 'feature_shapes' must be {{modality: [int, ...]}}, got {shapes!r}")
        for key in ("decode", "released", "modalities"):
            if not isinstance(contents.get(key), dict | None):
                raise ManifestError(f"manifest {where}: {key!r} must be an object, got {contents[key]!r}")
        if not isinstance(contents.get("backbones"), dict | str | None):
            raise ManifestError(f"manifest {where}: 'backbones' must be an object, got {contents['backbones']!r}")
        return cls(fmt, entries, total, shapes, contents.get("decode"), contents.get("backbones"),
                   contents.get("released"), contents.get("modalities"),
                   {k: v for k, v in contents.items() if k not in _TYPED})

    def released_value(self, key: str) -> Any:
        """``released[key]`` of a converted release's manifest (shards.convert); None for any other."""
        return (self.released or {}).get(key)


def _entry_ok(entry: Any) -> bool:
    return (isinstance(entry, Mapping) and isinstance(entry.get("name"), str)
            and isinstance(entry.get("samples"), int) and entry["samples"] >= 0)
