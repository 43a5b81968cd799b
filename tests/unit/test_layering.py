"""The package's layers, read from the source with ``ast`` (nothing is imported). docs/architecture.md ("Layers and
names") says the same in prose.

- entry points: ``trainer/programs/`` (the programs package), ``trainer/main.py`` (the job script
  ``accelerate launch trainer/main.py``) and ``trainer/__main__.py`` (``python -m trainer``); the library is the rest
  of ``trainer``, and no library module has an ``if __name__ == "__main__":`` block or a top-level ``main``;
- imports go one way: the library never imports the entry points nor ``shards``; ``shards`` imports the library,
  never the entry points; the programs may import both;
- ``torch.distributed`` is reached only in ``trainer/distributed.py`` (every collective of the project is there);
- the models (``trainer/models/``) import neither checkpointing, tracking nor the launch stack
  (``trainer.checkpoint``, ``trainer.tracking``, ``accelerate``, ``deepspeed``, ``mlflow``);
- the config modules (``trainer/configs/`` and the programs' ``config.py``) import the standard library, PyYAML and
  each other only: no torch, so that a config is checked and ``--help`` lists it at once (trainer/configs/load.py);
  the command-line modules that build the parsers without torch import those and each other only;
- one meaning per file name: two modules of ``trainer/`` and ``shards/`` share a file name only within one of the
  families listed in ``SHARED_NAMES``, each with what the name means there;
- no module of ``trainer/`` or ``shards/`` is over ``MAX_LINES`` lines.

Each check lists every offending ``file:line`` (or file) and what it found there.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = ("trainer", "shards")
PROGRAMS = "trainer/programs"
ENTRY_POINTS = (PROGRAMS + "/", "trainer/main.py", "trainer/__main__.py")    # paths: a folder ends with "/"
ENTRY_MODULES = ("trainer.programs", "trainer.main", "trainer.__main__")
DISTRIBUTED_HOME = "trainer/distributed.py"
MODELS = "trainer/models"
MODELS_MUST_NOT_IMPORT = ("trainer.checkpoint", "trainer.tracking", "accelerate", "deepspeed", "mlflow")
CONFIG_MODULES = ("trainer/configs/", "shards/config.py", "trainer/programs/config.py",
                  "trainer/programs/bench/config.py")
CONFIG_MAY_IMPORT = ("trainer.configs", "shards.config", "trainer.programs.config", "trainer.programs.bench.config",
                     "yaml", "__future__")
# the command lines built without torch (``cmg --help`` answers at once): the config modules and these only
PARSER_MODULES = ("trainer/programs/cmg.py", "shards/parsers.py", "trainer/programs/bench/parsers.py",
                  "trainer/help_text.py")
PARSERS_MAY_IMPORT = (*CONFIG_MAY_IMPORT, "trainer.programs.cmg", "shards.parsers", "trainer.programs.bench.parsers",
                      "trainer.help_text")
# file name -> (what it means wherever it is, the modules that have it); any other name is one module's alone
SHARED_NAMES = {
    "config.py": ("the torch-free configs of this package's programs",
                  {"shards/config.py", "trainer/programs/config.py", "trainer/programs/bench/config.py"}),
    "parsers.py": ("the torch-free parsers of this package's programs (cmg's subcommands)",
                   {"shards/parsers.py", "trainer/programs/bench/parsers.py"}),
    "base.py": ("the base class of this package's family", {"trainer/backbones/base.py", "trainer/tasks/base.py"}),
    # one method in two layers: its model (trainer/models/) and its training task (trainer/tasks/)
    "unicode.py": ("Uni-Code (DCID)", {"trainer/models/unicode.py", "trainer/tasks/unicode.py"}),
    "fccid.py": ("FCCID", {"trainer/models/fccid.py", "trainer/tasks/fccid.py"}),
    "comet.py": ("COMET", {"trainer/models/comet.py", "trainer/tasks/comet.py"}),
    # a config module (trainer/configs/) is named after what it configures; a benchmark after what it measures
    "job.py": ("the main job", {"trainer/job.py", "trainer/configs/job.py"}),
    "tracking.py": ("MLflow tracking", {"trainer/tracking.py", "trainer/configs/tracking.py"}),
    "backbones.py": ("the frozen backbones (trainer/backbones/)",
                     {"trainer/configs/backbones.py", "trainer/programs/bench/backbones.py"}),
}
MAX_LINES = 600


def module_name(path: str) -> str:
    """``trainer/models/club.py`` -> ``trainer.models.club``; a package's ``__init__.py`` -> the package."""
    parts = list(Path(path).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, path: str) -> Iterator[tuple[int, str]]:
    """(line, module) for every import of ``tree`` (any depth, function-local ones included), as absolute names:
    ``import a.b`` -> a.b; ``from a import b`` -> a.b (b may be a module or a name: both are checked as a prefix);
    relative imports are resolved against ``path``'s package."""
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base


def attribute_chain(node: ast.AST) -> str | None:
    """``torch.distributed.all_reduce`` -> "torch.distributed.all_reduce" (None if not a plain name chain)."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(names)])


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def sources() -> list[tuple[str, ast.Module]]:
    found = []
    for root in SOURCE_ROOTS:
        for file in sorted((REPO / root).rglob("*.py")):
            path = file.relative_to(REPO).as_posix()
            found.append((path, ast.parse(file.read_text(), filename=path)))
    return found


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, ast.Module]]:
    return sources()


def is_entry_point(path: str) -> bool:
    return path.startswith(ENTRY_POINTS)


def is_library(path: str) -> bool:
    return path.startswith("trainer/") and not is_entry_point(path)


def imports_against_the_direction(files: list[tuple[str, ast.Module]]) -> list[str]:
    """The library importing an entry point or ``shards``; ``shards`` importing an entry point."""
    found = []
    for path, tree in files:
        if is_library(path):
            banned = (*ENTRY_MODULES, "shards")
        elif path.startswith("shards/"):
            banned = ENTRY_MODULES
        else:
            continue
        found += [f"{path}:{line}: imports {module}" for line, module in imported_modules(tree, path)
                  if any(within(module, b) for b in banned)]
    return found


def library_entry_points(files: list[tuple[str, ast.Module]]) -> list[str]:
    """Library modules with an ``if __name__ == "__main__":`` block or a top-level ``main``."""
    found = []
    for path, tree in files:
        if not is_library(path):
            continue
        for node in tree.body:
            test = ast.unparse(node.test) if isinstance(node, ast.If) else ""
            if "__name__" in test and "__main__" in test:
                found.append(f"{path}:{node.lineno}: runs as a program (if __name__ == '__main__')")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "main":
                found.append(f"{path}:{node.lineno}: defines main()")
    return found


def shared_file_names(paths: list[str]) -> list[str]:
    """Modules sharing a file name outside the families of ``SHARED_NAMES`` (``__init__.py`` aside)."""
    by_name: dict[str, list[str]] = {}
    for path in paths:
        by_name.setdefault(Path(path).name, []).append(path)
    found = []
    for name, where in sorted(by_name.items()):
        if name == "__init__.py" or len(where) == 1:
            continue
        allowed = SHARED_NAMES.get(name, ("", set()))[1]
        if not set(where) <= allowed:
            found.append(f"{name}: {', '.join(sorted(where))} (allowed: {', '.join(sorted(allowed)) or 'none'})")
    return found


def long_modules(lines: dict[str, int]) -> list[str]:
    return [f"{path}: {n} lines" for path, n in sorted(lines.items()) if n > MAX_LINES]


def distributed_outside_its_home(files: list[tuple[str, ast.Module]]) -> list[str]:
    found = []
    for path, tree in files:
        if path == DISTRIBUTED_HOME:
            continue
        found += [f"{path}:{line}: imports {module}" for line, module in imported_modules(tree, path)
                  if within(module, "torch.distributed")]
        for node in ast.walk(tree):
            # the "torch.distributed" node of any chain (torch.distributed.all_reduce(...) is reported once)
            if isinstance(node, ast.Attribute) and attribute_chain(node) == "torch.distributed":
                found.append(f"{path}:{node.lineno}: uses torch.distributed")
    return found


def models_import_infrastructure(files: list[tuple[str, ast.Module]]) -> list[str]:
    return [f"{path}:{line}: imports {module}" for path, tree in files if path.startswith(MODELS + "/")
            for line, module in imported_modules(tree, path)
            if any(within(module, banned) for banned in MODELS_MUST_NOT_IMPORT)]


def config_modules_import_more(files: list[tuple[str, ast.Module]]) -> list[str]:
    return [f"{path}:{line}: imports {module}" for path, tree in files if path.startswith(CONFIG_MODULES)
            for line, module in imported_modules(tree, path)
            if module.split(".")[0] not in sys.stdlib_module_names
            and not any(within(module, allowed) for allowed in CONFIG_MAY_IMPORT)]


def parser_modules_import_more(files: list[tuple[str, ast.Module]]) -> list[str]:
    return [f"{path}:{line}: imports {module}" for path, tree in files if path in PARSER_MODULES
            for line, module in imported_modules(tree, path)
            if module.split(".")[0] not in sys.stdlib_module_names
            and not any(within(module, allowed) for allowed in PARSERS_MAY_IMPORT)]


def _report(offences: list[str], rule: str) -> str:
    return f"{rule}:\n" + "\n".join(offences)


def test_imports_go_one_way_library_shards_programs(parsed):
    offences = imports_against_the_direction(parsed)
    assert not offences, _report(offences, f"the library imports {ENTRY_MODULES} or shards, or shards imports "
                                           f"{ENTRY_MODULES}")


def test_entry_points_only_in_the_programs_and_the_job_script(parsed):
    offences = library_entry_points(parsed)
    assert not offences, _report(offences, f"library modules (outside {ENTRY_POINTS}) that are programs")


def test_one_meaning_per_file_name(parsed):
    offences = shared_file_names([path for path, _ in parsed])
    assert not offences, _report(offences, "modules share a file name outside SHARED_NAMES's families")


def test_no_module_over_the_line_limit():
    lines = {file.relative_to(REPO).as_posix(): len(file.read_text().splitlines())
             for root in SOURCE_ROOTS for file in (REPO / root).rglob("*.py")}
    offences = long_modules(lines)
    assert not offences, _report(offences, f"modules over {MAX_LINES} lines")


def test_torch_distributed_only_in_trainer_distributed(parsed):
    offences = distributed_outside_its_home(parsed)
    assert not offences, _report(offences, f"torch.distributed outside {DISTRIBUTED_HOME}")


def test_models_import_no_checkpoint_tracking_or_launch_stack(parsed):
    offences = models_import_infrastructure(parsed)
    assert not offences, _report(offences, f"{MODELS}/ imports one of {MODELS_MUST_NOT_IMPORT}")


def test_config_modules_import_no_torch_nor_the_code_they_configure(parsed):
    offences = config_modules_import_more(parsed)
    assert not offences, _report(offences, f"{CONFIG_MODULES} import beyond {CONFIG_MAY_IMPORT} and the stdlib")


def test_parser_modules_import_only_configs_and_each_other(parsed):
    offences = parser_modules_import_more(parsed)
    assert not offences, _report(offences, f"{PARSER_MODULES} import beyond {PARSERS_MAY_IMPORT} and the stdlib")


# ---------------------------------------------------------------- the checks catch what they must

def _parse(path: str, source: str) -> list[tuple[str, ast.Module]]:
    return [(path, ast.parse(source))]


@pytest.mark.parametrize("source", [
    "import trainer.programs.harness",
    "from trainer.programs import harness",
    "from trainer.programs.bench.jobs import bench_job",
    "def f():\n    from trainer import programs",
    "from .programs.demo import DemoConfig",              # relative, from trainer/loop.py
    "from trainer.main import load_job",
    "from trainer import main",
])
def test_direction_check_catches_imports_of_entry_points(source):
    assert imports_against_the_direction(_parse("trainer/loop.py", source))
    absolute = source.replace("from .programs", "from trainer.programs")
    assert imports_against_the_direction(_parse("shards/bench.py", absolute))
    assert not imports_against_the_direction(_parse("trainer/programs/bench/e2e.py", absolute))


@pytest.mark.parametrize("source", [
    "import shards.extract",
    "from shards.write import collect_clips",
    "from shards import inspect",
    "def f():\n    import shards",
])
def test_direction_check_catches_the_library_importing_shards(source):
    assert imports_against_the_direction(_parse("trainer/eval/retrieval.py", source))
    assert not imports_against_the_direction(_parse("shards/convert.py", source))
    assert not imports_against_the_direction(_parse("trainer/programs/demo.py", source))
    assert not imports_against_the_direction(_parse("trainer/main.py", source))


def test_direction_check_lets_each_layer_import_below_it_and_lookalikes():
    assert not imports_against_the_direction(_parse("trainer/programs/bench/e2e.py",
                                                    "from trainer.programs.demo import x\nimport trainer.loop"))
    assert not imports_against_the_direction(_parse("trainer/main.py", "from trainer.programs.cmg import train_parser"))
    assert not imports_against_the_direction(_parse("shards/write.py", "from trainer.data.decode import member_set"))
    assert not imports_against_the_direction(_parse("trainer/loop.py", "import trainer.programs_like\nimport trainer\n"
                                                                       "import shards_like\nimport trainer.main_loop"))


@pytest.mark.parametrize("source", [
    'import sys\nif __name__ == "__main__":\n    sys.exit(0)',
    "if '__main__' == __name__:\n    pass",
    "def main(argv=None):\n    return 0",
])
def test_entry_point_check_catches_programs_in_the_library(source):
    assert library_entry_points(_parse("trainer/eval/toc.py", source))
    assert not library_entry_points(_parse("trainer/programs/toc_report.py", source))
    assert not library_entry_points(_parse("trainer/main.py", source))
    assert not library_entry_points(_parse("shards/write.py", source))


def test_entry_point_check_lets_the_library_name_main_elsewhere():
    source = "class Job:\n    def main(self):\n        pass\ndef main_loop():\n    pass\nNAME = '__main__'"
    assert not library_entry_points(_parse("trainer/loop.py", source))


def test_name_check_catches_a_shared_name_outside_its_family():
    assert shared_file_names(["trainer/eval/encode.py", "trainer/programs/encode.py"])
    assert shared_file_names(["trainer/configs/load.py", "shards/config.py", "trainer/config.py"])
    assert shared_file_names(["trainer/models/unicode.py", "trainer/eval/unicode.py"])
    assert not shared_file_names(["trainer/models/unicode.py", "trainer/tasks/unicode.py", "trainer/__init__.py",
                                  "shards/__init__.py", "shards/config.py", "trainer/programs/config.py"])


def test_line_check_catches_a_long_module():
    assert long_modules({"trainer/x.py": MAX_LINES + 1}) == [f"trainer/x.py: {MAX_LINES + 1} lines"]
    assert not long_modules({"trainer/x.py": MAX_LINES})


def test_parser_check_catches_torch_in_a_parser_module():
    assert parser_modules_import_more(_parse("shards/parsers.py", "import torch"))
    assert parser_modules_import_more(_parse("trainer/programs/cmg.py", "from trainer.data.decode import x"))
    assert not parser_modules_import_more(_parse("trainer/programs/bench/parsers.py",
                                                 "import argparse\nfrom trainer.help_text import HelpFormatter\n"
                                                 "from trainer.configs.eval import ProbeConfig"))


@pytest.mark.parametrize("source", [
    "import torch.distributed",
    "import torch.distributed as dist",
    "import torch.distributed.distributed_c10d as c10d",
    "from torch import distributed",
    "from torch import distributed as dist",
    "from torch.distributed import all_reduce",
    "import torch\ntorch.distributed.barrier()",
    "import torch\nok = torch.distributed.is_available()",
    "def f():\n    import torch.distributed as dist",
])
def test_distributed_check_catches_every_form(source):
    offences = distributed_outside_its_home(_parse("trainer/loop.py", source))
    assert offences and all(o.startswith("trainer/loop.py:") for o in offences)
    assert not distributed_outside_its_home(_parse(DISTRIBUTED_HOME, source))


def test_distributed_check_ignores_strings_and_other_names():
    source = '"""Every ``torch.distributed`` call"""\nimport torch\nx = "torch.distributed"\ntorch.cuda.is_available()'
    assert not distributed_outside_its_home(_parse("trainer/loop.py", source))


@pytest.mark.parametrize("source", [
    "from trainer.checkpoint import write_model_state",
    "import trainer.tracking",
    "from trainer import checkpoint",
    "from ..tracking import Tracker",                    # relative, from trainer/models/x.py
    "import accelerate",
    "from deepspeed.ops.adam import FusedAdam",
    "def f():\n    import mlflow",
])
def test_models_check_catches_infrastructure_imports(source):
    assert models_import_infrastructure(_parse("trainer/models/x.py", source))
    assert not models_import_infrastructure(_parse("trainer/tasks/x.py", source))


def test_models_check_lets_models_import_the_library():
    source = "from trainer.configs.load import to_dict\nfrom trainer.distributed import all_reduce_sum_\nimport torch"
    assert not models_import_infrastructure(_parse("trainer/models/x.py", source))


@pytest.mark.parametrize("source", [
    "import torch",
    "from torch import nn",
    "from trainer.models.unicode import UniCodeModel",
    "def f():\n    from trainer.data.sources import expand_shard_urls",
    "import numpy as np",
])
def test_config_check_catches_imports_beyond_the_configs(source):
    assert config_modules_import_more(_parse("trainer/configs/model.py", source))
    assert config_modules_import_more(_parse("trainer/configs/load.py", source))
    assert not config_modules_import_more(_parse("trainer/job.py", source))


def test_config_check_lets_configs_import_the_stdlib_yaml_and_each_other():
    source = ("import dataclasses\nfrom typing import Literal\nimport yaml\n"
              "from trainer.configs.load import build_config\nfrom trainer.configs.data import DataConfig\n"
              "from . import model")
    assert not config_modules_import_more(_parse("trainer/configs/job.py", source))
