"""The path of a new user with the authors' released features: ``python -m shards.convert vggsound-avel`` on a set
in the VGGSound-AVEL release layout (tests/support/released_utils.py), then ``python trainer/main.py`` trains on the
converted train split with ``data.kind=features`` and nothing else changed."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from job_utils import REPO, job_env, read_metrics, run_job
from released_utils import make_vggsound_avel

from trainer.checkpoint import CheckpointManager


@pytest.mark.slow
def test_main_trains_on_converted_vggsound_avel_features(tmp_path):
    files = make_vggsound_avel(tmp_path / "released", ["train"] * 6 + ["test"] * 2)
    out = tmp_path / "feats"
    convert = subprocess.run(
        [sys.executable, "-m", "shards.convert", "vggsound-avel", "--meta", str(files.meta), "--categories",
         str(files.categories), "--audio-dir", str(files.audio_dir), "--video-dir", str(files.video_dir),
         "--label-dir", str(files.label_dir), "--prompts", str(files.prompts), "--out", str(out),
         "--clips-per-shard", "2", "--dtype", "float16"],
        cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=120)
    assert convert.returncode == 0, convert.stderr
    urls = str(out / "train-{000000..000002}.tar")
    assert f"  train        6 clips  data.urls='{urls}'" in convert.stdout     # the summary names each split's urls
    run_dir = tmp_path / "run"
    run_job(run_dir, urls, overrides=["data.kind=features", "data.feature_modalities=[audio,video]",
                                      "run.max_steps=2", "run.ckpt_every=2"])
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2] and all(math.isfinite(m["loss"]) for m in metrics)
    checkpoint = CheckpointManager(run_dir / "checkpoints").latest()
    assert checkpoint is not None and json.loads((checkpoint / "meta.json").read_text())["step"] == 2
