"""Dataclasses from YAML mappings, with no silent defaults for typos. Model-agnostic.

``build(cls, data, source)`` makes ``cls`` (a dataclass whose fields may be dataclasses:
YAML sections) from a mapping. A key that is not a field raises :class:`ConfigError`
naming the source, the key, the close matches and the known keys; plain scalars are
converted to the field's type (YAML reads ``1e-4`` as a string). Used by the training
recipes (``train.common.config``), the annotate pipeline and every annotator's ``Options``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A config names a key that does not exist, or a value of the wrong kind."""


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def unknown_key_message(source: str, key: str, known, section: str = "") -> str:
    """'unknown config key X; did you mean Y? (known keys in S: ...)'."""
    known = sorted(known)
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return (f"{source}: unknown config key '{key}'{hint} "
            f"(known keys in '{section or '<root>'}': {', '.join(known)})")


def check_keys(data: dict, known, source: str, prefix: str = "") -> None:
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ConfigError(unknown_key_message(source, f"{prefix}{unknown[0]}", known,
                                              prefix.rstrip(".")))


def build(cls, data, source: str, prefix: str = ""):
    section = prefix.rstrip(".") or "<root>"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: section '{section}' must be a mapping, "
                          f"got {type(data).__name__}")
    types = field_types(cls)
    check_keys(data, types, source, prefix)
    kwargs = {}
    for name, value in data.items():
        typ = types[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = build(typ, value or {}, source, f"{prefix}{name}.")
        else:
            kwargs[name] = coerce(value, typ, source, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without a value
        raise ConfigError(f"{source}: section '{section}': {e}") from e


def _allows_none(typ) -> bool:
    return typ is type(None) or type(None) in typing.get_args(typ) or typ is Any


def _base(typ):
    """`int | None` -> int; anything not a plain optional scalar -> itself."""
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if typing.get_origin(typ) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return typ


def coerce(value, typ, source: str, key: str):
    """Plain scalars converted to the field's type; a wrong kind is a ConfigError."""
    if value is None:
        if _allows_none(typ):
            return None
        raise ConfigError(f"{source}: '{key}' may not be null")
    base = _base(typ)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if base is float and isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}") from None
    if base is int:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}") from None
    if base is str and not isinstance(value, str):
        raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
    return value
