"""``cmg``: one command for every program of the project (also ``python -m trainer``).

    cmg train --config launch/configs/demo.yaml run.max_steps=50      # = python trainer/main.py (same arguments)
    cmg launch --config_file launch/accelerate/cpu_zero2.yaml trainer/main.py --config JOB.yaml
                                                                      # = python -m trainer.programs.supervisor
    cmg eval runs/demo --data 'demo_data/eval_shards/train-{000000..000007}.tar'
    cmg encode runs/demo 'clips/*.mp4' --out codes.npz
    cmg shards synth|write|inspect|convert|extract ...                  # = python -m shards.<name>
    cmg continual PHASES.yaml [--dry-run]                               # = python -m trainer.programs.continual
    cmg bench backbones|continual|core|e2e|fidelity|quantizer_timing|scaling ...
    cmg [COMMAND ...] --help

Each command runs its program's ``main(argv)`` with the remaining arguments; ``accelerate launch trainer/main.py``
and every ``python -m <program>`` keep working as before. The dispatcher imports a program only to run it:
``--help`` builds the command's parser alone, and every parser is built without torch (the programs' modules
import it, which takes seconds). So a program whose module imports torch gets its parser from a torch-free module
(this one for train, eval and encode; ``shards/parsers.py``; ``trainer/programs/bench/parsers.py``), which it
parses with too, and whose defaults are the torch-free config dataclasses' own (trainer/configs/). Programs are
named here by string; the library never imports them (tests/unit/test_layering.py).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import inspect
import io
import textwrap
import sys
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from trainer.configs.load import ConfigError, key_choices, parse_override, read_yaml, to_dict
from trainer.configs.model import TASK_CONFIGS, model_config_class
from trainer.configs.eval import PRETRAIN_SETS, TASKS, SourceConfig, TOCConfig
from trainer.help_text import HelpFormatter, module_docstring


@dataclass(frozen=True)
class Command:
    main: str                   # "module:function", the program's main(argv) -> exit code
    parser: str | None = None   # "module:function" building its parser without torch; None: the module is light
    summary: str = ""           # one line for `cmg --help` ("": the first sentence of the module's docstring)

    @property
    def module(self) -> str:
        return self.main.split(":")[0]

    def line(self) -> str:
        first = module_docstring(self.module).split("\n\n")[0].replace("\n", " ").split(". ")[0]
        return textwrap.shorten(self.summary or first, 100, placeholder=" ...")


def _bench(module: str) -> Command:
    return Command(f"trainer.programs.bench.{module}:main", f"trainer.programs.bench.parsers:{module}_parser")


def _shards(name: str) -> Command:
    return Command(f"shards.{name}:main", f"shards.parsers:{name}_parser")


BENCH_MODULES = {"continual": "continual_features"}   # command -> module where they differ (its --raw: continual_pairs)
COMMANDS: dict[str, Command | dict[str, Command]] = {
    "train": Command("trainer.main:main", "trainer.programs.cmg:train_parser",
                     "Train a model: the main job in this process (trainer/main.py; cmg launch for several ranks)"),
    "launch": Command("trainer.programs.supervisor:main", None, "Run the main job on several processes: accelerate "
                      "launch under a supervisor (stop signals, exit codes 0/75/2; trainer/programs/supervisor.py)"),
    "eval": Command("trainer.programs.evaluate:main", "trainer.programs.cmg:evaluate_parser"),
    "encode": Command("trainer.programs.encode:main", "trainer.programs.cmg:encode_parser"),
    "shards": {name: _shards(name) for name in ("synth", "write", "inspect", "convert", "extract")},
    "continual": Command("trainer.programs.continual:main"),
    "ui": Command("trainer.programs.mlflow_ui:main"),
    "bench": {name: _bench(BENCH_MODULES.get(name, name)) for name in
              ("backbones", "continual", "core", "e2e", "fidelity", "pairs", "quantizer_timing", "scaling")},
}
GROUPS = {"shards": "make, check and convert WebDataset shards (python -m shards.<name>)",
          "bench": "benchmarks that print tables (python -m trainer.programs.bench.<name>)"}


def _resolve(target: str) -> Callable:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _usage(commands: dict[str, Command | dict[str, Command]], prog: str) -> str:
    width = max(len(name) for name in commands) + 2
    lines = [f"usage: {prog} COMMAND [ARGS ...]   ({prog} COMMAND --help: its options)", "", "commands:"]
    for name, command in commands.items():
        summary = GROUPS[name] if isinstance(command, dict) else command.line()
        lines.append(f"  {name:<{width}}{summary}")
        if isinstance(command, dict):
            lines.append(f"  {'':<{width}}  {' | '.join(command)}")
    return "\n".join(lines)


def _wants_help(argv: Sequence[str]) -> bool:
    before = argv[:argv.index("--")] if "--" in argv else argv
    return any(a in ("-h", "--help") for a in before)


def _dispatch(commands: dict[str, Command | dict[str, Command]], argv: list[str], prog: str) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(commands, prog))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"{prog}: unknown command {name!r}\n\n{_usage(commands, prog)}", file=sys.stderr)
        return 2
    command = commands[name]
    if isinstance(command, dict):
        return _dispatch(command, rest, f"{prog} {name}")
    if command.parser is not None and _wants_help(rest):
        parser = _resolve(command.parser)()
        parser.prog = f"{prog} {name}"
        try:
            parser.parse_args(rest)   # prints the help (of a sub-parser too: cmg shards convert ave --help)
        except SystemExit as stop:
            return int(stop.code or 0)
    return int(_resolve(command.main)(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    try:
        return _dispatch(COMMANDS, list(sys.argv[1:] if argv is None else argv), "cmg")
    except SystemExit as stop:   # argparse's errors and --help inside a program's main
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)


# ---------------------------------------------------------------------- config keys
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its comment in the class's source: the comment on its line, else the comment lines right above
    it (how the config dataclasses document their keys); a base class's fields first."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs |= field_docs(base)
    lines, _ = inspect.getsourcelines(cls)
    comments, code = {}, set()
    for token in tokenize.generate_tokens(io.StringIO(textwrap.dedent("".join(lines))).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code.update(range(token.start[0], token.end[0] + 1))
    for node in ast.parse(textwrap.dedent("".join(lines))).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            above, n = [], node.lineno - 1
            while n in comments and n not in code:
                above.insert(0, comments[n])
                n -= 1
            docs[node.target.id] = trailing[0] if trailing else " ".join(above)
    return docs


def _text(value: Any) -> str:
    """A value as ``key=value`` overrides and YAML files write it."""
    return yaml.safe_dump(to_dict(value), default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def _choices_text(cls: type, f: dataclasses.Field) -> str:
    """The values key ``f`` of ``cls`` accepts, when they are a fixed set (trainer.configs.load.key_choices):
    ``{a, b}``, or ``items from {a, b}`` for a list."""
    choices = key_choices(cls, f)
    if choices is None:
        return ""
    values = "{" + ", ".join(_text(v) for v in choices.values) + "}"
    return f"items from {values}" if choices.items else values


def _key_lines(cfg: Any, prefix: str, width: int, only: str = "") -> list[str]:
    """``key=default``, its choices and its doc for every field of ``cfg`` (``only``: that field), nested sections
    flattened."""
    lines = []
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        if only and f.name != only:
            continue
        key, value = f"{prefix}{f.name}", getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            lines += _key_lines(value, key + ".", width)
            continue
        head = f"  {key}={_text(value)}"
        doc = "  ".join(text for text in (_choices_text(type(cfg), f), docs.get(f.name, "")) if text)
        if doc and len(head) < 46:
            lines += textwrap.wrap(doc, width, initial_indent=head.ljust(47), subsequent_indent=" " * 47)
        else:
            lines.append(head)
            lines += textwrap.wrap(doc, width, initial_indent=" " * 47, subsequent_indent=" " * 47) if doc else []
    return lines


def config_reference(task: str = "", width: int = 118, note: str = "") -> str:
    """Every key of the job config (trainer.configs.job.JobConfig) with its default, choices and doc: one block per
    section; the ``model`` section of ``task`` (trainer.configs.model.TASK_CONFIGS; "": the default task), since
    the task types it, with ``note`` under its heading."""
    from trainer.configs.job import JobConfig

    job, docs, blocks = JobConfig(), field_docs(JobConfig), []
    task = task or job.task
    for f in dataclasses.fields(job):
        value = getattr(job, f.name)
        if "schema" in f.metadata:
            config = model_config_class(task)
            summary = (config.__doc__ or "").split("\n\n")[0].replace("\n", " ")
            blocks.append(f"{f.name} (task={task}: {config.__name__}, {config.__module__})  {summary}".rstrip())
            blocks += textwrap.wrap(note, width, initial_indent="  ", subsequent_indent="  ") if note else []
            blocks += _key_lines(config(), f.name + ".", width)
        elif dataclasses.is_dataclass(value):
            blocks.append(f"{f.name} ({type(value).__name__}, {type(value).__module__})  {docs.get(f.name, '')}"
                          .rstrip())
            blocks += _key_lines(value, f.name + ".", width)
        else:
            blocks += _key_lines(job, "", width, only=f.name)
        blocks.append("")
    return "\n".join(blocks).rstrip() + "\n"


# ---------------------------------------------------------------------- cmg train
def _train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="experiment YAML (launch/configs/*.yaml); defaults if omitted")
    parser.add_argument("--resume", help="'auto' (default: latest complete checkpoint of run.dir; already at "
                        "run.max_steps: nothing to do, exit 0; past it: refused, exit 2), '' or a path")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved job (model dims from the data source, backbones) and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. run.max_steps=200 data.batch_size=16")
    return parser


def help_task(argv: Sequence[str]) -> tuple[str, str]:
    """The task whose ``model`` keys ``cmg train ARGV --help`` lists, and where it comes from: the last override
    ``task=NAME``, else the ``task`` of the ``--config`` file, else the job's default. ``ConfigError`` (an
    unreadable file or override) or ``KeyError`` (an unknown task, with the known ones) otherwise."""
    from trainer.configs.job import JobConfig

    scan = _train_arguments(argparse.ArgumentParser(add_help=False))
    args, _ = scan.parse_known_intermixed_args([a for a in argv if a not in ("-h", "--help")])
    task, origin = JobConfig().task, "the default task"
    if args.config and "task" in (data := read_yaml(args.config)):
        task, origin = data["task"], f"the task of --config {args.config}"
    for text in args.overrides:
        if "task" in (tree := parse_override(text)):
            task, origin = tree["task"], f"from the override {text}"
    model_config_class(task)
    return task, origin


class _TrainParser(argparse.ArgumentParser):
    """The config reference is read from the source only when the help is printed, not at every job start; its
    ``model`` section is the one of the task the command line names (``help_task``), the other tasks' are a
    ``task=NAME --help`` away."""

    argv: Sequence[str] = ()

    def parse_known_args(self, args=None, namespace=None):
        self.argv = list(sys.argv[1:] if args is None else args)   # what --help reads the task from
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        try:
            task, origin = help_task(self.argv)
        except (ConfigError, KeyError) as err:
            self.error(str(err.args[0] if isinstance(err, KeyError) else err))
        others = ", ".join(name for name in TASK_CONFIGS if name != task)
        note = (f"(the model keys of task {task}, {origin}; another task's: {self.prog} task=NAME --help, NAME one "
                f"of {others}; or --config JOB.yaml --help for the task of a job file)")
        sections = module_docstring("trainer.configs.job").split("\n\n")[1]
        self.epilog = ("config sections (of --config YAML files; key=value overrides, e.g. run.max_steps=200):\n"
                       f"{sections}\n\nconfig keys, their defaults and {{choices}}:\n"
                       f"{config_reference(task, note=note)}")
        return super().format_help()


def train_parser() -> argparse.ArgumentParser:
    return _train_arguments(_TrainParser(prog="trainer/main.py", description=module_docstring("trainer.main"),
                                         formatter_class=HelpFormatter))


# ---------------------------------------------------------------------- cmg eval
def _fractions(text: str) -> tuple[float, float, float]:
    parts = tuple(float(v) for v in text.split(","))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--split needs three fractions like 0.6,0.2,0.2, got {text!r}")
    return parts


def _class_map(text: str) -> dict[str, int]:
    try:
        return {str(int(a)): int(b) for a, b in (pair.split(":") for pair in text.split(",") if pair)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"a class map needs pairs like 0:0,3:1, got {text!r}") from None


def evaluate_parser() -> argparse.ArgumentParser:
    """``python -m trainer.programs.evaluate``'s options (trainer/programs/evaluate.py turns them into an
    ``EvaluateConfig``)."""
    doc = module_docstring("trainer.programs.evaluate")
    source = SourceConfig()
    tasks = list(TASKS)
    p = argparse.ArgumentParser(prog="python -m trainer.programs.evaluate", description=doc.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="run directory, checkpoints directory, step_N or its model.pt")
    p.add_argument("--data", default="", help="clip or feature shard URLs, AVE's role (default: the pretraining data)")
    p.add_argument("--kind", default="", choices=["", "clips", "features"])
    p.add_argument("--backbones", default="", help="backbones YAML for clip shards (default: the run's)")
    p.add_argument("--public", default="", help="public AVE layout: directory of h5 files or one .npz")
    p.add_argument("--split", type=_fractions, default=tuple(source.split), help="train,val,test fractions")
    p.add_argument("--split-seed", type=int, default=source.split_seed)
    p.add_argument("--cross-data", default="", help="shards of the AVVP-like dataset (localisation, AVE→AVVP)")
    p.add_argument("--cross-kind", default="", choices=["", "clips", "features"])
    p.add_argument("--cross-public", default="", help="the AVVP-like dataset in the public layout")
    p.add_argument("--class-map", type=_class_map, default={}, help="AVE→AVVP shared classes data:cross,... "
                   "(default: the 12 of seed 000 §B.2 in the AVE and AVVP vocabularies)")
    p.add_argument("--ucf-data", default="", help="shards of the UCF-101 videos (UCF(v)↔VGG(a))")
    p.add_argument("--ucf-kind", default="", choices=["", "clips", "features"])
    p.add_argument("--vgg-data", default="", help="shards of the VGGSound audio (UCF(v)↔VGG(a))")
    p.add_argument("--vgg-kind", default="", choices=["", "clips", "features"])
    p.add_argument("--ucf-vgg-map", type=_class_map, default={}, help="UCF↔VGG shared classes ucf:vgg,... "
                   "(default: the authors' 16, the same index in both datasets)")
    p.add_argument("--retrieval-data", default="", help="clip shards of unlabelled pairs for zero_shot_retrieval "
                   "('::' joins several sets: MSCOCO::Clotho::FlickrSound; default with --tasks zero_shot_retrieval: "
                   "--data)")
    p.add_argument("--tasks", default="", help=f"comma list of {tasks} (default: every one whose data is given)")
    p.add_argument("--suite", default="", choices=["", "paper"], help="paper: every protocol whose data is given, "
                   "and seed 001 Tables 1 and 3, seed 003 Tables 1 and 2 and seed 004 Tables 2-4 (at the "
                   "checkpoint's continual stage) with this checkpoint's numbers")
    p.add_argument("--pretrain-set", default="40K", choices=PRETRAIN_SETS,
                   help="seed 001 Table 1's column group for this checkpoint's numbers")
    p.add_argument("--classes", type=int, default=0, help="number of event classes of --data (default: largest "
                   "label + 1)")
    p.add_argument("--epochs", type=int, default=None, help="head epochs of every protocol (default: the seeds')")
    p.add_argument("--lr", type=float, default=None, help="head learning rate (default: seed 000 §B.2's 2.5e-4)")
    p.add_argument("--batch-size", type=int, default=None, help="head batch size, kept as given (default: seed 000 "
                   "§B.2's 256, cut on a train split too small for 10 steps an epoch)")
    p.add_argument("--exact-head-batch", action="store_true", help="keep the seeds' batch of 256 on a small train "
                   "split too (their setting whatever the set's size; the report warns when an epoch is under 10 "
                   "steps)")
    p.add_argument("--hidden", type=int, default=128, help="hidden width of the two-layer heads")
    p.add_argument("--seed", type=int, default=0, help="head init and batch order")
    p.add_argument("--toc", type=int, default=None, metavar="Q", help="keep the Q dimensions TOC selects")
    p.add_argument("--toc-lambda", type=float, default=TOCConfig().balance)
    p.add_argument("--toc-raw", action="store_true", help="TOC on the raw (not L2-normalised) codebook")
    p.add_argument("--json", default=None, help="also write the report to this file")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    return p


# ---------------------------------------------------------------------- cmg encode
def encode_parser() -> argparse.ArgumentParser:
    """``python -m trainer.programs.encode``'s options (trainer/programs/encode.py)."""
    p = argparse.ArgumentParser(prog="python -m trainer.programs.encode",
                                description=module_docstring("trainer.programs.encode"),
                                formatter_class=HelpFormatter)
    p.add_argument("model", help="a run directory, checkpoints directory, step_N, model.pt, or an export directory "
                   "(CMGModel.save_pretrained)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="clip shards (brace pattern or glob of .tar), or media "
                   "files (KEY.mp4, KEY.wav/.flac, KEY.jpg/.png/.webp; with their KEY.txt/.json): a glob, a directory "
                   "or the files")
    p.add_argument("--out", required=True, help="a directory (WebDataset shards), or a table: OUT.npz or "
                   "OUT.parquet (Parquet needs pyarrow)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per backbone and model batch")
    p.add_argument("--num-workers", type=int, default=2,
                   help="DataLoader processes decoding clips for each rank (0: in the main process)")
    p.add_argument("--clips-per-shard", type=int, default=100,
                   help="mp4 inputs: clips per output shard, the unit of work and of resumption")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    p.add_argument("--backbones", default=None, help="backbones YAML instead of the recorded backbones (their "
                   "fingerprints are still checked)")
    p.add_argument("--merge-timeout", type=float, default=3600.0,
                   help="seconds rank 0 waits for the other ranks' outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p
