"""The readers of the CMG authors' released layouts (trainer/data/released.py) on tiny files written in exactly those
layouts (tests/support/released_utils.py): the restricted unpickler, the zip-of-pickle sets (VGGSound-AVEL,
UCF101 <-> VGGSound, AVVP), the AVE h5 set and the class lists of the cross-dataset protocols."""

from __future__ import annotations

import dataclasses
import os
import pickle
import pickletools
import zipfile

import numpy as np
import pytest
from released_utils import (
    AVVP_EVENTS, VGG_CLASSES, VGG_PROMPTS, OpensAFileWhenUnpickled, fitted_audio, make_ave, make_avvp, make_ucf_side,
    make_vggsound_avel, numpy1_pickle, pickle_bytes_zip, pickle_zip,
)

from trainer.data.decode import BACKGROUND
from trainer.data.released import (
    AVE_AVVP_CLASS_MAP, AVE_AVVP_SHARED_CLASSES, AVE_CLASSES, AVVP_CLASSES, AVEConfig, AVESet, AVVPConfig, AVVPSet,
    SharedClass, ZipSet, ZipSetConfig, feature_array, fit_seconds, read_annotations, read_categories, read_prompts,
    read_shared_classes, shared_class_map,
)
from trainer.data.released_files import ReleasedFormatError, read_zip_array, unpickle_array

# --- the restricted unpickler ---


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.bool_])
def test_arrays_of_every_protocol_and_numeric_dtype_load(protocol, dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    loaded = unpickle_array(pickle.dumps(array, protocol=protocol), "a.zip:a.pkl")
    assert loaded.dtype == array.dtype and np.array_equal(loaded, array)
    fortran = np.asfortranarray(array)
    assert np.array_equal(unpickle_array(pickle.dumps(fortran, protocol=protocol), "f"), fortran)


def _global_opcodes(data: bytes) -> set[str]:
    """The ``module name`` of every GLOBAL opcode of a pickle (protocols 0-3 name their globals that way)."""
    return {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_numpy_1_pickles_load(protocol):
    """A release written by Python 3.7 with numpy 1.x names numpy.core.multiarray (numpy 2 writes numpy._core): the
    fixture's bytes (``numpy1_pickle``) name the numpy-1 modules only, and they load."""
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = numpy1_pickle(array, protocol)
    assert b"numpy.core.multiarray" in data and b"_reconstruct" in data and b"numpy._core" not in data
    if protocol < 4:
        assert _global_opcodes(data) == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"} | \
            ({"_codecs encode"} if protocol == 2 else set())
    assert np.array_equal(unpickle_array(data, "old.pkl"), array)


@pytest.mark.parametrize("write", [numpy1_pickle, lambda obj: pickle.dumps(obj, protocol=3)], ids=["numpy1", "numpy2"])
def test_a_pickled_scalar_is_reported_as_what_it_holds(write):
    data = write(np.float64(2.5))
    assert {"numpy.core.multiarray scalar", "numpy._core.multiarray scalar"} & _global_opcodes(data)
    with pytest.raises(ReleasedFormatError, match="s.pkl: holds a float64, not a numpy array"):
        unpickle_array(data, "s.pkl")


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray", "numpy"])
def test_other_numpy_globals_are_refused(module):
    """Only the reconstructors are admitted: numpy's file readers (``fromfile``, ``load``) are not."""
    data = b"\x80\x02c" + module.encode() + b"\nfromfile\nX\x08\x00\x00\x00/etc/foo\x85R."
    with pytest.raises(ReleasedFormatError, match=rf"refused global {module}.fromfile"):
        unpickle_array(data, "f.pkl")


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker, control = tmp_path / "unpickled-marker", tmp_path / "control-marker"
    pickle.loads(pickle.dumps(OpensAFileWhenUnpickled(str(control))))     # the trap works under a plain load
    assert control.exists()
    path = tmp_path / "audio" / "zip" / "vid00.zip"
    path.parent.mkdir(parents=True)
    pickle_bytes_zip(path, pickle.dumps(OpensAFileWhenUnpickled(str(marker))), "vid00.pkl")
    with pytest.raises(ReleasedFormatError, match=rf"{path}:vid00.pkl: .*refused global (io|builtins).open"):
        read_zip_array(path)
    assert not marker.exists()


def test_system_call_and_object_payloads_are_refused(tmp_path):
    class RunsAShell:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'shell-marker'}",)

    with pytest.raises(ReleasedFormatError, match=r"x.pkl: .*refused global (posix|os|nt)\.system"):
        unpickle_array(pickle.dumps(RunsAShell()), "x.pkl")
    assert not (tmp_path / "shell-marker").exists()
    with pytest.raises(ReleasedFormatError, match="o.pkl: holds a object array, not a numeric one"):
        unpickle_array(pickle.dumps(np.array([1, "a"], dtype=object)), "o.pkl")
    with pytest.raises(ReleasedFormatError, match="d.pkl: holds a dict, not a numpy array"):
        unpickle_array(pickle.dumps({"audio": 1}), "d.pkl")
    with pytest.raises(ReleasedFormatError, match=r"c.pkl: .*refused _codecs.encode to 'zlib'"):
        unpickle_array(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.", "c.pkl")
    with pytest.raises(ReleasedFormatError, match=r"t.pkl: not a pickled numpy array \((EOFError|UnpicklingError)"):
        unpickle_array(pickle.dumps(np.zeros(4))[:-9], "t.pkl")


def test_zip_problems_name_the_file_and_member(tmp_path):
    with pytest.raises(ReleasedFormatError, match=rf"{tmp_path / 'gone.zip'}: file not found"):
        read_zip_array(tmp_path / "gone.zip")
    (tmp_path / "garbage.zip").write_bytes(b"PK\x03\x04 this is no zip")
    with pytest.raises(ReleasedFormatError, match=r"garbage.zip: not a readable zip \(BadZipFile"):
        read_zip_array(tmp_path / "garbage.zip")
    pickle_zip(tmp_path / "ok.zip", np.ones((10, 128), np.float32))
    data = bytearray((tmp_path / "ok.zip").read_bytes())
    data[60:70] = b"\xff" * 10                                  # inside the deflated member
    (tmp_path / "flipped.zip").write_bytes(bytes(data))
    with pytest.raises(ReleasedFormatError, match=r"flipped.zip: not a readable zip"):
        read_zip_array(tmp_path / "flipped.zip")
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as archive:
        archive.writestr("a.pkl", pickle.dumps(np.zeros(2)))
        archive.writestr("b.pkl", pickle.dumps(np.zeros(2)))
    with pytest.raises(ReleasedFormatError, match=r"two.zip: expected one .pkl member, found \['a.pkl', 'b.pkl'\]"):
        read_zip_array(tmp_path / "two.zip")
    with zipfile.ZipFile(tmp_path / "none.zip", "w") as archive:
        archive.writestr("readme.txt", "no features here")
    with pytest.raises(ReleasedFormatError, match=r"none.zip: expected one .pkl member, found none"):
        read_zip_array(tmp_path / "none.zip")
    with zipfile.ZipFile(tmp_path / "extra.zip", "w") as archive:   # other members are ignored, as the authors do
        archive.writestr("notes.txt", "x")
        archive.writestr("dir/feat.pkl", pickle.dumps(np.arange(3.0)))
    array, where = read_zip_array(tmp_path / "extra.zip")
    assert array.tolist() == [0.0, 1.0, 2.0] and where == f"{tmp_path / 'extra.zip'}:dir/feat.pkl"


# --- arrays ---

def test_fit_seconds_repeats_the_last_row_or_cuts():
    short = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    padded, how = fit_seconds(short)
    assert how == "padded" and padded.shape == (10, 2) and (padded[7:] == short[-1]).all()
    assert np.array_equal(padded, fitted_audio(short))
    cut, how = fit_seconds(np.zeros((12, 2)))
    assert how == "truncated" and cut.shape == (10, 2)
    same, how = fit_seconds(np.zeros((10, 2)))
    assert how is None


def test_feature_array_shapes():
    video, how = feature_array("video", np.random.rand(10, 7, 7, 512), "v")
    assert video.shape == (10, 49, 512) and video.dtype == np.float32 and how is None
    with pytest.raises(ReleasedFormatError, match=r"v.zip:v.pkl: video features of shape \(10, 49, 512\), expected "
                                                  r"\(t>=1, 7, 7, 512\)"):
        feature_array("video", np.zeros((10, 49, 512)), "v.zip:v.pkl")
    with pytest.raises(ReleasedFormatError, match=r"audio features of shape \(0, 128\)"):
        feature_array("audio", np.zeros((0, 128)), "a")
    with pytest.raises(ReleasedFormatError, match="a: audio features hold NaN"):
        feature_array("audio", np.full((10, 128), np.nan), "a")


# --- VGGSound-AVEL and UCF101 <-> VGGSound ---

def vgg_config(files, **changes) -> ZipSetConfig:
    cfg = ZipSetConfig(str(files.meta), str(files.categories), str(files.audio_dir), str(files.video_dir),
                       str(files.label_dir), str(files.prompts))
    return dataclasses.replace(cfg, **changes)


def test_vggsound_avel_reader(tmp_path):
    files = make_vggsound_avel(tmp_path, ["train", "test", "train", "val", "train"])
    source = ZipSet(vgg_config(files), "vggsound-avel")
    ids = list(files.clips)
    assert source.classes == VGG_CLASSES and source.modalities == ("audio", "video") and source.captions
    assert source.splits() == {"train": [ids[0], ids[2], ids[4]], "test": [ids[1]], "val": [ids[3]]}
    for key, expected in files.clips.items():
        clip = source.read(expected.split, key)
        assert np.array_equal(clip.features["audio"], fitted_audio(expected.audio))
        assert clip.fitted == ({"audio": "padded"} if expected.audio.shape[0] < 10 else {})
        assert np.array_equal(clip.features["video"], expected.video.reshape(10, 49, 512))
        assert np.array_equal(clip.features["video"][:, 3 * 7 + 5], expected.video[:, 3, 5])   # patch = row * 7 + col
        cls = VGG_CLASSES.index(expected.category)
        per_second = np.where(expected.avc[:, 0] == 1, cls, BACKGROUND)
        assert clip.labels.video.tolist() == clip.labels.audio.tolist() == per_second.tolist()
        assert clip.labels.clip == cls and clip.labels.num_classes == 3
        assert clip.caption == VGG_PROMPTS[expected.category][0]      # the first prompt, as the authors read it
    # without label zips every second carries the class; without prompts no caption; audio alone
    bare = ZipSet(vgg_config(files, label_dir="", prompts="", video_dir=""), "vggsound-avel")
    clip = bare.read("train", ids[0])
    assert set(clip.features) == {"audio"} and clip.caption is None and not bare.captions
    assert clip.labels.video.tolist() == [VGG_CLASSES.index(files.clips[ids[0]].category)] * 10


def test_vggsound_avel_bad_clips_name_the_file(tmp_path):
    files = make_vggsound_avel(tmp_path, ["train"] * 3)
    ids = list(files.clips)
    source = ZipSet(vgg_config(files), "vggsound-avel")
    (files.video_dir / f"{ids[0]}.zip").unlink()
    with pytest.raises(ReleasedFormatError, match=rf"{files.video_dir / ids[0]}.zip: file not found"):
        source.read("train", ids[0])
    pickle_zip(files.audio_dir / f"{ids[1]}.zip", np.zeros((10, 64)))
    with pytest.raises(ReleasedFormatError, match=rf"{ids[1]}.zip:{ids[1]}.pkl: audio features of shape \(10, 64\)"):
        source.read("train", ids[1])
    pickle_zip(files.label_dir / f"{ids[2]}.zip", np.full((10, 1), 2))
    with pytest.raises(ReleasedFormatError, match=rf"label/zip/{ids[2]}.zip:{ids[2]}.pkl: AVC label"):
        source.read("train", ids[2])


def test_metadata_problems(tmp_path):
    files = make_vggsound_avel(tmp_path, ["train"] * 3)
    files.categories.write_text("playing cello\nrope skipping\n")
    with pytest.raises(ReleasedFormatError, match=r"vggsound-avel40k.csv: categories missing from .*\['dog barking'\]"):
        ZipSet(vgg_config(files), "vggsound-avel")
    files.categories.write_text("\n".join(VGG_CLASSES) + "\n")
    files.prompts.write_text("label,prompt\nplaying cello,A cello.\n")
    with pytest.raises(ReleasedFormatError, match=r"Prompts.csv: no prompt for the categories \['dog barking', 'rope"):
        ZipSet(vgg_config(files), "vggsound-avel")
    rows = files.meta.read_text().splitlines()
    files.meta.write_text("\n".join(rows + [rows[1]]) + "\n")
    with pytest.raises(ReleasedFormatError, match=r"ids listed more than once"):
        ZipSet(vgg_config(files, prompts=""), "vggsound-avel")
    files.meta.write_text("category,video_id,split\ndog barking,a.b,train\n")
    with pytest.raises(ReleasedFormatError, match=r"ids \['a.b'\] cannot be shard keys"):
        ZipSet(vgg_config(files, prompts=""), "vggsound-avel")
    files.meta.write_text("category,name\nx,y\n")
    with pytest.raises(ReleasedFormatError, match=r"no column video_id \(or id\) in the header \['category', 'name'\]"):
        ZipSet(vgg_config(files, prompts=""), "vggsound-avel")
    (tmp_path / "cats.txt").write_text("a\n\nb\n")
    with pytest.raises(ReleasedFormatError, match=r"cats.txt: blank class name on lines \[2\]"):
        read_categories(tmp_path / "cats.txt")
    (tmp_path / "ok.txt").write_text(" a \nb\n\n")
    assert read_categories(tmp_path / "ok.txt") == ["a", "b"]


def test_metadata_csvs_as_spreadsheets_write_them(tmp_path):
    """A UTF-8 BOM (Excel's "CSV UTF-8") is dropped and quoted commas are kept; an unquoted comma inside a category
    name is refused with the file and line, not reported as a bad id three fields later."""
    files = make_vggsound_avel(tmp_path, ["train"] * 2)
    ids = list(files.clips)
    rows = files.meta.read_text(encoding="utf-8").splitlines()
    files.meta.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    assert files.meta.read_bytes().startswith(b"\xef\xbb\xbf")
    source = ZipSet(vgg_config(files, prompts=""), "vggsound-avel")
    assert source.splits() == {"train": ids}
    files.categories.write_text("Male speech, man speaking\ndog barking\n", encoding="utf-8")
    files.meta.write_text(f'category,video_id,split\n"Male speech, man speaking",{ids[0]},train\n'
                          f"dog barking,{ids[1]},train,\n", encoding="utf-8-sig")     # a trailing empty field
    source = ZipSet(vgg_config(files, prompts=""), "vggsound-avel")
    assert source.read("train", ids[0]).labels.clip == 0 and source.read("train", ids[1]).labels.clip == 1
    files.meta.write_text(f"category,video_id,split\ndog barking,{ids[1]},train\n"
                          f"Male speech, man speaking,{ids[0]},train\n", encoding="utf-8-sig")
    with pytest.raises(ReleasedFormatError, match=rf"{files.meta}:3: 4 fields, expected 3 \(category, video_id, "
                                                  r"split\) \(a comma inside a value needs quotes\)"):
        ZipSet(vgg_config(files, prompts=""), "vggsound-avel")
    files.meta.write_text(f"category,video_id,split\ndog barking,{ids[1]}\n")
    with pytest.raises(ReleasedFormatError, match=rf"{files.meta}:2: 2 fields, expected 3 \(category, video_id, "
                                                  r"split\)$"):
        ZipSet(vgg_config(files, prompts=""), "vggsound-avel")
    files.prompts.write_text("\ufefflabel,prompt\ndog barking,A dog barks, then again.\n", encoding="utf-8")
    with pytest.raises(ReleasedFormatError, match=r"Prompts.csv:2: 3 fields, expected 2 .*a comma inside a value"):
        read_prompts(files.prompts)
    files.prompts.write_text('label,prompt\ndog barking,"A dog barks, then again."\n', encoding="utf-8")
    assert read_prompts(files.prompts) == {"dog barking": "A dog barks, then again."}
    annotations = tmp_path / "audio.tsv"
    annotations.write_text("filename\tonset\toffset\tevent_labels\nIgN7v8nWmx8_30_40\t0\t1\tSpeech\tDog\n")
    with pytest.raises(ReleasedFormatError, match=rf"{annotations}:2: 5 fields, expected 4 .*a tab inside a value"):
        read_annotations(annotations)


def test_the_81k_list_gives_unlabelled_clips(tmp_path):
    files = make_vggsound_avel(tmp_path, ["train"] * 2)
    ids = list(files.clips)
    files.meta.write_text("id\n" + "".join(f"{k}.mp4\n" for k in ids))     # video_name_vggsound81k_checked.csv
    source = ZipSet(vgg_config(files, categories="", label_dir="", prompts=""), "vggsound-avel")
    assert source.splits() == {"all": ids} and source.classes == []
    clip = source.read("all", ids[1])
    assert not clip.labels.labelled and clip.caption is None
    assert np.array_equal(clip.features["video"], files.clips[ids[1]].video.reshape(10, 49, 512))
    with pytest.raises(ValueError, match="has no category column: it cannot take --categories"):
        ZipSet(vgg_config(files, label_dir="", prompts=""), "vggsound-avel")
    with pytest.raises(ValueError, match="AVC labels and prompts need the clips' categories"):
        ZipSet(vgg_config(files, categories=""), "vggsound-avel")
    files.meta.write_text("category,video_id\ndog barking,x\n")
    with pytest.raises(ValueError, match="names categories: give their class list"):
        ZipSet(vgg_config(files, categories="", label_dir="", prompts=""), "vggsound-avel")


def test_ucf_side_pads_and_cuts_video_and_labels_every_second(tmp_path):
    files = make_ucf_side(tmp_path)
    source = ZipSet(ZipSetConfig(str(files.meta), str(files.categories), video_dir=str(files.video_dir)),
                    "ucf-vggsound")
    assert source.modalities == ("video",) and list(source.splits()) == ["all"]
    for key, expected in files.clips.items():
        clip = source.read("all", key)
        t = expected.video.shape[0]
        assert clip.fitted == ({"video": "padded"} if t < 10 else {"video": "truncated"} if t > 10 else {})
        grid = expected.video[:10] if t >= 10 else np.concatenate([expected.video, np.repeat(expected.video[-1:],
                                                                                             10 - t, 0)])
        assert np.array_equal(clip.features["video"], grid.reshape(10, 49, 512))
        assert clip.labels.video.tolist() == [["PlayingCello", "JumpRope"].index(expected.category)] * 10


# --- AVVP ---

def test_avvp_reader_keeps_per_modality_events(tmp_path):
    files = make_avvp(tmp_path)
    source = AVVPSet(AVVPConfig(str(files.audio_annotations), str(files.visual_annotations), str(files.categories),
                                str(files.audio_dir), str(files.video_dir), split="test"))
    assert source.splits() == {"test": list(AVVP_EVENTS)}
    speech, violin, blender = (AVVP_CLASSES.index(c) for c in ("Speech", "Violin_fiddle", "Blender"))
    clip = source.read("test", "IgN7v8nWmx8_30_40")
    assert np.array_equal(clip.features["video"], files.video["IgN7v8nWmx8"].reshape(10, 49, 512))
    assert np.array_equal(clip.features["audio"], fitted_audio(files.audio["IgN7v8nWmx8"]).astype(np.float32))
    assert clip.fitted == {"audio": "padded"}
    # audio: Speech 0..1 and 5..9, Violin 0..5, 6..8, 9..10; the json keeps every class of a second
    assert clip.events["audio"] == [[speech, violin], [violin], [violin], [violin], [violin], [speech],
                                    [speech, violin], [speech, violin], [speech], [violin]]
    assert clip.events["video"] == [[violin]] * 10
    assert clip.labels.audio.tolist() == [speech, violin, violin, violin, violin, speech, speech, speech, speech,
                                          violin]   # the first annotated event of the second
    assert clip.labels.video.tolist() == [violin] * 10 and clip.labels.clip == violin
    only_audio = source.read("test", "KSRjje7GH44_60_70")         # absent from the visual file: no visible event
    assert only_audio.labels.video.tolist() == [BACKGROUND] * 10
    assert only_audio.labels.audio.tolist() == [speech] * 8 + [blender] * 2 and only_audio.labels.clip == speech
    empty_span = source.read("test", "H5WcJwyjxIg_2_12")            # audio 0..0: annotated, covers no second
    dog, cat = AVVP_CLASSES.index("Dog"), AVVP_CLASSES.index("Cat")
    assert empty_span.labels.audio.tolist() == [BACKGROUND] * 10
    assert empty_span.events["video"][4] == [dog, cat] and empty_span.labels.clip == dog


def test_avvp_annotation_problems(tmp_path):
    bad = tmp_path / "a.tsv"
    bad.write_text("filename\tonset\toffset\tevent_labels\nx_1_2\t0,3\t2\tDog,Cat\n")
    with pytest.raises(ReleasedFormatError, match=r"a.tsv:2: 2 labels, 2 onsets, 1 offsets"):
        read_annotations(bad)
    bad.write_text("filename\tonset\toffset\tevent_labels\nx_1_2\t4\t11\tDog\n")
    with pytest.raises(ReleasedFormatError, match=r"a.tsv:2: Dog spans 4..11, outside 0..10"):
        read_annotations(bad)
    files = make_avvp(tmp_path / "avvp")
    files.categories.write_text("Speech\nDog\n")
    with pytest.raises(ReleasedFormatError, match=r"audio_checked_combined.csv: event labels missing from"):
        AVVPSet(AVVPConfig(str(files.audio_annotations), str(files.visual_annotations), str(files.categories),
                           str(files.audio_dir)))


# --- AVE ---

def test_ave_reader(tmp_path):
    files = make_ave(tmp_path)
    source = AVESet(AVEConfig(str(tmp_path)))
    assert source.classes == list(AVE_CLASSES)
    assert source.splits() == {s: [f"{i:05d}" for i in order] for s, order in files.orders.items()}
    clip = source.read("test", "00003")
    assert np.array_equal(clip.features["video"], files.video[3].reshape(10, 49, 512))
    assert np.array_equal(clip.features["audio"], files.audio[3])
    assert clip.labels.video.tolist() == clip.labels.audio.tolist() == files.per_second[3].tolist()
    (tmp_path / "cats.txt").write_text("a\nb\n")
    with pytest.raises(ReleasedFormatError, match=r"labels.h5: 28 event columns \+ background, but 2 class names"):
        AVESet(AVEConfig(str(tmp_path), categories=str(tmp_path / "cats.txt"))).read("val", "00001")


# --- class lists ---

def test_ave_avvp_shared_classes():
    assert len(AVE_CLASSES) == 28 and len(AVVP_CLASSES) == 25 and len(AVE_AVVP_SHARED_CLASSES) == 12
    assert {s.first for s in AVE_AVVP_SHARED_CLASSES} <= set(AVE_CLASSES)
    assert {s.second for s in AVE_AVVP_SHARED_CLASSES} <= set(AVVP_CLASSES)
    assert AVE_AVVP_CLASS_MAP == {2: 3, 4: 1, 6: 19, 7: 13, 10: 5, 13: 18, 14: 20, 17: 10, 19: 22, 21: 8, 22: 4, 26: 16}
    # by name: any class order of the converted files gives the right indices
    reordered = list(reversed(AVVP_CLASSES))
    assert shared_class_map(AVE_AVVP_SHARED_CLASSES, AVE_CLASSES, reordered)[2] == reordered.index("Dog")
    with pytest.raises(ValueError, match=r"missing from the class lists: \['Dog'\]"):
        shared_class_map([SharedClass("dog", "Bark", "Dog")], AVE_CLASSES, ["Cat"])


def test_ucf_vggsound_shared_classes_pair_line_by_line(tmp_path):
    files = make_ucf_side(tmp_path)
    shared = read_shared_classes(files.categories, tmp_path / "VGGSoundsameUCF101.txt")
    assert shared == (SharedClass("PlayingCello", "PlayingCello", "playing cello"),
                      SharedClass("JumpRope", "JumpRope", "rope skipping"))
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(ReleasedFormatError, match="lists 2 classes, .*three.txt 3"):
        read_shared_classes(files.categories, tmp_path / "three.txt")
