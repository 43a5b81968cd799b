"""The launcher to run the main job on several processes: ``accelerate launch`` under a supervisor that gives the
shell and Slurm one agreed stop and a distinguishable exit code.

    python -m trainer.programs.supervisor [accelerate launch options] trainer/main.py --config JOB.yaml [key=value ...]
    python -m trainer.programs.supervisor --check [the same arguments]   # validate as below, start nothing: exit 0 or 2
    cmg launch [the same arguments]                                      # the same program

It takes exactly ``accelerate launch``'s arguments and runs the real ``accelerate launch`` as its child. What it
adds, because torch elastic (the agent inside ``accelerate launch``) cannot do it:

- **Config errors before any work.** The job config is loaded and validated here, before a process starts:
  exit 2 naming the key, no ``ChildFailedError`` traceback. ``--check`` stops there (exit 0 when the job would
  start): what slurm/submit.sh runs on the login node before it queues a job (``slurm/pretrain_av.sh --check``).
- **Signals become one agreed stop.** SIGTERM, SIGUSR1, SIGINT and SIGHUP to this process write
  ``<run_dir>/STOP`` (re-written every 2 s until the job ends, since a starting job deletes a stale one). The
  ranks agree on it at the next step, checkpoint and leave. torch elastic alone forwards only TERM/INT/HUP/QUIT
  and SIGKILLs the ranks after its shutdown timeout, and SIGUSR1 kills it and orphans the ranks. The child
  runs in its own session, so a terminal's ^C reaches this process only, and it gets SIGTERM if this process
  dies (PR_SET_PDEATHSIG). A second signal forwards SIGTERM to ``accelerate launch`` (the ranks then stop as
  torch elastic stops them: SIGTERM to each, SIGKILL after ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``, which defaults
  here to ``run.collective_timeout_s``).
- **Exit codes that mean something.** Under this launcher the ranks exit 0 after a stop (``CMG_SUPERVISED``),
  so torch elastic prints no "FAILED" banner for it; ``<run_dir>/status.json`` (set to ``running`` here before the
  start, then written by rank 0; trainer/run_control.py) tells the outcome, and this process exits 0 (finished, or
  nothing to do: the run is already at ``run.max_steps``, and no process starts), 75 (stopped after a checkpoint:
  run the same command to resume) or the child's non-zero code (crashed; never 75; status ``failed``).

A signal that reaches only some ranks directly (not through this launcher) stops all of them at the same step
as well: the stop flag is agreed by an all-reduce every step (``trainer.runtime.StopRequest``).

On several nodes, run one of these per node (``slurm/job_body.sh`` does, through ``srun``); the run directory
must be on storage every node sees, as it must for checkpoints: each node's supervisor writes ``STOP`` there and reads
the ``status.json`` of rank 0, so that a stop on any node ends every node with 75 (tests/system/test_multinode_job.py).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

MAIN_SCRIPT = Path(__file__).resolve().parents[1] / "main.py"   # trainer/main.py
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1   # linux/prctl.h


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, so that a killed supervisor still stops the job."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Runs ``accelerate launch argv`` for the job in ``run_dir`` and turns stop signals into ``run_dir/STOP``."""

    def __init__(self, argv: list[str], run_dir: Path, env: dict[str, str]):
        self.argv, self.run_dir, self.env = argv, run_dir, env
        self.stop_signal: str = ""
        self.child: subprocess.Popen | None = None
        self.forwarded = False

    def _on_signal(self, signum, _frame) -> None:
        from trainer.run_control import STOP_FILE

        name = signal.Signals(signum).name
        if not self.stop_signal:
            self.stop_signal = name
            print(f"[cmg launch] {name}: asking the job to checkpoint and stop ({self.run_dir / STOP_FILE})",
                  file=sys.stderr, flush=True)
            self._request_stop()
        elif not self.forwarded and self.child is not None:
            self.forwarded = True
            print(f"[cmg launch] second signal ({name}): terminating accelerate launch", file=sys.stderr, flush=True)
            self.child.terminate()

    def _request_stop(self) -> None:
        from trainer.run_control import STOP_FILE

        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / STOP_FILE).touch()

    def run(self) -> int:
        """The child's exit code."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        self.child = subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", *self.argv], env=self.env,
                                      start_new_session=True, preexec_fn=_die_with_parent)
        while True:
            try:
                return self.child.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                if self.stop_signal:
                    self._request_stop()   # the job deletes a stale STOP when it starts: keep it there


def training_script_args(argv: list[str]) -> tuple[str, list[str]] | None:
    """(the training script, its arguments) of ``accelerate launch``'s arguments, found without accelerate's parser
    (importing it imports torch): the first argument naming trainer/main.py, and what follows it. None if none does."""
    for i, arg in enumerate(argv):
        if arg.endswith(".py") and Path(arg).is_file() and Path(arg).resolve() == MAIN_SCRIPT:
            return arg, argv[i + 1:]
    return None


def launch(argv: list[str]) -> int:
    """Validate the job, run it under ``accelerate launch``, and map its outcome to 0 / 75 / the failure code; with
    a leading ``--check``, only validate (0 or 2).

    The job's config is loaded and checked before anything imports torch (accelerate's parser does): a bad key or
    value exits 2 at once."""
    from trainer.configs.load import ConfigError
    from trainer.main import load_job, nothing_to_do, parse_args

    check_only = argv[:1] == ["--check"]
    accelerate_argv = argv[1:] if check_only else argv
    found = training_script_args(accelerate_argv)
    if found is None:
        print(f"cmg launch: the training script must be {MAIN_SCRIPT} (arguments: {' '.join(accelerate_argv)}); "
              "use accelerate launch for other scripts", file=sys.stderr)
        return 2
    script, script_args = found
    job_args = parse_args(script_args)
    if job_args.print_config:   # no processes needed: answer here
        from trainer.main import main
        return main(script_args)
    try:
        cfg, start = load_job(job_args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if start.nothing_to_do and not check_only:   # no process to start
        return nothing_to_do(start)
    if check_only:
        # accelerate's own options, as accelerate launch will read them (exit 2 if bad). Only here: a launch leaves
        # them to accelerate launch itself a moment later, so that the supervisor, alive for the whole job, never
        # imports torch (accelerate's parser does)
        from accelerate.commands.launch import launch_command_parser

        launch_args = launch_command_parser().parse_args(accelerate_argv)
        if Path(launch_args.training_script).resolve() != Path(script).resolve():
            print(f"cmg launch: accelerate reads {launch_args.training_script} as the training script, not {script}",
                  file=sys.stderr)
            return 2
        print(f"[cmg launch] check passed: {job_args.config or 'the default config'} (phase {cfg.run.phase}, "
              f"{cfg.run.max_steps} steps, run dir {cfg.run.dir}; data {cfg.data.urls or cfg.data.kind}): config "
              "and overrides, shard manifest, backbones file and checkpoints are as the job needs them", flush=True)
        print(f"[cmg launch] {start.describe()}", flush=True)
        return 0

    from trainer.run_control import EXIT_RESUME, STOP_FILE, SUPERVISED_ENV, mark_failed, mark_running, status_of

    run_dir = Path(cfg.run.dir)
    mark_running(run_dir)   # only this job's outcome may be read below
    env = {**os.environ, SUPERVISED_ENV: "1"}
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(int(cfg.run.collective_timeout_s)))
    supervisor = Supervisor(argv, run_dir, env)
    code = supervisor.run()
    if supervisor.stop_signal:
        (run_dir / STOP_FILE).unlink(missing_ok=True)

    status = status_of(run_dir)
    state = status["state"] if status else None
    if state == "stopped":
        print(f"[cmg launch] stopped at step {status['step']} with a complete checkpoint; run the same command "
              f"to resume (exit {EXIT_RESUME})", file=sys.stderr, flush=True)
        return EXIT_RESUME
    if state == "finished" and code == 0:
        return 0
    if state == "running":   # the ranks said nothing (killed, or a rank but 0 failed): say it here
        mark_failed(run_dir, f"accelerate launch exited {code}")
    print(f"[cmg launch] the job failed: accelerate launch exited {code}, "
          f"{'status ' + repr(state) if state else 'no status.json'} in {run_dir}", file=sys.stderr, flush=True)
    return code if code not in (0, EXIT_RESUME) else 1


def main(argv: list[str] | None = None) -> int:
    """``cmg launch`` / ``python -m trainer.programs.supervisor``: :func:`launch` on the command line's arguments;
    ``--help`` (or nothing) prints this module's usage (the arguments are ``accelerate launch``'s own)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: cmg launch [--check] [accelerate launch options] trainer/main.py [--config JOB.yaml] "
              f"[key=value ...]\n\n{__doc__}", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    return launch(argv)


if __name__ == "__main__":
    sys.exit(main())
