"""The command lines of the benchmarks (``cmg bench <name>``, ``python -m trainer.programs.bench.<name>``), built
without importing them: their modules import torch, and ``--help`` must answer at once (trainer/programs/cmg.py). Each
benchmark parses its arguments with its parser here; the defaults and names are those of the torch-free configs
(trainer/programs/bench/config.py, trainer/programs/config.py, trainer/configs/).
"""

from __future__ import annotations

import argparse

from trainer.help_text import HelpFormatter, module_docstring
from trainer.configs.eval import ProbeConfig
from trainer.programs.bench.config import (
    CORE_CONFIGS, DEFAULT_ACCELERATE_CONFIG, DEFAULT_JOB_CONFIG, E2E_ROWS, E2E_WORLDS, METHODS, PAIR_NAMES, PAIRS,
    ROW_GROUPS, ROWS, WORLDS, ContinualConfig, PretrainConfig,
)
from trainer.programs.config import DemoConfig

BENCH = "trainer.programs.bench"


def _parser(name: str, whole_doc: bool = False) -> argparse.ArgumentParser:
    doc = module_docstring(f"{BENCH}.{name}")
    return argparse.ArgumentParser(prog=f"python -m {BENCH}.{name}", formatter_class=HelpFormatter,
                                   description=doc if whole_doc else doc.split("\n\n")[0])


def backbones_parser() -> argparse.ArgumentParser:
    p = _parser("backbones")
    p.add_argument("--configs", default="tiny,tiny-alt,base-random", help="backbone YAML names, comma-separated")
    p.add_argument("--clips", type=int, default=8, help="clips synthesised and decoded")
    p.add_argument("--batch", type=int, default=4, help="clips per backbone forward")
    p.add_argument("--repeats", type=int, default=3, help="timed forwards per backbone (median)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p


def continual_features_parser() -> argparse.ArgumentParser:
    d = ContinualConfig()
    p = _parser("continual_features")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per phase (default {d.train.steps}; "
                   "--raw: the phase configs' run.max_steps)")
    p.add_argument("--world", default="default",
                   help=f"the synthetic world, one of {list(WORLDS)}")
    p.add_argument("--methods", default="dcid,comet",
                   help=f"comma list of {list(METHODS)}")
    p.add_argument("--order", default="vt,at,it",
                   help=f"phases, comma list of {list(PAIR_NAMES)}")
    p.add_argument("--jobs", type=int, default=2, help="methods trained at the same time (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per method process")
    p.add_argument("--probe-epochs", type=int, default=ProbeConfig().epochs)
    p.add_argument("--seeds", default="0",
                   help="comma list of seeds (model init, batch order, probes); targets are checked on the mean")
    p.add_argument("--new-codes", type=int, default=d.new_codes, help="K2 per later phase (COMET)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override of every phase's COMETConfig (repeatable), e.g. --set loss.ewc=10")
    p.add_argument("--json", default=None, help="also write all results to this JSON file")
    p.add_argument("--mlflow", default=None, metavar="DIR",
                   help="also log every phase's evaluation to MLflow (sqlite store DIR/mlflow.db, a run per method)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--raw", action="store_true", help="the chain from raw pair shards through trainer/main.py and "
                   "trainer.programs.evaluate (trainer/programs/bench/continual_pairs.py; methods dcid and comet, "
                   "--set as model.KEY=VALUE job overrides, one seed)")
    p.add_argument("--data-dir", default="pairs_data", help="--raw: the pair corpora (kept and reused)")
    p.add_argument("--runs", default="runs/continual_pairs", help="--raw: run directories (replaced)")
    p.add_argument("--markdown", default=None, help="--raw: also write the table and targets as a generated docs page")
    return p


def core_parser() -> argparse.ArgumentParser:
    configs = list(CORE_CONFIGS)
    p = _parser("core", whole_doc=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--configs", default=",".join(configs), help=f"comma list of {configs}")
    p.add_argument("--matmul-size", type=int, default=2048,
                   help="n of the n³ matmul the step is compared with (fp32 on the CPU, bf16 on a GPU)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the step runs: cpu (fp32) or cuda (bf16 autocast; peak GPU memory)")
    p.add_argument("--compile", action="store_true", help="also time each config with run.compile (torch.compile)")
    p.add_argument("--default-malloc", action="store_true",
                   help="also time each config with glibc's default malloc (run.keep_freed_host_memory=false)")
    p.add_argument("--json", default=None, help="also write every row to this JSON file")
    p.add_argument("--markdown", default=None, help="also write the table as a generated docs page")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="measure nothing: render FILE (written by --json) again, to --markdown")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-mode", default="eager", help=argparse.SUPPRESS)
    return p


def _product_runs(p: argparse.ArgumentParser, data_dir: str, runs: str) -> argparse.ArgumentParser:
    """The options of a bench that trains through the product's path: where its corpora and runs go, its outputs,
    and job config overrides."""
    p.add_argument("--data-dir", default=data_dir, help="synthetic corpora (kept and reused)")
    p.add_argument("--runs", default=runs, help="run directories (replaced)")
    p.add_argument("--json", default=None, help="also write all results to this JSON file")
    p.add_argument("--markdown", default=None, help="also write the table, targets and runs as a generated docs page")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="job config overrides for every run")
    return p


def e2e_parser() -> argparse.ArgumentParser:
    p = _parser("e2e")
    p.add_argument("--world", default="per-seed", choices=list(E2E_WORLDS),
                   help="per-seed: a world per seed; demo: make demo's clips; e2e: tests/system/test_e2e.py's")
    p.add_argument("--seeds", default="0,1", help="comma list of seeds (model init, batch order; clips with per-seed)")
    p.add_argument("--kernels", default="native",
                   help="comma list of CPU kernel levels (python -m trainer.programs.kernels): native, avx2, default")
    demo = DemoConfig()
    p.add_argument("--classes", type=int, default=demo.pretrain.classes, help="event classes of the world")
    p.add_argument("--processes", default="1,2", help="comma list of process counts")
    p.add_argument("--rows", default="full,baseline", help=f"comma list of {list(E2E_ROWS)}")
    return _product_runs(p, "e2e_data", "runs/e2e")


def pairs_parser() -> argparse.ArgumentParser:
    p = _parser("pairs")
    p.add_argument("--pairs", default=",".join(PAIRS),
                   help="comma list of pair corpora to train and evaluate on")
    p.add_argument("--seed", type=int, default=0, help="run.seed and data.seed of every run")
    return _product_runs(p, "pairs_data", "runs/pairs")


def fidelity_parser() -> argparse.ArgumentParser:
    d = PretrainConfig()
    worlds = list(WORLDS)
    p = _parser("fidelity")
    p.add_argument("--steps", type=int, default=d.steps, help="pretraining steps per row")
    p.add_argument("--rows", default="", help=f"comma list of groups {list(ROW_GROUPS)} "
                   f"and rows {list(ROWS)} (default: all; with --worlds: claims)")
    p.add_argument("--worlds", default="", help=f"sweep: comma list of {worlds} or 'all'; every claim "
                   "per world and on the mean, the continual methods included")
    p.add_argument("--continual-steps", type=int, default=800, help="steps per continual phase (--worlds)")
    p.add_argument("--no-continual", action="store_true", help="sweep without the continual methods")
    p.add_argument("--club-lr", type=float, default=d.club_lr,
                   help="CLUB estimators' learning rate (default 0: the pretraining lr, as in the paper)")
    p.add_argument("--jobs", type=int, default=2, help="pretrainings run at the same time (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per pretraining process")
    p.add_argument("--probe-epochs", type=int, default=ProbeConfig().epochs)
    p.add_argument("--seeds", default="0", help="comma list of seeds (model init, batch order, probe); "
                   "the tables show the mean and ± half range")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override of every row's model config (repeatable), e.g. --set loss.mi=1.0")
    p.add_argument("--runs", default="", help="keep every pretraining's run directory (checkpoint, "
                   "metrics.jsonl) under this directory (default: a temporary one, removed)")
    p.add_argument("--mlflow", default="", metavar="DIR", help="also log every pretraining to MLflow "
                   "(sqlite store DIR/mlflow.db)")
    p.add_argument("--json", default=None, help="also write all results to this JSON file")
    p.add_argument("--world", default="default", help=argparse.SUPPRESS)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def quantizer_timing_parser() -> argparse.ArgumentParser:
    p = _parser("quantizer_timing", whole_doc=True)
    p.add_argument("--batch", type=int, default=80)
    p.add_argument("--segments", type=int, default=10)
    p.add_argument("--codes", type=int, default=400)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--modalities", default="audio,video")
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    return p


def scaling_parser() -> argparse.ArgumentParser:
    p = _parser("scaling")
    p.add_argument("--ranks", default="1,2", help="process counts to compare, comma-separated (first: baseline)")
    p.add_argument("--negatives", default="global,local",
                   help="model.negatives values to compare, comma-separated (global, local)")
    p.add_argument("--config", default=DEFAULT_JOB_CONFIG,
                   help="experiment YAML, relative to the repo root, whose model and optim sections are used")
    p.add_argument("--batch", type=int, default=0, help="clips per rank per step (0: the config's data.batch_size)")
    p.add_argument("--steps", type=int, default=16, help="optimizer steps per launch")
    p.add_argument("--log-every", type=int, default=4, help="log window; the first window is the warm-up")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (OMP_NUM_THREADS)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per rank")
    p.add_argument("--clips", type=int, default=160, help="synthetic clips in the feature shards")
    p.add_argument("--accelerate-config", default=DEFAULT_ACCELERATE_CONFIG,
                   help="accelerate YAML, relative to the repo root (GPU: launch/accelerate/gpu_zero2.yaml)")
    p.add_argument("--no-collectives", action="store_true", help="skip the instrumented launch (Table 2)")
    p.add_argument("--probe-repeats", type=int, default=20, help="timed lone repeats of each step all_reduce")
    p.add_argument("--timeout", type=float, default=600, help="seconds per launch")
    p.add_argument("--workdir", default="", help="keep shards and run dirs here (default: a temp dir, removed)")
    return p
