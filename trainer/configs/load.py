"""Typed nested configs: dataclasses in, YAML and ``key=value`` overrides validated on the way.

Rules (torchtitan style):
- every component declares its own ``@dataclass`` with defaults; a job config nests them. The config dataclasses
  live in torch-free modules (trainer/configs/, tests/unit/test_layering.py), so that a config is checked, and
  ``--help`` lists it, without importing torch;
- a YAML file and command-line overrides (``model.quantizer.num_codes=512``) are merged onto the defaults;
- an unknown key, a value of the wrong type, a value outside a ``Literal[...]`` and a value a component's
  ``__post_init__`` refuses fail *before any work*, all at once: one ``ConfigError`` lists every error, each with
  the dotted key and the file or override it came from (an unknown key with the known keys closest to it);
- ``to_dict`` gives the resolved config back (saved in the run directory, flattened for MLflow params);
- a section whose type depends on sibling keys (the job's ``model``, typed by its ``task``) declares
  ``metadata={"schema": f}``: ``f(values)`` gets the sibling values (given or default) and returns the type;
- a key whose values are a fixed set is a ``Literal[...]``; one checked against a fixed set elsewhere (by its
  class's ``__post_init__``, a registry's lookup) names that set in ``metadata={"choices": collection}``. Either
  way ``key_choices`` reads them, and ``cmg train --help`` lists them from there.

Relative paths. A field declared with ``metadata={"path": True}`` holds a path (``data.urls``: several, '::'-joined;
a ``pipe:`` command or a URL is left alone). Written in a config file, or left at its default, a relative path names
a path under the repository root (``REPO_ROOT``, the directory holding launch/: the repo's configs are written so);
given as a ``key=value`` override, it is read from the current directory, as a shell argument is. Run from the
repository root (as slurm/submit.sh and the Makefile do) the two agree and paths are kept as written; run from
elsewhere, the file's and the defaults' relative paths are made absolute under the root. Absolute paths are kept.
(Installed without the repository, there is no root: every relative path is read from the current directory.)
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]  # the directory holding launch/ (a checkout of the repository)


class ConfigError(ValueError):
    """Config keys are unknown, ill-typed or out of range; the message names each key and its source."""

    def __init__(self, message: str, errors: Sequence[str] = ()):
        errors = list(errors) or [message]
        super().__init__(message if len(errors) == 1 else
                         f"{len(errors)} config errors:\n" + "\n".join(f"  - {e}" for e in errors))
        self.errors = errors


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str, errors: list[str] | None = None) -> Any:
    """Check ``value`` against annotation ``tp`` and convert where lossless (int -> float, list -> tuple); the
    errors inside a nested section go to ``errors`` (``_build``), the others are raised."""
    where = f"config key '{key}' (from {source})"
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        if errors is None:
            return build_config(tp, value, key, source)
        return _build(tp, value, key, source, errors)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        value_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, value_tp, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads `4e-4` as a string; accept any text float() accepts.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Choices:
    values: tuple[Any, ...]
    items: bool   # the key holds a list, and each item is one of the values


def key_choices(cls: type, f: dataclasses.Field) -> Choices | None:
    """The values config key ``f`` (a field of ``cls``) accepts when they are a fixed set, from what checks them:
    ``f.metadata["choices"]`` (a set checked outside ``_coerce``), else the ``Literal[...]`` of its annotation,
    which ``_coerce`` enforces, also inside ``X | None`` and as the items of a list; None for any other key."""
    tp = get_type_hints(cls)[f.name]
    if get_origin(tp) in (Union, types.UnionType):
        options = [option for option in get_args(tp) if option is not type(None)]
        tp = options[0] if len(options) == 1 else tp
    items = get_origin(tp) in (list, tuple, Sequence)
    if items:
        tp = get_args(tp)[0] if get_args(tp) else Any
    if "choices" in f.metadata:
        return Choices(tuple(f.metadata["choices"]), items)
    if get_origin(tp) is Literal:
        return Choices(get_args(tp), items)
    return None


def build_config(cls: type[T], data: Mapping[str, Any], prefix: str = "", source: str = "a mapping") -> T:
    """A config dataclass from a plain mapping (e.g. a checkpoint's ``meta.json``), validated like a file;
    errors name ``prefix.key``; ``ConfigError`` listing every error."""
    errors: list[str] = []
    obj = _build(cls, data, prefix, source, errors)
    if errors:
        raise ConfigError(errors[0], errors)
    return obj


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unknown_key(cls: type, key: str, dotted: str, known: Sequence[str], source: str) -> str:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return (f"unknown config key '{dotted}' (from {source}): {hint}{cls.__name__} accepts: "
            f"{', '.join(sorted(known))}")


def _build(cls: type[T], data: Mapping[str, Any], prefix: str, source: str, errors: list[str]) -> T:
    """``cls`` from ``data``; every error is appended to ``errors`` and its key left at its default, so that the
    rest is still checked (the result is then only good for finding more errors)."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    start = len(errors)
    for key in sorted(set(data) - set(fields)):
        errors.append(_unknown_key(cls, str(key), _dotted(prefix, str(key)), list(fields), source))
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            continue
        hint = hints[name]
        key = _dotted(prefix, name)
        if "schema" in fields[name].metadata:
            # the section's type depends on sibling keys (the job's model section on its task)
            siblings = {f.name: data.get(f.name, f.default) for f in fields.values()}
            try:
                hint = fields[name].metadata["schema"](siblings)
            except (KeyError, ValueError) as err:
                errors.append(f"config section '{key}' (from {source}): {err.args[0] if err.args else err}")
                continue
        default = _section_default(fields[name])
        if default is not None and isinstance(value, Mapping):
            # a section names only the keys it changes: the rest keep this parent's defaults, which may differ
            # from the section class's own (e.g. COMETConfig's CLUB section)
            value = _merge(to_dict(default), value)
        before = len(errors)
        try:
            coerced = _coerce(value, hint, key, source, errors)
        except ConfigError as err:
            errors.extend(err.errors)
            continue
        if len(errors) == before:
            kwargs[name] = coerced
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # __post_init__ checks of a component
        if len(errors) == start:   # else it may only follow from a key left at its default above
            errors.append(f"config section '{prefix or cls.__name__}' (from {source}): {err}")
    try:
        return cls()
    except (TypeError, ValueError):
        return None


def _section_default(f: dataclasses.Field) -> Any:
    """The default instance of a nested config section (a dataclass built by the field's default_factory)."""
    if f.default_factory is dataclasses.MISSING:
        return None
    default = f.default_factory()
    return default if dataclasses.is_dataclass(default) else None


def _merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def to_dict(cfg: Any) -> Any:
    """Plain-python (YAML-safe) form of a config dataclass tree."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"a.b.c=4"`` -> ``{"a": {"b": {"c": 4}}}``; the value is parsed as YAML (so ``true``, ``1e-4``, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    dotted, raw = text.split("=", 1)
    if not dotted or any(not part for part in dotted.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value does not parse: {err}") from err
    tree: dict[str, Any] = {}
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} does not parse as YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    return dict(data)


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of ``cls`` <- YAML file <- ``key=value`` overrides, each layer validated with its source; one
    ``ConfigError`` lists every error of every layer.

    A mapping-valued key set in YAML replaces the default mapping (so a config can drop a modality);
    an override merges into the config resolved so far (``dims.video=512`` adds a key). Relative paths: the
    module docstring.
    """
    errors: list[str] = []
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = read_yaml(path)
        except ConfigError as err:
            errors.extend(err.errors)
    cfg = _build(cls, data, "", str(path) if path is not None else "defaults", errors)
    if cfg is not None:
        _paths_from_root(cfg)
    for text in overrides:
        try:
            update = parse_override(text)
        except ConfigError as err:
            errors.extend(err.errors)
            continue
        if cfg is None:
            continue
        before = len(errors)
        built = _build(cls, _merge(to_dict(cfg), update), "", f"override {text!r}", errors)
        if len(errors) == before:
            cfg = built
    if errors:
        raise ConfigError(errors[0], errors)
    return cfg



def from_root(value: str) -> str:
    """A path (or '::'-joined paths) of a config file, as the current directory reads it: relative ones are under
    ``REPO_ROOT`` (module docstring, "Relative paths")."""
    root = REPO_ROOT
    if not value or not (root / "launch").is_dir() or Path.cwd().resolve() == root:   # installed: no repository
        return value
    parts = []
    for part in value.split("::"):
        local = part and not part.startswith(("pipe:", "/")) and "://" not in part and not os.path.isabs(part)
        parts.append(str(root / part) if local else part)
    return "::".join(parts)


def _paths_from_root(cfg: Any, prefix: str = "") -> None:
    """The path fields of ``cfg`` that the file set or left at their defaults, read from the repository root."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = _dotted(prefix, f.name)
        if dataclasses.is_dataclass(value):
            _paths_from_root(value, key)
        elif f.metadata.get("path") and isinstance(value, str) and value not in PATH_WORDS.get(key, ()):
            object.__setattr__(cfg, f.name, from_root(value))


# values of path keys that are words, not paths
PATH_WORDS = {"run.resume": ("auto",)}
