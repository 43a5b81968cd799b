"""The local Slurm helper (tests/support/slurm_cluster.py) against a real slurmctld + slurmd + munged.

Every job has a --time limit and writes into the test's tmp dir (--chdir, --output). The slow tests
share the session cluster (fixture ``slurm_cluster``); the last two also start and stop private
clusters (own state dir and ports) beside it, to test down() and sharing without disturbing it.
The checks that need no cluster are in tests/unit/test_slurm_helper.py.
"""

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dist_utils import free_port
from slurm_cluster import (
    LocalSlurm,
    LocalSlurmConfig,
    SlurmClusterError,
    port_in_use,
    process_alive,
)

REPO = Path(__file__).resolve().parents[2]

def _poll(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return value


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _job_args(tmp_path: Path, name: str, minutes: int = 1) -> list[str]:
    return [f"--time={minutes}", f"--chdir={tmp_path}", f"--output={tmp_path}/{name}-%j.out", f"--job-name={name}"]


def _write_script(tmp_path: Path, name: str, body: str) -> Path:
    script = tmp_path / f"{name}.sh"
    script.write_text("#!/bin/bash\n" + body)
    return script


# ---- against the session cluster ----


@pytest.mark.slow
def test_sbatch_wait_trivial_job_completes_with_its_output(slurm_cluster, tmp_path):
    result = slurm_cluster.run(
        "sbatch", "--parsable", "--wait", *_job_args(tmp_path, "hello"), "--wrap", "echo hello from $SLURM_JOB_ID",
        timeout=60,
    )
    job = int(result.stdout.strip())
    assert slurm_cluster.job_state(job) == "COMPLETED"
    assert (tmp_path / f"hello-{job}.out").read_text() == f"hello from {job}\n"


@pytest.mark.slow
def test_afterok_chain_runs_second_job_after_first_ends(slurm_cluster, tmp_path):
    log = tmp_path / "order.log"
    # Held until the dependent job exists, so a fast first job cannot end before the dependency is made.
    first = slurm_cluster.sbatch(
        "--hold", *_job_args(tmp_path, "first"),
        "--wrap", f"echo first-start >> {log}; sleep 2; echo first-end >> {log}",
    )
    second = slurm_cluster.sbatch(
        f"--dependency=afterok:{first}", "--kill-on-invalid-dep=yes", *_job_args(tmp_path, "second"),
        "--wrap", f"echo second >> {log}",
    )
    slurm_cluster.run("scontrol", "release", str(first))
    slurm_cluster.wait_job(first, "RUNNING", timeout=30)
    # The node has a free CPU, so only the dependency keeps the second job waiting.
    info = slurm_cluster.job_info(second)
    assert (info["JobState"], info["Reason"]) == ("PENDING", "Dependency")
    slurm_cluster.wait_job(second, "COMPLETED", timeout=60)
    assert slurm_cluster.job_state(first) == "COMPLETED"
    assert log.read_text().split() == ["first-start", "first-end", "second"]


@pytest.mark.slow
def test_failed_first_job_cancels_its_dependent(slurm_cluster, tmp_path):
    first = slurm_cluster.sbatch("--hold", *_job_args(tmp_path, "fails"), "--wrap", "exit 3")
    second = slurm_cluster.sbatch(
        f"--dependency=afterok:{first}", "--kill-on-invalid-dep=yes", *_job_args(tmp_path, "never"),
        "--wrap", f"touch {tmp_path}/second-ran",
    )
    slurm_cluster.run("scontrol", "release", str(first))
    assert slurm_cluster.wait_job(first, {"FAILED"}, timeout=30) == "FAILED"
    assert slurm_cluster.job_info(first)["ExitCode"] == "3:0"
    assert slurm_cluster.wait_job(second, {"CANCELLED"}, timeout=30) == "CANCELLED"
    assert not (tmp_path / "second-ran").exists()
    assert not list(tmp_path.glob("never-*.out"))


@pytest.mark.slow
def test_scancel_usr1_to_batch_shell_reaches_trap_while_waiting(slurm_cluster, tmp_path):
    # The trap can fire only because bash blocks in `wait`, not in a foreground command.
    script = _write_script(
        tmp_path,
        "trap",
        'trap \'echo "got USR1"; kill "$child"; exit 0\' USR1\n'
        'sleep 60 & child=$!\n'
        "echo ready\n"
        'wait "$child"\n'
        "echo wait-returned-without-signal\n"
        "exit 1\n",
    )
    job = slurm_cluster.sbatch(*_job_args(tmp_path, "trap"), str(script))
    out = tmp_path / f"trap-{job}.out"
    _poll(lambda: "ready" in _text(out), "the batch script to install its trap")
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", str(job))
    assert slurm_cluster.wait_job(job, "COMPLETED", timeout=30) == "COMPLETED"
    assert out.read_text().split() == ["ready", "got", "USR1"]


@pytest.mark.slow
def test_requeued_job_relaunches_with_restart_count(slurm_cluster, tmp_path):
    # The first run requeues itself (as the preemption handler does) and is killed by that requeue.
    script = _write_script(
        tmp_path,
        "requeue",
        "#SBATCH --requeue\n"
        "#SBATCH --open-mode=append\n"
        'echo "start restart=${SLURM_RESTART_COUNT:-0}"\n'
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then\n'
        '  scontrol requeue "$SLURM_JOB_ID"\n'
        "  sleep 60 & wait $!\n"
        "fi\n"
        'echo "finish restart=$SLURM_RESTART_COUNT"\n',
    )
    job = slurm_cluster.sbatch(*_job_args(tmp_path, "requeue"), str(script))
    out = tmp_path / f"requeue-{job}.out"
    # Slurm holds a requeued job for 120 s (Reason=BeginTime); moving its start to now+2 from
    # outside the job skips that (StartTime=now can race the kill of the first run).
    info = _poll(
        lambda: (i := slurm_cluster.job_info(job))["JobState"] == "PENDING" and i["Reason"] == "BeginTime" and i,
        "the requeued job to be held with Reason=BeginTime",
    )
    assert info["Restarts"] == "1"
    slurm_cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now+2")
    assert slurm_cluster.wait_job(job, "COMPLETED", timeout=60) == "COMPLETED"
    lines = [line for line in out.read_text().splitlines() if not line.startswith("slurmstepd")]
    assert lines == ["start restart=0", "start restart=1", "finish restart=1"]


@pytest.mark.slow
def test_second_up_is_a_noop_and_unknown_job_is_a_clear_error(slurm_cluster):
    pids = {name: slurm_cluster.daemon_pid(name) for name in slurm_cluster.pidfiles}
    assert None not in pids.values()
    assert slurm_cluster.up() is False
    assert {name: slurm_cluster.daemon_pid(name) for name in slurm_cluster.pidfiles} == pids
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.conf_path)
    with pytest.raises(SlurmClusterError, match="no job 999999"):
        slurm_cluster.job_state(999999)


# ---- a private cluster: advertised CPUs and fake GPUs, then down() with jobs running ----


def _processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes with ``text`` in their command line or environment: an independent check of
    what ``down`` leaves behind (the helper's own process matching is not reused here)."""
    needle, found = text.encode(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if (needle in cmdline or needle in environ) and process_alive(int(entry)):
            found.append((int(entry), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


def _port_pair() -> int:
    """A free port P whose successor is free too (LOCAL_SLURM_PORT=P puts slurmd on P+1)."""
    for _ in range(100):
        port = free_port()
        if port < 65535 and not port_in_use(port + 1):
            return port
    raise AssertionError("no two consecutive free ports found")


def _pipe_at_eof(read_end: int) -> bool:
    """True when every write end of the pipe is closed; False if someone still holds one (read blocks)."""
    readable, _, _ = select.select([read_end], [], [], 5.0)
    return bool(readable) and os.read(read_end, 1) == b""


@pytest.mark.slow
def test_private_cluster_from_cli_runs_more_jobs_than_cores_and_down_leaves_nothing(slurm_cluster, tmp_path):
    # Not under tmp_path: munged wants every directory above its socket searchable by all (pytest's are 0700).
    state_dir = Path(f"/tmp/cmg-slurm-private-{os.getpid()}")
    env = {
        **os.environ,
        "LOCAL_SLURM_DIR": str(state_dir),
        "LOCAL_SLURM_CPUS": "8",
        "LOCAL_SLURM_GPUS": "2",
        "LOCAL_SLURM_PORT": str(_port_pair()),
    }
    cli = [str(REPO / "slurm" / "local_cluster.sh")]
    cluster = LocalSlurm(LocalSlurmConfig.from_env(env))
    # The CLI gets captured stdout/stderr pipes plus one extra inherited pipe: a daemon that kept any of
    # them open would make run() hang until its timeout, or leave the extra pipe without EOF.
    read_end, write_end = os.pipe()
    try:
        up = subprocess.run(cli + ["up"], env=env, pass_fds=(write_end,), capture_output=True, text=True, timeout=60)
        os.close(write_end)
        assert up.returncode == 0, up.stderr
        assert up.stdout == f"export SLURM_CONF={state_dir}/slurm.conf\n"
        assert _pipe_at_eof(read_end), "a daemon inherited the launcher's file descriptor"
        assert subprocess.run(cli + ["status"], env=env, capture_output=True, timeout=30).returncode == 0
        assert cluster.up() is False  # the Python API sees the cluster the CLI started: one implementation
        assert cluster.run("sinfo", "-h", "-o", "%c %G").stdout.split() == ["8", "gpu:2"]
        gpu_job = cluster.sbatch(
            "--gpus-per-node=2", *_job_args(tmp_path, "gpu"), "--wrap", "echo $SLURM_GPUS_ON_NODE $CUDA_VISIBLE_DEVICES"
        )
        # Three one-CPU jobs on a machine with fewer cores: all run at once because the node advertises 8.
        sleepers = [
            cluster.sbatch("--cpus-per-task=1", *_job_args(tmp_path, f"sleep{i}", minutes=2), "--wrap", "sleep 120")
            for i in range(3)
        ]
        assert cluster.wait_job(gpu_job, "COMPLETED", timeout=30) == "COMPLETED"
        assert (tmp_path / f"gpu-{gpu_job}.out").read_text().split() == ["2", "0,1"]
        for job in sleepers:
            cluster.wait_job(job, "RUNNING", timeout=30)
        assert _processes_mentioning(str(state_dir)), "the cluster and its jobs should be visible before down"
        # The session cluster is another cluster: this one must not touch it.
        assert slurm_cluster.is_up()
    finally:
        os.close(read_end)
        started = time.perf_counter()
        cluster.down()
        down_s = time.perf_counter() - started
    assert _processes_mentioning(str(state_dir)) == []
    assert not state_dir.exists()
    assert down_s < 15, f"down took {down_s:.1f} s"
    again = subprocess.run(cli + ["down"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr  # idempotent: nothing to stop, no error
    assert subprocess.run(cli + ["status"], env=env, capture_output=True, timeout=30).returncode == 1
    assert slurm_cluster.is_up()


@pytest.mark.slow
def test_shared_cluster_is_stopped_only_by_its_last_user():
    state_dir = Path(f"/tmp/cmg-slurm-shared-{os.getpid()}")
    env = {**os.environ, "LOCAL_SLURM_DIR": str(state_dir), "LOCAL_SLURM_PORT": str(_port_pair())}
    cluster = LocalSlurm(LocalSlurmConfig.from_env(env))
    # A second pytest session on the same machine: joins the running cluster and leaves before us.
    other_session = (
        f"import sys; sys.path.insert(0, {str(REPO / 'tests' / 'support')!r})\n"
        "from slurm_cluster import LocalSlurm, LocalSlurmConfig\n"
        "with LocalSlurm(LocalSlurmConfig.from_env()).shared() as c:\n"
        "    assert c.is_up()\n"
    )
    try:
        with cluster.shared():
            pids = {name: cluster.daemon_pid(name) for name in cluster.pidfiles}
            subprocess.run([sys.executable, "-c", other_session], env=env, timeout=60, check=True)
            assert cluster.is_up(), "the other session stopped a cluster that was still in use"
            assert {name: cluster.daemon_pid(name) for name in cluster.pidfiles} == pids
        assert not state_dir.exists()
        assert _processes_mentioning(str(state_dir)) == []
    finally:
        cluster.down()
        for lock in state_dir.parent.glob(f"{state_dir.name}.*.lock"):
            lock.unlink()
