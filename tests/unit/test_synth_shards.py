"""Synthetic clips (shards.synth), the shard writer and the inspector, on data made in tmp dirs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shards import inspect as shard_inspect  # noqa: E402
from shards import write as shard_write  # noqa: E402
from shards import synth as shard_synth  # noqa: E402
from shards.synth import KINDS, SynthConfig, event_classes, hue_rgb, plan_clip, synthesise  # noqa: E402
from trainer.data.decode import BACKGROUND
from trainer.data.media_decoders import decode_audio, decode_video
from trainer.configs.data import DecodeConfig

SECONDS, SIZE, SR = 4, 32, 16000
# Measured worst cases over 96 seconds of clips (K = 4 and 12 at 32 px, K = 28 at 96 px):
# saturated-pixel mean colour off by <= 34.6/255 per channel, chord root found to within 0.5 Hz,
# peak/median spectrum ratio >= 149 in event seconds and <= 6.8 in background seconds.
COLOUR_TOLERANCE = 48  # per channel, 0..255
SATURATED_CHROMA = 100  # max(R,G,B) - min(R,G,B) above this: a pixel of the event square
HZ_TOLERANCE = 2.0  # FFT bins are 1.25 Hz wide over the 0.8 s analysis window
TONE_RATIO_EVENT, TONE_RATIO_BACKGROUND = 50.0, 20.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, list[str], SynthConfig]:
    cfg = SynthConfig(num_clips=6, classes=4, seconds=SECONDS, size=SIZE, seed=11)
    out = tmp_path_factory.mktemp("clips")
    return out, synthesise(cfg, out, progress=False), cfg


def test_hue_colours_and_class_signatures_are_distinct():
    assert hue_rgb(0) == (255, 0, 0) and hue_rgb(120) == (0, 255, 0) and hue_rgb(240) == (0, 0, 255)
    assert hue_rgb(90) == (128, 255, 0)
    classes = event_classes(4)
    assert [c.root_hz for c in classes] == [220, 440, 880, 1760]  # 220·8^(c/3)
    assert [c.rgb for c in classes] == [(255, 0, 0), (128, 255, 0), (0, 255, 255), (128, 0, 255)]
    assert len({c.motion for c in classes}) == 4


def test_same_seed_same_bytes_other_seed_other_clips(tmp_path):
    cfg = SynthConfig(num_clips=2, classes=3, seconds=2, size=SIZE, seed=3)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthesise(cfg, a, progress=False)
    synthesise(cfg, b, progress=False)
    synthesise(SynthConfig(num_clips=2, classes=3, seconds=2, size=SIZE, seed=4), c, progress=False)
    names = sorted(p.name for p in a.iterdir())
    assert len(names) == 6 and names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    labels = [json.loads(p.read_text())["video_labels"] for p in sorted(a.glob("*.json"))]
    other = [json.loads(p.read_text())["video_labels"] for p in sorted(c.glob("*.json"))]
    assert labels != other


def test_unlabelled_synth_writes_the_same_mp4s_and_nothing_else(tmp_path, capsys):
    args = ["--num-clips", "2", "--classes", "3", "--seconds", "2", "--size", str(SIZE), "--seed", "3"]
    assert shard_synth.main(["--out", str(tmp_path / "full"), *args]) == 0
    assert shard_synth.main(["--out", str(tmp_path / "bare"), *args, "--unlabelled"]) == 0
    assert '"unlabelled": true' in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "bare").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "full").glob("*.mp4")) and len(names) == 2
    for name in names:
        assert (tmp_path / "bare" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


def test_labels_have_avvp_structure_and_balanced_classes():
    cfg = SynthConfig(num_clips=40, classes=5, seconds=10, seed=0)
    classes = event_classes(cfg.classes)
    kinds_seen = set()
    for index in range(cfg.num_clips):
        cls = classes[index % cfg.classes]
        plan = plan_clip(cfg, index, cls)
        pairs = list(zip(plan.video_labels, plan.audio_labels))
        assert len(pairs) == 10 and all(set(p) <= {cls.index, BACKGROUND} for p in pairs)
        assert (cls.index, cls.index) in pairs  # at least one second with the event in both modalities
        kinds_seen |= {(v != BACKGROUND, a != BACKGROUND) for v, a in pairs}
        assert cls.colour in plan.caption and str(cls.root_hz) in plan.caption
    assert kinds_seen == set(KINDS)  # both, audio only, video only, background all occur
    # nuisance is drawn per clip, independently of the class: two clips of one class differ
    assert plan_clip(cfg, 0, classes[0]).nuisance != plan_clip(cfg, 5, classes[0]).nuisance


def test_decoded_seconds_match_their_json_labels(clips):
    """Per second: the saturated pixels' mean colour is the class colour (or there are none), and the
    strongest spectral peak is the class chord's root (or the spectrum is flat)."""
    out, keys, cfg = clips
    classes = event_classes(cfg.classes)
    decode_cfg = DecodeConfig(seconds=SECONDS, frames_per_segment=cfg.fps, frame_size=SIZE, sample_rate=SR)
    checked = {"video_event": 0, "video_background": 0, "audio_event": 0, "audio_background": 0}
    for key in keys:
        meta = json.loads((out / f"{key}.json").read_text())
        mp4 = (out / f"{key}.mp4").read_bytes()
        video = decode_video(mp4, decode_cfg, key).astype(np.float32)  # (t f h w 3)
        audio = decode_audio(mp4, decode_cfg, key)  # (t s)
        for t in range(SECONDS):
            pixels = video[t].reshape(-1, 3)
            saturated = pixels.max(1) - pixels.min(1) > SATURATED_CHROMA
            label = meta["video_labels"][t]
            if label == BACKGROUND:
                assert saturated.sum() == 0, (key, t)
                checked["video_background"] += 1
            else:
                assert saturated.mean() > 0.05, (key, t)  # the square covers 1/9 of the frame
                mean = pixels[saturated].mean(0)
                assert np.abs(mean - classes[label].rgb).max() <= COLOUR_TOLERANCE, (key, t, mean)
                nearest = min(classes, key=lambda c: np.abs(mean - c.rgb).max())
                assert nearest.index == label
                checked["video_event"] += 1
            # central 0.8 s of the second: clear of the 10 ms gate ramps and AAC's transition smear
            x = audio[t][SR // 10: SR - SR // 10]
            spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
            freqs = np.fft.rfftfreq(len(x), 1 / SR)
            band = (freqs > 100) & (freqs < 4000)
            peak = np.argmax(np.where(band, spectrum, 0))
            ratio = spectrum[peak] / np.median(spectrum[band])
            label = meta["audio_labels"][t]
            if label == BACKGROUND:
                assert ratio < TONE_RATIO_BACKGROUND, (key, t, ratio)
                checked["audio_background"] += 1
            else:
                assert ratio > TONE_RATIO_EVENT, (key, t, ratio)
                assert abs(freqs[peak] - classes[label].root_hz) <= HZ_TOLERANCE, (key, t, freqs[peak])
                checked["audio_event"] += 1
    assert all(n > 0 for n in checked.values()), checked


def test_write_then_inspect_round_trip(clips, tmp_path, capsys):
    src, keys, cfg = clips
    out = tmp_path / "shards"
    assert shard_write.main(["--src", str(src), "--out", f"{out}/train-%06d.tar", "--max-count", "4"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["name"], s["samples"]) for s in manifest["shards"]] == [("train-000000.tar", 4), ("train-000001.tar", 2)]
    assert manifest["total"] == 6 and manifest["seconds"] == 6 * SECONDS and manifest["skipped"] == []
    assert manifest["media"]["fps"] == [8.0] and manifest["media"]["width"] == [SIZE]
    assert manifest["media"]["num_classes"] == [4] and manifest["media"]["audio_members"] == ["mp4"]
    assert manifest["members"] == {"mp4+json+txt": 6} and manifest["labelled"] == manifest["captioned"] == 6
    capsys.readouterr()
    assert shard_inspect.main([f"{out}/train-{{000000..000001}}.tar"]) == 0
    printed = capsys.readouterr().out
    assert "samples  6 (6 good, 0 bad)" in printed and f"seconds  {6 * SECONDS:.1f}" in printed
    assert "members  mp4+json+txt: 6 samples" in printed and "bad members: none" in printed
    # several URLs as the shell expands them, and a glob, name the same shards
    listed = [str(out / "train-000000.tar"), str(out / "train-000001.tar")]
    assert shard_inspect.main(listed) == 0 and "samples  6 (6 good, 0 bad)" in capsys.readouterr().out
    assert shard_inspect.main([f"{out}/*.tar"]) == 0 and "shards   2" in capsys.readouterr().out
    assert shard_inspect.main([f"{out}/nothing-*.tar"]) == 2 and "no shard matches" in capsys.readouterr().err
    # clips shorter than the training length are flagged, one line each, naming the clip
    assert shard_inspect.main([*listed, "--seconds", str(SECONDS + 1)]) == 1
    printed = capsys.readouterr().out
    assert "samples  6 (0 good, 6 bad)" in printed and printed.count(": too_short: ") == 6
    assert f"train-000000.tar:{sorted(keys)[0]}: too_short: video {SECONDS:.2f} s" in printed
    assert shard_inspect.main([*listed, "--seconds", str(SECONDS)]) == 0


def test_writer_names_a_bad_clip_or_skips_it(clips, tmp_path, capsys):
    src, keys, _ = clips
    mixed = tmp_path / "src"
    mixed.mkdir()
    for path in src.iterdir():
        (mixed / path.name).write_bytes(path.read_bytes())
    for suffix in ("json", "txt"):
        (mixed / f"broken.{suffix}").write_bytes((src / f"{keys[0]}.{suffix}").read_bytes())
    mp4 = (src / f"{keys[0]}.mp4").read_bytes()
    (mixed / "broken.mp4").write_bytes(mp4[: len(mp4) // 2])  # the moov atom is at the end: cut off
    out = tmp_path / "shards"
    assert shard_write.main(["--src", str(mixed), "--out", f"{out}/train-%06d.tar"]) == 1
    err = capsys.readouterr().err
    assert f"{mixed}/broken.mp4: bad_video" in err
    assert not list(out.glob("*.tar")) and not (out / "manifest.json").exists()
    assert shard_write.main(["--src", str(mixed), "--out", f"{out}/train-%06d.tar", "--skip-bad"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total"] == len(keys)
    assert [(s["key"], s["reason"]) for s in manifest["skipped"]] == [("broken", "bad_video")]
    assert "skipped" in capsys.readouterr().out


def test_bare_mp4s_are_packed_and_inspect_counts_member_sets(clips, tmp_path, capsys):
    """json and txt are optional members: 3 full clips, 2 bare mp4s, 1 mp4 + txt; a broken json or blank
    caption that is present is still an error naming the file (or skipped with --skip-bad)."""
    src, keys, _ = clips
    mixed = tmp_path / "src"
    mixed.mkdir()
    suffixes = {key: ("mp4", "json", "txt") if i < 3 else ("mp4",) if i < 5 else ("mp4", "txt")
                for i, key in enumerate(keys)}
    for key, members in suffixes.items():
        for suffix in members:
            (mixed / f"{key}.{suffix}").write_bytes((src / f"{key}.{suffix}").read_bytes())
    mp4 = (src / f"{keys[0]}.mp4").read_bytes()
    for name, data in (("badjson.mp4", mp4), ("badjson.json", b"{"), ("badtxt.mp4", mp4), ("badtxt.txt", b" \n")):
        (mixed / name).write_bytes(data)
    out = tmp_path / "shards"
    assert shard_write.main(["--src", str(mixed), "--out", f"{out}/train-%06d.tar"]) == 1
    assert f"{mixed}/badjson.json: bad_json: not valid JSON" in capsys.readouterr().err
    assert shard_write.main(["--src", str(mixed), "--out", f"{out}/train-%06d.tar", "--max-count", "4",
                             "--skip-bad"]) == 0
    assert "3 labelled, 4 captioned" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["key"], s["reason"]) for s in manifest["skipped"]] == [("badjson", "bad_json"), ("badtxt", "bad_text")]
    assert f"{mixed}/badtxt.txt: bad_text" in manifest["skipped"][1]["error"]
    assert manifest["total"] == 6 and manifest["members"] == {"mp4+json+txt": 3, "mp4": 2, "mp4+txt": 1}
    assert manifest["labelled"] == 3 and manifest["captioned"] == 4 and manifest["media"]["label_seconds"] == [SECONDS]
    urls = f"{out}/train-{{000000..000001}}.tar"
    assert shard_inspect.main([urls, "--members"]) == 0
    printed = capsys.readouterr().out
    assert "samples  6 (6 good, 0 bad)" in printed and "bad members: none" in printed
    assert "members  mp4+json+txt: 3 samples, mp4: 2 samples, mp4+txt: 1 samples" in printed
    assert "modalities  video+audio+text: 4 samples, video+audio: 2 samples" in printed
    assert f"  {out}/train-000000.tar:{keys[3]}: mp4 (video+audio)\n" in printed
    assert f"  {out}/train-000001.tar:{keys[5]}: mp4+txt (video+audio+text)\n" in printed
