"""Help text of the torch-free command lines (``cmg``, trainer/programs/cmg.py; shards/parsers.py;
trainer/programs/bench/parsers.py): the help formatter every parser uses, and module docstrings read from the source
without importing the module (its module may import torch, which takes seconds).
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
from pathlib import Path


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and every option's default after its help (options without help too), unless the
    help says it already, the option is a flag or it has no default."""

    @staticmethod
    def _note(action: argparse.Action) -> str:
        if action.default in (None, argparse.SUPPRESS) or action.nargs == 0 or not action.option_strings:
            return ""
        return f"(default: {'%(default)r' if action.default == '' else '%(default)s'})"

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and self._note(action):
            action = copy.copy(action)
            action.help = self._note(action)
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "default" in text or not self._note(action) else f"{text} {self._note(action)}"


def module_file(name: str) -> Path:
    """The source file of module ``name``, found from its top-level package alone (importing ``a.b.c`` would run
    the ``__init__`` of ``a.b``, which may import torch)."""
    top, *rest = name.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"no package {top!r}")
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    raise ModuleNotFoundError(f"no source for module {name!r} (looked for {base}.py and {base}/__init__.py)")


def module_docstring(name: str) -> str:
    """The docstring of module ``name``, read from its file without importing it (its module may import torch)."""
    return ast.get_docstring(ast.parse(module_file(name).read_text(encoding="utf-8"))) or ""
