"""Entry point of the main job.

    python -m trainer.programs.supervisor --config_file launch/accelerate/cpu_zero2.yaml trainer/main.py \\
        --config launch/configs/pretrain_av.yaml [key=value ...]     # accelerate launch under a supervisor
    accelerate launch --config_file launch/accelerate/cpu_zero2.yaml trainer/main.py ...     # works too
    python trainer/main.py --config launch/configs/demo.yaml run.max_steps=50      # one process

Exit codes: 0 finished; 75 stopped on request (SIGUSR1/SIGTERM or <run_dir>/STOP) after writing a
checkpoint: run the same command again to resume; 2 bad config (nothing was started); 1 crashed. Under
``accelerate launch`` torch elastic turns any non-zero rank exit into 1; ``python -m trainer.programs.supervisor`` keeps
these codes (see trainer/programs/supervisor.py).
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
from trainer.job import resolve_job, validate_job
from trainer.configs.job import JobConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return train_parser().parse_args(argv)   # torch-free, for `cmg train --help` (trainer/programs/cmg.py)


def load_job(args: argparse.Namespace) -> JobConfig:
    """The validated job config of the parsed command line; raises ``ConfigError`` naming the key.

    ``--print-config`` validates what needs no data, shards or checkpoints (it works before they exist)."""
    overrides = list(args.overrides) + ([f"run.resume={args.resume}"] if args.resume is not None else [])
    cfg = load_config(JobConfig, args.config, overrides)
    if args.print_config:
        validate_job(cfg, data_files=False, init_from=False)
    else:
        validate_job(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_job(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(resolve_job(cfg, need_data=False).describe(), end="")
        return 0

    from trainer.loop import train
    from trainer.run_control import EXIT_RESUME, SUPERVISED_ENV
    from trainer.runtime import create_accelerator, prepare_process_environment, shutdown

    prepare_process_environment(cfg)
    accelerator = create_accelerator(cfg)
    try:
        code = train(cfg, accelerator)
    except Exception:
        # Leave at once: a barrier in a clean shutdown would wait forever for ranks that did not fail.
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    if code == EXIT_RESUME and os.environ.get(SUPERVISED_ENV) == "1":
        # python -m trainer.programs.supervisor exits 75 itself (status.json); torch elastic would call 75 a failure
        code = 0
    shutdown(accelerator, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
