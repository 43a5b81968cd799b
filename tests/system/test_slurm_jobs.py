"""The Slurm batch scripts, slurm/submit.sh and the continual-phase launcher, against the real local Slurm (fixture
``slurm_cluster``, tests/support/conftest_slurm.py).

Jobs train a tiny Uni-Code model (tiny random-init backbones) on synthetic clip shards written once per
module. Every job has a --time limit and its output in the test's tmp dir; jobs still active at the end of a test
are cancelled. sbatch runs from the repository root (the scripts find slurm/job_body.sh and the accelerate configs
through the submit dir), with the virtualenv's bin first on PATH so the jobs' `accelerate` and `python` are the
project's; the slurm/submit.sh tests run it as written, without either (slurm/env.sh finds the repository's .venv).
The checks of the launch files that need no cluster are in tests/unit/test_slurm_launch.py.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from task_utils import write_phases

from shards.synth import SynthConfig, synthesise
from shards.write import write_shards
from trainer.tracking import mlflow_metric_key

REPO = Path(__file__).resolve().parents[2]
SECONDS = 4
JOB_MINUTES = 5  # --time of every job: a tiny run takes well under a minute, even on a busy machine
JOB_TIMEOUT_S = 240.0
LOG_EVERY = 5


# ---- no cluster needed: the batch script run outside Slurm ----


def test_batch_script_outside_slurm_fails_clearly():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_JOB")}
    result = subprocess.run(["bash", "slurm/pretrain_av.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert "not inside a Slurm job" in result.stderr


# ---- against the local cluster ----


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    """Synthetic clip shards and a tiny job config (the demo's model, smaller) that trains in seconds."""
    root = tmp_path_factory.mktemp("slurm-jobs-data")
    synthesise(SynthConfig(num_clips=16, classes=3, seconds=SECONDS, fps=8, size=32, seed=0), root / "clips",
               progress=False)
    write_shards(root / "clips", f"{root}/shards/train-%06d.tar", max_count=4, progress=False)
    config = {
        "run": {"max_steps": 20, "ckpt_every": 10, "keep_last": 10, "progress": False},
        "data": {"urls": f"{root}/shards/train-{{000000..000003}}.tar", "batch_size": 2, "num_workers": 1,
                 "shuffle_buffer": 4, "decode": {"seconds": SECONDS, "frames_per_segment": 2, "frame_size": 32}},
        "backbones": str(REPO / "launch" / "configs" / "backbones" / "tiny.yaml"),
        "model": {"modalities": ["audio", "video"],
                  "encoder": {"semantic_dim": 32, "specific_dim": 16, "ff_dim": 64, "heads": 4, "pool_hidden": 16,
                              "specific_hidden": 32, "spatial_specific_channels": 8, "decoder_hidden": 32},
                  "quantizer": {"num_codes": 16, "dim": 32, "reset_steps": 10},
                  "club": {"hidden_dim": 32, "inner_steps": 2}},
        "tracking": {"experiment": "slurm-jobs", "log_every": LOG_EVERY, "plot_every": 100},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def job_env(slurm_cluster, monkeypatch):
    """Submit from the repo root with the virtualenv first on PATH (jobs inherit the environment)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHON", sys.executable)   # slurm/continual.sh's interpreter
    for key in ("CONFIG", "RUN_DIR", "EXTRA", "MLFLOW_TRACKING_URI", "ACCELERATE_CONFIG", "NPROC_PER_NODE"):
        monkeypatch.delenv(key, raising=False)
    return slurm_cluster


@pytest.fixture
def jobs(slurm_cluster):
    """Job ids a test started; whatever is still queued or running at its end is cancelled."""
    started: list[int] = []
    yield started
    for job in started:
        slurm_cluster.run("scancel", str(job), check=False)


def _cpu_job_args(tmp_path: Path, name: str, cpus: int = 2) -> list[str]:
    return [f"--time={JOB_MINUTES}", "--gpus-per-node=0", f"--cpus-per-task={cpus}", f"--job-name={name}",
            f"--output={tmp_path}/{name}-%j.out"]


def _mlflow_runs(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments)


def _metric_steps(client, run, key: str = "loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, mlflow_metric_key(key)))


def _poll(condition, what: str, timeout: float, context=lambda: ""):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{context()}")
        time.sleep(0.1)
    return value


def _logged_steps(max_steps: int) -> list[int]:
    return list(range(LOG_EVERY, max_steps + 1, LOG_EVERY))


@pytest.mark.slow
def test_sbatch_wait_tiny_job_completes_with_checkpoint_and_mlflow_run(job_env, jobs, tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    store = tmp_path / "mlflow-elsewhere.db"
    result = job_env.run(
        "sbatch", "--parsable", "--wait", *_cpu_job_args(tmp_path, "av"),
        f"--export=ALL,CONFIG={tiny_config},RUN_DIR={run_dir},MLFLOW_TRACKING_URI=sqlite:///{store},"
        "EXTRA=run.phase=slurm-av tracking.log_every=5",
        "slurm/pretrain_av.sh", "run.max_steps=20", f"run.dir={tmp_path}/ignored",
        timeout=JOB_TIMEOUT_S,
    )
    job = int(result.stdout.strip())
    jobs.append(job)
    info = job_env.job_info(job)
    out = (tmp_path / f"av-{job}.out").read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0"), out
    assert "1 node(s) x 2 process(es), launch/accelerate/cpu_zero2.yaml" in out
    # RUN_DIR is the run directory whatever the overrides say; EXTRA and the script arguments both apply
    assert not (tmp_path / "ignored").exists()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (saved["run"]["dir"], saved["run"]["phase"], saved["run"]["max_steps"]) == (str(run_dir), "slurm-av", 20)
    assert json.loads((run_dir / "status.json").read_text()) == {"state": "finished", "step": 20}
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest.name == "step_00000020"
    meta = json.loads((latest / "meta.json").read_text())
    assert (meta["step"], meta["world_size"], meta["phase"]) == (20, 2, "slurm-av")
    state = torch.load(latest / "model.pt", map_location="cpu", weights_only=True)
    assert state["quantizer.codebook"].shape == (16, 32)
    # MLFLOW_TRACKING_URI from the environment: the run is in that store, none in the run dir
    assert not (run_dir / "mlflow.db").exists()
    client, runs = _mlflow_runs(f"sqlite:///{store}")
    assert [(r.info.run_id, r.info.status) for r in runs] == [(meta["mlflow_run_id"], "FINISHED")]
    assert _metric_steps(client, runs[0]) == _logged_steps(20)
    assert runs[0].data.tags["slurm_job_id"] == str(job)


@pytest.mark.slow
def test_usr1_preemption_checkpoints_requeues_and_resumes_in_the_same_mlflow_run(job_env, jobs, tiny_config,
                                                                                  tmp_path):
    run_dir, max_steps = tmp_path / "run", 60
    job = job_env.sbatch(*_cpu_job_args(tmp_path, "preempt"), f"--export=ALL,CONFIG={tiny_config},RUN_DIR={run_dir}",
                         "slurm/pretrain_av.sh", f"run.max_steps={max_steps}", timeout=30)
    jobs.append(job)
    out = tmp_path / f"preempt-{job}.out"
    metrics = run_dir / "metrics.jsonl"
    _poll(lambda: metrics.exists() and metrics.read_text().strip(), "the first logged step", JOB_TIMEOUT_S,
          lambda: out.read_text() if out.exists() else "")
    job_env.run("scancel", "--batch", "--signal=USR1", str(job))

    # The first run checkpoints, says "stopped" and requeues itself: Slurm holds the job (BeginTime).
    _poll(lambda: (i := job_env.job_info(job))["JobState"] == "PENDING" and i["Reason"] == "BeginTime", "the requeue",
          120.0, out.read_text)
    status = json.loads((run_dir / "status.json").read_text())
    stopped_at = status["step"]
    assert status["state"] == "stopped" and LOG_EVERY <= stopped_at < max_steps
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == f"step_{stopped_at:08d}"
    assert (checkpoints / f"step_{stopped_at:08d}" / "model.pt").is_file()
    assert job_env.job_info(job)["Restarts"] == "1"

    job_env.run("scontrol", "update", f"JobId={job}", "StartTime=now+2")
    assert job_env.wait_job(job, "COMPLETED", timeout=JOB_TIMEOUT_S) == "COMPLETED"
    text = out.read_text()
    assert "(restart 0)" in text and "(restart 1)" in text
    assert f"checkpoint at step {stopped_at} written" in text
    assert "the trainer stopped after writing a checkpoint (not a failure)" in text
    assert "Traceback" not in text and "FAILED" not in text          # a stop is no failure: no torch elastic banner
    assert json.loads((run_dir / "status.json").read_text()) == {"state": "finished", "step": max_steps}
    assert (checkpoints / "latest").read_text().strip() == f"step_{max_steps:08d}"
    # One run, each logged step exactly once across the two Slurm runs of the job.
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == _logged_steps(max_steps)
    client, runs = _mlflow_runs(f"sqlite:///{run_dir}/mlflow.db")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert _metric_steps(client, runs[0]) == _logged_steps(max_steps)
    assert runs[0].data.tags["resumed_from_step"] == str(stopped_at)


@pytest.mark.slow
def test_usr1_during_trainer_start_up_is_not_lost(job_env, jobs, tiny_config, tmp_path):
    # The trainer deletes a STOP file it finds at start-up; the batch script must re-create it until the
    # trainer has stopped, or a preemption signal landing during start-up would be ignored.
    run_dir = tmp_path / "run"
    job = job_env.sbatch(*_cpu_job_args(tmp_path, "early"), f"--export=ALL,CONFIG={tiny_config},RUN_DIR={run_dir}",
                         "slurm/pretrain_av.sh", "run.max_steps=60", timeout=30)
    jobs.append(job)
    out = tmp_path / f"early-{job}.out"
    # printed just before srun starts: the trainer is seconds away from its start-up
    _poll(lambda: out.exists() and "[slurm] config" in out.read_text(), "the batch script to start srun", 120.0)
    job_env.run("scancel", "--batch", "--signal=USR1", str(job))
    _poll(lambda: (i := job_env.job_info(job))["JobState"] == "PENDING" and i["Reason"] == "BeginTime", "the requeue",
          JOB_TIMEOUT_S, out.read_text)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "stopped" and status["step"] < 60
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{status['step']:08d}"


def _submit(cluster, cwd: Path, config: Path, *args: str, run_dir: Path | None = None, name: str = "submit",
            timeout: float = 120) -> subprocess.CompletedProcess:
    """`slurm/submit.sh ARGS` as a user runs it from ``cwd``: no virtualenv active and none on PATH (the scripts find
    the repository's .venv), only the cluster's SLURM_CONF and the job's CONFIG and RUN_DIR set."""
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": os.environ.get("HOME", "/root"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "CONFIG": str(config), **cluster.env()}
    if run_dir is not None:
        env["RUN_DIR"] = str(run_dir)
    command = [str(REPO / "slurm" / "submit.sh"), f"--time={JOB_MINUTES}", f"--job-name={name}", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_submit_checks_then_runs_the_script_as_written_on_a_cpu_only_cluster(slurm_cluster, jobs, tiny_config,
                                                                            tmp_path):
    # As docs/training.md (Slurm) has it, from the repository root, with no resource options: the headers alone
    # (no GPU, 2 CPUs) must fit a CPU-only node.
    run_dir = tmp_path / "run"
    done = _submit(slurm_cluster, REPO, tiny_config, "slurm/pretrain_av.sh", "run.max_steps=10", run_dir=run_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    job = int(done.stdout.strip().splitlines()[-1])
    jobs.append(job)
    assert "[cmg launch] check passed" in done.stdout
    assert f"[submit] job {job}: run dir {run_dir}, log {run_dir}/slurm-{job}.out" in done.stdout
    info = slurm_cluster.job_info(job)
    assert info["NumCPUs"] == "2" and "gpu" not in info.get("TresPerNode", "")
    assert slurm_cluster.wait_job(job, "COMPLETED", timeout=JOB_TIMEOUT_S) == "COMPLETED"
    log = (run_dir / f"slurm-{job}.out").read_text()            # the job's log is in its run directory
    assert "1 node(s) x 2 process(es), launch/accelerate/cpu_zero2.yaml" in log
    assert json.loads((run_dir / "status.json").read_text()) == {"state": "finished", "step": 10}


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("data.urls=/nonexistent/train-{000000..000001}.tar", "config error: data: manifest /nonexistent/manifest.json"),
    ("model.quantizer.num_codez=3", "config error: unknown config key 'model.quantizer.num_codez'"),
])
def test_submit_refuses_a_bad_job_before_anything_is_queued(slurm_cluster, tiny_config, tmp_path, override, message):
    name = f"refused-{tmp_path.name}"
    done = _submit(slurm_cluster, tmp_path, tiny_config, str(REPO / "slurm" / "pretrain_av.sh"), override,
                   run_dir=tmp_path / "run", name=name, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "[submit] not submitted" in done.stderr
    assert "Traceback" not in done.stderr
    # no job of that name, not even a finished one (the cluster keeps their records for a day)
    assert slurm_cluster.run("squeue", "-h", "-t", "all", f"--name={name}").stdout.strip() == ""
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_submit_refused_by_sbatch_leaves_no_run_dir(slurm_cluster, tiny_config, tmp_path):
    """The check passes and sbatch refuses the job (an unknown partition): sbatch's exit status, and the RUN_DIR
    made for the job is gone again with the parents made for it; a RUN_DIR that existed before is kept."""
    script = str(REPO / "slurm" / "pretrain_av.sh")
    done = _submit(slurm_cluster, tmp_path, tiny_config, "--partition=no-such-partition", script,
                   run_dir=tmp_path / "new" / "run", timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "[cmg launch] check passed" in done.stdout and "Invalid partition" in done.stderr
    assert not (tmp_path / "new").exists()
    (tmp_path / "existing").mkdir()
    done = _submit(slurm_cluster, tmp_path, tiny_config, "--partition=no-such-partition", script,
                   run_dir=tmp_path / "existing", timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (tmp_path / "existing").is_dir()


def _submit_chain(phases_file: Path) -> dict[str, int]:
    """`slurm/continual.sh PHASES` from another directory; the job id of each phase, from its output."""
    result = subprocess.run([str(REPO / "slurm" / "continual.sh"), str(phases_file)], cwd=phases_file.parent,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^phase (\S+): job (\d+) ", result.stdout, re.M)}


def _model_params(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Trainable weights in a checkpoint's model.pt (the quantizer holds EMA buffers only)."""
    state = torch.load(checkpoint / "model.pt", map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("quantizer.")}


@pytest.mark.slow
def test_continual_chain_runs_in_order_and_second_phase_starts_from_first(job_env, jobs, tiny_config, tmp_path):
    root = tmp_path / "chain"
    phases = write_phases(
        tmp_path / "phases.yaml",
        [{"name": "first", "overrides": ["run.ckpt_every=5"]},
         # lr 0: the second phase cannot move its weights, so they must still be the first phase's final
         # ones (the quantizer's EMA codebook moves without the optimizer and is left out of the comparison)
         {"name": "second", "overrides": ["optim.lr=0.0", "optim.warmup_steps=0"]}],
        script="slurm/pretrain_av.sh", config=str(tiny_config), run_root=str(root), job_name="chain",
        # one CPU, so one training process per phase (the process count follows the allocation)
        sbatch=[f"--time={JOB_MINUTES}", "--gpus-per-node=0", "--cpus-per-task=1"],
        overrides=["run.max_steps=10"],
    )
    ids = _submit_chain(phases)
    jobs.extend(ids.values())
    assert list(ids) == ["first", "second"]
    second = job_env.job_info(ids["second"])
    assert (second["JobState"], second["Reason"]) == ("PENDING", "Dependency")
    assert second["Dependency"].startswith(f"afterok:{ids['first']}")
    assert job_env.wait_job(ids["second"], "COMPLETED", timeout=2 * JOB_TIMEOUT_S) == "COMPLETED"
    first = job_env.job_info(ids["first"])
    assert first["JobState"] == "COMPLETED"
    assert job_env.job_info(ids["second"])["StartTime"] >= first["EndTime"]   # ISO timestamps sort as text
    out = (root / f"second-{ids['second']}.out").read_text()
    assert "1 node(s) x 1 process(es)" in out

    saved = yaml.safe_load((root / "second" / "config.yaml").read_text())
    assert (saved["run"]["phase"], saved["run"]["init_from"]) == ("second", str(root / "first" / "checkpoints"))
    for phase in ("first", "second"):
        assert json.loads((root / phase / "status.json").read_text()) == {"state": "finished", "step": 10}
    first_mid, first_final, second_final = (
        _model_params(root / phase / "checkpoints" / f"step_{step:08d}")
        for phase, step in (("first", 5), ("first", 10), ("second", 10)))
    assert first_final.keys() == second_final.keys() and first_final
    # the first phase did move its weights, so equality below is no accident of an idle optimizer
    assert any(not torch.equal(first_mid[k], first_final[k]) for k in first_final)
    for key in first_final:
        assert torch.equal(first_final[key], second_final[key]), key


@pytest.mark.slow
def test_failing_first_phase_fails_its_job_and_cancels_the_second(job_env, jobs, tiny_config, tmp_path):
    root = tmp_path / "chain"
    phases = write_phases(
        tmp_path / "phases.yaml",
        # the shards do not exist: the trainer refuses the config at start-up (exit 2), no training happens
        [{"name": "broken", "overrides": [f"data.urls={tmp_path}/missing/train-{{000000..000001}}.tar"]},
         {"name": "never"}],
        script="slurm/pretrain_av.sh", config=str(tiny_config), run_root=str(root), job_name="chain-fail",
        sbatch=[f"--time={JOB_MINUTES}", "--gpus-per-node=0", "--cpus-per-task=1"],
    )
    ids = _submit_chain(phases)
    jobs.extend(ids.values())
    assert job_env.wait_job(ids["broken"], "FAILED", timeout=JOB_TIMEOUT_S) == "FAILED"
    broken = job_env.job_info(ids["broken"])
    assert broken["ExitCode"] != "0:0" and broken["Restarts"] == "0"   # a crash is neither hidden nor requeued
    out = (root / f"broken-{ids['broken']}.out").read_text()
    assert "config error: data:" in out and "the trainer failed" in out
    assert job_env.wait_job(ids["never"], "CANCELLED", timeout=30) == "CANCELLED"
    assert not (root / "never").exists()


@pytest.mark.slow
def test_continual_cancels_submitted_phases_when_sbatch_refuses_a_later_one(job_env, jobs, tiny_config, tmp_path):
    phases = write_phases(
        tmp_path / "phases.yaml",
        [{"name": "held", "sbatch": ["--hold"]},                  # never runs: only its cancellation matters
         {"name": "nowhere", "sbatch": ["--partition=no-such-partition"]}],  # refused at submit time
        script="slurm/pretrain_av.sh", config=str(tiny_config), run_root=str(tmp_path / "chain"),
        sbatch=[f"--time={JOB_MINUTES}", "--gpus-per-node=0", "--cpus-per-task=1"],
    )
    result = subprocess.run([str(REPO / "slurm" / "continual.sh"), str(phases)], capture_output=True, text=True,
                            timeout=120)
    held = re.search(r"^phase held: job (\d+) ", result.stdout, re.M)
    assert held, result.stdout + result.stderr
    jobs.append(int(held.group(1)))
    assert result.returncode == 1
    assert "sbatch refused phase 'nowhere'" in result.stderr and "Invalid partition" in result.stderr
    assert f"cancelled the phases already submitted (jobs {held.group(1)})" in result.stderr
    assert job_env.wait_job(int(held.group(1)), "CANCELLED", timeout=30) == "CANCELLED"
    assert not (tmp_path / "chain").exists()   # made for the job logs; no job ran, so none was written
