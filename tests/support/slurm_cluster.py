#!/usr/bin/env python3
"""A real Slurm cluster (munged + slurmctld + one slurmd per node, one node by default) on 127.0.0.1, for tests
and CI.

This is the project's only implementation; ``slurm/local_cluster.sh`` just runs this file. Standard
library only, so the system ``python3`` can run it before any virtualenv exists.

Command line (root)::

    python3 tests/support/slurm_cluster.py up       # install if missing, start, wait until ready;
                                                    # prints `export SLURM_CONF=...`
    python3 tests/support/slurm_cluster.py env      # prints `export SLURM_CONF=...`
    python3 tests/support/slurm_cluster.py status   # exit 0 when the cluster is up and healthy, 1 otherwise
    python3 tests/support/slurm_cluster.py down     # cancel every job, stop every cluster process, remove its dir
    python3 tests/support/slurm_cluster.py bench    # times a cold up -> first job done, a second up, and down

From Python (pytest uses the ``slurm_cluster`` fixture in ``conftest_slurm.py``)::

    cluster = LocalSlurm(LocalSlurmConfig.from_env())
    cluster.up()                                    # a no-op when already up with the same config
    job = cluster.sbatch("--time=1", "--wrap", "hostname")
    cluster.wait_job(job, {"COMPLETED"}, timeout=30)
    cluster.down()

Knobs (environment variables, read by ``LocalSlurmConfig.from_env``):

    LOCAL_SLURM_DIR      state dir (default /tmp/cmg-local-slurm); holds conf, munge key/socket, logs, spool
    LOCAL_SLURM_NODES    nodes (default 1), each its own slurmd on this host (Debian builds Slurm with
                         --enable-multiple-slurmd: `scontrol show config` says MULTIPLE_SLURMD = Yes): the first is
                         named after this host, the others <host>-1, <host>-2...; slurmd ports follow each other
    LOCAL_SLURM_CPUS     CPUs each node advertises (default: this machine's count). More than the machine
                         has is fine (SlurmdParameters=config_overrides): e.g. 8 lets 8 one-CPU jobs run at once
    LOCAL_SLURM_GPUS     fake GPUs per node (default 0): GRES backed by /dev/null-like char devices, so
                         production `--gpus-per-node` headers are accepted; jobs see CUDA_VISIBLE_DEVICES
    LOCAL_SLURM_MEM_MB   RealMemory of the node (default: MemTotal - 1024 MB)
    LOCAL_SLURM_PORT     SlurmctldPort (default 6817); the slurmds listen on the next ports
    LOCAL_SLURM_INSTALL  1 (default): apt-get install the Debian packages when missing; 0: fail instead
    LOCAL_SLURM_KEEP     1: `down` keeps the state dir (logs) for debugging; default 0
    LOCAL_SLURM_TIMEOUT  seconds for readiness and for each client call (default 30)

What it does (tested recipe: shared/notes/local_slurm.md): Debian's slurm-wlm 22.05 and munge as root
without systemd; munged with its own key and socket in the state dir; a slurm.conf generated from the
short hostname at every ``up`` (the controller insists on matching its host name); every daemon started
with stdin from /dev/null and every inherited fd above 2 closed, so a CI runner reading our stdout sees
EOF. Nothing under /etc is touched: clients find the cluster through ``SLURM_CONF`` (``env()``), and
sbatch's default ``--export=ALL`` hands it on to jobs and to ``srun`` inside them. ``sacct`` does not
exist here (no accounting daemon): job state comes from ``scontrol show job``, kept 24 h (MinJobAge).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Daemons live in /usr/sbin, which a CI PATH may lack.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARY_PACKAGE = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "slurmstepd": "slurmd",
    "sbatch": "slurm-client",
    "scontrol": "slurm-client",
    "sinfo": "slurm-client",
    "squeue": "slurm-client",
    "scancel": "slurm-client",
    "munged": "munge",
    "mungekey": "munge",
    "munge": "munge",
    "unmunge": "munge",
}
DAEMONS = ("munged", "slurmctld", "slurmd", "slurmstepd")
# A job in one of these states will never change again (unless someone requeues it).
TERMINAL_JOB_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
)
# sinfo %T of a node that can run jobs; a trailing "*" (not responding), down, drain, inval... are not.
HEALTHY_NODE_STATES = frozenset({"idle", "mixed", "allocated", "completing"})
APT_LOCK_WAIT_S = 300.0
DOWN_DRAIN_S = 20.0  # KillWait=5 plus margin: a job ignoring SIGTERM dies by SIGKILL within ~6 s


class SlurmClusterError(RuntimeError):
    """The local cluster could not be started, queried or stopped; the message says what and where."""


@dataclass
class LocalSlurmConfig:
    """Where the cluster lives, how many nodes it has and what each advertises (0 = taken from this machine).
    Every directory above ``state_dir`` must be searchable by all: munged refuses its socket otherwise."""

    state_dir: str = "/tmp/cmg-local-slurm"
    nodes: int = 1
    cpus: int = 0
    gpus: int = 0
    mem_mb: int = 0
    ctld_port: int = 6817
    slurmd_port: int = 6818
    partition: str = "debug"
    install: bool = True
    keep: bool = False
    timeout_s: float = 30.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> LocalSlurmConfig:
        """Defaults overridden by the LOCAL_SLURM_* variables (see the module docstring)."""
        env = os.environ if environ is None else environ
        cfg = cls()

        def number(key: str, kind: type, default):
            raw = env.get(key, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise SlurmClusterError(f"{key}={raw!r} is not a {kind.__name__}") from None
            if value < 0:
                raise SlurmClusterError(f"{key}={raw!r} must not be negative")
            return value

        def flag(key: str, default: bool) -> bool:
            raw = env.get(key, "").strip().lower()
            if not raw:
                return default
            if raw not in ("0", "1", "true", "false", "yes", "no"):
                raise SlurmClusterError(f"{key}={raw!r}: expected 0 or 1")
            return raw in ("1", "true", "yes")

        port = number("LOCAL_SLURM_PORT", int, cfg.ctld_port)
        nodes = number("LOCAL_SLURM_NODES", int, cfg.nodes)
        if nodes < 1:
            raise SlurmClusterError(f"LOCAL_SLURM_NODES={nodes}: a cluster needs at least one node")
        return cls(
            state_dir=env.get("LOCAL_SLURM_DIR", "").strip() or cfg.state_dir,
            nodes=nodes,
            cpus=number("LOCAL_SLURM_CPUS", int, cfg.cpus),
            gpus=number("LOCAL_SLURM_GPUS", int, cfg.gpus),
            mem_mb=number("LOCAL_SLURM_MEM_MB", int, cfg.mem_mb),
            ctld_port=port,
            slurmd_port=port + 1,
            install=flag("LOCAL_SLURM_INSTALL", cfg.install),
            keep=flag("LOCAL_SLURM_KEEP", cfg.keep),
            timeout_s=number("LOCAL_SLURM_TIMEOUT", float, cfg.timeout_s),
        )


def parse_scontrol_record(line: str) -> dict[str, str]:
    """``scontrol -o show job`` prints one ``Key=Value Key=Value ...`` line; values may hold spaces
    (paths) or ``=`` (``TRES=cpu=1,node=1``), so a key is only a word that follows whitespace."""
    keys = list(re.finditer(r"(?:^|\s)([A-Za-z][\w/:]*)=", line))
    record = {}
    for here, after in zip(keys, keys[1:] + [None]):
        end = after.start() if after is not None else len(line)
        record[here.group(1)] = line[here.end() : end].strip()
    return record


# ---- processes, by /proc (a zombie counts as gone: PID 1 here reaps orphans up to ~20 s late) ----


def _read_proc(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:  # gone, or a kernel thread
        return None


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat after the command name (which may itself hold spaces or ")"): state, ppid, ..."""
    raw = _read_proc(pid, "stat")
    return None if raw is None else raw[raw.rindex(b")") + 2 :].split()


def process_alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def process_exe(pid: int) -> str | None:
    """The program file a process runs (still named after an upgrade replaced it)."""
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None


def program_path(name: str) -> str | None:
    """Where a program really lives: Debian installs slurmctld as an alternatives symlink to
    /usr/sbin/slurmctld-wlm, and /proc/PID/exe names the real file."""
    found = shutil.which(name, path=SYSTEM_PATH)
    return os.path.realpath(found) if found else None


def parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _ancestors() -> set[int]:
    """This process and its parents: never killed, even if they carry a job's environment."""
    chain, pid = set(), os.getpid()
    while pid is not None and pid > 1:
        chain.add(pid)
        pid = parent_pid(pid)
    return chain


def terminate(pids: Iterable[int], grace_s: float) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL what is left; raise if anything survives."""
    pids = list(pids)
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        live = [pid for pid in pids if process_alive(pid)]
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while live and time.monotonic() < deadline:
            time.sleep(0.05)
            live = [pid for pid in live if process_alive(pid)]
        if not live:
            return
    raise SlurmClusterError(f"processes {live} survived SIGKILL")


def missing_binaries() -> list[str]:
    """Slurm and munge programs not installed (looked up in the system bin/sbin dirs)."""
    return [name for name in BINARY_PACKAGE if shutil.which(name, path=SYSTEM_PATH) is None]


def port_in_use(port: int) -> bool:
    """True when something listens on ``port`` (any address: slurmctld and slurmd bind 0.0.0.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # REUSEADDR ignores TIME_WAIT leftovers of a cluster that just stopped, but not a listener.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return True
    return False


class LocalSlurm:
    """One local cluster, identified by its state dir: everything it runs carries that dir in its
    command line or ``SLURM_CONF=<dir>/slurm.conf`` in its environment, which is how ``down`` finds
    its processes (and only its processes) by PID."""

    def __init__(self, config: LocalSlurmConfig | None = None):
        self.config = config or LocalSlurmConfig()
        self.dir = Path(os.path.abspath(self.config.state_dir))
        self.conf_path = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.socket"
        self.munge_key = self.dir / "munge" / "munge.key"
        self.log_dir = self.dir / "log"
        self.run_dir = self.dir / "run"
        # The controller refuses to start unless SlurmctldHost is this host's short name (`hostname -s`).
        # The first node is this host's (and the controller's) name, and the one its jobs' first step runs on.
        self.node = socket.gethostname().split(".")[0]
        self.nodes = [self.node] + [f"{self.node}-{i}" for i in range(1, self.config.nodes)]
        # one slurmd per node (`slurmd -N <node>`): "slurmd" is the first node's, "slurmd@<node>" another's
        self.slurmds = {("slurmd" if i == 0 else f"slurmd@{node}"): node for i, node in enumerate(self.nodes)}
        self.pidfiles = {
            "munged": self.run_dir / "munged.pid",
            "slurmctld": self.run_dir / "slurmctld.pid",
            **{name: self.run_dir / f"slurmd-{node}.pid" for name, node in self.slurmds.items()},
        }

    # ---- public API ----

    def env(self) -> dict[str, str]:
        """What a client (or a test process) needs in its environment to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf_path)}

    def up(self) -> bool:
        """Start the cluster and wait until its node is idle. Returns False (and does nothing) when it
        is already up and healthy with the same config; an unhealthy or differently configured one is
        stopped first. A failed start stops everything it started and raises with the logs' tails."""
        if os.geteuid() != 0:
            raise SlurmClusterError("the local Slurm cluster must be started as root (munged and slurmd run as root)")
        conf = self.render_conf()
        if self.is_up() and self.conf_path.read_text() == conf:
            return False
        self.down()
        ports = [(self.config.ctld_port, "SlurmctldPort")] + [
            (self.slurmd_port(node), f"slurmd port of node {node}") for node in self.nodes]
        for port, role in ports:
            if port_in_use(port):
                raise SlurmClusterError(
                    f"port {port} ({role}) is already in use on this machine (see `ss -ltnp`): another Slurm or "
                    f"service holds it; move this cluster with LOCAL_SLURM_PORT=<free port> (state dir {self.dir})"
                )
        self.ensure_installed()
        self._prepare_dir(conf)
        try:
            self._start_munged()
            self._start_daemon("slurmctld", ["slurmctld", "-f", str(self.conf_path)])
            for name, node in self.slurmds.items():
                self._start_daemon(name, ["slurmd", "-f", str(self.conf_path), "-N", node])
            self._wait_ready()
        except BaseException as exc:
            logs = self._log_tails()
            self.down()
            if isinstance(exc, SlurmClusterError):
                raise SlurmClusterError(f"{exc}\n{logs}") from None
            raise
        return True

    def down(self) -> None:
        """Cancel every job, stop every process of this cluster by PID, remove the state dir. Idempotent."""
        if self.daemon_pid("slurmctld") is not None:
            self._drain_queue()
        for name in (*self.slurmds, "slurmctld"):
            self._stop_daemon(name)
        terminate(self.processes(names=("slurmstepd",)), grace_s=2.0)
        self._stop_daemon("munged")
        # Anything still here: daemons behind a stale pidfile, job processes that escaped proctrack.
        terminate(self.processes(jobs=True), grace_s=2.0)
        if not self.config.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def is_up(self) -> bool:
        """Every daemon alive by pidfile, the controller answers, and every node can run jobs."""
        if not self.conf_path.is_file() or any(self.daemon_pid(name) is None for name in self.pidfiles):
            return False
        try:
            return self._controller_up() and all(self.node_state(node) in HEALTHY_NODE_STATES for node in self.nodes)
        except SlurmClusterError:
            return False

    @contextlib.contextmanager
    def shared(self) -> Iterator[LocalSlurm]:
        """Use the cluster for the length of the block, sharing it with other users of the same state dir
        (two pytest sessions on one machine): ``up`` on entry, ``down`` on exit only by the last user.

        Two flock files beside the state dir (``down`` removes the dir, not them): ``<dir>.setup.lock``
        serialises up/down; every user holds ``<dir>.users.lock`` shared while inside the block.
        """
        with open(f"{self.dir}.setup.lock", "a") as setup, open(f"{self.dir}.users.lock", "a") as users:
            fcntl.flock(setup, fcntl.LOCK_EX)
            try:
                fcntl.flock(users, fcntl.LOCK_SH)
                self.up()
            finally:
                fcntl.flock(setup, fcntl.LOCK_UN)
            try:
                yield self
            finally:
                fcntl.flock(setup, fcntl.LOCK_EX)
                try:
                    # Upgrading to exclusive succeeds only when no other user still holds it shared.
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass
                else:
                    self.down()
                finally:
                    fcntl.flock(setup, fcntl.LOCK_UN)

    def run(
        self, *args: str, timeout: float | None = None, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """Run a Slurm or munge client (``sbatch``, ``scontrol``...) against this cluster, bounded by a
        timeout (default: the config's), with text output captured and ``input`` (or nothing) as stdin."""
        timeout = self.config.timeout_s if timeout is None else timeout
        env = {**os.environ, **self.env(), "PATH": f"{os.environ.get('PATH', '')}:{SYSTEM_PATH}"}
        try:
            result = subprocess.run(
                list(args),
                env=env,
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise SlurmClusterError(f"`{' '.join(args)}` did not finish within {timeout:.0f} s") from None
        except FileNotFoundError:
            raise SlurmClusterError(f"`{args[0]}` is not installed (package {BINARY_PACKAGE.get(args[0])})") from None
        if check and result.returncode != 0:
            raise SlurmClusterError(
                f"`{' '.join(args)}` exited with {result.returncode}: {(result.stderr or result.stdout).strip()}"
            )
        return result

    def sbatch(self, *args: str, timeout: float | None = None) -> int:
        """Submit with ``sbatch --parsable ARGS``; returns the job id."""
        out = self.run("sbatch", "--parsable", *args, timeout=timeout).stdout.strip()
        try:
            return int(out.split(";")[0])
        except ValueError:
            raise SlurmClusterError(f"sbatch printed {out!r}, not a job id") from None

    def job_info(self, job_id: int) -> dict[str, str]:
        """The job's ``scontrol show job`` record (JobState, Reason, Restarts, ExitCode, StdOut...)."""
        result = self.run("scontrol", "-o", "show", "job", str(job_id), check=False)
        if result.returncode != 0 or not result.stdout.strip():
            raise SlurmClusterError(f"no job {job_id} in {self.conf_path}: {(result.stderr or result.stdout).strip()}")
        return parse_scontrol_record(result.stdout.strip().splitlines()[0])

    def job_state(self, job_id: int) -> str:
        """``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ``CANCELLED``, ..."""
        return self.job_info(job_id)["JobState"]

    def wait_job(self, job_id: int, states: str | Iterable[str], timeout: float = 60.0, poll_s: float = 0.1) -> str:
        """Poll until the job is in one of ``states`` and return that state. Raises at ``timeout``, or as
        soon as the job ends in a state that was not asked for (waiting longer could not help)."""
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        while True:
            info = self.job_info(job_id)
            state = info["JobState"]
            if state in wanted:
                return state
            if state in TERMINAL_JOB_STATES or time.monotonic() > deadline:
                why = "ended" if state in TERMINAL_JOB_STATES else f"still there after {timeout:.0f} s"
                raise SlurmClusterError(
                    f"job {job_id} {why} in {state} (Reason={info.get('Reason')}, ExitCode={info.get('ExitCode')},"
                    f" StdOut={info.get('StdOut')}), waiting for {sorted(wanted)}"
                )
            time.sleep(poll_s)

    def node_state(self, node: str | None = None) -> str:
        """sinfo's state of ``node`` (default: the first)."""
        return self.run("sinfo", "-h", "-N", "-n", node or self.node, "-o", "%T").stdout.strip()

    def slurmd_port(self, node: str) -> int:
        return self.config.slurmd_port + self.nodes.index(node)

    def daemon_pid(self, name: str) -> int | None:
        """The PID in the daemon's pidfile (``name``: a key of ``pidfiles``) if that process is alive, is that
        program, and is ours (a PID can be reused by anything, including the same daemon of another local cluster)."""
        try:
            pid = int(self.pidfiles[name].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        program = program_path(name.partition("@")[0])
        if process_alive(pid) and process_exe(pid) == program and self._environ_if_ours(pid) is not None:
            return pid
        return None

    def processes(self, names: Iterable[str] = DAEMONS, jobs: bool = False) -> list[int]:
        """Live PIDs of this cluster's daemons called ``names`` and, with ``jobs``, of job processes
        (``SLURM_JOB_ID`` set and our ``SLURM_CONF``). Never this process or its parents."""
        programs = {program_path(name) for name in names} - {None}
        keep_out = _ancestors()
        found = []
        for pid in all_pids():
            if pid in keep_out or not process_alive(pid):
                continue
            environ = self._environ_if_ours(pid)
            if environ is None:
                continue
            if process_exe(pid) in programs or (jobs and any(e.startswith(b"SLURM_JOB_ID=") for e in environ)):
                found.append(pid)
        return found

    def ensure_installed(self) -> None:
        """apt-get the Debian packages when a binary is missing (update once, wait for the dpkg lock)."""
        missing = missing_binaries()
        if not missing:
            return
        if not self.config.install:
            raise SlurmClusterError(
                f"Slurm binaries missing: {', '.join(missing)}; install {' '.join(DEBIAN_PACKAGES)} "
                "or set LOCAL_SLURM_INSTALL=1"
            )
        print(f"local slurm: installing {' '.join(DEBIAN_PACKAGES)} (missing: {', '.join(missing)})", file=sys.stderr)
        _apt_get("update")
        _apt_get("install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES)
        still = missing_binaries()
        if still:
            raise SlurmClusterError(f"apt-get install {' '.join(DEBIAN_PACKAGES)} left missing: {', '.join(still)}")

    def render_conf(self) -> str:
        """slurm.conf for the nodes on 127.0.0.1, tuned for tests: jobs start ~1 s after submit
        (batch_sched_delay=0; the default 3 s delays every start), records kept 24 h for scontrol."""
        c, d = self.config, self.dir
        cpus = c.cpus or os.cpu_count() or 1
        mem_mb = c.mem_mb or max(1024, _mem_total_mb() - 1024)
        gres = f" Gres=gpu:{c.gpus}" if c.gpus else ""
        lines = [
            "ClusterName=localslurm",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={c.ctld_port}",
            f"SlurmdPort={c.slurmd_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool/%n",
            f"SlurmctldPidFile={self.pidfiles['slurmctld']}",
            f"SlurmdPidFile={self.run_dir}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.log_dir}/slurmctld.log",
            f"SlurmdLogFile={self.log_dir}/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # Lets the node advertise more CPUs/memory/GPUs than the machine has.
            "SlurmdParameters=config_overrides",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MailProg=/bin/true",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=1",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "JobRequeue=1",
            "KillWait=5",
            "MinJobAge=86400",
            "InactiveLimit=0",
        ]
        if c.gpus:
            lines.append("GresTypes=gpu")
        lines += [
            f"NodeName={node} NodeHostname={self.node} NodeAddr=127.0.0.1 Port={self.slurmd_port(node)} CPUs={cpus} "
            f"RealMemory={mem_mb}{gres} State=UNKNOWN" for node in self.nodes]
        lines.append(f"PartitionName={c.partition} Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE "
                     "OverSubscribe=NO State=UP")
        return "\n".join(lines) + "\n"

    # ---- internals ----

    def _environ_if_ours(self, pid: int) -> list[bytes] | None:
        """The process's environment entries if it belongs to this cluster: our SLURM_CONF in its
        environment (slurmctld, slurmd, slurmstepd, jobs) or our dir in its command line (munged)."""
        environ = (_read_proc(pid, "environ") or b"").split(b"\0")
        if f"SLURM_CONF={self.conf_path}".encode() in environ:
            return environ
        if f"{self.dir}/".encode() in (_read_proc(pid, "cmdline") or b""):
            return environ
        return None

    def _prepare_dir(self, conf: str) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)  # stale job state would resume old job ids
        for sub in ("munge", "state", *(f"spool/{node}" for node in self.nodes), "log", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses a socket dir that is not executable by all ("Socket is inaccessible").
        for path in (self.dir, self.dir / "munge"):
            path.chmod(0o755)
        self.conf_path.write_text(conf)
        if self.config.gpus:
            # GRES needs character devices (plain files leave the node INVAL): clones of /dev/null.
            (self.dir / "gpu").mkdir()
            for i in range(self.config.gpus):
                os.mknod(self.dir / "gpu" / f"nvidia{i}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            gres_files = f"{self.dir}/gpu/nvidia[0-{self.config.gpus - 1}]"
            # slurmd reads gres.conf from the directory of slurm.conf.
            (self.dir / "gres.conf").write_text("".join(f"NodeName={node} Name=gpu File={gres_files}\n"
                                                        for node in self.nodes))

    def _daemon_env(self) -> dict[str, str]:
        return {**os.environ, **self.env(), "PATH": SYSTEM_PATH}

    def _spawn(self, name: str, argv: list[str]) -> None:
        """Run a self-daemonising program and wait for its launcher to exit. stdin is /dev/null and
        Popen closes every fd above 2 (close_fds): a daemon holding an inherited pipe end would keep a
        CI runner waiting for EOF forever. Early errors (before the daemon's own log opens) go to
        log/<name>.stderr."""
        stderr_path = self.log_dir / f"{name}.stderr"
        with open(stderr_path, "ab") as err:
            launcher = subprocess.Popen(
                argv,
                executable=shutil.which(argv[0], path=SYSTEM_PATH),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                close_fds=True,
                start_new_session=True,
                env=self._daemon_env(),
            )
        try:
            code = launcher.wait(timeout=self.config.timeout_s)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
            raise SlurmClusterError(f"{name} did not daemonise within {self.config.timeout_s:.0f} s") from None
        if code != 0:
            raise SlurmClusterError(f"{name} exited with {code} at start (see {stderr_path})")

    def _start_daemon(self, name: str, argv: list[str]) -> None:
        self._spawn(name, argv)
        self._wait_for(lambda: self.daemon_pid(name) is not None, f"{name} to write {self.pidfiles[name]}")

    def _start_munged(self) -> None:
        munge_dir = self.dir / "munge"
        self.run("mungekey", "--create", "--keyfile", str(self.munge_key))
        self._start_daemon(
            "munged",
            [
                "munged",
                f"--socket={self.munge_socket}",
                f"--key-file={self.munge_key}",
                f"--log-file={self.log_dir}/munged.log",
                f"--pid-file={self.pidfiles['munged']}",
                f"--seed-file={munge_dir}/munged.seed",
            ],
        )
        self._wait_for(self._munge_works, f"a credential to round-trip through {self.munge_socket}")

    def _munge_works(self) -> bool:
        sock = str(self.munge_socket)
        cred = self.run("munge", "-S", sock, "-n", check=False)
        return cred.returncode == 0 and self.run("unmunge", "-S", sock, input=cred.stdout, check=False).returncode == 0

    def _controller_up(self) -> bool:
        return "is UP" in self.run("scontrol", "ping", check=False).stdout

    def _wait_ready(self) -> None:
        self._wait_for(self._controller_up, f"`scontrol ping` to report slurmctld UP (port {self.config.ctld_port})")
        for node in self.nodes:
            self._wait_for(lambda node=node: self.node_state(node) == "idle", f"node {node} to be idle in sinfo")

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.config.timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise SlurmClusterError(f"timed out after {self.config.timeout_s:.0f} s waiting for {what}")
            time.sleep(0.05)

    def _stop_daemon(self, name: str) -> None:
        """SIGTERM the daemon by pidfile PID, together with its children: slurmctld's helper
        slurmscriptd wipes its environment and command line, so only its parent PID says it is ours."""
        pid = self.daemon_pid(name)
        if pid is not None:
            terminate([pid] + [child for child in all_pids() if parent_pid(child) == pid], grace_s=5.0)

    def _drain_queue(self) -> None:
        """Cancel every job and wait (bounded) until none is left pending, running or completing."""

        def queued() -> list[str]:
            return self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()

        jobs = queued()
        if not jobs:
            return
        self.run("scancel", *jobs, check=False)
        deadline = time.monotonic() + DOWN_DRAIN_S
        while queued() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _log_tails(self, lines: int = 15) -> str:
        tails = []
        for log in sorted(self.log_dir.glob("*")) if self.log_dir.is_dir() else []:
            text = log.read_text(errors="replace").splitlines()[-lines:]
            if text:
                tails.append(f"--- {log} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(tails)


def _mem_total_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise SlurmClusterError("no MemTotal in /proc/meminfo")


def _apt_get(*args: str) -> None:
    """apt-get, non-interactive, waiting up to APT_LOCK_WAIT_S for a lock another apt holds.
    DPkg::Lock::Timeout covers the dpkg lock only; `update` fails at once on the lists lock, so retry."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": SYSTEM_PATH}
    argv = ["apt-get", "-q", "-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S:.0f}", *args]
    deadline = time.monotonic() + APT_LOCK_WAIT_S
    while True:
        result = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
        if result.returncode == 0:
            return
        if "Could not get lock" not in result.stderr or time.monotonic() > deadline:
            raise SlurmClusterError(f"`{' '.join(argv)}` exited with {result.returncode}:\n{result.stderr.strip()}")
        time.sleep(2.0)


# ---- command line ----


def _bench(config: LocalSlurmConfig) -> None:
    """Time a cold cluster: up (installing if packages are missing) -> first trivial job COMPLETED,
    a second up (no-op), down while a job runs. Uses its own state dir and ports (LOCAL_SLURM_DIR-bench,
    LOCAL_SLURM_PORT+20), so a running cluster is left alone."""
    cluster = LocalSlurm(
        dataclasses.replace(
            config,
            state_dir=f"{config.state_dir}-bench",
            ctld_port=config.ctld_port + 20,
            slurmd_port=config.ctld_port + 21,
        )
    )
    cluster.down()
    installed = not missing_binaries()
    rows = []
    t0 = time.perf_counter()
    cluster.up()
    rows.append(("up (cold" + (")" if installed else ", apt-get install included)"), time.perf_counter() - t0))
    t1 = time.perf_counter()
    job = cluster.sbatch("--time=1", "--output=/dev/null", "--wrap", "true")
    cluster.wait_job(job, "COMPLETED", timeout=60, poll_s=0.05)
    now = time.perf_counter()
    rows.append(("first trivial job: submit -> COMPLETED", now - t1))
    rows.append(("nothing -> first job COMPLETED", now - t0))
    t2 = time.perf_counter()
    cluster.up()
    rows.append(("second up (already up: no-op)", time.perf_counter() - t2))
    sleeper = cluster.sbatch("--time=1", "--output=/dev/null", "--wrap", "sleep 60")
    cluster.wait_job(sleeper, "RUNNING", timeout=30, poll_s=0.05)
    t3 = time.perf_counter()
    cluster.down()
    rows.append(("down (one job running)", time.perf_counter() - t3))
    width = max(len(name) for name, _ in rows)
    print(f"{'step':<{width}}  seconds")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A real Slurm cluster on 127.0.0.1 (knobs: LOCAL_SLURM_*)")
    parser.add_argument("command", choices=("up", "down", "status", "env", "bench"))
    command = parser.parse_args(argv).command
    try:
        cluster = LocalSlurm(LocalSlurmConfig.from_env())
        if command == "up":
            started = cluster.up()
            print(f"local slurm: {'started' if started else 'already up'}", file=sys.stderr)
        if command in ("up", "env"):
            print(f"export SLURM_CONF={cluster.conf_path}")
        elif command == "down":
            cluster.down()
        elif command == "status":
            if not cluster.is_up():
                print(f"local slurm ({cluster.dir}): down")
                return 1
            pids = {name: cluster.daemon_pid(name) for name in cluster.pidfiles}
            nodes = ", ".join(f"{node} {cluster.node_state(node)}" for node in cluster.nodes)
            print(f"local slurm ({cluster.dir}): up, node {nodes}, pids {pids}")
        elif command == "bench":
            _bench(cluster.config)
    except SlurmClusterError as exc:
        print(f"local slurm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
