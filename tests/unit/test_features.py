"""Feature-cache path: .npy members, feature batches, the public AVE h5/npz layout, and the
extract -> feature-shard -> reader round trip (features equal the on-the-fly ones). Extracting over two ranks is
checked in tests/dist/test_features_dist.py."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402
import yaml  # noqa: E402
from feature_utils import (  # noqa: E402
    CLIP_URLS, DECODE, FEATURE_URLS, SECONDS, TINY_YAML,
)

from shards.extract import extract  # noqa: E402
from shards.synth import SynthConfig, synthesise  # noqa: E402
from shards.write import write_shards  # noqa: E402
from trainer.backbones import FrozenBackbones, load_backbones_config  # noqa: E402
from trainer.configs.load import ConfigError, load_config  # noqa: E402
from trainer.data.collate import COUNTER_NAMES
from trainer.data.stream import ClipStream, feature_batches
from trainer.data.media_decoders import CorruptSample
from trainer.configs.data import DataConfig
from trainer.data.decode import ClipLabels  # noqa: E402
from trainer.data.manifest import FEATURE_FORMAT, ShardManifest  # noqa: E402
from trainer.data.features import (  # noqa: E402
    FeatureClip, FeatureError, FeatureLayout, PublicFeatureConfig, PublicFeatureDataset,
    collate_feature_clips, decode_feature_sample, decode_npy, encode_npy, feature_layout,
)


LAYOUT = FeatureLayout(seconds=2, dims={"video": (4, 8), "audio": (3,)})


# --- .npy members and feature batches ---

def test_npy_round_trip_and_pickle_refused():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(decode_npy(encode_npy(a), "k.video.npy"), a)
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)     # needs unpickling to load
    with pytest.raises(CorruptSample, match=r"shard-3.tar:clip9.video.npy: bad_feature: .*Object arrays cannot"):
        decode_npy(buf.getvalue(), "shard-3.tar:clip9.video.npy")
    with pytest.raises(CorruptSample, match="clip9.audio.npy: bad_feature: not a numeric .npy"):
        decode_npy(b"\x93NUMPY garbage", "clip9.audio.npy")
    buf = io.BytesIO()
    np.savez(buf, video=a)                                                  # an archive, not one array
    with pytest.raises(CorruptSample, match=r"c.npy: bad_feature: .*magic string is not correct"):
        decode_npy(buf.getvalue(), "c.npy")
    with pytest.raises(CorruptSample, match="c.npy: bad_feature: expected a numeric array, got dtype bool"):
        decode_npy(encode_npy(np.ones(3, bool)), "c.npy")


def _feature_sample(**members) -> dict:
    sample = {"__key__": "c1", "__url__": "f-000001.tar", "json": b'{"clip_label": 1, "video_labels": [1, -1], '
              b'"audio_labels": [-1, 1]}', "txt": b" a dog barks \n",
              "video.npy": encode_npy(np.arange(2 * 4 * 8, dtype=np.float16).reshape(2, 4, 8)),
              "audio.npy": encode_npy(np.ones((2, 3), np.float32))}
    return {k: v for k, v in (sample | members).items() if v is not None}


def test_feature_sample_decodes_against_the_manifest_layout():
    clip = decode_feature_sample(_feature_sample(**{"text.npy": encode_npy(np.zeros((5, 8), np.float32))}), LAYOUT)
    assert clip.key == "c1" and clip.caption == "a dog barks" and clip.ignored_members == 0  # text.npy: unread
    assert clip.features["video"].dtype == np.float32 and clip.features["video"][1, 3, 7] == 2 * 4 * 8 - 1
    assert clip.labels.video.tolist() == [1, -1] and clip.labels.audio.tolist() == [-1, 1] and clip.labels.clip == 1
    assert decode_feature_sample(_feature_sample(pyd=b"\x80\x04"), LAYOUT).ignored_members == 1
    bare = decode_feature_sample(_feature_sample(json=None, txt=None), LAYOUT)   # an unlabelled, uncaptioned clip
    assert bare.caption is None and not bare.labels.labelled and bare.url == "f-000001.tar"
    assert bare.labels.video.tolist() == bare.labels.audio.tolist() == [-1, -1] and bare.labels.clip == -1
    cases = {   # member -> (replacement, reason, message)
        "audio.npy": (None, "missing_member", r"f-000001.tar:c1.audio.npy: missing_member"),
        "txt": (b"", "empty_member", r"c1.txt: empty_member"),
        "json": (b'{"clip_label": 1, "video_labels": [1], "audio_labels": [1]}', "bad_json", "labels cover 1 s"),
    }
    cases["video.npy"] = (encode_npy(np.zeros((2, 4, 9), np.float32)), "bad_feature",
                          r"c1.video.npy: bad_feature: shape \(2, 4, 9\), the manifest says \(2, 4, 8\)")
    for member, (value, reason, message) in cases.items():
        with pytest.raises(CorruptSample, match=message) as info:
            decode_feature_sample(_feature_sample(**{member: value}), LAYOUT)
        assert info.value.reason == reason
    audio_3s = _feature_sample(**{"audio.npy": encode_npy(np.ones((3, 3), np.float32))})
    with pytest.raises(CorruptSample, match=r"c1.audio.npy: bad_feature: shape \(3, 3\), the manifest says \(2, 3\)"):
        decode_feature_sample(audio_3s, LAYOUT)
    text_layout = FeatureLayout(seconds=2, dims={"text": (8,)})
    no_tokens = _feature_sample(**{"text.npy": encode_npy(np.zeros((0, 8), np.float32))})
    with pytest.raises(CorruptSample, match=r"c1.text.npy: bad_feature: shape \(0, 8\), the manifest says \(l>=1, 8\)"):
        decode_feature_sample(no_tokens, text_layout)


def test_feature_layout_comes_from_an_extract_manifest():
    manifest = {"format": FEATURE_FORMAT, "feature_shapes": {"video": [16, 32], "audio": [32], "text": [32]},
                "decode": {"seconds": 10}, "shards": []}

    def read(contents: dict, where: str = "m.json") -> ShardManifest:
        return dataclasses.replace(ShardManifest.from_json(contents, where), path=Path(where))

    layout = feature_layout(read(manifest), ["audio", "video"])
    assert layout == FeatureLayout(10, {"audio": (32,), "video": (16, 32)})
    with pytest.raises(ValueError, match=r"manifest clips/manifest.json has format 'cmg-trainer-shards/1', not "
                                         r"'cmg-trainer-features/1'"):
        feature_layout(read({"shards": []}, "clips/manifest.json"), ["audio"])   # no format: clip shards
    with pytest.raises(ValueError, match=r"feature_modalities asks for \['text'\].* hold only \['audio'\]"):
        feature_layout(read(manifest | {"feature_shapes": {"audio": [32]}}), ["audio", "text"])
    with pytest.raises(ValueError, match="m.json: expected feature_shapes"):
        feature_layout(read({"format": FEATURE_FORMAT, "feature_shapes": {"audio": [32]}, "shards": []}), ["audio"])


def test_collate_pads_text_to_the_longest_caption():
    labels = ClipLabels(np.array([0, -1]), np.array([0, 0]), 0, 3)
    clips = [FeatureClip("a", {"audio": np.ones((2, 3), np.float32), "text": np.full((2, 4), 1.0, np.float32)},
                         "x", labels),
             FeatureClip("b", {"audio": np.zeros((2, 3), np.float32), "text": np.full((3, 4), 2.0, np.float32)},
                         "y", labels)]
    batch = collate_feature_clips(clips, [False, True])
    assert batch["audio"].shape == (2, 2, 3) and batch["text"].shape == (2, 3, 4)
    assert batch["text_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["text"][0, 2].abs().sum() == 0 and batch["text"][1, 2, 0] == 2.0
    assert batch["video_labels"].tolist() == [[0, -1], [0, -1]] and batch["clip_label"].tolist() == [0, 0]
    assert batch["is_pad"].tolist() == [False, True] and batch["caption"] == ["x", "y"]


# --- the public AVE / VGGSound-AVEL layout ---

def _public_arrays(n=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    video = rng.standard_normal((n, 10, 7, 7, 512)).astype(np.float32)
    audio = rng.standard_normal((n, 10, 128)).astype(np.float32)
    per_second = rng.integers(-1, classes, size=(n, 10))
    per_second[:, 0] = np.arange(n) % classes            # every clip has at least one event second
    labels = np.zeros((n, 10, classes + 1), np.float32)  # one-hot, background in the last column
    labels[np.arange(n)[:, None], np.arange(10)[None], np.where(per_second < 0, classes, per_second)] = 1
    return video, audio, labels, per_second


def test_public_h5_layout_reader(tmp_path):
    video, audio, labels, per_second = _public_arrays()
    for name, array in (("visual_feature.h5", video), ("audio_feature.h5", audio), ("labels.h5", labels)):
        with h5py.File(tmp_path / name, "w") as f:
            f["avadataset"] = array
    with h5py.File(tmp_path / "test_order.h5", "w") as f:
        f["order"] = np.array([4, 1])
    ds = PublicFeatureDataset(PublicFeatureConfig(root=str(tmp_path), split="test"))
    assert len(ds) == 2
    clip = ds[0]
    assert clip.key == "test:4"
    assert np.array_equal(clip.features["video"], video[4].reshape(10, 49, 512))   # (t h w d) -> (t p d)
    assert np.array_equal(clip.features["video"][:, 7 * 2 + 3], video[4][:, 2, 3])  # patch p = row * 7 + col
    assert np.array_equal(clip.features["audio"], audio[4])
    assert clip.labels.video.tolist() == per_second[4].tolist() == clip.labels.audio.tolist()
    events = per_second[4][per_second[4] >= 0]
    assert clip.labels.clip == np.bincount(events).argmax()
    batch = collate_feature_clips([ds[0], ds[1]])
    assert batch["video"].shape == (2, 10, 49, 512) and batch["audio"].shape == (2, 10, 128)
    assert batch["caption"] == [None, None] and batch["labelled"].tolist() == [True, True]
    with pytest.raises(FeatureError, match="val_order.h5: file not found"):
        PublicFeatureDataset(PublicFeatureConfig(root=str(tmp_path), split="val"))
    with h5py.File(tmp_path / "bad_order.h5", "w") as f:
        f["order"] = np.array([7])
    with pytest.raises(FeatureError, match=r"indices outside 0..4"):
        PublicFeatureDataset(PublicFeatureConfig(root=str(tmp_path), split="bad"))


def test_public_npz_layout_reader(tmp_path):
    video, audio, labels, per_second = _public_arrays(n=3, seed=1)
    np.savez(tmp_path / "feats.npz", video=video, audio=audio, labels=labels, order=np.array([2, 0]))
    ds = PublicFeatureDataset(PublicFeatureConfig(root=str(tmp_path / "feats.npz"), split="train"))
    assert [ds[i].key for i in range(len(ds))] == ["train:2", "train:0"]
    assert np.array_equal(ds[1].features["audio"], audio[0])
    assert ds[0].labels.video.tolist() == per_second[2].tolist()
    np.savez(tmp_path / "short.npz", video=video, audio=audio)
    with pytest.raises(FeatureError, match=r"short.npz: missing arrays \['labels'\]"):
        PublicFeatureDataset(PublicFeatureConfig(root=str(tmp_path / "short.npz")))


# --- extract -> feature shards -> the training stream (fixtures: tests/support/feature_utils.py) ---

def _features_by_key(batches: list[dict]) -> dict[str, dict]:
    """Per delivered (non-pad) clip: its features (text without padding), caption and labels."""
    out = {}
    for batch in batches:
        for i, key in enumerate(batch["key"]):
            if not batch["is_pad"][i]:
                out[key] = {"video": batch["video"][i], "audio": batch["audio"][i],
                            "text": batch["text"][i][batch["text_mask"][i]], "caption": batch["caption"][i],
                            "video_labels": batch["video_labels"][i], "audio_labels": batch["audio_labels"][i],
                            "clip_label": batch["clip_label"][i]}
    return out


def _assert_same_features(got: dict, want: dict) -> None:
    for modality in ("video", "audio", "text"):
        torch.testing.assert_close(got[modality], want[modality], rtol=0, atol=1e-5)
    assert got["caption"] == want["caption"] and got["clip_label"] == want["clip_label"]
    for labels in ("video_labels", "audio_labels"):
        assert torch.equal(got[labels], want[labels])


@pytest.mark.slow
def test_extract_then_feature_stream_equals_on_the_fly_features(clip_shards, feature_shards):
    manifest = json.loads((feature_shards / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [2, 2, 1] and manifest["total"] == 5
    assert manifest["format"] == FEATURE_FORMAT and manifest["decode"]["seconds"] == SECONDS
    assert manifest["feature_shapes"] == {"video": [16, 32], "audio": [32], "text": [32]}
    assert manifest["backbones"]["audio"]["model_class"] == "ASTModel"
    # the same stream settings over clip shards (+ backbones) and over their feature shards: feature shard i
    # holds clip shard i's clips in order, so shard shuffling, 2 workers and the sample shuffle buffer pick
    # the same clips in the same order, and the feature batches match the on-the-fly ones clip by clip
    clips_cfg = DataConfig(urls=str(clip_shards / CLIP_URLS), batch_size=2, num_workers=2, shuffle_buffer=3, seed=4,
                           decode=DECODE)
    features_cfg = dataclasses.replace(clips_cfg, urls=str(feature_shards / FEATURE_URLS), kind="features")
    backbones = FrozenBackbones(load_backbones_config(TINY_YAML))
    on_the_fly = list(feature_batches(clips_cfg, backbones, rank=0, world_size=1))
    cached = list(feature_batches(features_cfg, rank=0, world_size=1))
    assert len(on_the_fly) == len(cached) == 3   # worker 0 reads 2 shards (3 or 4 clips): batches 0 and 2
    for a, b in zip(on_the_fly, cached):
        assert a["key"] == b["key"] and torch.equal(a["is_pad"], b["is_pad"])
        assert set(a) == set(b) == {"key", "url", "video", "audio", "text", "text_mask", "caption", "video_labels",
                                    "audio_labels", "clip_label", "labelled", "is_pad", "skipped"}
        assert b["video"].shape == (2, SECONDS, 16, 32) and b["audio"].shape == (2, SECONDS, 32)
        assert b["text"].dtype == torch.float32 and b["text_mask"].dtype == torch.bool
    expected, got = _features_by_key(on_the_fly), _features_by_key(cached)
    assert sorted(got) == sorted(expected) and len(got) == 5
    for key in expected:
        _assert_same_features(got[key], expected[key])
    # and the feature shards hold what the backbones give for the clip stream's own batches, unshuffled
    plain = ClipStream(dataclasses.replace(clips_cfg, num_workers=0, shuffle_buffer=0), rank=0, world_size=1)
    direct = {k: v for b in plain for k, v in _features_by_key([b | backbones.encode(b)]).items()}
    for key in expected:
        _assert_same_features(got[key], direct[key])



@pytest.mark.slow
def test_feature_stream_reads_only_the_configured_modalities(feature_shards):
    cfg = DataConfig(urls=str(feature_shards / FEATURE_URLS), kind="features", feature_modalities=["audio"],
                     batch_size=5, num_workers=0, shuffle_buffer=0, shuffle_shards=False)
    stream = ClipStream(cfg, rank=0, world_size=1)
    (batch,) = list(stream)
    assert set(batch) == {"key", "url", "audio", "caption", "video_labels", "audio_labels", "clip_label", "labelled",
                          "is_pad", "skipped"}
    assert batch["audio"].shape == (5, SECONDS, 32) and not batch["is_pad"].any()
    assert sum(stream.skip_totals().values()) == 0     # unread video.npy / text.npy are not "ignored" members


def test_kind_and_modalities_are_validated(clip_shards, feature_shards):
    with pytest.raises(ConfigError,
                       match=r"config key 'kind' .*'frames' is not one of \['clips', 'features', 'memory'\]"):
        load_config(DataConfig, overrides=["kind=frames"])
    features = DataConfig(urls=str(feature_shards / FEATURE_URLS), kind="features", num_workers=0)
    with pytest.raises(ValueError, match=r"DataConfig.kind: 'frames' is not one of \['clips', 'features', 'memory'\]"):
        ClipStream(dataclasses.replace(features, kind="frames"), rank=0, world_size=1)
    # in-memory tensors come from a program (trainer.loop.train), never from a job config
    with pytest.raises(ValueError, match="kind 'memory' is for programs that pass feature tensors"):
        dataclasses.replace(features, kind="memory").validate()
    with pytest.raises(ValueError, match=r"DataConfig.feature_modalities: \['audio', 'depth'\] must be distinct"):
        ClipStream(dataclasses.replace(features, feature_modalities=["audio", "depth"]), rank=0, world_size=1)
    with pytest.raises(ValueError, match=r"DataConfig.feature_modalities: \[\] must be distinct"):
        ClipStream(dataclasses.replace(features, feature_modalities=[]), rank=0, world_size=1)
    # the manifest tells the kinds apart, in both directions
    with pytest.raises(ValueError, match=r"describes feature shards .* set DataConfig.kind='features'"):
        ClipStream(dataclasses.replace(features, kind="clips"), rank=0, world_size=1)
    with pytest.raises(ValueError, match=rf"{clip_shards}/manifest.json has format 'cmg-trainer-shards/1', not"):
        ClipStream(dataclasses.replace(features, urls=str(clip_shards / CLIP_URLS)), rank=0, world_size=1)
    # resampled feature streams still read the manifest: it has the feature shapes
    with pytest.raises(ValueError, match="set DataConfig.manifest"):
        ClipStream(dataclasses.replace(features, urls=f"pipe:cat {feature_shards}/{FEATURE_URLS}", resampled=True,
                                       epoch_batches=1), rank=0, world_size=1)
    with pytest.raises(ValueError, match="pass backbones exactly for kind 'clips'"):
        feature_batches(dataclasses.replace(features, urls=str(clip_shards / CLIP_URLS), kind="clips"))
    with pytest.raises(ValueError, match="pass backbones exactly for kind 'clips'"):
        feature_batches(features, FrozenBackbones(load_backbones_config(TINY_YAML)))


# --- unlabelled clips: no json, and captions only where text is encoded ---

@pytest.fixture(scope="module")
def unlabelled_clip_shards(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    """4 clips without json in 2 shards; the second also has a caption: (shard dir, key -> caption or None)."""
    root = tmp_path_factory.mktemp("unlabelled")
    keys = synthesise(SynthConfig(num_clips=4, classes=3, seconds=SECONDS, size=32, seed=5, unlabelled=True),
                      root / "src", progress=False)
    captions = {key: "a red square" if i == 1 else None for i, key in enumerate(keys)}
    (root / "src" / f"{keys[1]}.txt").write_text(captions[keys[1]] + "\n")
    write_shards(root / "src", str(root / "shards" / "train-%06d.tar"), max_count=2, progress=False)
    return root / "shards", captions


UNLABELLED_URLS = "train-{000000..000001}.tar"


def test_extract_writes_unlabelled_clips_without_json(unlabelled_clip_shards, tmp_path):
    shards, captions = unlabelled_clip_shards
    av_only = yaml.safe_load(Path(TINY_YAML).read_text())
    del av_only["text"]
    (tmp_path / "av.yaml").write_text(yaml.safe_dump(av_only))
    extract(str(shards / UNLABELLED_URLS), str(tmp_path / "av.yaml"), str(tmp_path / "f-%06d.tar"), batch_size=2,
            num_workers=0, decode=DECODE, rank=0, world_size=1, progress=False)
    assert json.loads((tmp_path / "manifest.json").read_text())["total"] == 4
    members = {raw["__key__"]: sorted(m for m in raw if not m.startswith("__"))
               for raw in wds.tarfile_to_samples()(iter([{"url": str(tmp_path / f"f-{i:06d}.tar")} for i in (0, 1)]))}
    assert members == {key: sorted(["audio.npy", "video.npy"] + (["txt"] if caption else []))
                       for key, caption in captions.items()}
    cfg = DataConfig(urls=str(tmp_path / "f-{000000..000001}.tar"), kind="features", feature_modalities=["audio"],
                     batch_size=4, num_workers=0, shuffle_buffer=0, shuffle_shards=False)
    (batch,) = list(ClipStream(cfg, rank=0, world_size=1))
    assert batch["key"] == list(captions) and batch["caption"] == list(captions.values())
    assert not batch["labelled"].any() and (batch["clip_label"] == -1).all() and (batch["video_labels"] == -1).all()


def test_captions_are_required_only_where_text_is_encoded(unlabelled_clip_shards):
    shards, captions = unlabelled_clip_shards
    cfg = DataConfig(urls=str(shards / UNLABELLED_URLS), batch_size=1, num_workers=0, shuffle_buffer=0,
                     shuffle_shards=False, decode=DECODE)
    tiny = load_backbones_config(TINY_YAML)
    with_text = feature_batches(cfg, FrozenBackbones(tiny), rank=0, world_size=1)
    batches = list(with_text)
    assert [k for b in batches for k, pad in zip(b["key"], b["is_pad"].tolist()) if not pad] == [
        key for key, caption in captions.items() if caption]
    assert batches[0]["text"].shape[0] == 1 and not batches[0]["labelled"].any()
    assert with_text.skip_totals() == {name: 3 if name == "missing_member" else 0 for name in COUNTER_NAMES}
    audio_video = feature_batches(cfg, FrozenBackbones(tiny.only(["audio", "video"])), rank=0, world_size=1)
    batches = list(audio_video)
    assert [k for b in batches for k in b["key"]] == list(captions) and "text" not in batches[0]
    assert sum(audio_video.skip_totals().values()) == 0
