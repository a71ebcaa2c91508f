"""Typed overrides of config dataclasses from ``key=value`` strings and mappings.

One place turns ``--set patch_k=4`` (CLI) and ``{"patch_k": 4}`` (YAML, Tune) into a
validated dataclass: unknown keys and values of the wrong type are user errors.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import yaml

from kdsearch.errors import UserError

ConfigT = TypeVar("ConfigT")


class _Loader(yaml.SafeLoader):
    """Safe YAML that also reads ``1e-3`` as a number (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text with :class:`_Loader`."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_assignments(assignments: Iterable[str]) -> dict[str, Any]:
    """Parse ``["k=v", ...]`` into a dict; values are read as YAML scalars/lists."""
    parsed: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {item!r}; for example --set lr=0.001")
        try:
            parsed[key.strip()] = yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise UserError(f"cannot read the value of --set {item!r}: {exc}") from exc
    return parsed


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, option)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{name} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            value = [value]
        items = list(value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise UserError(f"{name} needs {len(args)} values, got {items!r}")
            return tuple(_coerce(name, v, a) for v, a in zip(items, args))
        inner = args[0] if args else Any
        converted = [_coerce(name, v, inner) for v in items]
        return tuple(converted) if origin is tuple else converted
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{name} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise UserError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{name} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{name} must be a string, got {value!r}")
        return str(value)
    return value


def field_names(config_class: type) -> list[str]:
    """Names of a config dataclass's fields."""
    return [f.name for f in dataclasses.fields(config_class)]


def apply_overrides(config: ConfigT, overrides: Mapping[str, Any], *, what: str = "config") -> ConfigT:
    """Return a copy of dataclass ``config`` with ``overrides`` applied and type-checked.

    ``None`` values are dropped so unsampled search keys keep their defaults.
    """
    hints = typing.get_type_hints(type(config))
    known = set(field_names(type(config)))
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in known:
            raise UserError(f"unknown {what} field {key!r}; known fields: {', '.join(sorted(known))}")
        changes[key] = _coerce(key, value, hints[key])
    return dataclasses.replace(config, **changes)


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as a JSON-friendly dict (tuples become lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value
    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}
