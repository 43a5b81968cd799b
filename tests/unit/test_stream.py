"""The streaming pipeline in one process: decoders, corrupt samples, batch format, epoch plan, resume --
for clip shards and (DataConfig.kind="features") feature shards."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import os
import pickle
import signal
import subprocess
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from decord import AudioReader

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shards import inspect as shard_inspect  # noqa: E402
from shards.media import encode_mp4, encode_wav  # noqa: E402
from shards.synth import SynthConfig, synthesise  # noqa: E402
from shards.write import write_shards  # noqa: E402
from trainer.data.collate import COUNTER_NAMES
from trainer.data.stream import ClipStream, batches_per_rank
from trainer.data.media_decoders import CorruptSample
from trainer.data.decode import decode_sample
from trainer.configs.data import DataConfig, DecodeConfig
from trainer.data import stream as stream_module  # noqa: E402
from trainer.data.batch import Batch  # noqa: E402
from trainer.data.media_decoders import decode_audio  # noqa: E402
from trainer.data.features import encode_npy  # noqa: E402
from trainer.data.manifest import FEATURE_FORMAT  # noqa: E402

SECONDS, SIZE, SR = 2, 32, 16000
DECODE = DecodeConfig(seconds=SECONDS, frames_per_segment=2, frame_size=SIZE, sample_rate=SR)


class _OpensAFileWhenUnpickled:
    """Pickles to ``open(path, "w")``: if anything ever unpickled a member, ``path`` would exist."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _members(src: Path, key: str) -> dict[str, bytes]:
    return {"__key__": key, **{m: (src / f"{key}.{m}").read_bytes() for m in ("mp4", "json", "txt")}}


def _pack(path: Path, samples: list[dict]) -> None:
    with wds.TarWriter(str(path), encoder=False) as sink:
        for sample in samples:
            sink.write(sample)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("clips")
    cfg = SynthConfig(num_clips=10, classes=3, seconds=SECONDS, size=SIZE, seed=7)
    return out, synthesise(cfg, out, progress=False)


@pytest.fixture(scope="module")
def good_shards(clips, tmp_path_factory) -> tuple[str, list[str]]:
    src, keys = clips
    out = tmp_path_factory.mktemp("good")
    write_shards(src, f"{out}/train-%06d.tar", max_count=3, progress=False)  # 3 + 3 + 3 + 1 samples
    return f"{out}/train-{{000000..000003}}.tar", keys


@pytest.fixture(scope="module")
def partly_labelled_shards(clips, tmp_path_factory) -> dict:
    """Clips 0-3 as bare mp4s, 4-5 mp4 + txt (no labels), 6-9 with every member; 2 shards of 5."""
    src, keys = clips
    out = tmp_path_factory.mktemp("partly")
    (out / "src").mkdir()
    members = {key: ("mp4",) if i < 4 else ("mp4", "txt") if i < 6 else ("mp4", "json", "txt")
               for i, key in enumerate(keys)}
    for key, suffixes in members.items():
        for suffix in suffixes:
            (out / "src" / f"{key}.{suffix}").write_bytes((src / f"{key}.{suffix}").read_bytes())
    write_shards(out / "src", f"{out}/train-%06d.tar", max_count=5, progress=False)
    return {"urls": f"{out}/train-{{000000..000001}}.tar", "members": members}


@pytest.fixture(scope="module")
def bad_shards(clips, tmp_path_factory) -> dict:
    """Shard 0: good, truncated mp4, good + .pyd member, unparsable json, a .pyd-only sample, good.
    Shard 1: three good samples. Both listed with their raw sample counts in the manifest."""
    src, keys = clips
    out = tmp_path_factory.mktemp("bad")
    marker = out / "UNPICKLED"
    trap = pickle.dumps(_OpensAFileWhenUnpickled(str(marker)))
    truncated = _members(src, keys[1]) | {"__key__": "truncated"}
    truncated["mp4"] = truncated["mp4"][: len(truncated["mp4"]) // 2]
    bad_json = _members(src, keys[3]) | {"__key__": "badjson", "json": b'{"clip_label": 1, "video_labels": [0,'}
    _pack(out / "train-000000.tar", [
        _members(src, keys[0]), truncated, _members(src, keys[2]) | {"pyd": trap}, bad_json,
        {"__key__": "onlypyd", "pyd": trap}, _members(src, keys[4]),
    ])
    _pack(out / "train-000001.tar", [_members(src, k) for k in keys[5:8]])
    manifest = {"shards": [{"name": "train-000000.tar", "samples": 6}, {"name": "train-000001.tar", "samples": 3}]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return {
        "urls": f"{out}/train-{{000000..000001}}.tar",
        "good": [keys[0], keys[2], keys[4], *keys[5:8]],
        "marker": marker,
        "skips": {"bad_video": 1, "bad_json": 1, "missing_member": 1, "ignored_member": 1},
        "kind": "clips",
    }


FEATURE_SHAPES = {"video": [3, 4], "audio": [4], "text": [4]}


def _feature_members(src: Path, key: str, index: int) -> dict[str, bytes]:
    """Feature-shard sample of clip ``key``: its json and txt, and features whose values encode ``index``
    (video all ``index``; audio ``arange + 100 index``; text ``1 + index mod 3`` tokens of ``-index``)."""
    return {
        "__key__": key, "json": (src / f"{key}.json").read_bytes(), "txt": (src / f"{key}.txt").read_bytes(),
        "video.npy": encode_npy(np.full((SECONDS, *FEATURE_SHAPES["video"]), index, np.float16)),
        "audio.npy": encode_npy(np.arange(SECONDS * 4, dtype=np.float32).reshape(SECONDS, 4) + 100 * index),
        "text.npy": encode_npy(np.full((1 + index % 3, 4), -index, np.float32)),
    }


def _feature_manifest(counts: dict[str, int]) -> str:
    """What ``shards.extract`` writes, as far as the stream reads it."""
    shards = [{"name": name, "samples": count} for name, count in counts.items()]
    return json.dumps({"format": FEATURE_FORMAT, "feature_shapes": FEATURE_SHAPES,
                       "decode": {"seconds": SECONDS}, "shards": shards})


@pytest.fixture(scope="module")
def bad_feature_shards(clips, tmp_path_factory) -> dict:
    """Shard 0: good, truncated audio.npy, good + .pyd member, unparsable json, a .pyd-only sample, good,
    text.npy holding a pickled object array. Shard 1: three good samples. The manifest counts them all."""
    src, keys = clips
    out = tmp_path_factory.mktemp("badfeat")
    marker = out / "UNPICKLED"
    trap = pickle.dumps(_OpensAFileWhenUnpickled(str(marker)))
    truncated = _feature_members(src, keys[1], 1) | {"__key__": "truncated"}
    truncated["audio.npy"] = truncated["audio.npy"][: len(truncated["audio.npy"]) // 2]
    bad_json = _feature_members(src, keys[3], 3) | {"__key__": "badjson", "json": b'{"clip_label": 1, "video_l'}
    buf = io.BytesIO()
    np.save(buf, np.array([_OpensAFileWhenUnpickled(str(marker))], dtype=object), allow_pickle=True)
    pickled = _feature_members(src, keys[8], 8) | {"__key__": "pickled", "text.npy": buf.getvalue()}
    _pack(out / "feat-000000.tar", [
        _feature_members(src, keys[0], 0), truncated, _feature_members(src, keys[2], 2) | {"pyd": trap}, bad_json,
        {"__key__": "onlypyd", "pyd": trap}, _feature_members(src, keys[4], 4), pickled,
    ])
    _pack(out / "feat-000001.tar", [_feature_members(src, k, i) for i, k in enumerate(keys[5:8], start=5)])
    (out / "manifest.json").write_text(_feature_manifest({"feat-000000.tar": 7, "feat-000001.tar": 3}))
    return {
        "urls": f"{out}/feat-{{000000..000001}}.tar",
        "good": [keys[0], keys[2], keys[4], *keys[5:8]],
        "index": {k: i for i, k in enumerate(keys)},
        "marker": marker,
        "skips": {"bad_feature": 2, "bad_json": 1, "missing_member": 1, "ignored_member": 1},
        "kind": "features",
    }


@pytest.fixture(params=["clips", "features"])
def bad_shards_of_each_kind(request, bad_shards, bad_feature_shards) -> dict:
    return {"clips": bad_shards, "features": bad_feature_shards}[request.param]


def _epoch(stream: ClipStream, stop: int | None = None) -> list[dict]:
    out = []
    for batch in stream:
        out.append(batch)
        if stop is not None and len(out) == stop:
            break
    return out


def assert_is_batch(batch: dict, kind: str) -> None:
    """``batch`` is a ``Batch`` of a shard stream: only its keys, each value of the type it declares, b rows."""
    declared = typing.get_type_hints(Batch)
    assert set(batch) <= set(declared), f"keys outside Batch: {sorted(set(batch) - set(declared))}"
    annotations = {"caption", "video_labels", "audio_labels", "clip_label", "labelled", "key", "url", "is_pad",
                   "skipped"}
    assert annotations <= set(batch)
    media = {"video", "audio"} | ({"text", "text_mask"} if kind == "features" else set())
    assert media <= set(batch)
    rows = len(batch["key"])
    for name, value in batch.items():
        assert isinstance(value, typing.get_origin(declared[name]) or declared[name]), name
        if name != "skipped":
            assert len(value) == rows, name


def test_every_batch_of_either_kind_is_a_typed_batch(bad_shards_of_each_kind):
    shards = bad_shards_of_each_kind
    cfg = DataConfig(urls=shards["urls"], kind=shards["kind"], batch_size=2, num_workers=1, decode=DECODE)
    batches = _epoch(ClipStream(cfg, rank=0, world_size=1))
    assert batches
    for batch in batches:
        assert_is_batch(batch, shards["kind"])


def _non_pad_keys(batches: list[dict]) -> list[str]:
    return [k for b in batches for k, pad in zip(b["key"], b["is_pad"].tolist()) if not pad]


def test_batches_per_rank_hand_computed():
    # ceil(n/2) = [[3, 2], [2, 1]] -> N >= 2·(k−1) + l + 1 = [[5, 4], [3, 2]] -> N = 5, and indeed worker 0
    # gets len(range(0, 5, 2)) = 3 batches and worker 1 gets len(range(1, 5, 2)) = 2
    assert batches_per_rank([[5, 3], [4, 2]], batch_size=2) == 5
    assert batches_per_rank([[4]], batch_size=4) == 1
    assert batches_per_rank([[1, 1, 9]], batch_size=4) == 3 * 2 + 2 + 1  # worker 2 needs 3 batches: 2, 5, 8
    with pytest.raises(ValueError, match="no samples"):
        batches_per_rank([[3, 0]], batch_size=2)


def test_decoders_reject_each_kind_of_corruption(clips):
    src, keys = clips
    good = _members(src, keys[0])
    frames = np.zeros((SECONDS * 8, SIZE, SIZE, 3), np.uint8)
    cases = {
        "bad_video": good | {"mp4": good["mp4"][: len(good["mp4"]) // 2]},
        "bad_audio": good | {"mp4": encode_mp4(frames, None, 8, SR)},  # no audio track at all
        "bad_json": good | {"json": b"[1, 2"},
        "empty_member": good | {"txt": b""},
        "missing_member": {k: v for k, v in good.items() if k != "mp4"},
    }
    for reason, sample in cases.items():
        with pytest.raises(CorruptSample) as info:
            decode_sample(sample, DECODE)
        assert info.value.reason == reason and keys[0] in str(info.value)
    with pytest.raises(CorruptSample, match="key 'audio_labels'"):
        decode_sample(good | {"json": b'{"clip_label": 0, "video_labels": [0, 0]}'}, DECODE)
    three_s = json.loads(good["json"])
    three_s.update(video_labels=three_s["video_labels"] + [-1], audio_labels=three_s["audio_labels"] + [-1])
    with pytest.raises(CorruptSample, match=r"too_short: the clip has 2 s, training reads at least 3 s"):
        decode_sample(good | {"json": json.dumps(three_s).encode()}, DecodeConfig(seconds=3, frames_per_segment=2))
    one_s = json.loads(good["json"])
    one_s.update(video_labels=one_s["video_labels"][:1], audio_labels=one_s["audio_labels"][:1])
    with pytest.raises(CorruptSample, match=r"labels cover 1 s, the window reads seconds 0\.\.1"):
        decode_sample(good | {"json": json.dumps(one_s).encode()}, DECODE)


def test_an_unopenable_video_is_reported_once_not_also_printed_by_decord(clips, capfd):
    src, keys = clips
    good = _members(src, keys[0])
    capfd.readouterr()
    with pytest.raises(CorruptSample, match="bad_video: decord cannot open it .*Invalid data found"):
        decode_sample(good | {"mp4": b"not a video"}, DECODE)       # the reason decord logged, in the message
    assert "ERROR opening" not in capfd.readouterr().err       # decord's C++ logger writes to fd 2 itself
    with pytest.raises(CorruptSample, match="bad_audio: decord cannot read audio"):
        decode_sample(good | {"wav": b"RIFF not a wave"}, DECODE)
    assert capfd.readouterr().err == ""
    print("stderr works again", file=sys.stderr)
    assert "stderr works again" in capfd.readouterr().err


def test_fast_audio_read_equals_decords_public_api(clips):
    src, keys = clips
    data = (src / f"{keys[0]}.mp4").read_bytes()
    public = AudioReader(io.BytesIO(data), sample_rate=SR, mono=True)[:].asnumpy()[0]
    assert len(public) >= SECONDS * SR
    assert np.array_equal(decode_audio(data, DECODE, keys[0]).reshape(-1), public[: SECONDS * SR])


def test_separate_wav_member_is_preferred_over_the_mp4_track(clips):
    src, keys = clips
    t = np.arange(SECONDS * SR) / SR
    wav = encode_wav(0.5 * np.sin(2 * np.pi * 3000 * t), SR)
    clip = decode_sample(_members(src, keys[0]) | {"wav": wav}, DECODE)
    spectrum = np.abs(np.fft.rfft(clip.media["audio"][0]))  # 1 s: bins are 1 Hz apart
    assert np.argmax(spectrum) == 3000


def test_json_and_txt_members_are_optional(clips):
    src, keys = clips
    full = _members(src, keys[0])
    bare = {"__key__": keys[0], "__url__": "u-000003.tar", "mp4": full["mp4"]}
    clip = decode_sample(bare, DECODE)
    assert clip.caption is None and clip.url == "u-000003.tar" and not clip.labels.labelled
    assert clip.labels.video.tolist() == clip.labels.audio.tolist() == [-1] * SECONDS and clip.labels.clip == -1
    assert clip.media["video"].shape == (SECONDS, 2, SIZE, SIZE, 3)
    captioned = decode_sample(bare | {"txt": full["txt"]}, DECODE, ("video", "audio", "text"))
    assert captioned.caption == full["txt"].decode().strip()
    labelled = decode_sample(full, DECODE)
    assert labelled.labels.labelled and labelled.labels.clip == json.loads(full["json"])["clip_label"]
    # the caption is required only where it is encoded; a json or txt that is present must decode
    cases = {
        "missing_member": (bare, True, "u-000003.tar:" + keys[0] + ".txt: missing_member"),
        "bad_json": (bare | {"json": b"[1, 2"}, False, keys[0] + ".json: bad_json"),
        "empty_member": (bare | {"json": b""}, False, keys[0] + ".json: empty_member"),
        "bad_text": (bare | {"txt": b" \n"}, True, keys[0] + ".txt: bad_text"),
    }
    for reason, (sample, with_text, message) in cases.items():
        with pytest.raises(CorruptSample, match=message) as info:
            decode_sample(sample, DECODE, ("video", "audio", "text") if with_text else ("video", "audio"))
        assert info.value.reason == reason


def test_stream_of_unlabelled_clips_and_the_caption_requirement(partly_labelled_shards, clips):
    src, _ = clips
    members = partly_labelled_shards["members"]
    cfg = DataConfig(urls=partly_labelled_shards["urls"], batch_size=5, num_workers=0, shuffle_buffer=0,
                     shuffle_shards=False, decode=DECODE)
    stream = ClipStream(cfg)
    batches = _epoch(stream)
    assert _non_pad_keys(batches) == list(members) and sum(stream.skip_totals().values()) == 0
    for b in batches:
        for i, key in enumerate(b["key"]):
            assert b["labelled"][i].item() == ("json" in members[key])
            assert b["url"][i].endswith(f"train-{list(members).index(key) // 5:06d}.tar")  # 5 clips per shard
            if "json" in members[key]:
                assert b["video_labels"][i].tolist() == json.loads((src / f"{key}.json").read_text())["video_labels"]
            else:
                assert b["video_labels"][i].tolist() == b["audio_labels"][i].tolist() == [-1] * SECONDS
                assert b["clip_label"][i].item() == -1
            assert b["caption"][i] == ((src / f"{key}.txt").read_text().strip() if "txt" in members[key] else None)
    # where the caption is encoded, the 4 bare mp4s are skipped as missing their txt member
    captioned = ClipStream(cfg, modalities=("video", "audio", "text"))
    delivered = _non_pad_keys(_epoch(captioned))
    assert delivered == [key for key, m in members.items() if "txt" in m]
    assert captioned.skip_totals() == {name: 4 if name == "missing_member" else 0 for name in COUNTER_NAMES}


def test_batch_format_matches_the_files(good_shards, clips):
    urls, keys = good_shards
    src, _ = clips
    cfg = DataConfig(urls=urls, batch_size=3, num_workers=0, shuffle_buffer=0, shuffle_shards=False, decode=DECODE)
    batches = _epoch(ClipStream(cfg))
    assert len(batches) == 4  # 10 samples, one worker: ceil(10/3)
    b = batches[0]
    assert b["video"].dtype == torch.uint8 and b["video"].shape == (3, SECONDS, 2, SIZE, SIZE, 3)
    assert b["audio"].dtype == torch.float32 and b["audio"].shape == (3, SECONDS, SR)
    assert b["skipped"].dtype == torch.int64 and b["skipped"].shape == (len(COUNTER_NAMES),)
    assert b["key"] == keys[:3] and b["is_pad"].tolist() == [False] * 3
    for i, key in enumerate(b["key"]):
        meta = json.loads((src / f"{key}.json").read_text())
        assert b["video_labels"][i].tolist() == meta["video_labels"]
        assert b["audio_labels"][i].tolist() == meta["audio_labels"]
        assert b["clip_label"][i].item() == meta["clip_label"]
        assert b["caption"][i] == (src / f"{key}.txt").read_text().strip()
    assert b["labelled"].tolist() == [True] * 3 and b["url"] == [wds.shardlists.expand_urls(urls)[0]] * 3
    # the last batch: sample 10, then two repeats of this worker's data flagged as padding
    assert batches[-1]["is_pad"].tolist() == [False, True, True]
    assert _non_pad_keys(batches) == keys


def test_corrupt_samples_skipped_and_counted_nothing_unpickled(bad_shards, capsys):
    cfg = DataConfig(urls=bad_shards["urls"], batch_size=2, num_workers=2, shuffle_buffer=4, decode=DECODE)
    stream = ClipStream(cfg)
    planned = len(stream)  # the epoch's batch count (len() after the epoch is the next epoch's)
    batches = _epoch(stream)
    assert len(batches) == planned
    assert sorted(_non_pad_keys(batches)) == sorted(bad_shards["good"])  # every good sample exactly once
    expected = {name: bad_shards["skips"].get(name, 0) for name in COUNTER_NAMES}
    assert stream.skip_totals() == expected
    assert sum(b["skipped"] for b in batches).tolist() == [expected[n] for n in COUNTER_NAMES]
    assert not bad_shards["marker"].exists()
    # the inspector reports the same shard as bad, member by member, and unpickles nothing either
    capsys.readouterr()
    assert shard_inspect.main([bad_shards["urls"]]) == 1
    printed = capsys.readouterr().out
    assert "samples  9 (6 good, 3 bad)" in printed
    for line in ("truncated.mp4: bad_video", "badjson.json: bad_json", "onlypyd.*: missing_member",
                 "onlypyd.pyd: unexpected_member", ".pyd: unexpected_member"):
        assert line in printed, line
    assert not bad_shards["marker"].exists()


def test_truncated_shard_loses_only_its_tail_and_every_sample_is_accounted_for(good_shards, tmp_path, capfd):
    urls, keys = good_shards
    shard_dir = Path(wds.shardlists.expand_urls(urls)[0]).parent
    for path in shard_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    cut = tmp_path / "train-000001.tar"  # 3 samples; keep the bytes of about the first one and a half
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    cfg = DataConfig(urls=f"{tmp_path}/train-{{000000..000003}}.tar", batch_size=2, num_workers=2, decode=DECODE)
    stream = ClipStream(cfg)
    planned = len(stream)
    batches = _epoch(stream)
    assert len(batches) == planned
    delivered = _non_pad_keys(batches)
    totals = stream.skip_totals()
    assert totals["unreadable"] >= 1 and "unreadable shard data" in capfd.readouterr().err
    lost = sum(totals[name] for name in COUNTER_NAMES if name != "ignored_member")
    assert len(delivered) + lost == len(keys)  # the manifest's 10: each delivered once or counted once
    assert len(set(delivered)) == len(delivered) and len(delivered) >= 7  # the other shards' 7 all arrive


def test_feature_shards_stream_like_clip_shards(bad_feature_shards, clips):
    src, keys = clips
    shards = bad_feature_shards
    cfg = DataConfig(urls=shards["urls"], kind="features", batch_size=2, num_workers=2, shuffle_buffer=4,
                     shuffle_shards=False)
    stream = ClipStream(cfg)
    planned = len(stream)
    batches = _epoch(stream)
    # the plan counts the manifest's raw samples: worker 0 has 7 -> 4 batches (0, 2, 4, 6), so N = 7 and
    # worker 1 (3 samples) yields batches 1, 3, 5; 14 slots hold the 6 good samples and 8 marked repeats
    assert len(batches) == planned == 7 and {len(b["key"]) for b in batches} == {2}
    assert sorted(_non_pad_keys(batches)) == sorted(shards["good"])  # every good sample exactly once
    assert sum(int(b["is_pad"].sum()) for b in batches) == 8
    # each skipped sample counted once by its reason; the pickled object array was refused, not loaded
    expected = {name: shards["skips"].get(name, 0) for name in COUNTER_NAMES}
    assert stream.skip_totals() == expected
    assert sum(b["skipped"] for b in batches).tolist() == [expected[n] for n in COUNTER_NAMES]
    assert not shards["marker"].exists()
    for b in batches:
        assert b["video"].dtype == b["audio"].dtype == b["text"].dtype == torch.float32
        assert b["video"].shape == (2, SECONDS, 3, 4) and b["audio"].shape == (2, SECONDS, 4)
        for i, key in enumerate(b["key"]):
            index = shards["index"][key]
            meta = json.loads((src / f"{key}.json").read_text())
            assert b["video"][i].unique().tolist() == [index]
            assert b["audio"][i].tolist() == (np.arange(SECONDS * 4).reshape(SECONDS, 4) + 100 * index).tolist()
            tokens = 1 + index % 3
            assert b["text_mask"][i].tolist() == [True] * tokens + [False] * (b["text"].shape[1] - tokens)
            assert (b["text"][i, :tokens] == -index).all() and (b["text"][i, tokens:] == 0).all()
            assert b["video_labels"][i].tolist() == meta["video_labels"] and b["clip_label"][i] == meta["clip_label"]
            assert b["caption"][i] == (src / f"{key}.txt").read_text().strip()


@pytest.mark.parametrize("stop", [1, 2, 4])
def test_resume_from_state_dict_is_exact(bad_shards_of_each_kind, stop):
    bad_shards = bad_shards_of_each_kind
    cfg = DataConfig(urls=bad_shards["urls"], kind=bad_shards["kind"], batch_size=2, num_workers=2, shuffle_buffer=4,
                     seed=3, decode=DECODE)
    reference = _epoch(ClipStream(cfg))
    first = ClipStream(cfg)
    head = _epoch(first, stop=stop)
    state = first.state_dict()
    assert state["position"] == stop and state["epoch"] == 0
    resumed = ClipStream(cfg)
    resumed.load_state_dict(state)
    tail = _epoch(resumed)
    assert len(head) + len(tail) == len(reference)
    for got, want in zip(head + tail, reference):
        assert got.keys() == want.keys()
        for name, value in want.items():  # media or features, labels, is_pad and the batch's skip counters
            assert torch.equal(got[name], value) if torch.is_tensor(value) else got[name] == value, name
    reference_totals = sum(b["skipped"] for b in reference).tolist()
    assert resumed.skip_totals() == dict(zip(COUNTER_NAMES, reference_totals))  # head's counts came with the state
    assert resumed.state_dict()["epoch"] == 1 and resumed.state_dict()["position"] == 0


def test_epochs_reshuffle_but_cover_the_same_samples(good_shards):
    urls, keys = good_shards
    stream = ClipStream(DataConfig(urls=urls, batch_size=2, num_workers=2, shuffle_buffer=4, decode=DECODE))
    epochs = [_non_pad_keys(_epoch(stream)) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(keys)
    assert epochs[0] != epochs[1]
    assert stream.state_dict()["epoch"] == 2


def _batch_tensors(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)} | {"key": batch["key"]}


def test_a_decode_cache_gives_the_same_batches_and_decodes_each_clip_once(bad_shards, tmp_path, monkeypatch):
    """Two epochs with ``data.decode_cache`` and without: the same batches bit for bit, the same skips counted in
    both epochs; with the cache, the second epoch decodes nothing. A cache file that does not load is decoded again."""
    from trainer.data import decode as decode_module

    decoded = []
    real_open_video = decode_module.open_video
    monkeypatch.setattr(decode_module, "open_video", lambda data, where, size=None: decoded.append(where) or
                        real_open_video(data, where, size))
    runs = {}
    for cache in ("", str(tmp_path / "cache")):
        cfg = DataConfig(urls=bad_shards["urls"], batch_size=2, num_workers=0, shuffle_buffer=4, decode=DECODE,
                         decode_cache=cache)
        stream, epochs, decodes = ClipStream(cfg), [], []
        for _ in range(2):
            decoded.clear()
            epochs.append([_batch_tensors(b) for b in _epoch(stream)])
            decodes.append(len([where for where in decoded if ":truncated." not in where]))   # those that succeed
        runs[cache or "none"] = epochs, decodes, stream.skip_totals()
    (plain, plain_decodes, plain_skips), (cached, cached_decodes, cached_skips) = runs.values()
    assert len(plain) == len(cached) == 2
    for a, b in zip(plain[0] + plain[1], cached[0] + cached[1]):
        assert a.keys() == b.keys() and a["key"] == b["key"]
        assert all(torch.equal(a[k], b[k]) for k in a if k != "key")
    assert plain_skips == cached_skips and cached_skips["bad_video"] == 2     # the truncated clip, in both epochs
    # without the cache every epoch decodes each clip (and the repeats that pad its last batches) again; with it,
    # each clip once, and the clip that never decodes is tried in every epoch
    assert min(plain_decodes) >= len(bad_shards["good"])
    assert cached_decodes == [len(bad_shards["good"]), 0]
    kept = sorted((tmp_path / "cache").glob("*/*.npz"))
    assert len(kept) == len(bad_shards["good"])
    kept[0].write_bytes(b"not a zip")                   # e.g. a disk that filled up: decoded again, replaced
    cfg = DataConfig(urls=bad_shards["urls"], batch_size=2, num_workers=0, shuffle_buffer=4, decode=DECODE,
                     decode_cache=str(tmp_path / "cache"))
    decoded.clear()
    again = [_batch_tensors(b) for b in _epoch(ClipStream(cfg))]
    assert len([where for where in decoded if ":truncated." not in where]) == 1
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(again, cached[0]))
    assert len(sorted((tmp_path / "cache").glob("*/*.npz"))) == len(bad_shards["good"])


def test_a_stop_signal_to_a_worker_that_is_starting_is_ignored(good_shards, monkeypatch):
    """A launcher's SIGTERM reaches the rank's whole process group; a worker that an epoch has just forked gets it
    before its ``worker_init_fn`` has ignored it (torch's worker loop installs a die-on-SIGTERM handler first). The
    workers start with the stop signals blocked, so it waits, and is dropped when ignored: no worker dies, the
    epoch is whole, and the rank's own signal mask is as it was."""
    urls, keys = good_shards
    worker_init = stream_module._worker_init

    def signalled_while_starting(worker_id: int) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        worker_init(worker_id)

    monkeypatch.setattr(stream_module, "_worker_init", signalled_while_starting)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    stream = ClipStream(DataConfig(urls=urls, batch_size=2, num_workers=2, shuffle_buffer=0, decode=DECODE))
    assert sorted(_non_pad_keys(_epoch(stream))) == sorted(keys)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask


def test_pipe_urls_stream_through_a_shell_command(good_shards):
    urls, keys = good_shards
    shard_dir = Path(wds.shardlists.expand_urls(urls)[0]).parent
    piped = f"pipe:cat {shard_dir}/train-{{000000..000003}}.tar"
    with pytest.raises(ValueError, match="set DataConfig.manifest"):
        ClipStream(DataConfig(urls=piped, num_workers=0))
    cfg = DataConfig(urls=piped, manifest=str(shard_dir / "manifest.json"), batch_size=5, num_workers=0, decode=DECODE)
    assert sorted(_non_pad_keys(_epoch(ClipStream(cfg)))) == sorted(keys)


def test_resampled_mode_has_a_fixed_epoch_length(good_shards):
    urls, keys = good_shards
    cfg = DataConfig(urls=urls, batch_size=2, num_workers=2, resampled=True, epoch_batches=3, decode=DECODE)
    stream = ClipStream(cfg)
    epoch0, epoch1 = _epoch(stream), _epoch(stream)
    assert len(epoch0) == len(epoch1) == 3 and len(stream) == 3
    assert not any(b["is_pad"].any() for b in epoch0 + epoch1)
    assert set(_non_pad_keys(epoch0)) <= set(keys)
    assert _non_pad_keys(_epoch(ClipStream(cfg))) == _non_pad_keys(epoch0)  # seeded: reproducible
    assert _non_pad_keys(epoch1) != _non_pad_keys(epoch0)


def test_configuration_errors_are_clear(good_shards, tmp_path):
    urls, _ = good_shards
    with pytest.raises(ValueError, match="4 shards cannot give each of 2 ranks x 4 workers"):
        ClipStream(DataConfig(urls=urls, num_workers=4), rank=0, world_size=2)
    (tmp_path / "x-000000.tar").write_bytes(b"")
    with pytest.raises(ValueError, match=f"manifest {tmp_path}/manifest.json not found"):
        ClipStream(DataConfig(urls=f"{tmp_path}/x-000000.tar", num_workers=0))
    with pytest.raises(ValueError, match="epoch_batches"):
        ClipStream(DataConfig(urls=urls, resampled=True))
    stream = ClipStream(DataConfig(urls=urls, num_workers=2))
    state = stream.state_dict() | {"num_workers": 1}
    with pytest.raises(ValueError, match="num_workers=1 but this stream has 2"):
        stream.load_state_dict(state)
    other_shards = ClipStream(DataConfig(urls=urls.replace("000003", "000002"), num_workers=2))
    with pytest.raises(ValueError, match="shards_fingerprint"):
        other_shards.load_state_dict(stream.state_dict())


# ---------------------------------------------------------------------------------------------- elastic resume
@pytest.fixture(scope="module")
def uneven_shards(clips, tmp_path_factory) -> dict:
    """Five shards of 3, 2, 2, 2 and 1 clips (the 10 clips in order); the second clip's json is unparsable, and
    shard 3 is cut in half (the manifest counts what was written)."""
    src, keys = clips
    out = tmp_path_factory.mktemp("uneven")
    samples = [_members(src, key) for key in keys]
    samples[1]["json"] = b"{oops"
    sizes = [3, 2, 2, 2, 1]
    starts = np.cumsum([0, *sizes])
    for i, (start, size) in enumerate(zip(starts, sizes)):
        _pack(out / f"train-{i:06d}.tar", samples[start:start + size])
    manifest = {"shards": [{"name": f"train-{i:06d}.tar", "samples": n} for i, n in enumerate(sizes)]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    cut = out / "train-000003.tar"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    return {"urls": f"{out}/train-{{000000..000004}}.tar"}


def _resumed(cfg: DataConfig, world: int, states: list[dict]) -> list[ClipStream]:
    """The ``world`` ranks' streams of ``cfg``, continuing from every old rank's ``states`` (none: from the start)."""
    streams = [ClipStream(cfg, rank=rank, world_size=world) for rank in range(world)]
    for stream in streams:
        if states:
            assert stream.needs_resplit(states[0])
            stream.load_resplit(states)
    return streams


@pytest.mark.parametrize("steps", [(1, 1), (2, 0), (1, -1)])   # batches per rank before each stop; -1: the epoch's last
def test_elastic_resume_2_to_1_to_2_delivers_every_sample_of_the_epoch_exactly_once(uneven_shards, steps):
    """2 ranks x 2 workers (batch 2), stopped; 1 rank x 1 worker (batch 3), stopped; 2 ranks x 2 workers to the end
    of the epoch. The states pass through torch.save/load (weights_only) as a checkpoint's rank files do."""
    two = DataConfig(urls=uneven_shards["urls"], batch_size=2, num_workers=2, shuffle_buffer=4, seed=1, decode=DECODE)
    one = dataclasses.replace(two, batch_size=3, num_workers=1)
    uninterrupted = [ClipStream(two, rank=rank, world_size=2) for rank in range(2)]
    good = sorted(_non_pad_keys([b for s in uninterrupted for b in _epoch(s)]))
    lost = {name: sum(s.skip_totals()[name] for s in uninterrupted) for name in COUNTER_NAMES}
    assert len(good) < 9 and lost["bad_json"] == 1 and lost["unreadable"] > 0
    delivered, states = [], []
    for cfg, world, stop in ((two, 2, steps[0]), (one, 1, steps[1]), (two, 2, None)):
        streams = _resumed(cfg, world, states)
        if stop == -1:
            stop = len(streams[0])
        counts = set()
        for stream in streams:
            batches = _epoch(stream, stop) if stop != 0 else []
            assert {len(b["key"]) for b in batches} <= {cfg.batch_size}
            counts.add(len(batches))
            delivered += _non_pad_keys(batches)
        assert len(counts) == 1                                    # every rank yields the same number of batches
        states = [torch.load(io.BytesIO(_saved(s.state_dict())), weights_only=True) for s in streams]
    assert sorted(delivered) == good                              # nothing lost, nothing repeated
    assert all(s.epoch == 1 and s.position == 0 and not s.excluded.any() for s in streams)
    # every skipped sample counted once (the old ranks' counters carried to rank 0), the truncated shard's too
    assert {name: sum(s.skip_totals()[name] for s in streams) for name in COUNTER_NAMES} == lost
    assert sorted(_non_pad_keys(_epoch(streams[0]) + _epoch(streams[1]))) == good    # the next epoch is whole


def test_a_re_split_epoch_resumes_exactly_at_the_same_layout(uneven_shards):
    """Stopped again inside the epoch an elastic resume re-planned, the stream resumes it bit-exactly."""
    two = DataConfig(urls=uneven_shards["urls"], batch_size=2, num_workers=2, shuffle_buffer=4, seed=1, decode=DECODE)
    old = [ClipStream(two, rank=rank, world_size=2) for rank in range(2)]
    for stream in old:
        _epoch(stream, 1)
    states = [s.state_dict() for s in old]
    one = dataclasses.replace(two, num_workers=1)
    reference = _epoch(_resumed(one, 1, states)[0])
    first = _resumed(one, 1, states)[0]
    head = _epoch(first, 1)
    second = ClipStream(one, rank=0, world_size=1)
    assert not second.needs_resplit(first.state_dict())
    second.load_state_dict(first.state_dict())
    tail = _epoch(second)
    assert len(head) + len(tail) == len(reference) > 1
    for got, want in zip(head + tail, reference):
        for name, value in want.items():
            assert torch.equal(got[name], value) if torch.is_tensor(value) else got[name] == value, name


def _saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_resampled_elastic_resume_keeps_the_epoch_position(good_shards):
    cfg = DataConfig(urls=good_shards[0], batch_size=2, num_workers=2, resampled=True, epoch_batches=5, decode=DECODE)
    old = [ClipStream(cfg, rank=rank, world_size=2) for rank in range(2)]
    for stream in old:
        _epoch(stream, 2)
    new = ClipStream(dataclasses.replace(cfg, num_workers=1), rank=0, world_size=1)
    new.load_resplit([s.state_dict() for s in old])
    assert (new.epoch, new.position) == (0, 2) and len(_epoch(new)) == 3 and new.epoch == 1


def test_a_resume_with_other_shards_is_refused_and_the_same_layout_needs_no_resplit(uneven_shards, good_shards):
    cfg = DataConfig(urls=uneven_shards["urls"], batch_size=2, num_workers=2, decode=DECODE)
    state = ClipStream(cfg, rank=0, world_size=2).state_dict()
    assert not ClipStream(cfg, rank=0, world_size=2).needs_resplit(state)
    other = ClipStream(dataclasses.replace(cfg, urls=good_shards[0]), rank=0, world_size=1)
    with pytest.raises(ValueError, match="shards_fingerprint.*other shards"):
        other.needs_resplit(state)
    with pytest.raises(ValueError, match="shards_fingerprint"):
        other.load_resplit([state])


# What the test below runs in a process of its own: a VideoReader (and its decoding thread) that only an unreachable
# reference cycle holds when the epoch forks its worker, as an exception's traceback leaves one behind; the young
# cycle is the worker's garbage collector's first prey.
_READER_IN_A_CYCLE_AT_THE_FORK = """
import gc, io, sys
from decord import VideoReader
from trainer.configs.data import DataConfig, DecodeConfig
from trainer.data.stream import ClipStream
urls, mp4, seconds, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
decode = DecodeConfig(seconds=seconds, frames_per_segment=2, frame_size=size)
stream = ClipStream(DataConfig(urls=urls, batch_size=2, num_workers=1, shuffle_buffer=0, decode=decode))
gc.disable()
cycle = [VideoReader(io.BytesIO(open(mp4, "rb").read()), num_threads=1)]
cycle.append(cycle)
del cycle
gc.enable()
print(sum(int((~batch["is_pad"]).sum()) for batch in stream))
"""


@pytest.mark.slow
def test_an_epoch_forks_its_workers_with_no_decoder_thread_left_to_garbage(good_shards, clips):
    """Without ``free_unreachable_readers`` before the fork this hung until the timeout (a segfault in CI's
    worker): the worker's copy of the reader joined a thread that only the parent has."""
    urls, keys = good_shards
    src, _ = clips
    child = subprocess.Popen([sys.executable, "-c", _READER_IN_A_CYCLE_AT_THE_FORK, urls, str(src / f"{keys[0]}.mp4"),
                              str(SECONDS), str(SIZE)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        out, err = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)   # the hung worker too
        child.communicate()
        pytest.fail("the epoch hung: its worker froze on a decord reader left to garbage in the parent")
    assert child.returncode == 0, err[-2000:]
    assert out.split()[-1] == str(len(keys))
