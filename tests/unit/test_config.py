"""Typed config loading: defaults <- YAML <- overrides, with errors that name the key and its source."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from trainer.configs.load import ConfigError, flatten, load_config, parse_override, to_dict


@dataclass
class Inner:
    size: int = 4
    rate: float = 0.5
    mode: Literal["joint", "sequential"] = "joint"
    tags: list[str] = field(default_factory=list)


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    dims: dict[str, int] = field(default_factory=lambda: {"audio": 128})
    path: Optional[str] = None


def test_defaults_yaml_and_overrides_layer(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: run\ninner:\n  size: 8\n  rate: 1\n")
    cfg = load_config(Outer, f, ["inner.mode=sequential", "dims.video=512", "inner.tags=[a, b]"])
    assert cfg.name == "run" and cfg.inner.size == 8
    assert isinstance(cfg.inner.rate, float) and cfg.inner.rate == 1.0  # int promoted to float
    assert cfg.inner.mode == "sequential" and cfg.inner.tags == ["a", "b"]
    assert cfg.dims == {"audio": 128, "video": 512}  # an override merges into the resolved mapping
    assert to_dict(cfg)["inner"]["size"] == 8
    assert flatten(to_dict(cfg))["inner.size"] == 8


@dataclass
class Derived(Outer):
    inner: Inner = field(default_factory=lambda: Inner(size=16, rate=2.0))


def test_a_partial_section_keeps_the_parents_section_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  rate: 3\n")
    assert (load_config(Derived, f).inner.size, load_config(Derived, f).inner.rate) == (16, 3.0)
    assert load_config(Derived, None, ["inner.mode=sequential"]).inner == Inner(16, 2.0, "sequential")


def test_yaml_mapping_replaces_default_mapping(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("dims:\n  text: 768\n")
    assert load_config(Outer, f).dims == {"text": 768}


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  sise: 8\n")
    with pytest.raises(ConfigError, match=r"inner\.sise.*c\.yaml"):
        load_config(Outer, f)


@pytest.mark.parametrize("override, pattern", [
    ("inner.size=abc", r"inner\.size.*integer"),
    ("inner.size=1.5", r"inner\.size.*integer"),
    ("inner.mode=parallel", r"inner\.mode.*not one of"),
    ("inner.rate=true", r"inner\.rate.*number"),
    ("nonsense.key=1", r"nonsense"),
    ("novalue", r"key=value"),
])
def test_bad_overrides_fail_with_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(Outer, None, [override])


def test_parse_override_yaml_values():
    assert parse_override("a.b=0.5") == {"a": {"b": 0.5}}
    assert load_config(Outer, None, ["inner.rate=1e-4"]).inner.rate == 1e-4  # YAML 1.1 reads it as text
    assert parse_override("a=null") == {"a": None}
    assert parse_override("a=[1,2]") == {"a": [1, 2]}


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
