"""Typed configs: frozen dataclass trees loaded from YAML presets plus `key.sub=value` overrides.

`load(cls, presets, overrides)`: the dataclass defaults, then the presets in order, then the
overrides. A preset holds only what it changes; everything else keeps the dataclass default. Unknown
keys and values of the wrong type are refused with the full dotted key. `to_dict` gives the
resolved config (printed at start, saved with runs); `flatten` gives `a.b.c -> value` pairs.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tnn.errors import ConfigError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    """A dataclass tree as plain dicts, lists and scalars (YAML/JSON safe)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def flatten(d: dict | Any, prefix: str = "") -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}` (dataclasses are converted first)."""
    if dataclasses.is_dataclass(d):
        d = to_dict(d)
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build `cls` from a (partial) dict, refusing unknown keys and wrong types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {where or '<root>'}: expected a mapping; got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in set(data) - set(names))  # YAML keys may be numbers
    if unknown:
        raise ConfigError(f"config: unknown key(s) {', '.join(where + k for k in unknown)}; "
                          f"known under {where or '<root>'}: {', '.join(names)}")
    kwargs = {k: _coerce(hints[k], _with_defaults(cls, k, v), where + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config {where or '<root>'}: {err}") from None


def _with_defaults(cls, name: str, value: Any) -> Any:
    """A partial mapping for a dataclass-valued field, completed by that field's default
    (so a preset that changes one nested key keeps the default factory's other values)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING \
        else field.default
    if isinstance(value, dict) and dataclasses.is_dataclass(default):
        return merge(to_dict(default), value)
    return value


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config {key}: expected a list; got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, key) for v in value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config {key}: expected float; got {value!r}")
    if tp in (int, str, bool) and not (isinstance(value, tp) and not
                                       (tp is int and isinstance(value, bool))):
        raise ConfigError(f"config {key}: expected {tp.__name__}; got {value!r}")
    return value


def parse_overrides(overrides: list) -> dict:
    """`['train.lr=0.01', 'model.hidden=[64,64]']` -> nested dict. A `key=value` string's value
    is parsed as YAML (`--set`); a `(key, value)` pair is taken as it is (a job's own options
    such as `--json 'out #1.json'`, which are strings, not YAML)."""
    out: dict = {}
    for item in overrides or []:
        if isinstance(item, tuple):
            (key, value), shown = item, f"{item[0]}={item[1]}"
        else:
            key, sep, raw = item.partition("=")
            shown = item
            if not sep or not key.strip():
                raise ConfigError(f"override {item!r}: expected key.sub=value")
            value = _yaml_value(raw, item)
        *parents, leaf = key.strip().split(".")
        if not all(p.strip() for p in (*parents, leaf)):
            raise ConfigError(f"override {shown!r}: empty part in the key {key.strip()!r}")
        node = out
        for depth, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {shown!r}: {'.'.join(parents[:depth + 1])} was set "
                                  "to a value by an earlier override, not a mapping")
        node[leaf] = value
    return out


def _yaml_value(raw: str, item: str):
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML "
                          f"({one_line(str(err))})") from None


def one_line(text: str) -> str:
    """A (YAML parser's multi-line) message on one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def merge(base: dict, extra: dict) -> dict:
    """Deep-merge `extra` into a copy of `base`."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path, search: str | Path | None = None) -> dict:
    """One YAML preset as a dict; a `path` that does not exist is looked up by its file name in
    `search` (so `--config two_stage.yaml` finds jobs/configs/two_stage.yaml from anywhere)."""
    path = Path(path)
    if not path.is_file() and search is not None and (Path(search) / path.name).is_file():
        path = Path(search) / path.name
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({one_line(str(err))})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: a config preset is a YAML mapping (key: value); got a "
                          f"{type(data).__name__}")
    return data or {}


def load(cls: type[T], presets: list[str | Path] | None = None,
         overrides: list[str] | None = None, *, search: str | Path | None = None) -> T:
    """Defaults of `cls`, then each YAML preset of `presets` in order (each holds only what it
    changes; `read_yaml`, looked up in `search` too), then the `key.sub=value` `overrides`."""
    if isinstance(presets, (str, Path)):
        raise TypeError("presets is a list of YAML files")
    data: dict = {}
    for preset in presets or []:
        data = merge(data, read_yaml(preset, search))
    return from_dict(cls, merge(data, parse_overrides(overrides or [])))
