"""The Slurm launch files without a cluster: the pretraining configs carry the seed hyperparameters, the batch
scripts have headers any partition accepts and a --check, and the continual launcher (trainer/programs/continual.py)
chains and checks a phases file in a dry run; the scripts find the project's Python without an active environment.
Against the real local Slurm: tests/system/test_slurm_jobs.py."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from job_utils import REPO, make_clip_shards
from task_utils import write_phases

from trainer.programs.continual import main as continual_main
from trainer.backbones import load_backbones_config
from trainer.configs.load import load_config
from trainer.configs.job import JobConfig


@pytest.mark.parametrize(
    "config, backbones, modalities, batch, cpc_steps",
    [
        ("pretrain_av.yaml", "pretrained-example.yaml", ("audio", "video"), 64, 2),
        ("pretrain_avt.yaml", "pretrained-avt.yaml", ("audio", "video", "text"), 80, 1),
    ],
)
def test_pretrain_configs_carry_the_seed_hyperparameters(config, backbones, modalities, batch, cpc_steps):
    cfg = load_config(JobConfig, REPO / "launch" / "configs" / config)
    assert cfg.backbones == f"launch/configs/backbones/{backbones}"
    model = cfg.model
    assert model.modalities == modalities
    assert cfg.data.batch_size == batch
    assert cfg.data.decode.seconds == 10
    assert cfg.optim.lr == 4e-4
    q = model.quantizer
    assert (q.num_codes, q.dim, q.decay, q.reset, q.reset_steps) == (400, 256, 0.99, True, 200)
    assert model.encoder.semantic_dim == 256
    assert model.cpc.steps_for(len(modalities)) == cpc_steps
    assert model.club.inner_steps == 5
    assert (model.loss.commit_self, model.loss.commit_partner) == (0.25, 0.125)
    if "text" in modalities:
        text = load_backbones_config(REPO / cfg.backbones).text
        # one token per 1-s segment: the text time axis must match the 10 audio/video segments
        assert (text.max_text_length, text.text_padding) == (10, "max_length")


def _sbatch_headers(script: Path) -> dict[str, str]:
    headers = {}
    for line in script.read_text().splitlines():
        if match := re.fullmatch(r"#SBATCH\s+--([\w-]+)(?:=(.*))?", line.strip()):
            headers[match.group(1)] = match.group(2) or ""
    return headers


@pytest.mark.parametrize("name", ["pretrain_av", "pretrain_avt"])
def test_batch_scripts_have_cluster_headers_and_source_the_shared_body(name):
    script = REPO / "slurm" / f"{name}.sh"
    headers = _sbatch_headers(script)
    for key in ("nodes", "ntasks-per-node", "cpus-per-task", "time", "job-name"):
        assert key in headers, f"{script.name} lacks #SBATCH --{key}"
    # what any partition has, so `sbatch` of the script as written runs on a CPU-only cluster; GPUs are asked for
    # on the command line (the header comment says how)
    assert not {"gpus-per-node", "gpus", "gres", "gpus-per-task", "partition", "mem"} & set(headers)
    assert int(headers["cpus-per-task"]) <= 2 and headers["nodes"] == "1"
    assert "--gpus-per-node=8" in script.read_text()
    assert headers["ntasks-per-node"] == "1"
    assert headers["signal"] == "B:USR1@120"
    assert "requeue" in headers
    assert headers["open-mode"] == "append"
    assert "%j" in headers["output"]
    body_lines = [line for line in script.read_text().splitlines() if line.startswith("source ")]
    assert body_lines == ['source "${CMG_REPO:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}/slurm/job_body.sh"']
    assert f"launch/configs/{name}.yaml" in script.read_text()


def _outside_any_environment(**extra: str) -> dict[str, str]:
    """A login shell's environment: no virtualenv active, none on PATH, no Slurm job."""
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "HF_HUB_OFFLINE")}
    return {**keep, "PATH": "/usr/bin:/bin", **extra}


def test_check_validates_the_job_from_anywhere_without_an_active_environment(tmp_path):
    """`bash slurm/pretrain_av.sh --check`: the job's own start-up validation (trainer.programs.supervisor --check),
    nothing started; the scripts find the repository's .venv (slurm/env.sh) like every script in slurm/."""
    shards = make_clip_shards(tmp_path / "data")
    script = str(REPO / "slurm" / "pretrain_av.sh")
    env = _outside_any_environment(CONFIG="launch/configs/demo.yaml", RUN_DIR=str(tmp_path / "run"))
    good = subprocess.run(["bash", script, "--check", f"data.urls={shards}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    assert f"check passed: launch/configs/demo.yaml (phase demo, 300 steps, run dir {tmp_path / 'run'}" in good.stdout
    bad = subprocess.run(["bash", script, "--check", f"data.urls={shards}", "optim.lr=fast"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "config key 'optim.lr' (from override 'optim.lr=fast')" in bad.stderr, bad.stderr
    assert not (tmp_path / "run").exists()   # a check creates nothing
    no_python = subprocess.run(["bash", script, "--check"], cwd=tmp_path, env={**env, "PYTHON": "no-such-python"},
                               capture_output=True, text=True, timeout=60)
    assert no_python.returncode == 2 and "PYTHON=no-such-python: no such program" in no_python.stderr


def _path_without(program: str, bin_dir: Path, path: str = "/usr/bin:/bin") -> str:
    """A PATH holding every program of ``path`` but ``program`` (links in ``bin_dir``): a host without Slurm's
    commands, whether or not this one has them."""
    bin_dir.mkdir()
    for directory in path.split(":"):
        for exe in Path(directory).iterdir():
            if exe.name != program and not (bin_dir / exe.name).exists() and os.access(exe, os.X_OK):
                (bin_dir / exe.name).symlink_to(exe)
    return str(bin_dir)


def _job_body_variables() -> list[str]:
    """The environment variables slurm/job_body.sh documents (its comment lines ``#   NAME   what it is``)."""
    return re.findall(r"^#   ([A-Z][A-Z_]+) ", (REPO / "slurm" / "job_body.sh").read_text(), re.M)


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--partition=gpu", "--help"]], ids=" ".join)
def test_submit_help_prints_the_usage_and_exits_0(tmp_path, args):
    """The usage (the script's header comment) needs neither sbatch nor Python, and names what the job reads."""
    env = _outside_any_environment(PATH=_path_without("sbatch", tmp_path / "bin"))
    done = subprocess.run([str(REPO / "slurm" / "submit.sh"), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    usage = done.stdout
    assert usage.startswith("usage: slurm/submit.sh [sbatch options] SCRIPT [key=value ...]\n")
    assert not any(line.startswith("#") for line in usage.splitlines())
    assert len(_job_body_variables()) >= 8
    for name in _job_body_variables():
        assert name in usage, name
    assert "127    no sbatch on PATH" in usage and "2      the check failed" in usage


def test_submit_without_sbatch_fails_before_the_check_and_creates_nothing(tmp_path):
    """No sbatch: exit 127 at once. The environment is one the check would run in (a Python, a config): it prints
    "[submit] checking" before it starts that Python, so an empty stdout says it never ran."""
    run_dir = tmp_path / "runs" / "av1"
    env = _outside_any_environment(PATH=_path_without("sbatch", tmp_path / "bin"), PYTHON=sys.executable,
                                   CONFIG="launch/configs/demo.yaml", RUN_DIR=str(run_dir))
    done = subprocess.run([str(REPO / "slurm" / "submit.sh"), "--time=10", str(REPO / "slurm" / "pretrain_av.sh"),
                           "run.max_steps=5"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 127, done.stdout + done.stderr
    assert "no sbatch on PATH" in done.stderr and "Nothing was checked or created" in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_continual_without_sbatch_fails_before_the_check_and_creates_nothing(tmp_path, monkeypatch, capsys):
    """A phases file the check refuses (exit 2): without sbatch the launcher stops first, with 127; a dry run needs
    no sbatch and checks it."""
    phases = write_phases(tmp_path / "phases.yaml", [], run_root=str(tmp_path / "chain"))
    monkeypatch.setenv("PATH", _path_without("sbatch", tmp_path / "bin"))
    assert continual_main([str(phases)]) == 127
    assert "no sbatch on PATH" in capsys.readouterr().err
    assert not (tmp_path / "chain").exists()
    assert continual_main([str(phases), "--dry-run"]) == 2
    assert "'phases' is empty" in capsys.readouterr().err


def test_continual_help_exits_0_and_names_the_exit_codes():
    done = subprocess.run([str(REPO / "slurm" / "continual.sh"), "--help"], cwd=REPO, env=_outside_any_environment(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m trainer.programs.continual") and "127 no ``sbatch``" in done.stdout


def test_continual_dry_run_works_without_an_active_environment():
    done = subprocess.run([str(REPO / "slurm" / "continual.sh"), "launch/configs/continual_vt_at_it.yaml",
                           "--dry-run"], cwd=REPO, env=_outside_any_environment(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"cd {REPO}\n") and done.stdout.count(" sbatch --parsable ") == 3


def test_continual_dry_run_chains_the_seed_004_phases(capsys):
    assert continual_main([str(REPO / "launch" / "configs" / "continual_vt_at_it.yaml"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"cd {REPO}"
    phases = lines[1:]
    assert len(phases) == 3
    root = REPO / "runs" / "continual_vt_at_it"
    expected = [("video_text", "[video,text]"), ("audio_text", "[audio,text]"), ("image_text", "[image,text]")]
    for i, (line, (name, modalities)) in enumerate(zip(phases, expected)):
        assert line.startswith(f"CONFIG=launch/configs/pretrain_avt.yaml RUN_DIR={root / name} sbatch --parsable ")
        assert f"'model.modalities={modalities}'" in line
        start = f"run.init_from={root / expected[i - 1][0]}/checkpoints" if i else f"run.phase={name}"
        assert line.endswith(start)
        chained = f"'--dependency=afterok:<job of {expected[i - 1][0]}>' --kill-on-invalid-dep=yes" if i else None
        assert (chained in line) if chained else ("--dependency" not in line)
        assert " slurm/pretrain_avt.sh " in line


@pytest.mark.parametrize(
    "phases, message",
    [
        ([{"name": "a", "overrides": ["run.dir=/tmp/x"]}],
         "phase 'a': override 'run.dir=/tmp/x' sets a key the launcher"),
        ([{"name": "a"}, {"name": "b", "overrides": ["model.quantizer.num_codez=3"]}],
         "phase 'b': unknown config key 'model.quantizer.num_codez'"),
        ([{"name": "a"}, {"name": "a"}], "phase name 'a' appears twice"),
        ([{"name": "a"}, {"name": "b", "init_from": "/ckpt"}], "phase 'b': init_from is only for the first phase"),
        ([{"name": "a b"}], "phases[0].name 'a b' must be"),
        ([], "'phases' is empty"),
    ],
)
def test_continual_rejects_a_bad_phases_file_before_submitting(tmp_path, capsys, phases, message):
    path = write_phases(tmp_path / "phases.yaml", phases, script="slurm/pretrain_av.sh")
    assert continual_main([str(path), "--dry-run"]) == 2   # a dry run never submits, even if the check regressed
    assert message in capsys.readouterr().err
