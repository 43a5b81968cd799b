"""Summarise WebDataset shards and check that every sample decodes.

    python -m shards.inspect 'OUT/train-{000000..000003}.tar' [MORE ...] [--manifest OUT/manifest.json]
                             [--members] [--seconds S]

URLS are one or more shard URLs: brace patterns, globs ('OUT/*.tar') or a list the shell expanded.

Reads the shards with webdataset, probes every sample the way the writer does
(``trainer.data.probe_sample``) and prints shards, samples and seconds, the modalities the samples give
(one count per distinct set, e.g. ``modalities  video+audio+text: 90 samples, image+text: 10 samples``) and
which members they have (e.g. ``members  mp4+json+txt: 90 samples, jpg+txt: 10 samples``: a sample without
json has no labels, one without txt no caption; ``--members`` also prints every sample's sets), then one line
per bad member with its reason. Bad means: a member that does not decode, a sample that names no modality, an
empty member, members that disagree (two images, or an image and an mp4), a member the stream never reads
(e.g. ``.pyd``: it is reported, never unpickled), an unreadable tar, a shard whose sample count differs from
the manifest (``manifest.json`` next to the shards is used when present), or with ``--seconds S`` a sample whose
video or audio is shorter than the S seconds a training run reads at the least (``decode.min_seconds``, else
``decode.seconds``; the stream would skip it).
Exits 1 if anything is bad, else 0.
"""

from __future__ import annotations

import glob
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds

from shards.parsers import inspect_parser
from trainer.data.decode import member_set, probe_sample, unknown_members
from trainer.data.media_decoders import CorruptSample
from trainer.data.manifest import MANIFEST_NAME, ShardManifest, shard_name


@dataclass
class BadMember:
    where: str  # shard:KEY.member, or the shard alone
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}: {self.detail}"


@dataclass
class Report:
    samples_per_shard: dict[str, int] = field(default_factory=dict)
    good: int = 0
    seconds: float = 0.0
    bad: list[BadMember] = field(default_factory=list)
    members: list[tuple[str, str]] = field(default_factory=list)  # (shard:KEY, its member set "mp4+json+txt")
    modalities: list[tuple[str, str]] = field(default_factory=list)  # (shard:KEY, "video+audio+text"), good ones

    @property
    def samples(self) -> int:
        return sum(self.samples_per_shard.values())

    def member_counts(self) -> dict[str, int]:
        """Samples per distinct member set, most common first."""
        return dict(Counter(members for _, members in self.members).most_common())

    def modality_counts(self) -> dict[str, int]:
        """Good samples per distinct modality set, most common first."""
        return dict(Counter(modalities for _, modalities in self.modalities).most_common())


def _manifest_counts(urls: list[str], manifest: str | None) -> tuple[str | None, dict[str, int]]:
    path = Path(manifest) if manifest else Path(urls[0]).parent / MANIFEST_NAME
    if not path.is_file():
        if manifest:
            raise FileNotFoundError(f"manifest {manifest} not found")
        return None, {}
    return str(path), {entry.name: entry.samples for entry in ShardManifest.read(path).shards}


def expand_shard_args(patterns: list[str]) -> list[str]:
    """Shard URLs from command-line arguments: brace patterns expanded, local globs matched (sorted)."""
    urls = []
    for pattern in patterns:
        for url in wds.shardlists.expand_urls(pattern):
            if glob.has_magic(url) and "://" not in url:
                matched = sorted(glob.glob(url))
                if not matched:
                    raise FileNotFoundError(f"{url}: no shard matches")
                urls.extend(matched)
            else:
                urls.append(url)
    return urls


def inspect_shards(urls: list[str], manifest: str | None = None, seconds: float | None = None) -> Report:
    """Every sample of ``urls`` probed; with ``seconds``, video or audio shorter than that is bad (``too_short``)."""
    report = Report()
    manifest_path, expected = _manifest_counts(urls, manifest)
    for url in urls:
        def unreadable(exn: Exception, url: str = url) -> bool:
            report.bad.append(BadMember(url, "unreadable", repr(exn)))
            return True

        count = 0
        for sample in wds.tarfile_to_samples(handler=unreadable)(iter([{"url": url}])):
            count += 1
            report.members.append((f"{url}:{sample['__key__']}", member_set(sample)))
            for member in unknown_members(sample):
                report.bad.append(BadMember(f"{url}:{sample['__key__']}.{member}", "unexpected_member",
                                            "not a member the stream reads; never decoded"))
            try:
                info = probe_sample(sample)
            except CorruptSample as err:
                report.bad.append(BadMember(err.where, err.reason, err.detail))
                continue
            report.seconds += info.seconds or 0.0
            timed = {"video": info.seconds if info.fps is not None else None, "audio": info.audio_seconds}
            timed = {m: t for m, t in timed.items() if t is not None}
            if seconds is not None and timed and min(timed.values()) < seconds:
                report.bad.append(BadMember(f"{url}:{sample['__key__']}", "too_short", ", ".join(
                    f"{m} {t:.2f} s" for m, t in timed.items()) + f"; training decodes {seconds:g} s"))
            else:
                report.good += 1
                report.modalities.append((f"{url}:{sample['__key__']}", "+".join(info.modalities)))
        report.samples_per_shard[url] = count
        name = shard_name(url)
        if manifest_path and expected.get(name) != count:
            report.bad.append(BadMember(url, "manifest_mismatch",
                                        f"{count} samples, {manifest_path} lists {expected.get(name)}"))
    return report


def main(argv: list[str] | None = None) -> int:
    a = inspect_parser().parse_args(argv)   # torch-free, for `cmg shards inspect --help`
    try:
        urls = expand_shard_args(a.urls)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = inspect_shards(urls, a.manifest, a.seconds)
    print(f"shards   {len(urls)}")
    print(f"samples  {report.samples} ({report.good} good, {report.samples - report.good} bad)")
    print(f"seconds  {report.seconds:.1f}")
    for url, count in report.samples_per_shard.items():
        print(f"  {url}: {count} samples")
    kinds = report.modality_counts()
    print(f"modalities  {', '.join(f'{kind}: {n} samples' for kind, n in kinds.items()) or 'none'}")
    counts = report.member_counts()
    print(f"members  {', '.join(f'{members}: {n} samples' for members, n in counts.items()) or 'none'}")
    if a.members:
        given = dict(report.modalities)
        for where, members in report.members:
            print(f"  {where}: {members} ({given.get(where, 'bad')})")
    print(f"bad members: {len(report.bad) or 'none'}")
    for bad in report.bad:
        print(f"  {bad}")
    return 1 if report.bad else 0


if __name__ == "__main__":
    sys.exit(main())
