"""Entry point of the main job.

    python -m trainer.programs.supervisor --config_file launch/accelerate/cpu_zero2.yaml trainer/main.py \\
        --config launch/configs/pretrain_av.yaml [key=value ...]     # accelerate launch under a supervisor
    accelerate launch --config_file launch/accelerate/cpu_zero2.yaml trainer/main.py ...     # works too
    python trainer/main.py --config launch/configs/demo.yaml run.max_steps=50      # one process

Exit codes: 0 finished, or nothing to do (the run in run.dir is already at run.max_steps: decided before any work);
75 stopped on request (SIGUSR1/SIGTERM or <run_dir>/STOP) after writing a checkpoint: run the same command again to
resume; 2 bad config (nothing was started); 1 crashed (status.json "failed"). Under ``accelerate launch`` torch
elastic turns any non-zero rank exit into 1; ``python -m trainer.programs.supervisor`` keeps these codes (see
trainer/programs/supervisor.py). What a start does with the run directory it finds: docs/training.md, "New run,
resume, extension or nothing to do".
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (accelerate launch trainer/main.py): Python put trainer/ itself on sys.path, where its
    # modules (data, eval, ...) would shadow top-level packages of the same names. Use the repo root.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import traceback  # noqa: E402

from trainer.programs.cmg import train_parser  # noqa: E402
from trainer.configs.load import ConfigError, load_config  # noqa: E402
from trainer.job import RunStart, resolve_job, validate_job
from trainer.configs.job import JobConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return train_parser().parse_args(argv)   # torch-free, for `cmg train --help` (trainer/programs/cmg.py)


def load_job(args: argparse.Namespace) -> tuple[JobConfig, RunStart]:
    """The validated job config of the parsed command line, and what its start does with its run directory; raises
    ``ConfigError`` naming the key.

    ``--print-config`` validates what needs no data, shards or checkpoints (it works before they exist)."""
    overrides = list(args.overrides) + ([f"run.resume={args.resume}"] if args.resume is not None else [])
    cfg = load_config(JobConfig, args.config, overrides)
    if args.print_config:
        return cfg, validate_job(cfg, data_files=False, init_from=False)
    return cfg, validate_job(cfg)


def nothing_to_do(start: RunStart) -> int:
    """The run is already at run.max_steps: say so (the launcher's process, or rank 0) and exit 0."""
    from trainer.run_control import write_status

    if os.environ.get("RANK", "0") == "0":
        print(f"[cmg] {start.done_line()}", flush=True)
        write_status(start.run_dir, "finished", start.step)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg, start = load_job(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(resolve_job(cfg, need_data=False).describe(), end="")
        return 0
    if start.nothing_to_do:
        return nothing_to_do(start)

    from trainer.loop import train
    from trainer.run_control import EXIT_RESUME, SUPERVISED_ENV, mark_failed
    from trainer.runtime import create_accelerator, prepare_process_environment, shutdown
    from trainer.checkpoint_format import brief

    prepare_process_environment(cfg)
    accelerator = create_accelerator(cfg)
    try:
        code = train(cfg, accelerator)
    except Exception as err:
        # Leave at once: a barrier in a clean shutdown would wait forever for ranks that did not fail.
        traceback.print_exc()
        sys.stderr.flush()
        try:
            if accelerator.is_main_process:
                mark_failed(cfg.run.dir, brief(err))   # status.json: what happened, in place of "running"
        finally:
            os._exit(1)
    if code == EXIT_RESUME and os.environ.get(SUPERVISED_ENV) == "1":
        # python -m trainer.programs.supervisor exits 75 itself (status.json); torch elastic would call 75 a failure
        code = 0
    shutdown(accelerator, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
