"""``python -m shards.convert``: released sets (tests/support/released_utils.py) -> feature shards that the training
stream reads; resuming an interrupted conversion; refused reruns, bad clips, argument errors and exit codes.
Training trainer/main.py on the result is tests/system/test_convert_job.py."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import fcntl  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402
import tarfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from released_utils import (  # noqa: E402
    VGG_CLASSES, VGG_PROMPTS, OpensAFileWhenUnpickled, fitted_audio, make_ave, make_avvp, make_ucf_side,
    make_vggsound_avel, pickle_bytes_zip, pickle_zip,
)

from shards.convert import MANIFEST_NAME, STATE_NAME, main  # noqa: E402
from trainer.data.stream import ClipStream
from trainer.configs.data import DataConfig
from trainer.data.decode import BACKGROUND  # noqa: E402
from trainer.data.features import decode_feature_sample, feature_layout  # noqa: E402
from trainer.data.manifest import FEATURE_FORMAT, ShardManifest  # noqa: E402
from trainer.data.released import AVVP_CLASSES  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# 6 train, 2 test, 1 val clips, interleaved as a meta CSV may list them; 2 clips a shard: train-000000..000002
SPLITS = ["train", "test", "train", "val", "train", "train", "test", "train", "train"]
TINY_YAML = "launch/configs/backbones/tiny.yaml"


def vgg_args(files, out: Path, *extra: str) -> list[str]:
    return ["vggsound-avel", "--meta", str(files.meta), "--categories", str(files.categories),
            "--audio-dir", str(files.audio_dir), "--video-dir", str(files.video_dir),
            "--label-dir", str(files.label_dir), "--prompts", str(files.prompts), "--out", str(out),
            "--clips-per-shard", "2", "--no-progress", *extra]


def shard_samples(out: Path) -> dict[str, tuple[str, dict[str, bytes]]]:
    """key -> (its shard, {member: bytes}) of every shard in ``out``; a key found twice fails the test."""
    found: dict[str, tuple[str, dict[str, bytes]]] = {}
    for shard in sorted(out.glob("*.tar")):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for info in tar.getmembers():
                key, _, member = info.name.partition(".")
                members.setdefault(key, {})[member] = tar.extractfile(info).read()
        for key, sample in members.items():
            assert key not in found, f"{key} in {found[key][0]} and {shard.name}"
            found[key] = (shard.name, sample)
    return found


def tar_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return make_vggsound_avel(tmp_path_factory.mktemp("released"), SPLITS)


@pytest.fixture(scope="module")
def reference(released, tmp_path_factory) -> Path:
    """The uninterrupted conversion."""
    out = tmp_path_factory.mktemp("reference")
    assert main(vgg_args(released, out)) == 0
    return out


def test_converted_vggsound_avel_holds_the_released_arrays(released, reference, capsys):
    manifest = json.loads((reference / MANIFEST_NAME).read_text())
    assert manifest["format"] == FEATURE_FORMAT
    assert manifest["feature_shapes"] == {"audio": [128], "video": [49, 512]} and manifest["decode"]["seconds"] == 10
    assert [(s["name"], s["samples"], s["split"]) for s in manifest["shards"]] == [
        ("train-000000.tar", 2, "train"), ("train-000001.tar", 2, "train"), ("train-000002.tar", 2, "train"),
        ("val-000000.tar", 1, "val"), ("test-000000.tar", 2, "test")]
    released_info = manifest["released"]
    assert released_info["classes"] == VGG_CLASSES and manifest["total"] == 9 and manifest["skipped"] == 0
    assert released_info["splits"]["train"] == {"urls": "train-{000000..000002}.tar", "shards": 3, "samples": 6}
    short = sum(c.audio.shape[0] < 10 for c in released.clips.values())
    assert released_info["fitted"] == ({"audio/padded": short} if short else {})
    layout = feature_layout(ShardManifest.read(reference), ["audio", "video"])
    samples = shard_samples(reference)
    ids = list(released.clips)
    in_split_order = [k for split in ("train", "val", "test") for k in ids if released.clips[k].split == split]
    shards, read = [s["name"] for s in manifest["shards"]], list(samples)      # read: each shard's keys in tar order
    assert sorted(samples, key=lambda k: (shards.index(samples[k][0]), read.index(k))) == in_split_order
    for key, (shard, sample) in samples.items():
        expected = released.clips[key]
        assert shard.startswith(expected.split)
        clip = decode_feature_sample({"__key__": key, **sample}, layout)   # .npy read with allow_pickle=False
        assert np.array_equal(clip.features["audio"], fitted_audio(expected.audio))
        assert np.array_equal(clip.features["video"], expected.video.reshape(10, 49, 512))
        cls = VGG_CLASSES.index(expected.category)
        assert clip.labels.video.tolist() == np.where(expected.avc[:, 0] == 1, cls, BACKGROUND).tolist()
        assert clip.labels.clip == cls and clip.labels.num_classes == 3
        assert clip.caption == VGG_PROMPTS[expected.category][0]
    # the training stream reads a split (with the manifest next to the shards)
    stream = ClipStream(DataConfig(urls=str(reference / "train-{000000..000002}.tar"), kind="features",
                                   feature_modalities=["audio", "video"], batch_size=3, num_workers=0))
    batches = list(stream)
    assert sorted(k for b in batches for k in b["key"]) == sorted(k for k in ids if released.clips[k].split == "train")
    assert batches[0]["video"].shape == (3, 10, 49, 512) and batches[0]["audio"].shape == (3, 10, 128)


def test_a_run_stopped_by_a_bad_clip_resumes_to_what_an_uninterrupted_run_writes(released, reference, tmp_path,
                                                                                capsys):
    out = tmp_path / "out"
    ids = [k for k in released.clips if released.clips[k].split == "train"]
    missing = released.video_dir / f"{ids[4]}.zip"                 # the first clip of train-000002
    hidden = tmp_path / "hidden.zip"
    shutil.move(missing, hidden)
    try:
        assert main(vgg_args(released, out)) == 1
    finally:
        shutil.move(hidden, missing)
    err = capsys.readouterr().err
    assert f"error: {missing}: file not found\n(2 of 5 shards finished, kept in {out}: fix the input" in err
    assert sorted(tar_bytes(out)) == ["train-000000.tar", "train-000001.tar"]    # whole shards only, no manifest
    assert not (out / MANIFEST_NAME).exists() and not list(out.glob("*.partial"))
    first = (out / "train-000000.tar").stat()
    assert main(vgg_args(released, out)) == 0                      # the same command continues
    assert f"kept 2 finished shards from an earlier run in {out}; 3 to write" in capsys.readouterr().err
    assert (out / "train-000000.tar").stat().st_mtime_ns == first.st_mtime_ns   # finished shards were kept
    assert tar_bytes(out) == tar_bytes(reference)
    assert json.loads((out / MANIFEST_NAME).read_text()) == json.loads((reference / MANIFEST_NAME).read_text())
    assert sorted(shard_samples(out)) == sorted(released.clips)    # every clip exactly once


def test_max_shards_then_a_damaged_shard_and_a_stale_partial_resume_cleanly(released, reference, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(vgg_args(released, out, "--max-shards", "2")) == 0
    assert "stopped after 2 new shards (--max-shards); 3 remain" in capsys.readouterr().out
    assert sorted(tar_bytes(out)) == ["train-000000.tar", "train-000001.tar"] and not (out / MANIFEST_NAME).exists()
    with open(out / "train-000001.tar", "r+b") as handle:           # damaged after it was finished
        handle.truncate(1000)
    (out / "train-000002.tar.partial").write_bytes(b"half a shard")   # what a killed run leaves
    assert main(vgg_args(released, out)) == 0
    assert tar_bytes(out) == tar_bytes(reference) and not list(out.glob("*.partial"))
    assert main(vgg_args(released, out)) == 0                      # a finished conversion: nothing to do
    assert tar_bytes(out) == tar_bytes(reference)


def test_a_rerun_with_other_arguments_or_inputs_is_refused(released, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(vgg_args(released, out, "--max-shards", "1")) == 0
    assert main(vgg_args(released, out)[:-3] + ["--clips-per-shard", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds a conversion started with other arguments (clips_per_shard: 2 then, 3 now)" in err
    assert main(vgg_args(released, out, "--dtype", "float16")) == 2
    assert "dtype: \"float32\" then, \"float16\" now" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(released.root, copy)
    edited = copy / released.meta.name
    edited.write_text(edited.read_text().replace(",val\n", ",test\n"))
    moved = vgg_args(released, out)
    moved[moved.index("--meta") + 1] = str(edited)
    assert main(moved) == 2
    err = capsys.readouterr().err
    assert f'config.meta: "{released.meta}" then, "{edited}" now' in err
    assert f'metadata_sha256.{edited}: null then, "' in err
    with open(out / "convert.lock") as held:                       # another conversion is writing there
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(vgg_args(released, out)) == 2
    assert "another shards.convert is writing there" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "train-000000.tar").write_bytes(b"")
    assert main(vgg_args(released, foreign)) == 2
    assert "holds ['train-000000.tar'] but no convert-state.json" in capsys.readouterr().err


def test_bad_clips_fail_naming_file_and_member_or_are_skipped_and_listed(tmp_path, capsys):
    files = make_vggsound_avel(tmp_path / "src", ["train"] * 5)
    ids = list(files.clips)
    marker = tmp_path / "marker"
    trap = files.audio_dir / f"{ids[1]}.zip"
    pickle_bytes_zip(trap, pickle.dumps(OpensAFileWhenUnpickled(str(marker))), f"{ids[1]}.pkl")
    (files.label_dir / f"{ids[2]}.zip").unlink()
    pickle_zip(files.video_dir / f"{ids[3]}.zip", np.zeros((10, 512), np.float32))
    assert main(vgg_args(files, tmp_path / "strict")) == 1
    err = capsys.readouterr().err
    assert f"error: {trap}:{ids[1]}.pkl: not a pickled numpy array (UnpicklingError: refused global" in err
    assert "\n(no shard of 3 was finished: fix the input" in err and "kept" not in err   # the first shard failed
    assert main(vgg_args(files, tmp_path / "lenient", "--skip-bad")) == 0
    assert not marker.exists()
    summary = capsys.readouterr()
    manifest = json.loads((tmp_path / "lenient" / MANIFEST_NAME).read_text())
    assert manifest["total"] == 2 and manifest["skipped"] == 3
    skipped = {c["key"]: c["error"] for c in manifest["released"]["skipped_clips"]}
    assert skipped[ids[1]].startswith(f"{trap}:{ids[1]}.pkl: not a pickled numpy array")
    assert skipped[ids[2]] == f"{files.label_dir / ids[2]}.zip: file not found"
    assert skipped[ids[3]].startswith(f"{files.video_dir / ids[3]}.zip:{ids[3]}.pkl: video features of shape (10, 512)")
    assert f"skipped train/{ids[2]}: {files.label_dir / ids[2]}.zip: file not found" in summary.out
    assert f"skipping train/{ids[3]}" in summary.err
    assert sorted(shard_samples(tmp_path / "lenient")) == sorted([ids[0], ids[4]])


def test_argument_errors_exit_2_and_write_nothing(released, tmp_path, capsys):
    out = tmp_path / "out"
    gone = vgg_args(released, out)
    gone[gone.index("--meta") + 1] = str(tmp_path / "nope.csv")
    assert main(gone) == 2
    assert f"not found: --meta {tmp_path / 'nope.csv'}" in capsys.readouterr().err
    assert main(vgg_args(released, out, "--clips-per-shard", "0")) == 2
    both = ["ucf-vggsound", "--meta", str(released.meta), "--categories", str(released.categories),
            "--audio-dir", str(released.audio_dir), "--video-dir", str(released.video_dir), "--out", str(out)]
    assert main(both) == 2
    assert "give --video-dir (the UCF101 side) or --audio-dir (the VGGSound side)" in capsys.readouterr().err
    no_prompts = [a for a in vgg_args(released, out) if a not in ("--prompts", str(released.prompts))]
    assert main(no_prompts + ["--text-backbones", TINY_YAML]) == 2
    assert "have none (vggsound-avel: give --prompts)" in capsys.readouterr().err
    ave = ["ave", "--root", str(tmp_path), "--splits", "train", "--out", str(out)]
    assert main(ave) == 2
    assert f"not found: --labels {tmp_path / 'labels.h5'}, --order (train) {tmp_path / 'train_order.h5'}" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:                  # argparse: a required argument missing
        main(["avvp", "--out", str(out)])
    assert exit_info.value.code == 2
    assert not out.exists() or not any(out.iterdir())


def test_the_81k_list_converts_to_unlabelled_samples(tmp_path, capsys):
    files = make_vggsound_avel(tmp_path / "src", ["train"] * 3)
    files.meta.write_text("id\n" + "".join(f"{k}.mp4\n" for k in files.clips))
    args = ["vggsound-avel", "--meta", str(files.meta), "--audio-dir", str(files.audio_dir), "--video-dir",
            str(files.video_dir), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["released"]["num_classes"] == 0 and manifest["released"]["labels"].startswith("none")
    assert all(set(s) == {"audio.npy", "video.npy"} for _, s in shard_samples(tmp_path / "out").values())
    assert main(args[:-3] + ["--label-dir", str(files.label_dir), "--out", str(tmp_path / "x")]) == 2
    assert "AVC labels and prompts need the clips' categories" in capsys.readouterr().err


def test_avvp_conversion_keeps_per_modality_labels_and_every_event(tmp_path):
    files = make_avvp(tmp_path / "src")
    out = tmp_path / "out"
    assert main(["avvp", "--audio-annotations", str(files.audio_annotations), "--visual-annotations",
                 str(files.visual_annotations), "--categories", str(files.categories), "--audio-dir",
                 str(files.audio_dir), "--video-dir", str(files.video_dir), "--split", "test", "--out", str(out),
                 "--no-progress"]) == 0
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert [s["name"] for s in manifest["shards"]] == ["test-000000.tar"] and manifest["released"]["fitted"] == {
        "audio/padded": 3}
    samples = shard_samples(out)
    labels = json.loads(samples["IgN7v8nWmx8_30_40"][1]["json"])
    speech, violin = AVVP_CLASSES.index("Speech"), AVVP_CLASSES.index("Violin_fiddle")
    assert labels["audio_events"][0] == [speech, violin] and labels["video_events"] == [[violin]] * 10
    assert labels["audio_labels"][0] == speech and labels["num_classes"] == 25
    layout = feature_layout(ShardManifest.read(out), ["audio", "video"])
    clip = decode_feature_sample({"__key__": "KSRjje7GH44_60_70", **samples["KSRjje7GH44_60_70"][1]}, layout)
    assert clip.labels.video.tolist() == [BACKGROUND] * 10 and clip.labels.audio.tolist()[0] == speech


def test_ave_and_ucf_conversions(tmp_path):
    ave = make_ave(tmp_path / "ave")
    assert main(["ave", "--root", str(ave.root), "--out", str(tmp_path / "ave-out"), "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "ave-out" / MANIFEST_NAME).read_text())
    assert {s: v["samples"] for s, v in manifest["released"]["splits"].items()} == {"train": 3, "val": 1, "test": 2}
    layout = feature_layout(ShardManifest.read(tmp_path / "ave-out"), ["audio", "video"])
    name, sample = shard_samples(tmp_path / "ave-out")["00005"]
    clip = decode_feature_sample({"__key__": "00005", **sample}, layout)
    assert name == "test-000000.tar" and np.array_equal(clip.features["audio"], ave.audio[5])
    assert clip.labels.video.tolist() == ave.per_second[5].tolist() and manifest["released"]["num_classes"] == 28
    ucf = make_ucf_side(tmp_path / "ucf")
    assert main(["ucf-vggsound", "--meta", str(ucf.meta), "--categories", str(ucf.categories), "--video-dir",
                 str(ucf.video_dir), "--out", str(tmp_path / "ucf-out"), "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "ucf-out" / MANIFEST_NAME).read_text())
    assert manifest["feature_shapes"] == {"video": [49, 512]} and list(manifest["released"]["splits"]) == ["all"]
    assert manifest["released"]["fitted"] == {"video/padded": 1, "video/truncated": 1}
    assert all(set(s) == {"video.npy", "json"} for _, s in shard_samples(tmp_path / "ucf-out").values())


def test_text_backbones_encode_each_prompt_into_text_features(released, tmp_path):
    out = tmp_path / "out"
    assert main(vgg_args(released, out, "--text-backbones", TINY_YAML)) == 0
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["feature_shapes"]["text"] == [32] and manifest["backbones"]["text"]["family"] == "bert"
    assert json.loads((out / STATE_NAME).read_text())["arguments"]["text_backbone"]["family"] == "bert"
    stream = ClipStream(DataConfig(urls=str(out / "train-{000000..000002}.tar"), kind="features",
                                   feature_modalities=["audio", "video", "text"], batch_size=6, num_workers=0,
                                   shuffle_buffer=0))
    (batch,) = list(stream)
    by_caption: dict[str, list] = {}
    for caption, tokens, mask in zip(batch["caption"], batch["text"], batch["text_mask"]):
        by_caption.setdefault(caption, []).append(tokens[mask])
    assert len(by_caption) == 3
    for same in by_caption.values():                                # one prompt, one encoding
        assert all(np.array_equal(same[0], t) for t in same)
