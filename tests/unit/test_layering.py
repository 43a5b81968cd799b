"""The package's layers, read from the source with ``ast`` (nothing is imported):

- the library (``trainer`` outside ``trainer/programs/``, and ``shards``) never imports ``trainer.programs``;
- ``torch.distributed`` is reached only in ``trainer/distributed.py`` (every collective of the project is there);
- the models (``trainer/models/``) import neither checkpointing, tracking nor the launch stack
  (``trainer.checkpoint``, ``trainer.tracking``, ``accelerate``, ``deepspeed``, ``mlflow``);
- the config modules (``trainer/config.py``, ``trainer/configs/`` and the programs' ``config.py``) import the
  standard library, PyYAML and each other only: no torch, so that a config is checked and ``--help`` lists it at
  once (trainer/config.py).

Each check lists every offending ``file:line`` and what it found there.
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
DISTRIBUTED_HOME = "trainer/distributed.py"
MODELS = "trainer/models"
MODELS_MUST_NOT_IMPORT = ("trainer.checkpoint", "trainer.tracking", "accelerate", "deepspeed", "mlflow")
CONFIG_MODULES = ("trainer/config.py", "trainer/configs/", "shards/config.py", "trainer/programs/config.py",
                  "trainer/programs/bench/config.py")
CONFIG_MAY_IMPORT = ("trainer.config", "trainer.configs", "shards.config", "trainer.programs.config",
                     "trainer.programs.bench.config", "yaml", "__future__")


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


def library_imports_programs(files: list[tuple[str, ast.Module]]) -> list[str]:
    return [f"{path}:{line}: imports {module}" for path, tree in files
            if not within(module_name(path), PROGRAMS.replace("/", "."))
            for line, module in imported_modules(tree, path) if within(module, "trainer.programs")]


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


def _report(offences: list[str], rule: str) -> str:
    return f"{rule}:\n" + "\n".join(offences)


def test_the_library_never_imports_the_programs(parsed):
    offences = library_imports_programs(parsed)
    assert not offences, _report(offences, "modules outside trainer/programs/ import trainer.programs")


def test_torch_distributed_only_in_trainer_distributed(parsed):
    offences = distributed_outside_its_home(parsed)
    assert not offences, _report(offences, f"torch.distributed outside {DISTRIBUTED_HOME}")


def test_models_import_no_checkpoint_tracking_or_launch_stack(parsed):
    offences = models_import_infrastructure(parsed)
    assert not offences, _report(offences, f"{MODELS}/ imports one of {MODELS_MUST_NOT_IMPORT}")


def test_config_modules_import_no_torch_nor_the_code_they_configure(parsed):
    offences = config_modules_import_more(parsed)
    assert not offences, _report(offences, f"{CONFIG_MODULES} import beyond {CONFIG_MAY_IMPORT} and the stdlib")


# ---------------------------------------------------------------- the checks catch what they must

def _parse(path: str, source: str) -> list[tuple[str, ast.Module]]:
    return [(path, ast.parse(source))]


@pytest.mark.parametrize("source", [
    "import trainer.programs.harness",
    "from trainer.programs import harness",
    "from trainer.programs.bench.jobs import bench_job",
    "def f():\n    from trainer import programs",
    "from .programs.demo import DemoConfig",              # relative, from trainer/loop.py
])
def test_library_check_catches_imports_of_programs(source):
    assert library_imports_programs(_parse("trainer/loop.py", source))
    absolute = source.replace("from .programs", "from trainer.programs")
    assert library_imports_programs(_parse("shards/bench.py", absolute))
    assert not library_imports_programs(_parse("trainer/programs/bench/e2e.py", source))


def test_library_check_lets_programs_import_each_other_and_the_library_import_lookalikes():
    assert not library_imports_programs(_parse("trainer/programs/bench/e2e.py", "from trainer.programs.demo import x"))
    assert not library_imports_programs(_parse("trainer/loop.py", "import trainer.programs_like\nimport trainer"))


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
    source = "from trainer.config import to_dict\nfrom trainer.distributed import all_reduce_sum_\nimport torch"
    assert not models_import_infrastructure(_parse("trainer/models/x.py", source))


@pytest.mark.parametrize("source", [
    "import torch",
    "from torch import nn",
    "from trainer.models.unicode import UniCodeModel",
    "def f():\n    from trainer.data.stream import expand_shard_urls",
    "import numpy as np",
])
def test_config_check_catches_imports_beyond_the_configs(source):
    assert config_modules_import_more(_parse("trainer/configs/model.py", source))
    assert config_modules_import_more(_parse("trainer/config.py", source))
    assert not config_modules_import_more(_parse("trainer/job.py", source))


def test_config_check_lets_configs_import_the_stdlib_yaml_and_each_other():
    source = ("import dataclasses\nfrom typing import Literal\nimport yaml\nfrom trainer.config import build_config\n"
              "from trainer.configs.data import DataConfig\nfrom . import model")
    assert not config_modules_import_more(_parse("trainer/configs/job.py", source))
