"""The main job on two machines, played on this host (docs/training.md, "Slurm", several nodes).

- one `python -m trainer.programs.supervisor` per machine (`--num_machines 2 --machine_rank 0|1 --main_process_ip
  127.0.0.1`, the arguments slurm/job_body.sh gives each node's), one gloo rank each, DeepSpeed ZeRO-2, one run
  directory: every logged value but the timings is bit-equal to one machine with 2 processes; a dead machine (its
  launcher, torch elastic, its rank and its data worker SIGKILLed at once) fails the other within
  ``run.collective_timeout_s``: non-zero, not 75, the last checkpoint intact;
- `sbatch --nodes=2 slurm/pretrain_av.sh` on a local Slurm of two nodes (two slurmd on this host, fixture
  ``slurm_two_nodes``): srun starts one launcher per node (machine rank $SLURM_NODEID); SIGTERM to one node's
  launcher stops both nodes at one step with a complete checkpoint, both launchers exit 75, and so does the job.
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

STEPS = 40   # never reached: the tests stop or kill the job after a few steps (lr warmup: 20 steps of the demo's)
COLLECTIVE_TIMEOUT_S = 15
# after the failed collective: the rank's exit, torch elastic's and the supervisor's report, on a busy 2-core machine
FAILURE_SLACK_S = 45


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_clip_shards(tmp_path_factory.mktemp("data"))


def start_machines(run_dir: Path, shards: str, overrides: list[str]) -> list[subprocess.Popen]:
    """Machine 0 (rank 0, which logs metrics.jsonl) and machine 1, one process each, each in its own session."""
    port = free_port()
    return [subprocess.Popen(job_command(run_dir, shards, processes=2, overrides=[f"run.max_steps={STEPS}", *overrides],
                                         node=(rank, 2, port)),
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
def test_two_machines_equal_one_and_a_dead_machine_fails_the_other_within_the_collective_timeout(tmp_path, shards):
    overrides = ["run.ckpt_every=2", f"run.collective_timeout_s={COLLECTIVE_TIMEOUT_S}"]
    run_dir = tmp_path / "two-machines"
    machines = start_machines(run_dir, shards, overrides)
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
    assert latest is not None and read_meta(latest).step >= 2 and read_meta(latest).world_size == 2
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"   # neither finished nor stopped

    # every row rank 0 logged took an all-reduce with machine 1 alive. One machine with 2 processes has the same rank
    # layout (each rank reads the same data, the reductions add in the same order): the same values, bit for bit
    two_machines = without_timings(read_metrics(run_dir))
    logged = len(two_machines)
    assert [row["step"] for row in two_machines] == list(range(1, logged + 1))
    reference = tmp_path / "one-machine"
    run_job(reference, shards, processes=2, overrides=[*overrides, f"run.max_steps={logged}"])
    assert two_machines == without_timings(read_metrics(reference))


def node_supervisor(run_dir: Path, node_id: int) -> int:
    """The pid of the launcher srun started on node ``node_id`` for the job of ``run_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[1:3] == [b"-m", b"trainer.programs.supervisor"] and f"RUN_DIR={run_dir}".encode() in environ \
                and f"SLURM_NODEID={node_id}".encode() in environ:
            found.append(int(entry.name))
    assert len(found) == 1, f"launchers of node {node_id}: {found}"
    return found[0]


@pytest.mark.slow
def test_sbatch_nodes_2_sigterm_to_one_node_stops_both_nodes_with_exit_75(slurm_two_nodes, shards, tmp_path,
                                                                           monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.chdir(REPO)        # the submit directory: the job finds slurm/job_body.sh and the configs there
    for key, value in job_env().items():                    # sbatch hands the environment on to the job
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for key in ("CONFIG", "RUN_DIR", "EXTRA", "ACCELERATE_CONFIG", "NPROC_PER_NODE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    job = slurm_two_nodes.sbatch(
        "--time=5", "--nodes=2", "--cpus-per-task=1", "--gpus-per-node=0", "--job-name=two-nodes",
        f"--output={tmp_path}/two-nodes-%j.out", f"--export=ALL,CONFIG={DEMO_CONFIG},RUN_DIR={run_dir}",
        "slurm/pretrain_av.sh", *shrunk_job_overrides(shards, overrides=[f"run.max_steps={STEPS}"]))
    log = tmp_path / f"two-nodes-{job}.out"
    try:
        deadline = time.monotonic() + 180
        while len(read_metrics(run_dir)) < 2:
            assert slurm_two_nodes.job_state(job) in ("PENDING", "RUNNING"), "the job ended before step 2"
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.2)
        os.kill(node_supervisor(run_dir, 1), signal.SIGTERM)    # the node without rank 0
        state = slurm_two_nodes.wait_job(job, ("COMPLETED", "FAILED"), timeout=180, poll_s=0.5)
    except (AssertionError, SlurmClusterError) as err:
        slurm_two_nodes.run("scancel", str(job), check=False)
        raise AssertionError(log.read_text()[-3000:] if log.exists() else "no job log") from err
    out = log.read_text()
    first, second = slurm_two_nodes.nodes
    assert f"on {first},{second}: 2 node(s) x 1 process(es), launch/accelerate/cpu_zero2.yaml, main {first}:" in out
    # both nodes' launchers exit 75; a stop without a preemption signal is not requeued: the job exits 75
    for node, task in ((first, 0), (second, 1)):
        assert f"{node}: task {task}: Exited with exit code 75" in out, out[-3000:]
    assert (state, slurm_two_nodes.job_info(job)["ExitCode"]) == ("FAILED", "75:0"), out[-3000:]
    stopped = json.loads((run_dir / "status.json").read_text())
    assert stopped["state"] == "stopped", stopped
    latest = CheckpointManager(run_dir / "checkpoints").resolve("auto")     # verified against its manifest
    assert (read_meta(latest).step, read_meta(latest).world_size) == (stopped["step"], 2)   # a rank on each node
    assert not (run_dir / "STOP").exists()
