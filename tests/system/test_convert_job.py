"""The path of a new user with the authors' released features: ``python -m shards.convert vggsound-avel`` on a set
in the VGGSound-AVEL release layout (tests/support/released_utils.py), then ``python trainer/main.py`` trains on the
converted train split with ``data.kind=features`` and nothing else changed."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pytest
from job_utils import REPO, job_env, read_metrics, run_job
from released_utils import make_pair_release, make_vggsound_avel

from shards.convert import main as convert_main
from trainer.checkpoint_format import CheckpointManager


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


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_shards_says_so_and_the_rerun_resumes(tmp_path):
    """SIGINT to a running ``python -m shards.convert``: no traceback, one line saying how many shards were finished
    (exactly the whole shards on disk), exit 130; the same command then keeps them and finishes."""
    clips = 60
    files = make_vggsound_avel(tmp_path / "released", ["train"] * clips)
    out = tmp_path / "feats"
    command = [sys.executable, "-m", "shards.convert", "vggsound-avel", "--meta", str(files.meta), "--categories",
               str(files.categories), "--video-dir", str(files.video_dir), "--out", str(out), "--clips-per-shard",
               "1", "--no-progress"]
    # started as from a terminal: a pytest-xdist worker ignores SIGINT, and Python keeps an inherited SIG_IGN (no
    # KeyboardInterrupt: the converter ran to its end, exit 0, in CI)
    running = subprocess.Popen(command, cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # run it 20 ms at a time, stopped in between, until a shard is finished: on a busy machine a converter polled
    # from here had finished every shard before the signal came (exit 0). The SIGINT waits while it is stopped.
    deadline = time.monotonic() + 120
    while not list(out.glob("*.tar")) and running.poll() is None and time.monotonic() < deadline:
        running.send_signal(signal.SIGCONT)
        time.sleep(0.02)
        running.send_signal(signal.SIGSTOP)
    running.send_signal(signal.SIGINT)
    running.send_signal(signal.SIGCONT)
    _, err = running.communicate(timeout=60)
    assert running.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    finished = sorted(out.glob("*.tar"))
    assert 1 <= len(finished) < clips and not list(out.glob("*.partial")) and not (out / "manifest.json").exists()
    assert err.rstrip().splitlines()[-1] == (f"interrupted: {len(finished)} of {clips} shards finished, kept in {out}; "
                                             "run the same command again to resume")
    rerun = subprocess.run(command, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"kept {len(finished)} finished shard{'s' * (len(finished) != 1)} from an earlier run in {out}; " \
        f"{clips - len(finished)} to write" in rerun.stderr
    assert len(list(out.glob("*.tar"))) == clips and (out / "manifest.json").is_file()


@pytest.mark.slow
def test_paper_suite_ranks_the_converted_retrieval_sets_and_prints_seed_003_table_2_and_seed_004s(tmp_path):
    """A text model trained on converted VGGSound-AVEL features (prompts through the tiny text backbone), then fake
    MSCOCO, Clotho, FlickrSound, MSVD and VALOR32K releases converted and ranked by ``--suite paper``: every set's
    pair is scored on all its items and captions, and the tables show this checkpoint's numbers in their columns;
    VALOR32K's three modalities get the seeds' code-usage figure."""
    files = make_vggsound_avel(tmp_path / "released", ["train"] * 6 + ["test"] * 2)
    feats = tmp_path / "feats"
    tiny = REPO / "launch" / "configs" / "backbones" / "tiny.yaml"
    assert convert_main(["vggsound-avel", "--meta", str(files.meta), "--categories", str(files.categories),
                         "--audio-dir", str(files.audio_dir), "--video-dir", str(files.video_dir), "--prompts",
                         str(files.prompts), "--text-backbones", str(tiny), "--out", str(feats), "--no-progress"]) == 0
    run_dir = tmp_path / "run"
    run_job(run_dir, str(feats / "train-000000.tar"), overrides=[
        "data.kind=features", "data.feature_modalities=[audio,video,text]", "model.modalities=[audio,video,text]",
        "run.max_steps=2"])
    sets = {}
    for kind in ("mscoco", "clotho", "flickrsound", "msvd", "valor32k"):
        release = make_pair_release(tmp_path / kind, kind, items=5)
        assert convert_main([kind, *release.args, "--out", str(tmp_path / f"{kind}_feats"), "--no-progress"]) == 0
        sets[kind] = (release, str(tmp_path / f"{kind}_feats" / "test-000000.tar"))
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "trainer.programs.evaluate", str(run_dir), "--suite", "paper", "--epochs", "1",
         "--no-tracking", "--retrieval-data", "::".join(urls for _, urls in sets.values()), "--json", str(report_path)],
        cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    datasets = json.loads(report_path.read_text())["zero_shot_retrieval"]["datasets"]
    assert list(datasets) == list(sets)                                  # named by their manifests
    valor = datasets.pop("valor32k")              # video, audio and text: three pairs and the code-usage figure
    assert set(valor["pairs"]) == {"audio↔video", "audio↔text", "video↔text"}
    assert sum(valor["code_usage"].values()) == 12
    figure = run_dir / "evaluation" / CheckpointManager(run_dir / "checkpoints").latest().name / \
        "code_usage_valor32k.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for kind, (release, _) in list(sets.items())[:4]:
        (pair, scores), = datasets[kind]["pairs"].items()
        assert datasets[kind]["items"] == 5 and scores["items"] == 5
        captions = sum(len(c) for c in release.captions.values())
        if kind != "flickrsound":                     # a caption query per caption, an item query per item
            assert sorted(scores["queries"].values()) == [5, captions], (kind, scores["queries"])
    lines = done.stdout.splitlines()
    table2 = lines.index(next(line for line in lines if line.startswith("seed 003 Table 2")))
    ours = next(line for line in lines[table2:] if line.startswith("this checkpoint"))
    assert "—" not in ours and len(ours.split()) == 3 + 9 + 1                  # 9 numbers and their Avg.
    for title in ("seed 004 Table 2: video↔text retrieval (MSVD), seen pair, First Stage",
                  "seed 004 Table 3: audio↔text retrieval (Clotho), seen pair, First Stage"):
        start = lines.index(title)
        ours = next(line for line in lines[start:] if line.startswith("this checkpoint"))
        assert "—" not in ours, (title, ours)
