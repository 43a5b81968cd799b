"""Codes out (trainer/pretrained.py, trainer/programs/encode.py): a checkpoint of every task, written by the main
job's loop on clip shards, encodes clips through ``CMGModel.encode`` and ``cmg encode`` to exactly the codes evaluation
gives the same clips; ``save_pretrained`` -> ``from_pretrained`` keeps them, loading safetensors and JSON only, without
the run directory; ``cmg encode`` writes shards or a table, resumes, and splits its work over DataLoader workers. Over
two ranks: tests/dist/test_encode_dist.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import webdataset as wds
from encode_utils import MODELS, clip_corpus, train_run
from job_utils import REPO

from trainer import CMGModel
from trainer.data.features import decode_npy
from trainer.programs.encode import main as encode_main
from trainer.programs.encode import read_codes
from trainer.eval.frozen_codes import encode_split, load_pretrained, read_shard_features
from trainer.eval.downstream import _backbones, data_config
from trainer.configs.eval import SourceConfig
from trainer.job import read_run_config
from trainer.pretrained import CONFIG_FILE, EXPORT_FORMAT, WEIGHTS_FILE

pytestmark = pytest.mark.usefixtures("one_thread")
TASKS = sorted(MODELS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return clip_corpus(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {task: train_run(root / task, corpus, task) for task in TASKS}


@pytest.fixture(scope="module")
def evaluation_codes(runs):
    """Per task: {modality: (n t) codes} as ``python -m trainer.programs.evaluate`` encodes the run's own (labelled)
    shards, clips in key order, with -1 past a caption's end."""
    out = {}
    for task, run in runs.items():
        pretrained, job = load_pretrained(run), read_run_config(run)
        modalities = pretrained.model.downstream_modalities
        data = read_shard_features(data_config(SourceConfig(), job), modalities,
                                   _backbones(job.backbones, pretrained, modalities))
        split = encode_split(pretrained.model, data)
        masks = {m: data.features[f"{m}_mask"] for m in modalities if f"{m}_mask" in data.features}
        out[task] = {m: codes.masked_fill(~masks[m], -1) if m in masks else codes for m, codes in split.indices.items()}
        out[task]["keys"] = data.keys
    return out


def _inputs(model: CMGModel, corpus) -> dict:
    streams = set(model.streams.values())
    return {s: corpus.captions() if s == "text" else [str(p) for p in corpus.mp4s()] for s in streams}


@pytest.mark.parametrize("task", TASKS)
def test_api_encodes_paths_bytes_and_tensors_to_the_codes_evaluation_gives(task, runs, corpus, evaluation_codes):
    expected = evaluation_codes[task]
    assert expected["keys"] == corpus.keys
    model = CMGModel.from_pretrained(runs[task])
    assert model.task == task and sorted(model.modalities) == sorted(k for k in expected if k != "keys")
    out = model.encode(**_inputs(model, corpus), batch_size=3)
    for m, codes in out.items():
        assert torch.equal(codes.codes, expected[m]), m
        n, t = codes.codes.shape
        assert codes.quantized.shape == codes.semantic.shape == (n, t, model.codebook.shape[1])
        real = codes.codes >= 0
        assert torch.equal(codes.quantized[real], model.codebook[codes.codes[real]])
    # raw mp4 bytes and decoded tensors give the same codes as the files
    audio = [p.read_bytes() for p in corpus.mp4s()[:2]]
    assert torch.equal(model.encode(audio=audio)["audio"].codes, expected["audio"][:2])
    from trainer.data.media_decoders import decode_audio
    decoded = torch.stack([torch.from_numpy(decode_audio(b, model.decode, "x")) for b in audio])
    assert torch.equal(model.encode(audio=decoded)["audio"].codes, expected["audio"][:2])
    assert torch.equal(model.encode(audio=decoded[0])["audio"].codes, expected["audio"][:1])


def test_encode_refuses_streams_the_model_has_not(runs, corpus):
    model = CMGModel.from_pretrained(runs["unicode"])
    with pytest.raises(ValueError, match=r"encodes no \['text'\]"):
        model.encode(text="a red square")
    with pytest.raises(ValueError, match="give video="):
        model.encode()
    with pytest.raises(ValueError, match=r"video: a decoded item is \(t f h w 3\)"):
        model.encode(video=torch.zeros(2, 3, dtype=torch.uint8))


@pytest.mark.parametrize("task", TASKS)
def test_save_pretrained_round_trip_gives_identical_codes_from_safetensors_and_json_alone(task, runs, corpus, tmp_path,
                                                                                         monkeypatch):
    model = CMGModel.from_pretrained(runs[task])
    before = model.encode(**_inputs(model, corpus))
    model.save_pretrained(tmp_path / "export")
    # the run directory is not needed: move it away while the export is read
    moved = tmp_path / "moved-run"
    shutil.move(runs[task], moved)
    try:
        def no_pickles(*args, **kwargs):
            raise AssertionError("torch.load called: the export must load without pickles")

        monkeypatch.setattr(torch, "load", no_pickles)
        again = CMGModel.from_pretrained(tmp_path / "export")
        after = again.encode(**_inputs(again, corpus))
    finally:
        monkeypatch.undo()
        shutil.move(moved, runs[task])
    assert before.keys() == after.keys()
    for m in before:
        for name in ("codes", "quantized", "semantic"):
            assert torch.equal(getattr(before[m], name), getattr(after[m], name)), (m, name)
    config = json.loads((tmp_path / "export" / CONFIG_FILE).read_text())
    assert config["format"] == EXPORT_FORMAT and config["task"] == task
    assert config["model_config"] == load_pretrained(runs[task]).meta.model_config
    assert config["codebook"] == {"tensor": "quantizer.codebook", "num_codes": 8, "dim": 16}
    assert {s: r["weights_sha256"] for s, r in config["backbones"].items()} == \
        {s: r["weights_sha256"] for s, r in load_pretrained(runs[task]).meta.backbones.items()}
    state = safetensors.torch.load_file(tmp_path / "export" / WEIGHTS_FILE)
    assert torch.equal(state["quantizer.codebook"], model.codebook)
    if "text" in config["backbones"]:   # the local vocabulary travels with the export
        assert config["backbones"]["text"]["backbone_config"]["tokenizer"].startswith("./backbones/text/")


def test_from_pretrained_refuses_backbones_that_differ_from_the_recorded_ones(runs, tmp_path):
    model = CMGModel.from_pretrained(runs["unicode"])
    model.save_pretrained(tmp_path / "export")
    config = json.loads((tmp_path / "export" / CONFIG_FILE).read_text())
    config["backbones"]["audio"]["backbone_config"]["seed"] = 1     # other random weights
    (tmp_path / "export" / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="audio backbone differs in weights_sha256"):
        CMGModel.from_pretrained(tmp_path / "export")


# ---------------------------------------------------------------------- devices, dtypes, modes, repr, file modes
def test_to_and_eval_return_the_model_and_float32_gives_the_codes_evaluation_gives(runs, corpus, evaluation_codes):
    model = CMGModel.from_pretrained(runs["unicode"], dtype=torch.float32)
    assert model.to("cpu") is model and model.to(torch.float32) is model and model.to("cpu", torch.float32) is model
    assert model.eval() is model and model.train(False) is model
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    out = model.encode(**_inputs(model, corpus))
    for m, codes in out.items():
        assert torch.equal(codes.codes, evaluation_codes["unicode"][m]), m
    with pytest.raises(RuntimeError, match=r"inference-only .* run\.init_from"):
        model.train()
    with pytest.raises(TypeError, match="one device and/or one dtype"):
        model.to(torch.float16, torch.bfloat16)
    with pytest.raises(ValueError, match="computes in one of"):
        CMGModel.from_pretrained(runs["unicode"], dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("task", TASKS)
def test_a_lower_dtype_gives_codes_of_the_same_shape_mostly_equal_from_the_float32_codebook(task, dtype, runs, corpus,
                                                                                         evaluation_codes):
    model = CMGModel.from_pretrained(runs[task], dtype=dtype)
    assert model.dtype == dtype
    for name, tensor in [*model.model.named_parameters(), *model.model.named_buffers()]:
        if tensor.is_floating_point():   # the codebook and its statistics stay float32; every other tensor is cast
            assert tensor.dtype == (torch.float32 if name.startswith("quantizer.") else dtype), name
    out = model.encode(**_inputs(model, corpus))
    for m, codes in out.items():
        expected = evaluation_codes[task][m]
        real = expected >= 0
        assert codes.codes.shape == expected.shape and torch.equal(codes.codes >= 0, real), m
        assert codes.semantic.dtype == codes.quantized.dtype == torch.float32
        assert torch.equal(codes.quantized[real], model.codebook[codes.codes[real]])
        # measured on these clips: docs/codes.md, "Devices and dtypes"; a broken cast agrees about 1 time in 8
        assert (codes.codes[real] == expected[real]).float().mean() >= 0.9, m
    # a float32 model cast afterwards is the same model
    cast = CMGModel.from_pretrained(runs[task]).to(dtype)
    assert all(torch.equal(c.codes, out[m].codes) for m, c in cast.encode(**_inputs(cast, corpus)).items())


def test_repr_names_task_modalities_codebook_backbones_device_dtype_and_source(runs, tmp_path):
    model = CMGModel.from_pretrained(runs["fccid"])
    checkpoint = str(load_pretrained(runs["fccid"]).checkpoint.resolve())
    assert repr(model) == (
        "CMGModel(task='fccid', modalities=['audio', 'video', 'text'], codebook=8 codes x 16 dims, "
        "backbones={'video': 'clip_vision (random init, seed 0) float32', 'audio': 'ast (random init, seed 0) "
        f"float32', 'text': 'bert (random init, seed 0) float32'}}, device=cpu, dtype=float32, "
        f"loaded_from={str(runs['fccid'])!r}, checkpoint={checkpoint!r}, step=2)")
    model.save_pretrained(tmp_path / "export")
    again = CMGModel.from_pretrained(tmp_path / "export", dtype="bfloat16")
    assert f"dtype=bfloat16, loaded_from={str(tmp_path / 'export')!r}, checkpoint={checkpoint!r}, step=2)" in \
        repr(again)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the device error needs a machine without CUDA")
def test_an_unavailable_device_is_refused_naming_it_before_anything_is_read(runs, corpus, tmp_path, capsys):
    refused = r"device 'cuda' is not available here \(torch\.cuda\.is_available\(\) is False; this machine has " \
              r"cpu\); use device='cpu'"
    with pytest.raises(ValueError, match=refused):    # before the path is read: it does not exist
        CMGModel.from_pretrained(tmp_path / "no-such-run", device="cuda")
    model = CMGModel.from_pretrained(runs["unicode"])
    with pytest.raises(ValueError, match=refused.replace("'cuda'", "'cuda:1'")):
        model.to("cuda:1")
    assert model.device == torch.device("cpu") and model.backbones.device == torch.device("cpu")
    out = tmp_path / "codes.npz"
    assert encode_main([str(runs["unicode"]), str(corpus.mp4s()[0]), "--out", str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(refused, err) and not out.exists(), err


def test_a_device_torch_does_not_know_is_refused_by_the_api_and_cmg_encode(runs, corpus, tmp_path, capsys):
    with pytest.raises(ValueError, match="device 'gpu' is not a device torch knows"):
        CMGModel.from_pretrained(runs["unicode"], device="gpu")
    assert encode_main([str(runs["unicode"]), str(corpus.mp4s()[0]), "--out", str(tmp_path / "c.npz"),
                        "--device", "gpu"]) == 2
    assert "is not a device torch knows" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda_moves_the_model_and_the_backbones_in_their_dtype(runs, corpus, evaluation_codes):
    model = CMGModel.from_pretrained(runs["unicode"])
    assert model.to("cuda") is model and model.device == torch.device("cuda", torch.cuda.current_device())
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.backbones.parameters())
    out = model.encode(**_inputs(model, corpus))
    assert all(codes.codes.shape == evaluation_codes["unicode"][m].shape for m, codes in out.items())


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_exports_and_codes_are_created_with_the_mode_the_umask_gives(umask, mode, runs, corpus, tmp_path):
    """Not safetensors' 0o600 whatever the umask: teammates on a shared cluster read the export (atomic_write.py)."""
    before = os.umask(umask)
    try:
        export = CMGModel.from_pretrained(runs["comet"]).save_pretrained(tmp_path / "export")
        out = tmp_path / "codes.npz"
        assert encode_main([str(export), str(corpus.clips), "--out", str(out), "--num-workers", "0",
                            "--no-progress"]) == 0
    finally:
        os.umask(before)
    written = [p for p in [*export.rglob("*"), *tmp_path.glob("codes*")] if p.is_file()]
    assert {p.name for p in written} >= {WEIGHTS_FILE, CONFIG_FILE, "tiny-wordpiece-vocab.txt", "codes.npz",
                                         "codes.manifest.json"}
    assert {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in written} == \
        {p.relative_to(tmp_path).as_posix(): oct(mode) for p in written}


def test_export_of_fp32_backbones_loads_with_bf16_backbones(runs, corpus, tmp_path):
    """A CPU export (backbones computed in fp32) loads where its backbones compute in bf16 (``dtype: auto`` on a GPU;
    set explicitly here): the recorded fingerprints name the weights, not the compute dtype. The codes are not compared:
    bf16 features may round across a codebook boundary (tests/gpu/test_gpu_check.py compares them on a GPU)."""
    model = CMGModel.from_pretrained(runs["unicode"])
    model.save_pretrained(tmp_path / "export")
    config = json.loads((tmp_path / "export" / CONFIG_FILE).read_text())
    for record in config["backbones"].values():
        assert record["backbone_config"]["dtype"] in ("auto", "float32")
        record["backbone_config"]["dtype"] = "bfloat16"
    (tmp_path / "export" / CONFIG_FILE).write_text(json.dumps(config))
    again = CMGModel.from_pretrained(tmp_path / "export")
    assert {e.dtype for e in again.backbones.encoders.values()} == {torch.bfloat16}
    assert again.describe()["backbones"] == model.describe()["backbones"]
    codes = again.encode(**_inputs(again, corpus))
    assert codes.keys() == set(model.modalities)


def _cli_codes(path: Path, modalities) -> dict[str, dict[str, np.ndarray]]:
    """{key: {modality: codes}} of a cmg encode output (a directory of shards, or a table)."""
    if path.suffix == ".npz":
        table = np.load(path, allow_pickle=False)
        return {str(k): {m: table[f"{m}.codes"][i] for m in modalities} for i, k in enumerate(table["key"])}
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path).to_pydict()
        return {k: {m: np.array(table[f"{m}.codes"][i]) for m in modalities} for i, k in enumerate(table["key"])}
    urls = [str(p) for p in sorted(path.glob("codes-*.tar"))]
    return {row["key"]: {m: row[f"{m}.codes"] for m in modalities} for row in read_codes(urls, modalities)}


def _same_codes(found: dict, expected: dict, keys: list[str]) -> None:
    assert sorted(found) == keys
    for i, key in enumerate(keys):
        for m, codes in found[key].items():
            want = expected[m][i]
            np.testing.assert_array_equal(codes, want[want >= 0].numpy() if len(codes) < len(want) else want.numpy())


@pytest.mark.parametrize("task", TASKS)
def test_cli_on_mp4_files_and_on_shards_gives_the_codes_evaluation_gives(task, runs, corpus, evaluation_codes,
                                                                        tmp_path, capsys):
    modalities = sorted(k for k in evaluation_codes[task] if k != "keys")
    # a directory of mp4 files (with their captions next to them) -> one table; two DataLoader workers
    table = tmp_path / "codes.npz"
    assert encode_main([str(runs[task]), str(corpus.clips), "--out", str(table), "--clips-per-shard", "3",
                        "--num-workers", "2", "--batch-size", "2", "--no-progress"]) == 0
    assert "clips/s" in capsys.readouterr().out
    _same_codes(_cli_codes(table, modalities), evaluation_codes[task], corpus.keys)
    assert not (tmp_path / "codes.npz.parts").exists()
    # the training shards -> code shards with their manifest and codebook
    out = tmp_path / "codes"
    assert encode_main([str(runs[task]), corpus.urls, "--out", str(out), "--num-workers", "0", "--no-progress"]) == 0
    _same_codes(_cli_codes(out, modalities), evaluation_codes[task], corpus.keys)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total"] == len(corpus.keys) and manifest["model"]["task"] == task
    assert [s["name"] for s in manifest["shards"]] == ["codes-000000.tar", "codes-000001.tar"]
    np.testing.assert_array_equal(np.load(out / "codebook.npy"), CMGModel.from_pretrained(runs[task]).codebook)


def test_cli_shards_hold_codes_semantic_vectors_and_the_clips_labels(runs, corpus, tmp_path):
    out = tmp_path / "codes"
    assert encode_main([str(runs["fccid"]), str(corpus.clips), "--out", str(out), "--num-workers", "0",
                        "--no-progress"]) == 0
    from trainer.data.raw_batches import raw_samples

    sample = next(raw_samples(str(out / "codes-000000.tar")))
    assert sorted(sample) == sorted(["__key__", "__url__", "json", "txt", *(f"{m}.{kind}.npy" for m in
                                     ("audio", "text", "video") for kind in ("codes", "z"))])
    codes, z = decode_npy(sample["video.codes.npy"], "x"), decode_npy(sample["video.z.npy"], "x")
    assert codes.dtype == np.int64 and codes.shape == (10,) and z.dtype == np.float32 and z.shape == (10, 16)
    assert decode_npy(sample["text.codes.npy"], "x").shape[0] <= 10      # real tokens only
    assert json.loads(sample["json"])["clip_label"] >= 0


def test_cli_parquet_table_matches_the_npz_one(runs, corpus, tmp_path):
    pytest.importorskip("pyarrow")
    args = [str(runs["unicode"]), str(corpus.clips), "--num-workers", "0", "--no-progress"]
    assert encode_main([*args, "--out", str(tmp_path / "c.npz")]) == 0
    assert encode_main([*args, "--out", str(tmp_path / "c.parquet")]) == 0
    npz = _cli_codes(tmp_path / "c.npz", ["audio", "video"])
    parquet = _cli_codes(tmp_path / "c.parquet", ["audio", "video"])
    assert npz.keys() == parquet.keys()
    for key in npz:
        for m in ("audio", "video"):
            np.testing.assert_array_equal(npz[key][m], parquet[key][m])
    assert (tmp_path / "c.codebook.npy").is_file()


def test_cli_resumes_skipping_finished_units_and_refuses_other_inputs(runs, corpus, tmp_path, capsys):
    out = tmp_path / "codes"
    args = [str(runs["unicode"]), str(corpus.clips), "--out", str(out), "--clips-per-shard", "3", "--num-workers", "0",
            "--no-progress"]
    assert encode_main(args) == 0
    first = _cli_codes(out, ["audio", "video"])
    assert sorted(p.name for p in out.glob("codes-*.tar")) == ["codes-000000.tar", "codes-000001.tar",
                                                               "codes-000002.tar"]
    assert "0 of 3 units already done" in capsys.readouterr().out
    (out / "codes-000001.tar").unlink()                      # as if the run had died while writing it...
    (out / ".codes-000001.tar.tmp-999").write_bytes(b"half")   # ...leaving its temporary file
    stamps = {name: (out / name).stat().st_mtime_ns for name in ("codes-000000.tar", "codes-000002.tar")}
    assert encode_main(args) == 0
    printed = capsys.readouterr().out
    assert "3 clips in" in printed and "2 of 3 units already done" in printed
    again = _cli_codes(out, ["audio", "video"])
    assert again.keys() == first.keys()
    assert all(np.array_equal(again[k][m], first[k][m]) for k in first for m in ("audio", "video"))
    assert stamps == {name: (out / name).stat().st_mtime_ns for name in stamps}
    assert not list(out.glob(".*.tmp-*"))
    assert json.loads((out / "manifest.json").read_text())["total"] == len(corpus.keys)
    # other inputs into the same output are refused, naming the unit
    assert encode_main([*args[:-5], "--out", str(out), "--clips-per-shard", "4", "--num-workers", "0",
                        "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "codes-000000.tar was encoded from" in err and f"rm -r {out}" in err


def _clip(path: Path, seconds: int, fps: int, size: tuple[int, int], audio: bool, seed: int) -> Path:
    """A clip made with PyAV (shards.media): ``seconds`` s of moving noise at ``fps``, ``size`` (w, h), a tone."""
    from shards.media import encode_mp4

    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (seconds * fps, size[1], size[0], 3), dtype=np.uint8)
    tone = (0.3 * np.sin(np.arange(seconds * 16000) * 2 * np.pi * (200 + 50 * seed) / 16000)).astype(np.float32)
    path.write_bytes(encode_mp4(frames, tone if audio else None, fps, 16000))
    return path


def test_clips_of_any_length_give_a_code_per_second_through_the_cli_the_api_and_an_export(runs, tmp_path):
    """3, 7, 12 and 95 s at other frame rates and sizes than training's, the 12-s one without audio."""
    folder = tmp_path / "clips"
    folder.mkdir()
    specs = {"a3": (3, 8, (32, 32), True), "b7": (7, 12, (48, 40), True), "c12": (12, 10, (64, 48), False),
             "d95": (95, 4, (32, 32), True)}
    paths = {key: _clip(folder / f"{key}.mp4", *spec, seed=i) for i, (key, spec) in enumerate(specs.items())}
    rows = {"video": [3, 7, 12, 95], "audio": [3, 7, 0, 95]}

    out = tmp_path / "codes.npz"
    assert encode_main([str(runs["unicode"]), str(folder), "--out", str(out), "--num-workers", "0",
                        "--no-progress", "--batch-size", "3"]) == 0       # a clip without audio is not a skip
    table = np.load(out)
    assert list(table["key"]) == list(specs)
    for m in ("audio", "video"):
        assert (table[f"{m}.codes"] >= 0).sum(1).tolist() == rows[m], m
        assert table[f"{m}.codes"].shape == (4, 95) and table[f"{m}.z"].shape == (4, 95, 16)
    manifest = json.loads((tmp_path / "codes.manifest.json").read_text())
    assert manifest["skipped"] == 0 and [(a["where"].rsplit(":", 1)[1], a["modality"]) for a in manifest["absent"]] \
        == [("c12", "audio")] and manifest["absent"][0]["detail"] == "the mp4 has no audio track"

    model = CMGModel.from_pretrained(runs["unicode"])
    model.save_pretrained(tmp_path / "export")
    with_audio = [str(paths[k]) for k in ("a3", "b7", "d95")]
    for loaded in (model, CMGModel.from_pretrained(tmp_path / "export")):
        video = loaded.encode(video=[str(p) for p in paths.values()], batch_size=2)["video"]
        assert video.mask.sum(1).tolist() == rows["video"]
        assert torch.equal(video.codes, torch.from_numpy(table["video.codes"]))
        audio = loaded.encode(audio=with_audio)["audio"]
        assert torch.equal(audio.codes, torch.from_numpy(table["audio.codes"][[0, 1, 3]]))
    # the 95-s clip: windows of the training's 10 s, each coded on its own (its first 10 s alone give its first codes)
    from trainer.data.media_decoders import decode_whole_video

    decoded = torch.from_numpy(decode_whole_video(paths["d95"].read_bytes(), model.decode, "d95"))
    assert decoded.shape[0] == 95 and model.decode.seconds == 10
    assert torch.equal(model.encode(video=decoded[:10])["video"].codes[0], video.codes[3, :10])
    assert torch.equal(model.encode(video=decoded[90:])["video"].codes[0], video.codes[3, 90:])

    # evaluation reads the same clips whole from a labelled shard and codes every second, in the same windows
    shard = tmp_path / "eval" / "train-000000.tar"
    shard.parent.mkdir()
    with_audio = {k: specs[k][0] for k in ("a3", "b7", "d95")}
    with wds.TarWriter(str(shard), encoder=False) as sink:
        for key, seconds in with_audio.items():
            labels = {"clip_label": 0, "video_labels": [0] * seconds, "audio_labels": [0] * seconds}
            sink.write({"__key__": key, "mp4": paths[key].read_bytes(), "json": json.dumps(labels).encode()})
    (shard.parent / "manifest.json").write_text(json.dumps({"shards": [{"name": shard.name, "samples": 3}]}))
    pretrained, job = load_pretrained(runs["unicode"]), read_run_config(runs["unicode"])
    data = read_shard_features(data_config(SourceConfig(urls=str(shard)), job), ("audio", "video"),
                               _backbones(job.backbones, pretrained, ("audio", "video")))
    assert data.keys == list(with_audio) and data.window == 10
    assert data.features["segment_mask"].sum(1).tolist() == list(with_audio.values())
    assert (data.segment_labels["video"] >= 0).sum(1).tolist() == list(with_audio.values())
    split = encode_split(pretrained.model, data)
    assert torch.equal(split.mask, data.features["segment_mask"])
    for m in ("audio", "video"):
        assert torch.equal(split.indices[m], torch.from_numpy(table[f"{m}.codes"][[0, 1, 3]])), m


def test_cli_skips_bad_clips_lists_them_exits_3_and_all_bad_input_exits_2_leaving_nothing(runs, corpus, tmp_path,
                                                                                           capfd):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4096))       # no video at all
    (bad / "empty.mp4").write_bytes(b"")
    model = [str(runs["unicode"]), "--num-workers", "0", "--no-progress"]
    good = [str(p) for p in corpus.mp4s()[:2]]

    assert encode_main([*model, *good, str(bad), "--out", str(tmp_path / "codes.npz")]) == 3
    printed = capfd.readouterr()
    assert "2 clips (audio, video)" in printed.out and "2 skipped (1 bad_video, 1 empty_member)" in printed.out
    assert "ERROR opening" not in printed.err and "Traceback" not in printed.err   # decord's own output stays off
    assert all(line.isprintable() for line in printed.err.splitlines())   # no binary bytes from a bad input
    manifest = json.loads((tmp_path / "codes.manifest.json").read_text())
    assert manifest["total"] == 2 and manifest["skipped"] == 2
    reasons = {s["where"].rsplit(":", 1)[1]: (s["reason"], s["detail"]) for s in manifest["skipped_inputs"]}
    assert reasons == {"garbage.mp4": ("bad_video", "decord cannot open it (Invalid data found when processing "
                                                    "input)"),
                       "empty.mp4": ("empty_member", "member is empty")}
    assert list(np.load(tmp_path / "codes.npz")["key"]) == corpus.keys[:2]

    for attempt in range(2):      # nothing is left behind that would block or change the next run
        assert encode_main([*model, str(bad), "--out", str(tmp_path / "none.npz")]) == 2
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if not line.startswith("[cmg] skipping")]
        assert len(lines) == 1 and lines[0].startswith("error: no clip could be encoded, nothing was written"), err
        assert "2 skipped (1 bad_video, 1 empty_member)" in lines[0]
        assert sorted(p.name for p in tmp_path.glob("none*")) == []


def test_cli_errors_exit_2_with_a_message(runs, tmp_path, capsys):
    assert encode_main([str(runs["unicode"]), str(tmp_path / "nothing-*.mp4"), "--out", str(tmp_path / "o")]) == 2
    assert "no file matches" in capsys.readouterr().err
    assert encode_main([str(tmp_path / "no-run"), str(REPO / "README.md"), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_export_loads_in_a_fresh_process_and_cmg_encode_uses_it(runs, corpus, evaluation_codes, tmp_path):
    """What a new user does: export, then in new processes the Python API and the console script."""
    CMGModel.from_pretrained(runs["unicode"]).save_pretrained(tmp_path / "export")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = ("import json, sys; from trainer import CMGModel; m = CMGModel.from_pretrained(sys.argv[1]); "
              "out = m.encode(video=sys.argv[2:], audio=sys.argv[2:]); "
              "print(json.dumps({k: v.codes.tolist() for k, v in out.items()}))")
    mp4s = [str(p) for p in corpus.mp4s()]
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "export"), *mp4s], capture_output=True,
                          text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    codes = json.loads(proc.stdout.splitlines()[-1])
    for m in ("audio", "video"):
        assert codes[m] == evaluation_codes["unicode"][m].tolist()
    cmg = Path(sys.executable).with_name("cmg")
    proc = subprocess.run([str(cmg), "encode", str(tmp_path / "export"), str(corpus.clips / "*.mp4"), "--out",
                           str(tmp_path / "codes.npz"), "--no-progress"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "clips/s" in proc.stdout
    _same_codes(_cli_codes(tmp_path / "codes.npz", ["audio", "video"]), evaluation_codes["unicode"], corpus.keys)
