"""Continual phases as a chain of Slurm jobs: one job per phase, each starting from the previous one's model.

    python -m trainer.programs.continual launch/configs/continual_vt_at_it.yaml [--dry-run]
    slurm/continual.sh launch/configs/continual_vt_at_it.yaml          # the same, from any directory

Phase i runs ``script`` (a batch script such as slurm/pretrain_avt.sh) with ``CONFIG`` and
``RUN_DIR=<run_root>/<phase name>`` in its environment and its overrides as script arguments, plus three
the launcher sets itself: ``run.phase=<name>``, ``run.dir`` (= RUN_DIR) and, from the second phase on,
``run.init_from=<previous RUN_DIR>/checkpoints`` (the trainer loads ``model.pt`` of the newest checkpoint
there: the previous phase's final one). Phase i > 0 is submitted with ``--dependency=afterok:<job i-1>
--kill-on-invalid-dep=yes``: it starts only after the previous phase finished, and a failed phase cancels
every later one. Prints one line per phase with its job id.

The phases file (relative paths start at the repository root, where the jobs run)::

    script: slurm/pretrain_avt.sh          # batch script of every phase
    config: launch/configs/pretrain_avt.yaml
    run_root: runs/continual               # phase P runs in <run_root>/<P>; job logs go there too
    job_name: cmg-continual                # jobs are named <job_name>-<phase>
    sbatch: [--time=24:00:00]              # sbatch options of every phase (before the phase's own)
    overrides: [run.max_steps=10000]       # key=value of every phase (before the phase's own)
    phases:
      - name: video_text
        overrides: ["model.modalities=[video,text]", "data.urls=..."]
        init_from: ""                      # first phase only: a checkpoint (dir) to start from
      - name: audio_text
        config: ""                         # "" = the file's config
        sbatch: []

Every phase's job config is loaded and type-checked before anything is submitted (a typo fails here, with
exit code 2, not hours later in phase 3), and checked as the job checks it at start-up
(``trainer.job.validate_job``: the batch size, the backbones file, an explicit ``run.resume`` and the first
phase's ``init_from``), but for the shards, which each phase's job checks when it starts (they need not be
visible, or staged yet, at submission). If sbatch refuses a phase, the phases already submitted are
cancelled, the directories made for the job logs are removed again if they are still empty, and the exit code is 1.

Exit codes: 0 submitted (or, with --dry-run, checked); 2 a bad phases file or job config, nothing submitted;
1 sbatch refused a phase; 127 no ``sbatch`` on PATH (without --dry-run): found before anything is checked or
created, and kept apart from 2 because the phases may be fine: this host cannot submit (the shell's status for a
command not found; slurm/submit.sh answers the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trainer.configs.load import ConfigError, load_config
from trainer.programs.harness import REPO

# Overrides the launcher owns: a phase that set them itself would silently disagree with the chain.
MANAGED_KEYS = ("run.dir", "run.phase", "run.init_from")
PHASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class PhaseConfig:
    name: str = ""
    config: str = ""                                   # job YAML; "" = ContinualConfig.config
    overrides: list[str] = field(default_factory=list)
    sbatch: list[str] = field(default_factory=list)
    init_from: str = ""                                # first phase only; later phases chain automatically


@dataclass
class ContinualConfig:
    script: str = "slurm/pretrain_avt.sh"
    config: str = "launch/configs/pretrain_avt.yaml"
    run_root: str = "runs/continual"
    job_name: str = "cmg-continual"
    sbatch: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    phases: list[PhaseConfig] = field(default_factory=list)


@dataclass
class PhaseJob:
    """What one phase submits: ``env`` (on top of the caller's) + ``sbatch <options> <script> <overrides>``."""

    name: str
    run_dir: Path
    env: dict[str, str]
    options: list[str]
    script: str
    overrides: list[str]

    def command(self, depends_on: str | None) -> list[str]:
        chain = [f"--dependency=afterok:{depends_on}", "--kill-on-invalid-dep=yes"] if depends_on else []
        return ["sbatch", "--parsable", *self.options, *chain, self.script, *self.overrides]

    def shell_line(self, depends_on: str | None) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{env} {shlex.join(self.command(depends_on))}"


def in_repo(path: str) -> Path:
    """A path of the phases file: absolute, or relative to the repository root."""
    return Path(path) if Path(path).is_absolute() else REPO / path


def repo_paths(job):
    """``job`` (a ``JobConfig``) with the paths its job reads relative to the repository root, where the jobs run,
    made absolute, so that the launcher checks the same files from any directory."""
    resume = job.run.resume if job.run.resume in ("", "auto") else str(in_repo(job.run.resume))
    init_from = str(in_repo(job.run.init_from)) if job.run.init_from else ""
    return dataclasses.replace(job, backbones=str(in_repo(job.backbones)),
                               run=dataclasses.replace(job.run, resume=resume, init_from=init_from))


def plan(cfg: ContinualConfig, source: str) -> list[PhaseJob]:
    """Check the phases file and every phase's job config; the jobs to submit, in order."""
    from trainer.job import validate_job
    from trainer.configs.job import JobConfig

    if not cfg.phases:
        raise ConfigError(f"{source}: 'phases' is empty")
    if not in_repo(cfg.script).is_file():
        raise ConfigError(f"{source}: script {cfg.script!r} not found (relative paths start at {REPO})")
    names = [p.name for p in cfg.phases]
    for i, name in enumerate(names):
        if not PHASE_NAME.fullmatch(name):
            raise ConfigError(f"{source}: phases[{i}].name {name!r} must be a non-empty word of letters, digits, "
                              "'_', '.', '-' (it names the run directory and the job)")
        if names.index(name) != i:
            raise ConfigError(f"{source}: phase name {name!r} appears twice")
    run_root = in_repo(cfg.run_root)
    jobs: list[PhaseJob] = []
    for i, phase in enumerate(cfg.phases):
        where = f"{source}: phase {phase.name!r}"
        if i > 0 and phase.init_from:
            raise ConfigError(f"{where}: init_from is only for the first phase; later phases start from the "
                              "previous phase's checkpoints")
        user_overrides = cfg.overrides + phase.overrides
        for text in user_overrides:
            if text.split("=", 1)[0].strip() in MANAGED_KEYS:
                raise ConfigError(f"{where}: override {text!r} sets a key the launcher manages "
                                  f"({', '.join(MANAGED_KEYS)})")
        run_dir = run_root / phase.name
        init_from = str(jobs[-1].run_dir / "checkpoints") if jobs else phase.init_from
        overrides = [*user_overrides, f"run.phase={phase.name}"] + ([f"run.init_from={init_from}"] if init_from else [])
        config = phase.config or cfg.config
        if not in_repo(config).is_file():
            raise ConfigError(f"{where}: job config {config!r} not found (relative paths start at {REPO})")
        try:
            job = load_config(JobConfig, in_repo(config), [*overrides, f"run.dir={run_dir}"])   # types the model
            # what the job itself checks at start-up, but the shards (the compute nodes read them when the phase
            # starts; a phases file may name data that is staged later) and, after the first phase, init_from
            # (the previous phase's checkpoints, written only when it has run)
            validate_job(repo_paths(job), data_files=False, init_from=i == 0)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        options = [f"--job-name={cfg.job_name}-{phase.name}", f"--output={run_root}/{phase.name}-%j.out",
                   *cfg.sbatch, *phase.sbatch]
        jobs.append(PhaseJob(phase.name, run_dir, {"CONFIG": config, "RUN_DIR": str(run_dir)}, options,
                             cfg.script, overrides))
    return jobs


def submit(jobs: list[PhaseJob]) -> list[str]:
    """sbatch every phase after the previous one; on a refusal cancel what was submitted and raise."""
    ids: list[str] = []
    logs = jobs[0].run_dir.parent   # the job logs go there; Slurm opens them before a job starts
    made = [d for d in (logs, *logs.parents) if not d.exists()]   # deepest first
    logs.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        result = subprocess.run(job.command(ids[-1] if ids else None), cwd=REPO, env={**os.environ, **job.env},
                                capture_output=True, text=True)
        if result.returncode != 0:
            if ids:
                subprocess.run(["scancel", *ids], capture_output=True)
            _remove_empty(made)
            cancelled = f"; cancelled the phases already submitted (jobs {', '.join(ids)})" if ids else ""
            raise RuntimeError(f"sbatch refused phase {job.name!r} (exit {result.returncode}): "
                               f"{result.stderr.strip()}{cancelled}")
        ids.append(result.stdout.strip().split(";")[0])   # --parsable prints "id" or "id;cluster"
        print(f"phase {job.name}: job {ids[-1]} (run dir {job.run_dir})", flush=True)
    return ids


def _remove_empty(dirs: list[Path]) -> None:
    """Remove ``dirs`` (deepest first) while they are empty: a job that did start keeps its log."""
    for directory in dirs:
        try:
            directory.rmdir()
        except OSError:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.programs.continual", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phases", help="phases YAML, e.g. launch/configs/continual_vt_at_it.yaml")
    parser.add_argument("--dry-run", action="store_true", help="check everything and print the sbatch commands")
    args = parser.parse_args(argv)
    if not args.dry_run and shutil.which("sbatch") is None:
        print("error: no sbatch on PATH: this host cannot submit Slurm jobs; run this where Slurm's commands are "
              "(a login node of the cluster, or after loading its Slurm module), or check the phases with --dry-run. "
              "Nothing was checked or created (exit 127)", file=sys.stderr)
        return 127
    try:
        jobs = plan(load_config(ContinualConfig, args.phases), args.phases)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"cd {shlex.quote(str(REPO))}")
        for i, job in enumerate(jobs):
            print(job.shell_line(f"<job of {jobs[i - 1].name}>" if i else None))
        return 0
    try:
        submit(jobs)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
