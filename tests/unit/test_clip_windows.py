"""Training windows of clips of any length (trainer/data/decode.py, "Clips of any length"): a seeded window inside a
longer clip, a shorter clip padded with a ``segment_mask`` down to ``data.decode.min_seconds``, the same batches with
and without the decode cache, and the config checks that go with padding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from shards.media import encode_mp4, encode_wav
from trainer.configs.load import ConfigError, load_config
from trainer.data.stream import ClipStream
from trainer.data.media_decoders import CorruptSample
from trainer.data.decode import decode_sample
from trainer.configs.data import DataConfig, DecodeConfig
from trainer.data.media_decoders import decode_whole_audio, decode_whole_video
from trainer.job import job_backbones
from trainer.configs.job import JobConfig
from trainer.models.inputs import SEGMENT_MASK

SIZE, SR, FPS = 32, 16000, 4
WINDOW = DecodeConfig(seconds=3, frames_per_segment=2, frame_size=SIZE, sample_rate=SR, min_seconds=2)
CONFIGS = Path(__file__).resolve().parents[2] / "launch" / "configs"


def clip(seconds: int, seed: int = 0) -> dict[str, bytes]:
    """An mp4 whose every second has its own grey level (second t: 20 + 30·t) and a tone, and labels per second."""
    frames = np.concatenate([np.full((FPS, SIZE, SIZE, 3), 20 + 30 * t, np.uint8) for t in range(seconds)])
    t = np.arange(seconds * SR) / SR
    audio = (0.2 * np.sin(2 * np.pi * (300 + 100 * seed) * t) * (1 + np.floor(t)) / seconds).astype(np.float32)
    labels = {"clip_label": seed % 3, "video_labels": list(range(seconds)), "audio_labels": list(range(seconds))}
    return {"mp4": encode_mp4(frames, audio, FPS, SR), "json": json.dumps(labels).encode()}


def sample(key: str, members: dict[str, bytes]) -> dict:
    return {"__key__": key, "__url__": "shard.tar", **members}


def test_a_long_clip_gives_a_seeded_window_of_whole_seconds_cut_from_the_clip():
    """A 6-s clip, a 3-s window: the window starts at 0 without a seed, at a second a digest of (seed, key) picks
    otherwise, each of the 4 starts for some seed; video, audio and labels are those seconds of the whole clip."""
    raw = sample("long", clip(6))
    whole_video = decode_whole_video(raw["mp4"], WINDOW, "long")
    whole_audio = decode_whole_audio(raw["mp4"], WINDOW, "long", len(whole_video))
    assert len(whole_video) == 6
    starts = set()
    for seed in [None, *range(12)]:
        decoded = decode_sample(raw, WINDOW, sample_seed=seed)
        start = int(decoded.labels.video[0])                     # the labels count the seconds
        assert seed is not None or start == 0
        starts.add(start)
        assert decoded.seconds == 3
        assert np.array_equal(decoded.media["video"], whole_video[start:start + 3])
        assert np.array_equal(decoded.media["audio"], whole_audio[start:start + 3])
        assert decoded.labels.video.tolist() == list(range(start, start + 3))
        assert np.array_equal(decode_sample(raw, WINDOW, sample_seed=seed).media["video"], decoded.media["video"])
    assert starts == {0, 1, 2, 3}


def test_a_shorter_clip_is_padded_with_zeros_and_its_real_seconds_counted_and_a_too_short_one_is_skipped():
    short = decode_sample(sample("short", clip(2)), WINDOW, sample_seed=5)
    assert short.seconds == 2 and short.media["video"].shape == (3, 2, SIZE, SIZE, 3)
    assert short.media["video"][2].max() == 0 and short.media["audio"][2].max() == 0
    assert short.media["video"][1].min() > 0
    assert short.labels.video.tolist() == [0, 1, -1]                            # BACKGROUND on the padding
    with pytest.raises(CorruptSample, match=r"too_short: the clip has 1 s, training reads at least 2 s "
                                            r"\(decode.min_seconds"):
        decode_sample(sample("tiny", clip(1)), WINDOW)
    audio_alone = {"wav": encode_wav((0.1 * np.ones(int(2.4 * SR))).astype(np.float32), SR)}
    decoded = decode_sample(sample("wav", audio_alone), WINDOW, ("audio",))     # 2.4 s: 2 whole seconds
    assert decoded.seconds == 2 and decoded.media["audio"].shape == (3, SR)
    with pytest.raises(ValueError, match="min_seconds must be in"):
        DecodeConfig(seconds=3, min_seconds=4)


@pytest.fixture(scope="module")
def mixed_shard(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("mixed")
    shard = root / "train-000000.tar"
    lengths = {"c1": 1, "c2": 2, "c3": 3, "c5": 5, "c6": 6}
    with wds.TarWriter(str(shard), encoder=False) as sink:
        for i, (key, seconds) in enumerate(lengths.items()):
            sink.write({"__key__": key, **clip(seconds, seed=i)})
    (root / "manifest.json").write_text(json.dumps({"shards": [{"name": shard.name, "samples": len(lengths)}]}))
    return str(shard)


def _epochs(cfg: DataConfig, epochs: int) -> list[dict[str, dict]]:
    stream = ClipStream(cfg, rank=0, world_size=1)
    out = []
    for _ in range(epochs):
        seen = {}
        for batch in stream:
            for i, (key, pad) in enumerate(zip(batch["key"], batch["is_pad"].tolist())):
                if not pad:
                    seen[key] = {name: batch[name][i] for name in ("video", "audio", "video_labels", SEGMENT_MASK)}
        out.append(seen)
    return out


def test_the_stream_pads_short_clips_with_a_segment_mask_moves_long_windows_per_epoch_and_the_cache_agrees(
        mixed_shard, tmp_path):
    """Clips of 1, 2, 3, 5 and 6 s, a 3-s window, min_seconds 2, over 3 epochs: the 1-s clip is skipped as too_short
    in each; the mask marks each clip's real seconds; the windows of the long clips move between epochs (the same on
    a second run); the decode cache, which keeps each whole clip, gives the same batches bit for bit."""
    cfg = DataConfig(urls=mixed_shard, batch_size=2, num_workers=0, shuffle_buffer=0, decode=WINDOW)
    plain = _epochs(cfg, 3)
    for epoch in plain:
        assert sorted(epoch) == ["c2", "c3", "c5", "c6"]
        assert epoch["c2"][SEGMENT_MASK].tolist() == [True, True, False]
        assert all(epoch[k][SEGMENT_MASK].all() for k in ("c3", "c5", "c6"))
    starts = {k: [int(e[k]["video_labels"][0]) for e in plain] for k in ("c5", "c6")}
    assert any(len(set(s)) > 1 for s in starts.values()), starts
    cached = _epochs(DataConfig(urls=mixed_shard, batch_size=2, num_workers=0, shuffle_buffer=0, decode=WINDOW,
                                decode_cache=str(tmp_path / "cache")), 3)
    again = _epochs(cfg, 3)
    for ours, theirs, rerun in zip(plain, cached, again):
        for key, tensors in ours.items():
            assert all(torch.equal(tensors[n], theirs[key][n]) and torch.equal(tensors[n], rerun[key][n])
                       for n in tensors), key
    whole_windows = DataConfig(urls=mixed_shard, batch_size=2, num_workers=0, shuffle_buffer=0,
                               decode=DecodeConfig(seconds=3, frames_per_segment=2, frame_size=SIZE))
    stream = ClipStream(whole_windows, rank=0, world_size=1)
    batches = list(stream)
    assert all(SEGMENT_MASK not in b for b in batches)              # no padding: batches as before, no mask
    assert stream.skip_totals()["too_short"] == 2                   # the 1-s and 2-s clips


def test_padding_is_refused_at_config_time_for_comet_and_below_cross_cpc_steps():
    tiny = CONFIGS / "backbones" / "tiny.yaml"
    demo = CONFIGS / "demo.yaml"
    ok = load_config(JobConfig, demo, [f"backbones={tiny}", "data.decode.min_seconds=3"])
    job_backbones(ok)
    short = load_config(JobConfig, demo, [f"backbones={tiny}", "data.decode.min_seconds=2"])
    with pytest.raises(ConfigError, match=r"data.decode.min_seconds=2: Cross-CPC predicts 2 seconds ahead.*"
                                          r"at least 3 s"):
        job_backbones(short)
    comet = load_config(JobConfig, CONFIGS / "comet_vt.yaml", [f"backbones={tiny}", "data.decode.min_seconds=3"])
    with pytest.raises(ConfigError, match=r"data.decode.min_seconds=3: task 'comet' trains on whole windows only"):
        job_backbones(comet)
