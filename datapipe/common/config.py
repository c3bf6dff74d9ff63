"""Typed, keyword-only config dataclasses shared by every layer.

Every component owns a ``@dataclass(kw_only=True)`` subclass of :class:`Config`. Configs
validate themselves in ``__post_init__`` (raising :class:`ConfigError` with the field name),
serialise to plain dicts (logged to MLflow, written beside every output) and accept
command-line overrides such as ``optim.lr=3e-4``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Self

from datapipe.common.errors import ConfigError
from datapipe.common.files import write_json_atomic

__all__ = ["Config", "ConfigError", "check", "flatten"]


def check(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError(field, message) unless condition holds. For use in __post_init__."""
    if not condition:
        raise ConfigError(field, message)


@dataclasses.dataclass(kw_only=True)
class Config:
    """Base class: dict round trip, dotted overrides, JSON save."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, _prefix: str = "") -> Self:
        if not isinstance(data, dict):
            raise ConfigError(_prefix or cls.__name__, f"expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            shown = unknown[0] or '""'  # an empty key still needs a name in the message
            where = f"{_prefix}.{shown}" if _prefix else shown
            raise ConfigError(
                where, f"unknown field; valid fields of {cls.__name__}: {', '.join(sorted(fields))}"
            )
        kwargs = {}
        for name, value in data.items():
            path = f"{_prefix}.{name}" if _prefix else name
            kwargs[name] = _coerce(hints[name], value, path)
        try:
            return cls(**kwargs)
        except ConfigError as err:
            if not _prefix:
                raise
            raise err.prefixed(_prefix) from None

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> Self:
        """Return a copy with ``key.sub=value`` overrides applied and re-validated."""
        data = self.to_dict()
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError(item or "--set", "overrides look like 'section.field=value'")
            node = data
            parts = key.strip().split(".")
            if not all(parts):  # ".=", "a..b=1", " =1": no field to name
                raise ConfigError(item, "overrides look like 'section.field=value'")
            for i, part in enumerate(parts[:-1]):
                if not isinstance(node.get(part), dict):
                    raise ConfigError(".".join(parts[: i + 1]), "no such config section")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(key, f"unknown field; valid here: {', '.join(sorted(node))}")
            node[parts[-1]] = _parse_scalar(raw.strip())
        return type(self).from_dict(data)

    def save_json(self, path: str | Path) -> None:
        """Write atomically (temp name, then rename) so a reader never sees half a file."""
        write_json_atomic(path, self.to_dict())

    def flat(self) -> dict[str, Any]:
        """Flattened ``{'optim.lr': 1e-4, ...}`` view, e.g. for MLflow params."""
        return flatten(self.to_dict())


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _parse_scalar(raw: str) -> Any:
    """Parse a command-line value as JSON when it is JSON (numbers, true/false, null, lists), else a string."""
    try:
        return json.loads(raw)
    except ValueError:  # JSONDecodeError, or an integer of more digits than Python converts (4300)
        return raw


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if isinstance(value, Config):  # already built (e.g. a union member chosen by the parent)
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, Config):
        return hint.from_dict(value, _prefix=path)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as err:
                errors.append(err.message)
        raise ConfigError(path, "; ".join(errors) or f"cannot be {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(path, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, path) for v in value)
    if origin is dict or hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(path, f"expected true or false, got {value!r}")
    if hint is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)  # int(inf) / int(nan) raise, they do not compare
            or int(value) != value
        ):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(path, f"expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    return value
