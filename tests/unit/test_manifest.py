"""The shard manifest (trainer/data/manifest.py): one reader and writer for every program's manifest.json."""

from __future__ import annotations

import json
import os

import pytest

from trainer.data.manifest import (
    CLIP_FORMAT, FEATURE_FORMAT, MANIFEST_NAME, ManifestError, ShardEntry, ShardManifest, locate,
)

# what shards.write and shards.extract wrote before the manifest had a class (the layout is unchanged)
CLIP_JSON = {"format": CLIP_FORMAT, "source": "clips", "pattern": "train-%06d.tar",
             "shards": [{"name": "train-000000.tar", "samples": 4, "bytes": 1000},
                        {"name": "train-000001.tar", "samples": 2, "bytes": 500}],
             "total": 6, "seconds": 12.0, "skipped": [], "modalities": {"video+audio": 6}, "labelled": 6}
FEATURE_JSON = {"format": FEATURE_FORMAT, "shards": [{"name": "f-000000.tar", "samples": 3, "source": "a.tar"}],
                "total": 3, "skipped": 0, "backbones": {"audio": {"family": "ast"}},
                "feature_shapes": {"audio": [32], "video": [16, 32]}, "decode": {"seconds": 10}, "dtype": "float16"}


@pytest.mark.parametrize("contents", [CLIP_JSON, FEATURE_JSON])
def test_a_manifest_on_disk_reads_typed_and_writes_back_the_same_json(tmp_path, contents):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(contents, indent=2))
    manifest = ShardManifest.read(tmp_path)
    assert manifest.path == tmp_path / MANIFEST_NAME and manifest.total == contents["total"]
    assert [(s.name, s.samples) for s in manifest.shards] == [(s["name"], s["samples"]) for s in contents["shards"]]
    assert manifest.is_features == (contents["format"] == FEATURE_FORMAT)
    assert manifest.to_json() == contents
    out = tmp_path / "again"
    out.mkdir()
    manifest.write(out)
    assert json.loads((out / MANIFEST_NAME).read_text()) == contents
    assert ShardManifest.read(out / MANIFEST_NAME) == manifest


def test_counts_follow_the_urls_and_name_what_is_missing(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(CLIP_JSON))
    urls = [f"{tmp_path}/train-000001.tar", f"pipe:cat {tmp_path}/train-000000.tar"]
    manifest = ShardManifest.of_shards(urls[:1])
    assert manifest.counts(urls) == [2, 4]
    with pytest.raises(ManifestError, match=rf"manifest {tmp_path}/manifest.json lists no sample count for "
                                            r"\['.*train-000002.tar'\] \(1 shards\)"):
        manifest.counts([f"{tmp_path}/train-000002.tar"])
    with pytest.raises(ManifestError, match="set DataConfig.manifest"):
        locate(["pipe:curl -s http://host/train-000000.tar"])


def test_a_hand_written_manifest_is_clip_shards_with_the_sum_as_total(tmp_path):
    manifest = ShardManifest.from_json({"shards": [{"name": "a.tar", "samples": 3}, {"name": "b.tar", "samples": 1}]},
                                       "m.json")
    assert manifest.format == CLIP_FORMAT and manifest.total == 4 and not manifest.is_features


@pytest.mark.parametrize(("contents", "error"), [
    ([], "expected a JSON object, got list"),
    ({}, "'shards' must be"),
    ({"shards": [{"name": "a.tar"}]}, "'shards' must be"),
    ({"shards": [{"name": "a.tar", "samples": -1}]}, "'shards' must be"),
    ({"shards": [], "total": "6"}, "'total' must be an integer"),
    ({"shards": [], "format": "cmg-trainer-features/2"}, "format 'cmg-trainer-features/2' is not one this version"),
    ({"shards": [], "feature_shapes": {"audio": "32"}}, "'feature_shapes' must be"),
    ({"shards": [], "decode": 10}, "'decode' must be an object"),
])
def test_a_bad_manifest_is_refused_naming_the_file_and_the_key(tmp_path, contents, error):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(contents))
    with pytest.raises(ManifestError, match=rf"manifest {tmp_path}/manifest.json: .*{error}"):
        ShardManifest.read(tmp_path)


def test_a_missing_or_unparsable_manifest_is_named(tmp_path):
    with pytest.raises(ManifestError, match=rf"manifest {tmp_path}/manifest.json not found"):
        ShardManifest.read(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"shards": [')
    with pytest.raises(ManifestError, match=rf"manifest {tmp_path}/manifest.json: not valid JSON"):
        ShardManifest.read(tmp_path)


def test_write_is_atomic_a_failed_write_leaves_the_old_manifest_and_no_partial_file(tmp_path, monkeypatch):
    old = ShardManifest(CLIP_FORMAT, [ShardEntry("a.tar", 1)], 1)
    old.write(tmp_path)
    before = (tmp_path / MANIFEST_NAME).read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        ShardManifest(CLIP_FORMAT, [ShardEntry("a.tar", 1), ShardEntry("b.tar", 2)], 3).write(tmp_path)
    assert (tmp_path / MANIFEST_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME]


def test_the_digest_is_the_sha256_of_the_file(tmp_path):
    import hashlib

    written = ShardManifest(CLIP_FORMAT, [ShardEntry("a.tar", 1, {"bytes": 10})], 1)
    path = written.write(tmp_path)
    assert written.digest == hashlib.sha256(path.read_bytes()).hexdigest() == ShardManifest.read(path).digest
