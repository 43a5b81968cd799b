"""The main job on two machines, played on this host: one `python -m trainer.programs.supervisor` per machine
(`--num_machines 2 --machine_rank 0|1 --main_process_ip 127.0.0.1`, one gloo rank each, DeepSpeed ZeRO-2), both on
one run directory, as slurm/job_body.sh starts them on two nodes with a shared file system (docs/training.md,
"Several nodes").

- SIGTERM to one machine's launcher stops both machines at one step with a complete checkpoint, and both launchers
  exit 75; every logged value but the timings is bit-equal to one machine with 2 processes run to that step;
- a dead machine (its launcher, torch elastic and its rank SIGKILLed at once) fails the other one within
  ``run.collective_timeout_s``: non-zero, not 75, the last checkpoint intact;
- `sbatch --nodes=2 slurm/pretrain_av.sh` on a local Slurm of two nodes (two slurmd on this host, fixture
  ``slurm_two_nodes``) runs the job across both: srun starts one launcher per node, machine rank $SLURM_NODEID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dist_utils import free_port
from job_utils import (DEMO_CONFIG, REPO, job_command, job_env, make_clip_shards, read_metrics, run_job,
                       shrunk_job_overrides)
from slurm_cluster import SlurmClusterError

from trainer.checkpoint_format import CheckpointManager, read_meta

STEPS = 40   # never reached: the tests stop or kill the job after a few steps
COLLECTIVE_TIMEOUT_S = 15
# the surviving machine's torch elastic agent stops its rank after the failure (TORCH_ELASTIC_SHUTDOWN_TIMEOUT,
# run.collective_timeout_s under the supervisor) and process start-up and teardown on a busy 2-core machine
FAILURE_SLACK_S = 45


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_clip_shards(tmp_path_factory.mktemp("data"))


def start_machines(run_dir: Path, shards: str, overrides: list[str]) -> list[subprocess.Popen]:
    """Machine 0 (ranks 0, which logs metrics.jsonl) and machine 1, one process each, each in its own session."""
    port = free_port()
    return [subprocess.Popen(job_command(run_dir, shards, processes=2, overrides=[f"run.max_steps={STEPS}", *overrides],
                                         machine=(rank, 2, port)),
                             cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
            for rank in range(2)]


def wait_for_steps(run_dir: Path, machines: list[subprocess.Popen], steps: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(read_metrics(run_dir)) < steps:
        for proc in machines:
            assert proc.poll() is None, f"a machine ended early with {proc.returncode}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.2)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (by /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def finish(machines: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    outcomes = []
    try:
        for proc in machines:
            out, err = proc.communicate(timeout=timeout)
            outcomes.append((proc.returncode, out, err))
    finally:
        for proc in machines:
            if proc.poll() is None:
                for pid in descendants(proc.pid):
                    os.kill(pid, signal.SIGKILL)
    return outcomes


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]


@pytest.mark.slow
def test_sigterm_to_one_machine_stops_both_with_exit_75_and_equals_one_machine_with_2_processes(tmp_path, shards):
    run_dir = tmp_path / "two-machines"
    machines = start_machines(run_dir, shards, [])
    wait_for_steps(run_dir, machines, 2)
    machines[1].send_signal(signal.SIGTERM)          # the machine that does not host rank 0
    outcomes = finish(machines, timeout=180)
    for machine, (code, _, err) in enumerate(outcomes):
        assert code == 75, f"machine {machine} exited {code}\n{err[-3000:]}"
        assert "FAILED" not in err and "Traceback" not in err, err[-3000:]
    assert "[cmg launch] SIGTERM: asking the job to checkpoint and stop" in outcomes[1][2]
    stopped = json.loads((run_dir / "status.json").read_text())
    assert stopped["state"] == "stopped", stopped
    latest = CheckpointManager(run_dir / "checkpoints").resolve("auto")     # verified against its manifest
    assert read_meta(latest).step == stopped["step"] and read_meta(latest).world_size == 2
    assert not (run_dir / "STOP").exists()

    # the same rank layout on one machine: rank 0 and rank 1 see the same data and reduce in the same order
    reference = tmp_path / "one-machine"
    run_job(reference, shards, processes=2, overrides=[f"run.max_steps={stopped['step']}"])
    two_machines, one_machine = without_timings(read_metrics(run_dir)), without_timings(read_metrics(reference))
    assert [row["step"] for row in two_machines] == list(range(1, stopped["step"] + 1))
    assert two_machines == one_machine                                       # every value, bit for bit


@pytest.mark.slow
def test_a_dead_machine_fails_the_other_within_the_collective_timeout_and_keeps_the_checkpoint(tmp_path, shards):
    run_dir = tmp_path / "dead-machine"
    machines = start_machines(run_dir, shards, ["run.ckpt_every=2", f"run.collective_timeout_s={COLLECTIVE_TIMEOUT_S}"])
    wait_for_steps(run_dir, machines, 3)
    dead = descendants(machines[1].pid)              # its supervisor, torch elastic, the rank, its data worker
    for sig in (signal.SIGSTOP, signal.SIGKILL):     # frozen first: none of them sees the others die
        for pid in dead:
            os.kill(pid, sig)
    start = time.monotonic()
    (code, _, err), _ = finish(machines, timeout=COLLECTIVE_TIMEOUT_S + FAILURE_SLACK_S + 60)
    waited = time.monotonic() - start
    assert code not in (0, 75), err[-3000:]
    assert waited < COLLECTIVE_TIMEOUT_S + FAILURE_SLACK_S, f"machine 0 took {waited:.0f} s to fail\n{err[-3000:]}"
    assert "[cmg launch] the job failed" in err, err[-3000:]
    latest = CheckpointManager(run_dir / "checkpoints").resolve("auto")     # verified against its manifest
    assert latest is not None and read_meta(latest).step >= 2
    assert not (run_dir / "status.json").exists()                          # neither finished nor stopped


@pytest.mark.slow
def test_sbatch_nodes_2_runs_the_job_on_both_nodes(slurm_two_nodes, shards, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.chdir(REPO)        # the submit directory: the job finds slurm/job_body.sh and the configs there
    for key, value in job_env().items():                    # sbatch hands the environment on to the job
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for key in ("CONFIG", "RUN_DIR", "EXTRA", "ACCELERATE_CONFIG", "NPROC_PER_NODE"):
        monkeypatch.delenv(key, raising=False)
    job = slurm_two_nodes.sbatch(
        "--time=5", "--nodes=2", "--cpus-per-task=1", "--gpus-per-node=0", "--job-name=two-nodes",
        f"--output={tmp_path}/two-nodes-%j.out", f"--export=ALL,CONFIG={DEMO_CONFIG},RUN_DIR={run_dir}",
        "slurm/pretrain_av.sh", *shrunk_job_overrides(shards, overrides=["run.max_steps=2"]))
    log = tmp_path / f"two-nodes-{job}.out"
    try:
        slurm_two_nodes.wait_job(job, "COMPLETED", timeout=240, poll_s=0.5)   # sbatch --wait polls every few s
    except SlurmClusterError as err:
        slurm_two_nodes.run("scancel", str(job), check=False)
        raise AssertionError(log.read_text()[-3000:] if log.exists() else "no job log") from err
    out = log.read_text()
    assert slurm_two_nodes.job_info(job)["ExitCode"] == "0:0", out[-3000:]
    first, second = slurm_two_nodes.nodes
    assert f"on {first},{second}: 2 node(s) x 1 process(es), launch/accelerate/cpu_zero2.yaml, main {first}:" in out
    assert json.loads((run_dir / "status.json").read_text()) == {"state": "finished", "step": 2}
    latest = CheckpointManager(run_dir / "checkpoints").resolve("auto")
    assert (read_meta(latest).step, read_meta(latest).world_size) == (2, 2)     # one rank on each node
