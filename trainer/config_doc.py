"""Config dataclasses and constants read from their source with ``ast``, without importing it.

The benchmarks' and shard programs' modules import torch, and ``cmg ... --help`` must answer at once: so their
command lines (shards/cli.py, trainer/programs/bench/cli.py) take defaults and names that still live in those modules
from here. (The job's configs are torch-free, trainer/configs/: ``cmg train``, ``eval`` and ``encode`` read them.)
Nothing is imported but the top-level package, to find the files.

What is evaluated: literals and tuples/lists/sets/dicts of them, module constants (followed through ``from X import``),
``Cls.field`` defaults, ``list``/``tuple``/``dict``/``set`` calls, arithmetic on numbers, ``lambda: x``,
``field(default=...)`` / ``field(default_factory=...)``, a config dataclass called with arguments (a section with other
defaults) and a comprehension over such values (``{row.name: row for row in (Row("a"), ...)}``).
Anything else, e.g. a function call, is kept as its source text (``Source``). A field's doc is the comment on its line,
else the comment lines right above it. tests/unit/test_cli.py checks all of it against the imported dataclasses.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import io
import operator
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any



class Source(str):
    """A default that cannot be evaluated from the source: its expression, as written."""


class NotEvaluable(Exception):
    """An expression outside what this module evaluates (module docstring)."""


@dataclass(frozen=True)
class ClassRef:
    """A class named in the source: ``module.name`` (a config dataclass when ``dataclass`` is set)."""

    module: str
    name: str
    dataclass: bool


@dataclass
class FieldDoc:
    name: str
    default: Any            # the value; a Section for a nested config; a Source; None with required=True
    doc: str = ""
    required: bool = False  # no default
    typed_by: bool = False  # metadata={"schema": ...}: the type depends on sibling keys (trainer/config.py)


@dataclass
class Section:
    """A config dataclass's fields with their defaults (a nested section, or a class called with other defaults)."""

    cls: ClassRef
    fields: dict[str, FieldDoc] = field(default_factory=dict)
    doc: str = ""           # the first line of the class docstring

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return fields[name].default
        raise AttributeError(f"{self.__dict__.get('cls')} has no field {name!r}")

    def values(self) -> dict[str, Any]:
        """Plain values: nested sections as dicts, tuples as lists (what ``trainer.config.to_dict`` gives)."""
        return {name: plain(f.default) for name, f in self.fields.items()}


def plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.values()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------- reading modules
@dataclass
class _Module:
    name: str
    path: Path
    text: str
    tree: ast.Module
    comments: dict[int, str]   # line -> comment text (without '#')
    code_lines: set[int]       # lines holding code (a comment on such a line is a trailing one)


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


@functools.cache
def _module(name: str) -> _Module:
    path = module_file(name)
    text = path.read_text(encoding="utf-8")
    comments, code = {}, set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code.update(range(token.start[0], token.end[0] + 1))
    return _Module(name, path, text, ast.parse(text, str(path)), comments, code)


def module_docstring(name: str) -> str:
    return ast.get_docstring(_module(name).tree) or ""


def _is_dataclass(node: ast.ClassDef) -> bool:
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        if (isinstance(target, ast.Name) and target.id == "dataclass") or \
                (isinstance(target, ast.Attribute) and target.attr == "dataclass"):
            return True
    return False


def _lookup(module: str, name: str) -> Any:
    """What ``name`` means at the top level of ``module``: a ``ClassRef``, or a constant's value."""
    for node in _module(module).tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return ClassRef(module, name, _is_dataclass(node))
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return _eval(node.value, module)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name \
                and node.value is not None:
            return _eval(node.value, module)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _lookup(node.module, alias.name)
    raise NotEvaluable(f"{module}: no top-level {name!r}")


def _class_node(ref: ClassRef) -> ast.ClassDef:
    return next(n for n in _module(ref.module).tree.body if isinstance(n, ast.ClassDef) and n.name == ref.name)


# ---------------------------------------------------------------------- evaluating expressions
_BUILTINS = {"list": list, "tuple": tuple, "dict": dict, "set": set, "frozenset": frozenset}
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.LShift: operator.lshift,
              ast.USub: operator.neg, ast.UAdd: operator.pos}


def _eval(node: ast.AST, module: str, env: dict[str, Any] | None = None) -> Any:
    """The value of ``node`` in ``module`` (``env``: a comprehension's variables); ``NotEvaluable`` otherwise."""
    env = env or {}
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = []
        for element in node.elts:
            if isinstance(element, ast.Starred):
                items.extend(_eval(element.value, module, env))
            else:
                items.append(_eval(element, module, env))
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        out = {}
        for key, value in zip(node.keys, node.values):
            if key is None:
                out.update(_eval(value, module, env))
            else:
                out[_eval(key, module, env)] = _eval(value, module, env)
        return out
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        try:
            return _lookup(module, node.id)
        except NotEvaluable:
            if node.id in _BUILTINS:
                return _BUILTINS[node.id]
            raise
    if isinstance(node, ast.Attribute):
        owner = _eval(node.value, module, env)
        if isinstance(owner, ClassRef) and owner.dataclass:
            return getattr(dataclass_section(owner), node.attr)
        if isinstance(owner, Section):
            return getattr(owner, node.attr)
        raise NotEvaluable(ast.unparse(node))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_eval(node.operand, module, env))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_eval(node.left, module, env), _eval(node.right, module, env))
    if isinstance(node, ast.Lambda) and not node.args.args:
        return _eval(node.body, module, env)
    if isinstance(node, (ast.DictComp, ast.ListComp, ast.SetComp, ast.GeneratorExp)) and len(node.generators) == 1 \
            and isinstance(node.generators[0].target, ast.Name) and not node.generators[0].ifs:
        loop = node.generators[0]
        scopes = [env | {loop.target.id: item} for item in _eval(loop.iter, module, env)]
        if isinstance(node, ast.DictComp):
            return {_eval(node.key, module, e): _eval(node.value, module, e) for e in scopes}
        items = [_eval(node.elt, module, e) for e in scopes]
        return set(items) if isinstance(node, ast.SetComp) else items
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id in _BUILTINS:
            args = [_eval(a, module, env) for a in node.args]
            return _BUILTINS[node.func.id](*args, **{k.arg: _eval(k.value, module, env) for k in node.keywords})
        target = _eval(node.func, module, env)
        if isinstance(target, ClassRef) and target.dataclass:
            return _called(target, node, module, env)
    raise NotEvaluable(ast.unparse(node))


def _called(ref: ClassRef, call: ast.Call, module: str, env: dict[str, Any]) -> Section:
    """``Cls(a, b=...)``: the section of ``Cls`` with the given arguments replacing its defaults."""
    section = dataclass_section(ref)
    out = Section(ref, {name: FieldDoc(f.name, f.default, f.doc, f.required, f.typed_by)
                        for name, f in section.fields.items()}, section.doc)
    names = list(out.fields)
    given = {names[i]: a for i, a in enumerate(call.args)} | {k.arg: k.value for k in call.keywords}
    for name, value in given.items():
        out.fields[name].default, out.fields[name].required = _value_or_source(value, module, env), False
    return out


def _value_or_source(node: ast.AST, module: str, env: dict[str, Any] | None = None) -> Any:
    try:
        return _eval(node, module, env)
    except NotEvaluable:
        return Source(ast.unparse(node))


# ---------------------------------------------------------------------- dataclasses
def _field_doc(module: _Module, node: ast.AST) -> str:
    """The comment on the field's lines, else the full-line comments right above it."""
    for line in range(node.lineno, node.end_lineno + 1):
        if line in module.comments:
            return module.comments[line]
    above, line = [], node.lineno - 1
    while line in module.comments and line not in module.code_lines:
        above.insert(0, module.comments[line])
        line -= 1
    return " ".join(above)


def _default(node: ast.AnnAssign, module: str) -> tuple[Any, bool, bool]:
    """(default, required, typed_by) of a field."""
    value = node.value
    if value is None:
        return None, True, False
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field":
        kwargs = {k.arg: k.value for k in value.keywords}
        typed_by = "metadata" in kwargs and "schema" in ast.unparse(kwargs["metadata"])
        if "default" in kwargs:
            return _value_or_source(kwargs["default"], module), False, typed_by
        if "default_factory" in kwargs:
            factory = kwargs["default_factory"]
            try:
                made = _eval(factory, module)
            except NotEvaluable:
                return Source(ast.unparse(factory) + "()"), False, typed_by
            if made in _BUILTINS.values():
                made = made()
            elif isinstance(made, ClassRef) and made.dataclass:
                made = dataclass_section(made)
            return made, False, typed_by
        return None, True, typed_by
    return _value_or_source(value, module), False, False


@functools.cache
def dataclass_section(ref: ClassRef) -> Section:
    """Every field of the dataclass ``ref`` (its bases' first, as ``dataclasses.fields`` orders them)."""
    node = _class_node(ref)
    module = _module(ref.module)
    section = Section(ref, {}, (ast.get_docstring(node) or "").split("\n\n")[0].replace("\n", " "))
    for base in node.bases:
        try:
            parent = _eval(base, ref.module)
        except NotEvaluable:
            continue
        if isinstance(parent, ClassRef) and parent.dataclass:
            section.fields.update(dataclass_section(parent).fields)
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) \
                and not ast.unparse(item.annotation).startswith("ClassVar"):
            default, required, typed_by = _default(item, ref.module)
            name = item.target.id
            section.fields[name] = FieldDoc(name, default, _field_doc(module, item), required, typed_by)
    return section


def config_defaults(module: str, name: str) -> Section:
    """The fields of config dataclass ``module.name`` with their defaults (``.<field>`` reads one)."""
    ref = _lookup(module, name)
    if not isinstance(ref, ClassRef) or not ref.dataclass:
        raise TypeError(f"{module}.{name} is not a dataclass")
    return dataclass_section(ref)


def constant(module: str, name: str) -> Any:
    """The value of the top-level constant ``module.name``."""
    return _lookup(module, name)


def dict_keys(module: str, name: str) -> list[Any]:
    """The keys of the top-level dict display ``module.name = {key: ..., ...}``, its values left unevaluated."""
    for node in _module(module).tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict) and any(
                isinstance(t, ast.Name) and t.id == name for t in targets):
            return [_eval(key, module) for key in node.value.keys]
    raise NotEvaluable(f"{module}: no top-level dict display {name!r}")
