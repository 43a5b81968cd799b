"""The seeds' pretraining runs as configs (launch/configs/paper/): their hyper-parameters, and that each one is a
valid job once `python -m shards.convert` has written the released set where the config expects it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from job_utils import REPO
from released_utils import make_vggsound_avel

from shards.convert import main as convert_main
from trainer.configs.load import load_config
from trainer.data.sources import expand_shard_urls
from trainer.job import validate_job
from trainer.configs.job import JobConfig

PAPER = REPO / "launch" / "configs" / "paper"
NOMINAL_CLIPS = {"24k": 24000, "40k": 40000, "81k": 81000}
# method -> (modalities, Cross-CPC K, epochs of the authors' pretrain.sh)
METHODS = {"av": (("audio", "video"), 2, 6), "avt": (("audio", "video", "text"), 1, 6),
           "fccid": (("audio", "video", "text"), 2, 4)}


def test_every_seed_run_has_a_config():
    names = sorted(p.stem for p in PAPER.glob("*.yaml"))
    # AVT and FCCID need the text prompts, which 81K (no categories) does not have
    assert names == ["av_vggsound24k", "av_vggsound40k", "av_vggsound81k", "avt_vggsound24k", "avt_vggsound40k",
                     "fccid_vggsound24k", "fccid_vggsound40k"]


@pytest.mark.parametrize("path", sorted(PAPER.glob("*.yaml")), ids=lambda p: p.stem)
def test_paper_configs_carry_the_seed_hyperparameters(path):
    method, size = path.stem.split("_vggsound")
    modalities, steps_k, epochs = METHODS[method]
    cfg = load_config(JobConfig, path)
    model = cfg.model
    assert cfg.task == ("fccid" if method == "fccid" else "unicode")
    assert tuple(model.modalities) == modalities
    assert cfg.data.kind == "features" and tuple(cfg.data.feature_modalities) == modalities
    assert cfg.data.batch_size == 64 and cfg.optim.lr == 4e-4 and cfg.optim.grad_clip == 0.5
    q = model.quantizer
    assert (q.num_codes, q.dim, q.decay, q.reset, q.reset_steps) == (400, 256, 0.99, True, 200)
    assert model.cpc.steps_for(len(modalities)) == steps_k
    assert model.club.inner_steps == 5
    assert cfg.run.max_steps == math.ceil(epochs * NOMINAL_CLIPS[size] / 64)


def test_local_globs_expand_to_their_sorted_matches(tmp_path):
    for name in ("val-000000.tar", "train-000001.tar", "train-000000.tar"):
        (tmp_path / name).touch()
    assert expand_shard_urls(str(tmp_path / "train-*.tar")) == [str(tmp_path / f"train-00000{i}.tar") for i in (0, 1)]
    assert len(expand_shard_urls(f"{tmp_path}/*.tar::{tmp_path}/val-{{000000..000000}}.tar")) == 4
    assert expand_shard_urls(str(tmp_path / "test-*.tar")) == []


@pytest.mark.parametrize("name", ["av_vggsound24k", "av_vggsound40k"])
def test_a_paper_config_is_a_valid_job_on_the_converted_release(tmp_path, monkeypatch, name):
    files = make_vggsound_avel(tmp_path / "released", ["train"] * 4 + ["val", "test"])
    # the configs name feats/vggsound40k/... under the repository root (trainer/configs/load.py): tmp_path
    # stands in for it
    (tmp_path / "launch").mkdir()
    monkeypatch.setattr("trainer.configs.load.REPO_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    assert convert_main(["vggsound-avel", "--meta", str(files.meta), "--categories", str(files.categories),
                         "--audio-dir", str(files.audio_dir), "--video-dir", str(files.video_dir),
                         "--label-dir", str(files.label_dir), "--prompts", str(files.prompts),
                         "--out", "feats/vggsound40k", "--clips-per-shard", "2"]) == 0
    for cwd in (tmp_path, tmp_path / "released"):   # from the root, and from elsewhere (docs/data.md "Paths in ...")
        monkeypatch.chdir(cwd)
        cfg = load_config(JobConfig, PAPER / f"{name}.yaml")
        validate_job(cfg)
        shards = expand_shard_urls(cfg.data.urls)
        assert [Path(s).name.split("-")[0] for s in shards] == (
            ["train", "train"] if name.endswith("24k") else ["test", "train", "train", "val"])
        assert (Path(cfg.data.urls).parent.resolve(), (cwd / cfg.run.dir).resolve()) == \
            (tmp_path / "feats" / "vggsound40k", tmp_path / "runs" / "paper" / name)
    override = load_config(JobConfig, PAPER / f"{name}.yaml", ["data.urls=feats/x-{000000..000001}.tar"])
    assert override.data.urls == "feats/x-{000000..000001}.tar"   # an override: read from the current directory


def test_print_config_works_without_data_and_says_what_the_data_decides(tmp_path, capsys, monkeypatch):
    from trainer.main import main

    (tmp_path / "launch").mkdir()
    monkeypatch.setattr("trainer.configs.load.REPO_ROOT", tmp_path)        # a stand-in repository root (as above)
    monkeypatch.chdir(tmp_path)                                      # no feats/ here: the release is not converted
    assert main(["--config", str(PAPER / "avt_vggsound40k.yaml"), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "derived from the data when the run starts; not readable here (data.urls" in out
    assert "# not read with data.kind=features: backbones, data.decode" in out
    # once converted: the dims come from the manifest
    files = make_vggsound_avel(tmp_path / "released", ["train"] * 2)
    assert convert_main(["vggsound-avel", "--meta", str(files.meta), "--categories", str(files.categories),
                         "--audio-dir", str(files.audio_dir), "--video-dir", str(files.video_dir),
                         "--out", "feats/vggsound40k"]) == 0
    capsys.readouterr()
    assert main(["--config", str(PAPER / "av_vggsound40k.yaml"), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "feature_dims:\n    audio: 128\n    video: 512\n" in out
    assert "derived from the manifest of data.urls" in out and "audio (128,), video (49, 512)" in out
