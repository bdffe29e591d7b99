"""Configs in and out: dataclasses from nested dicts and YAML files, every key checked, and back.

:func:`load_config` builds a validated config dataclass (default
:class:`~gigastream.train.config.RunConfig`) from its defaults < a dict or YAML file <
overrides (command-line flags); a typo at any depth is one error naming the key and the
closest valid one. :func:`to_dict` / :func:`dump_yaml` write a config back as plain types.

Example:
    >>> config = load_config({"train": {"epochs": 3}}, source="example")
    >>> config.train.epochs, config.model.head
    (3, 'topk')
    >>> load_config({"train": {"epocs": 3}}, source="example")
    Traceback (most recent call last):
    ...
    gigastream.train.config.ConfigError: example: unknown key 'train.epocs'; did you mean 'train.epochs'?
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Any

from gigastream.train.config import ConfigError, RunConfig


def _is_dataclass_type(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, kind: Any, key: str, source: str) -> Any:
    """``value`` converted to the annotated type ``kind`` (ints to floats, ...)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None:
            return None
        for option in options:
            try:
                return _coerce(value, option, key, source)
            except ConfigError:
                continue
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
        raise ConfigError(f"{source}: '{key}' must be {names}, got {value!r}")
    if _is_dataclass_type(kind):
        if isinstance(kind, type) and isinstance(value, kind):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping of settings, got {value!r}")
        return _build(kind, value, f"{key}.", source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        (item,) = typing.get_args(kind)[:1] or (Any,)
        return [_coerce(v, item, key, source) for v in value]
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if kind is Any:
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. precision: 32
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
        return value
    return value


def _check_keys(cls: type, values: dict[str, Any], prefix: str, source: str) -> None:
    """ConfigError naming the first unknown key and the closest valid one."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in values if k not in names]
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else f" (valid: {', '.join(names)})"
        raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")


def _section_default(spec: dataclasses.Field, base: Any) -> Any:
    """The config a nested section overlays: ``base``'s, else the field's own default."""
    if base is not None:
        return getattr(base, spec.name)
    return spec.default_factory() if spec.default_factory is not MISSING else None


def _build(cls: type, values: dict[str, Any], prefix: str, source: str, base: Any = None) -> Any:
    """An instance of dataclass ``cls`` from defaults (``base``'s, else the class's) overlaid
    with ``values``."""
    hints = _field_types(cls)
    _check_keys(cls, values, prefix, source)
    specs = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    if base is not None:
        kwargs = {n: copy.deepcopy(getattr(base, n)) for n, f in specs.items() if f.init}
    for name, value in values.items():
        kind = hints[name]
        default = _section_default(specs[name], base)
        if isinstance(value, dict) and _is_dataclass_type(kind) and default is not None:
            # a section overlays the field's own default (e.g. the run's default model)
            nested = {
                k: v
                for k, v in dataclasses.asdict(default).items()
                if k in {f.name for f in dataclasses.fields(kind) if f.init}
            }
            if (
                value.get("head", nested.get("head")) != nested.get("head")
                and "head_options" in nested
            ):
                nested["head_options"] = {}  # another head: its own defaults, not the default's
            nested.update(value)
            _check_keys(kind, value, f"{prefix}{name}.", source)
            value = nested
        kwargs[name] = _coerce(value, kind, f"{prefix}{name}", source)
    return cls(**kwargs)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of two nested dicts (``override`` wins; ``None`` values are ignored)."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, dict):
            out[key] = merge(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file (``yaml.safe_load``); errors name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_config(
    values: dict[str, Any] | str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    source: str | None = None,
    cls: type | None = None,
    base: Any = None,
) -> Any:
    """A validated config from defaults < ``values`` (a dict or YAML file) < ``overrides``.

    Args:
        values: settings as a nested dict, or a YAML file path.
        overrides: settings that win over ``values`` (e.g. from command-line flags;
            ``None`` entries are ignored).
        source: name used in error messages (default: the file, or ``config``).
        cls: the config dataclass (default :class:`RunConfig`).
        base: an instance of ``cls`` whose values are the defaults (default: ``cls``'s own
            defaults), e.g. the settings of a command.

    Raises:
        ConfigError: an unknown key (with the closest valid key), a wrongly typed or
            impossible value.
    """
    cls = cls or RunConfig
    if isinstance(values, (str, Path)):
        source = source or str(values)
        values = read_yaml(values)
    source = source or "config"
    config = _build(cls, merge(values or {}, overrides or {}), "", source, base)
    if hasattr(config, "validate"):
        config.validate()
    return config


def to_dict(config: Any) -> Any:
    """A config as plain YAML/JSON types (NaN/inf as ``None``, paths as strings)."""
    from gigastream.train.files import jsonable

    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return jsonable(config)


def dump_yaml(config: Any, path: str | Path) -> Path:
    """Write a config as YAML (atomically)."""
    import yaml

    from gigastream.train.files import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


__all__ = ["dump_yaml", "load_config", "merge", "read_yaml", "to_dict"]
