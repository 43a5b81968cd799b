"""Samples of any subset of modalities: image+text, audio+text, image+audio and video+text folders -> shards.write ->
the stream (2 ranks x 2 workers), the decoders' bad inputs by reason, captions from CSV/JSONL files, and the image
backbone."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shards import inspect as shard_inspect  # noqa: E402
from shards.media import encode_mp4, encode_wav  # noqa: E402
from shards.write import BadClip, read_captions, write_shards  # noqa: E402
from trainer.backbones import BackboneConfig, BackbonesConfig, FrozenBackbones, backbones_config_from_dict  # noqa: E402
from trainer.data.collate import COUNTER_NAMES
from trainer.data.stream import ClipStream
from trainer.data.media_decoders import CorruptSample
from trainer.data.decode import decode_sample
from trainer.configs.data import DataConfig, DecodeConfig
from trainer.data.decode import MEMBER_ORDER, pick_caption, probe_sample  # noqa: E402
from trainer.data.stream import saved_counters  # noqa: E402

SECONDS, SIZE, SR, FPS = 2, 32, 16000, 8
DECODE = DecodeConfig(seconds=SECONDS, frames_per_segment=2, frame_size=SIZE, sample_rate=SR)
SHAPES = {   # folder kind -> (modalities, member suffixes of each stem)
    "image+text": (("image", "text"), ("jpg", "txt")),
    "audio+text": (("audio", "text"), ("wav", "txt")),
    "image+audio": (("audio", "image"), ("png", "flac")),   # modalities in SAMPLE_MODALITIES order
    "video+text": (("video", "text"), ("mp4", "txt")),
}
STEMS = 8


def image_bytes(colour: int, fmt: str = "JPEG", size: tuple[int, int] = (40, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (colour, 255 - colour, 64)).save(buf, format=fmt)
    return buf.getvalue()


def tone(seconds: float, hz: float) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def flac_bytes(audio: np.ndarray) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=SR)
        stream.layout = "mono"
        pcm = np.round(audio * 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SR
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return buf.getvalue()


def member_bytes(suffix: str, i: int) -> bytes:
    colour = 30 * i
    if suffix in ("jpg", "png"):
        return image_bytes(colour, "JPEG" if suffix == "jpg" else "PNG")
    if suffix == "wav":
        return encode_wav(tone(SECONDS, 200 + 50 * i), SR)
    if suffix == "flac":
        return flac_bytes(tone(SECONDS, 200 + 50 * i))
    if suffix == "mp4":
        return encode_mp4(np.full((SECONDS * FPS, SIZE, SIZE, 3), colour, np.uint8), None, FPS, SR)
    return f"caption {i} first\ncaption {i} second\n".encode()


def write_folder(root: Path, suffixes: tuple[str, ...], stems: int = STEMS) -> Path:
    root.mkdir(parents=True)
    for i in range(stems):
        for suffix in suffixes:
            (root / f"item{i:02d}.{suffix}").write_bytes(member_bytes(suffix, i))
    return root


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shape_shards(request, tmp_path_factory) -> tuple[str, tuple[str, ...], dict]:
    """One shape's folder written as 4 shards of 2 samples: (urls, modalities, manifest)."""
    modalities, suffixes = SHAPES[request.param]
    root = tmp_path_factory.mktemp(request.param.replace("+", "_"))
    src = write_folder(root / "src", suffixes)
    manifest = write_shards(src, f"{root}/out/train-%06d.tar", max_count=2, progress=False, modalities=modalities)
    return f"{root}/out/train-{{000000..000003}}.tar", modalities, manifest.to_json()


def test_each_shape_goes_through_the_stream_once_per_sample_on_2_ranks_x_2_workers(shape_shards):
    urls, modalities, manifest = shape_shards
    assert manifest["total"] == STEMS and manifest["modalities"] == {"+".join(modalities): STEMS}   # canonical order
    assert manifest["captions"] == (2 * STEMS if "text" in modalities else 0)
    cfg = DataConfig(urls=urls, batch_size=2, num_workers=2, shuffle_buffer=0, decode=DECODE)
    keys = []
    for rank in range(2):
        for batch in ClipStream(cfg, rank=rank, world_size=2, modalities=modalities):
            keys += [k for k, pad in zip(batch["key"], batch["is_pad"].tolist()) if not pad]
            media = {m for m in ("video", "audio", "image") if m in batch}
            assert media == set(modalities) - {"text"}
            t = SECONDS if {"video", "audio"} & media else 1
            if "image" in media:
                assert batch["image"].shape == (2, SIZE, SIZE, 3) and batch["image"].dtype == torch.uint8
            if "audio" in media:
                assert batch["audio"].shape == (2, SECONDS, SR)
            if "video" in media:
                assert batch["video"].shape == (2, SECONDS, 2, SIZE, SIZE, 3)
            assert batch["video_labels"].shape == (2, t)
            if "text" in modalities:
                assert all(c.startswith("caption ") for c in batch["caption"])
            assert batch["skipped"].sum() == 0
    assert sorted(keys) == [f"item{i:02d}" for i in range(STEMS)]


def test_shards_inspect_reports_the_modalities_per_sample(shape_shards, capsys):
    urls, modalities, _ = shape_shards
    assert shard_inspect.main([urls, "--members", "--seconds", str(SECONDS)]) == 0
    out = capsys.readouterr().out
    assert f"modalities  {'+'.join(modalities)}: {STEMS} samples" in out
    suffixes = next(members for kind, members in SHAPES.values() if kind == modalities)
    members = "+".join(m for m in MEMBER_ORDER if m in suffixes)
    assert f"train-000000.tar:item00: {members} ({'+'.join(modalities)})" in out


def sample(**members: bytes) -> dict:
    return {"__key__": "k1", "__url__": "shard.tar", **members}


def test_each_bad_input_is_skipped_with_its_reason_naming_shard_key_and_member():
    jpg, txt = image_bytes(10), b"a caption"
    silent = encode_mp4(np.zeros((SECONDS * FPS, SIZE, SIZE, 3), np.uint8), tone(SECONDS, 300), FPS, SR)
    audio_only_mp4 = _audio_only_mp4(tone(SECONDS, 300))
    header_only_wav = encode_wav(np.zeros(0, np.float32), SR)
    cases = [   # (modalities, members, reason, the member named)
        (("image", "text"), {"jpg": b"\xff\xd8 not a jpeg", "txt": txt}, "bad_image", "k1.jpg"),
        (("image", "text"), {"png": _zero_width_png(), "txt": txt}, "bad_image", "k1.png"),
        (("image", "text"), {"jpg": jpg[: len(jpg) // 2], "txt": txt}, "bad_image", "k1.jpg"),
        (("image", "text"), {"jpg": image_bytes(1, "GIF"), "txt": txt}, "bad_image", "k1.jpg"),   # not JPEG/PNG/WebP
        (("audio", "text"), {"wav": header_only_wav, "txt": txt}, "bad_audio", "k1.wav"),
        (("audio", "text"), {"wav": encode_wav(tone(0.5, 300), SR), "txt": txt}, "too_short", "k1.wav"),
        (("image", "text"), {"jpg": jpg, "txt": b"  \n \n"}, "bad_text", "k1.txt"),
        (("image", "text"), {"jpg": jpg, "txt": b"\xff\xfe caption"}, "bad_text", "k1.txt"),
        (("image", "text"), {"jpg": jpg, "txt": b""}, "empty_member", "k1.txt"),
        (("image", "text"), {"jpg": jpg}, "missing_member", "k1.txt"),
        (("video", "text"), {"mp4": audio_only_mp4, "txt": txt}, "bad_video", "k1.mp4"),
        (("video", "audio"), {"mp4": silent[: len(silent) // 3]}, "bad_video", "k1.mp4"),
        (("image", "text"), {"jpg": jpg, "mp4": silent, "txt": txt}, "conflicting_members", "k1.jpg+mp4"),
        (("image", "text"), {"jpg": jpg, "png": image_bytes(2, "PNG"), "txt": txt}, "conflicting_members",
         "k1.jpg+png"),
        (("image", "audio"), {"wav": encode_wav(tone(SECONDS, 300), SR)}, "missing_member", "k1.jpg|jpeg|png|webp"),
    ]
    for modalities, members, reason, where in cases:
        with pytest.raises(CorruptSample) as info:
            decode_sample(sample(**members), DECODE, modalities)
        assert (info.value.reason, info.value.where) == (reason, f"shard.tar:{where}"), (modalities, list(members))
    short = encode_mp4(np.zeros((FPS, SIZE, SIZE, 3), np.uint8), None, FPS, SR)     # 1 s where 2 are decoded
    with pytest.raises(CorruptSample, match="too_short: the clip has 1 s, training reads at least 2 s"):
        decode_sample(sample(mp4=short, txt=txt), DECODE, ("video", "text"))


def _zero_width_png() -> bytes:
    """A PNG whose header says 0 x 4 pixels (Pillow cannot write one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 4, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _audio_only_mp4(audio: np.ndarray) -> bytes:
    """An mp4 holding an AAC track and no video stream."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        track = container.add_stream("aac", rate=SR)
        track.layout = "mono"
        for start in range(0, len(audio), 1024):
            frame = av.AudioFrame.from_ndarray(audio[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = SR, start
            for packet in track.encode(frame):
                container.mux(packet)
        for packet in track.encode():
            container.mux(packet)
    return buf.getvalue()


def test_an_image_member_decodes_to_the_frame_size_and_members_the_job_does_not_read_are_ignored():
    png = image_bytes(200, "PNG", size=(50, 20))
    decoded = decode_sample(sample(png=png, txt=b"one\ntwo", wav=encode_wav(tone(SECONDS, 300), SR)), DECODE,
                            ("image", "text"))
    assert set(decoded.media) == {"image"} and decoded.media["image"].shape == (SIZE, SIZE, 3)
    assert tuple(decoded.media["image"][SIZE // 2, SIZE // 2]) == (200, 55, 64)      # the colour, resized
    assert decoded.ignored_members == 1 and decoded.caption == "one"                   # the wav; the first caption
    assert decoded.labels.video.shape == (1,)                                           # one segment
    info = probe_sample(sample(png=png, txt=b"one\ntwo"))
    assert (info.modalities, info.width, info.height, info.captions, info.seconds) == (("image", "text"), 50, 20, 2,
                                                                                       None)


def test_training_picks_one_caption_per_epoch_by_a_seeded_digest_and_uses_each_over_epochs():
    captions = ["a", "b", "c"]
    picks = [pick_caption(captions, "item07", seed) for seed in range(30)]
    assert picks == [pick_caption(captions, "item07", seed) for seed in range(30)]     # the same on every run
    assert set(picks) == set(captions)
    assert pick_caption(captions, "item07", None) == "a"                               # coding: the first


def test_the_stream_state_keeps_skip_counters_by_name_and_reads_the_older_positional_list():
    old = [1, 2, 3, 4, 5, 6, 7, 8, 9]   # missing_member ... bad_feature, unreadable, ignored_member
    counters = dict(zip(COUNTER_NAMES, saved_counters(old).tolist()))
    assert counters["missing_member"] == 1 and counters["bad_feature"] == 7 and counters["ignored_member"] == 9
    assert counters["bad_image"] == counters["too_short"] == counters["conflicting_members"] == 0
    assert saved_counters(counters).tolist() == [counters[n] for n in COUNTER_NAMES]
    with pytest.raises(ValueError, match="skip reasons \\['bad_smell'\\]"):
        saved_counters({"bad_smell": 1})


def test_writer_reads_captions_from_csv_tsv_and_jsonl_as_the_corpora_ship_them(tmp_path):
    clotho = tmp_path / "clotho.csv"   # Clotho: file_name plus caption_1..caption_5, a BOM, a quoted comma
    clotho.write_text('\ufefffile_name,caption_1,caption_2\nitem00.wav,"a dog, barking",a dog barks\n'
                      "item01.wav,rain falls,rain falls\n", encoding="utf-8")
    assert read_captions(clotho, "file_name", ["caption_1", "caption_2"]) == {
        "item00": ["a dog, barking", "a dog barks"], "item01": ["rain falls"]}
    flickr = tmp_path / "results.csv"   # Flickr30k: image_name| comment_number| comment, one row per caption
    flickr.write_text("image_name| comment_number| comment\nitem00.jpg| 0| two men\nitem00.jpg| 1| two  men\n"
                      "item00.jpg| 2| men\n", encoding="utf-8")
    assert read_captions(flickr, "image_name", ["comment"], "|") == {"item00": ["two men", "men"]}
    audiocaps = tmp_path / "train.jsonl"
    audiocaps.write_text('{"youtube_id": "item00", "caption": "a bell rings"}\n\n'
                         '{"youtube_id": "item00", "caption": ["a bell", "bells"]}\n', encoding="utf-8")
    assert read_captions(audiocaps, "youtube_id", ["caption"]) == {"item00": ["a bell rings", "a bell", "bells"]}
    broken = tmp_path / "broken.csv"
    broken.write_text("file_name,caption\nitem00.wav,a,b\n", encoding="utf-8")
    with pytest.raises(BadClip, match=f"{broken}:2: 3 fields, the header has 2"):
        read_captions(broken, "file_name", ["caption"])
    with pytest.raises(BadClip, match=f"{clotho}:2: no key column 'key'"):
        read_captions(clotho, "key", ["caption_1"])
    with pytest.raises(BadClip, match="no column 'caption_9'"):
        read_captions(clotho, "file_name", ["caption_9"])


def test_writer_pairs_stems_refuses_unpaired_ones_by_name_and_skips_them_with_skip_bad(tmp_path):
    src = write_folder(tmp_path / "src", ("wav",), stems=3)
    (src / "lonely.jpg").write_bytes(image_bytes(5))
    captions = tmp_path / "captions.csv"
    captions.write_text("file_name,caption\nitem00.wav,one\nitem00.wav,uno\nitem01.wav,two\nghost.wav,boo\n",
                        encoding="utf-8")
    table = read_captions(captions, "file_name", ["caption"])
    out = f"{tmp_path}/out/train-%06d.tar"
    with pytest.raises(BadClip) as info:
        write_shards(src, out, progress=False, modalities=("audio", "text"), captions=table)
    assert "3 stems do not pair audio+text: ghost (captions but no file), item02 (no text), lonely (no audio or " \
           "text)" in str(info.value)
    manifest = write_shards(src, out, progress=False, modalities=("audio", "text"), captions=table,
                            skip_bad=True).to_json()
    assert manifest["total"] == 2 and manifest["captions"] == 3 and manifest["modalities"] == {"audio+text": 2}
    assert [(s["key"], s["reason"]) for s in manifest["skipped"]] == [("ghost", "unpaired"), ("item02", "unpaired"),
                                                                        ("lonely", "unpaired")]
    members = {s["__key__"]: s["txt"] for s in wds.WebDataset(f"{tmp_path}/out/train-000000.tar", shardshuffle=False)}
    assert members == {"item00": b"one\nuno", "item01": b"two"}
    (src / "item00.txt").write_text("sidecar")
    with pytest.raises(BadClip, match="1 stems have both a .txt file and rows in the caption file: item00"):
        write_shards(src, out, progress=False, modalities=("audio", "text"), captions=table)
    (src / "a.b.wav").write_bytes(b"x")
    with pytest.raises(BadClip, match="a dot before their suffix.*a.b.wav"):
        write_shards(src, out, progress=False, modalities=("audio",))


def test_the_image_backbone_is_the_video_family_on_each_image_as_a_one_frame_segment():
    config = {"family": "clip_vision", "pooling": "patch",
              "config": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "intermediate_size": 64}}
    backbones = FrozenBackbones(backbones_config_from_dict({"image": config, "video": config}))
    images = torch.randint(0, 256, (3, SIZE, SIZE, 3), dtype=torch.uint8)
    features = backbones.encode({"image": images, "video": images[:, None, None]})
    assert features["image"].shape == (3, 1, 16, 32) and backbones.feature_shapes()["image"] == (16, 32)
    assert torch.equal(features["image"], features["video"])
    with pytest.raises(ValueError, match="backbones.image: frames_per_segment must be null"):
        backbones_config_from_dict({"image": config | {"frames_per_segment": 2}})
    with pytest.raises(ValueError, match="family 'ast' encodes audio, not image"):
        BackbonesConfig(image=BackboneConfig(family="ast", config={})).validate()


@pytest.mark.parametrize("kind", ["image+text", "audio+text", "image+audio", "video+text"])
def test_synthetic_pairs_carry_the_clip_worlds_events_and_pack_as_their_modalities(kind, tmp_path):
    from shards.synth import PAIR_KINDS, SynthConfig, event_classes, synthesise

    assert kind in PAIR_KINDS
    cfg = SynthConfig(num_clips=4, classes=3, seconds=SECONDS, size=SIZE, seed=5, pairs=kind)
    keys = synthesise(cfg, tmp_path / "items", progress=False)
    classes = event_classes(3)
    modalities = kind.split("+")
    for key in keys:
        meta = json.loads((tmp_path / "items" / f"{key}.json").read_text())
        cls = classes[meta["clip_label"]]
        assert meta["pairs"] == kind
        if "image" in modalities:                      # the class's square in its colour, as in the clips
            image = np.asarray(Image.open(tmp_path / "items" / f"{key}.jpg"))
            saturated = image[(image.max(-1).astype(int) - image.min(-1)) > 150]
            assert len(saturated) > 0 and np.abs(saturated.mean(0) - cls.rgb).max() < 30
        if "audio" in modalities:                      # the class's chord root is the strongest peak of an event second
            wave = np.frombuffer((tmp_path / "items" / f"{key}.wav").read_bytes()[44:], "<i2")
            second = meta["audio_labels"].index(cls.index)
            assert np.argmax(np.abs(np.fft.rfft(wave[second * SR:(second + 1) * SR]))) == cls.root_hz
        if "text" in modalities:                       # two captions about the paired modality only
            captions = (tmp_path / "items" / f"{key}.txt").read_text().splitlines()
            assert len(captions) == 2 and len(set(captions)) == 2
            partner = modalities[0]
            assert all((f"{cls.root_hz} hz" in c) == (partner == "audio") for c in captions)
            assert all((cls.colour in c) == (partner != "audio") for c in captions)
        segments = 1 if set(modalities) <= {"image", "text"} else SECONDS
        assert len(meta["video_labels"]) == len(meta["audio_labels"]) == segments
    manifest = write_shards(tmp_path / "items", f"{tmp_path}/out/train-%06d.tar", progress=False,
                            modalities=tuple(modalities)).to_json()
    assert manifest["total"] == 4 and manifest["labelled"] == 4


def test_a_single_segment_modality_is_repeated_along_its_partners_segments_in_training_batches():
    from trainer.models.inputs import repeat_single_segments

    image, text = torch.randn(2, 1, 16, 8), torch.randn(2, 10, 8)
    mask = torch.ones(2, 10, dtype=torch.bool)
    out = repeat_single_segments({"image": image, "text": text, "text_mask": mask}, ("image", "text"))
    assert out["image"].shape == (2, 10, 16, 8) and torch.equal(out["image"][:, 7], image[:, 0])
    assert out["text"] is text and out["text_mask"] is mask
    same = {"audio": torch.randn(2, 10, 8), "video": torch.randn(2, 10, 16, 8)}
    assert repeat_single_segments(same, ("audio", "video")) == same                      # nothing to repeat
    mixed = {"image": image, "audio": torch.randn(2, 10, 8), "text": torch.randn(2, 7, 8)}
    assert repeat_single_segments(mixed, ("image", "audio", "text"))["image"].shape[1] == 1   # no one length


def test_clip_label_probes_run_between_audio_and_video_or_else_between_every_pair():
    from trainer.eval.downstream import clip_directions

    assert clip_directions(("audio", "video", "text")) == [("audio", "video"), ("video", "audio")]
    assert clip_directions(("image", "text")) == [("image", "text"), ("text", "image")]
    assert clip_directions(("audio", "text")) == [("audio", "text"), ("text", "audio")]


def test_a_job_whose_paired_modalities_have_different_segment_counts_fails_at_config_time():
    from trainer.configs.load import ConfigError, load_config
    from trainer.job import job_backbones
    from trainer.configs.job import JobConfig

    demo = Path(__file__).resolve().parents[2] / "launch" / "configs" / "demo.yaml"
    tiny = demo.parent / "backbones" / "tiny.yaml"
    ok = load_config(JobConfig, demo, [f"backbones={tiny}", "model.modalities=[audio,text]", "data.decode.seconds=10"])
    assert sorted(m for m, _ in job_backbones(ok).items()) == ["audio", "text"]
    bad = load_config(JobConfig, demo, [f"backbones={tiny}", "model.modalities=[audio,text]", "data.decode.seconds=4"])
    with pytest.raises(ConfigError, match=r"audio \(data.decode.seconds\): 4, text \(max_text_length\): 10.*"
                                          r"max_text_length: 4"):
        job_backbones(bad)
    image = load_config(JobConfig, demo, [f"backbones={demo.parent / 'backbones' / 'tiny_image_text.yaml'}",
                                          "model.modalities=[image,text]", "data.decode.seconds=4"])
    job_backbones(image)                                      # an image is one segment, repeated along the tokens
    fccid = load_config(JobConfig, demo.parent / "demo_fccid.yaml", ["data.decode.seconds=4", f"backbones={tiny}"])
    job_backbones(fccid)                                      # FCCID meets text at the coarse level


def test_the_stream_names_each_skipped_sample_on_stderr_and_counts_it_by_reason(tmp_path, capfd):
    shard = tmp_path / "train-000000.tar"
    with wds.TarWriter(str(shard), encoder=False) as sink:
        sink.write({"__key__": "good", "jpg": image_bytes(10), "txt": b"a caption"})
        sink.write({"__key__": "broken", "jpg": b"\xff\xd8 not a jpeg", "txt": b"a caption"})
        sink.write({"__key__": "lonely", "jpg": image_bytes(20)})
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": [{"name": shard.name, "samples": 3}]}))
    stream = ClipStream(DataConfig(urls=str(shard), batch_size=1, num_workers=0, shuffle_buffer=0, decode=DECODE),
                        rank=0, world_size=1, modalities=("image", "text"))
    delivered = [(key, bool(pad)) for b in stream for key, pad in zip(b["key"], b["is_pad"])]
    assert delivered == [("good", False), ("good", True), ("good", True)]   # the epoch's 3 batches, padded
    err = capfd.readouterr().err
    assert f"[trainer.data] skipping {shard}:broken.jpg: bad_image: Pillow cannot decode it" in err
    assert f"[trainer.data] skipping {shard}:lonely.txt: missing_member" in err
    assert {k: v for k, v in stream.skip_totals().items() if v} == {"bad_image": 1, "missing_member": 1}
