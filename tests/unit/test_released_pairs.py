"""The authors' released retrieval sets (trainer/data/released_pairs.py) through ``python -m shards.convert``: every
layout read as their loaders read it (variable lengths, several captions per item, a numpy-1 pickle), written as
feature shards with every caption, and each kind of bad input refused or skipped with the file and member named."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from released_utils import OpensAFileWhenUnpickled, make_pair_release, pickle_bytes_zip, pickle_zip

from shards.convert import main as convert_main
from trainer.data.features import decode_npy
from trainer.data.released_files import ReleasedFormatError
from trainer.data.released_pairs import PAIR_SETS, PairSet, PairSetConfig, pair_feature


def shard_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """key -> member suffix -> bytes, of every shard in ``out``."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, suffix = member.name.split(".", 1)
                samples.setdefault(key, {})[suffix] = tar.extractfile(member).read()
    return samples


def expected_array(modality: str, array: np.ndarray) -> np.ndarray:
    if modality == "audio":
        return array.astype(np.float32)
    grid = array[None] if array.ndim == 3 else array
    return grid.reshape(len(grid), 49, 512).astype(np.float32)


@pytest.mark.parametrize("kind", PAIR_SETS)
def test_each_retrieval_set_converts_with_every_caption_and_its_own_lengths(tmp_path, kind, capsys):
    release = make_pair_release(tmp_path / "released", kind)
    out = tmp_path / "feats"
    assert convert_main([kind, *release.args, "--out", str(out), "--clips-per-shard", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"--retrieval-data '{kind}=" in printed                      # the summary says how to rank it
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total"] == len(release.features) and manifest["decode"] is None
    assert manifest["released"]["set"] == kind and manifest["released"]["captions"] == (kind != "flickrsound")
    samples = shard_samples(out)
    assert list(samples) == [k.replace(" ", "_") for k in release.features]   # the file's order; keys without blanks
    for item_id, arrays in release.features.items():
        key = item_id.replace(" ", "_")
        for m, array in arrays.items():
            stored = decode_npy(samples[key][f"{m}.npy"], key)
            assert np.array_equal(stored, expected_array(m, array)), (key, m)
            assert list(stored.shape[1:]) == manifest["feature_shapes"][m]
        assert samples[key].get("txt", b"").decode().splitlines() == release.captions[item_id]
        assert "json" not in samples[key]                                 # a retrieval set has no labels
    lengths = {len(a) for arrays in release.features.values() for m, a in arrays.items() if m == "audio" or
               a.ndim == 4}
    assert kind == "flickrsound" or len(lengths) > 1                       # the items' lengths vary


def _clotho(tmp_path: Path):
    return make_pair_release(tmp_path / "released", "clotho", items=4)


def test_bad_members_stop_the_conversion_naming_file_and_member_or_are_skipped_and_counted(tmp_path, capsys):
    release = _clotho(tmp_path)
    audio_dir = Path(release.args[release.args.index("--audio-dir") + 1])
    pickle_bytes_zip(audio_dir / "clip 1.zip", b"\x80\x04\x95", "clip 1.pkl")                       # truncated pickle
    pickle_zip(audio_dir / "clip 2.zip", {"not": "an array"})                                       # a dict
    (audio_dir / "clip 3.zip").write_bytes((audio_dir / "clip 0.zip").read_bytes()[:40])            # truncated zip
    out = tmp_path / "feats"
    assert convert_main(["clotho", *release.args, "--out", str(out), "--no-progress"]) == 1
    assert "clip 1.zip:clip 1.pkl" in capsys.readouterr().err
    # no shard was finished, so nothing binds the directory to the first arguments
    assert convert_main(["clotho", *release.args, "--out", str(out), "--skip-bad", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total"] == 1 and manifest["skipped"] == 3
    errors = {c["key"]: c["error"] for c in manifest["released"]["skipped_clips"]}
    assert "clip 2.zip:clip 2.pkl" in errors["clip_2"] and "not a readable zip" in errors["clip_3"]


def test_a_malicious_pickle_never_runs(tmp_path):
    release = _clotho(tmp_path)
    audio_dir = Path(release.args[release.args.index("--audio-dir") + 1])
    marker = tmp_path / "pwned"
    pickle_zip(audio_dir / "clip 0.zip", OpensAFileWhenUnpickled(str(marker)))
    cfg = PairSetConfig(captions=release.args[1], audio_dir=str(audio_dir))
    with pytest.raises(ReleasedFormatError, match="clip 0.zip:clip 0.pkl"):
        PairSet(cfg, "clotho").read("test", "clip_0")
    assert not marker.exists()


def test_metadata_faults_are_refused_naming_the_file_and_line(tmp_path):
    release = _clotho(tmp_path)
    captions = Path(release.args[1])
    audio_dir = release.args[release.args.index("--audio-dir") + 1]
    lines = captions.read_text(encoding="utf-8-sig").splitlines()
    captions.write_text("\n".join([*lines, lines[1]]) + "\n")                          # an id twice
    with pytest.raises(ReleasedFormatError, match="listed more than once.*clip_0"):
        PairSet(PairSetConfig(captions=str(captions), audio_dir=audio_dir), "clotho")
    captions.write_text("\n".join([lines[0], "x.wav,a,b,,d,e"]) + "\n")                 # an empty caption
    with pytest.raises(ReleasedFormatError, match=r"clotho_captions_evaluation.csv:2: caption_3 is empty"):
        PairSet(PairSetConfig(captions=str(captions), audio_dir=audio_dir), "clotho")
    captions.write_text("name,caption_1\nx.wav,a\n")
    with pytest.raises(ReleasedFormatError, match="no column"):
        PairSet(PairSetConfig(captions=str(captions), audio_dir=audio_dir), "clotho")
    # a caption whose item has no feature file: named when read (skipped with --skip-bad)
    captions.write_text("\n".join([*lines, "gone.wav,a,b,c,d,e"]) + "\n")
    source = PairSet(PairSetConfig(captions=str(captions), audio_dir=audio_dir), "clotho")
    with pytest.raises(ReleasedFormatError, match="gone.zip: file not found"):
        source.read("test", "gone")
    with pytest.raises(ValueError, match="give --captions and --audio-dir"):
        PairSet(PairSetConfig(captions=str(captions)), "clotho")


def test_a_pair_set_with_a_modality_missing_for_an_item_names_it(tmp_path):
    release = make_pair_release(tmp_path / "released", "flickrsound", items=3)
    video_dir = Path(release.args[release.args.index("--video-dir") + 1])
    (video_dir / "fs_1.zip").unlink()
    out = tmp_path / "feats"
    assert convert_main(["flickrsound", *release.args, "--out", str(out), "--skip-bad", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total"] == 2 and "fs_1.zip: file not found" in manifest["released"]["skipped_clips"][0]["error"]


def test_items_of_another_shape_are_refused(tmp_path, capsys):
    release = _clotho(tmp_path)
    audio_dir = Path(release.args[release.args.index("--audio-dir") + 1])
    pickle_zip(audio_dir / "clip 2.zip", np.zeros((3, 64)))
    assert convert_main(["clotho", *release.args, "--out", str(tmp_path / "feats"), "--no-progress"]) == 1
    assert "clip_2: feature shape after the time axis {'audio': [64]}" in capsys.readouterr().err


def test_array_shapes_as_the_authors_release_them():
    assert pair_feature("video", np.ones((7, 7, 512)), "x").shape == (1, 49, 512)          # an image
    assert pair_feature("video", np.ones((3, 7, 7, 512)), "x").shape == (3, 49, 512)
    assert pair_feature("video", np.ones((5, 512)), "x").shape == (5, 512)
    assert pair_feature("audio", np.ones(128), "x").shape == (1, 128)
    for modality, array in (("audio", np.ones((2, 3, 4))), ("video", np.array(["a"])), ("audio", np.ones((0, 4))),
                            ("audio", np.full((2, 4), np.nan))):
        with pytest.raises(ReleasedFormatError, match="x:"):
            pair_feature(modality, array, "x")
