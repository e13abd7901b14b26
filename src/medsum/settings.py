"""Typed settings: dataclass fields that carry their help text, their bounds and the names reports give them,
and ``MethodConfig``, the base of every method's settings.

A leaf module (it imports nothing of medsum's but the errors): ``config`` builds the run config from these, and
each method module in ``medsum.methods`` declares its own settings with them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medsum.errors import MedsumError


@dataclass(frozen=True)
class Bound:
    """The values a numeric setting accepts: ``Bound(0, low_open=True)`` is > 0, ``Bound(0, 1, high_open=True)``
    is [0, 1)."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class Names:
    """What run names and reports call a setting; a name left out falls back to the key (see ``names_of``)."""

    run: str | None = None  # in study run names: r16, pt20, lr0.001 (default: the key's last part)
    short: str | None = None  # in report labels: "lora (r=16)" (default: the key's last part)
    title: str | None = None  # a table column or heading: "LoRA rank r" (default: the dotted key)
    axis: str | None = None  # a plot axis (default: the title)


def setting(default: Any, help: str | Callable[[], str], *, bound: Bound | None = None,
            names: Names | None = None, serve_max: float | None = None, **kwargs: Any) -> Any:
    """A dataclass field carrying its help text (a string, or a function for text generated from the method
    registry), so that ``--help`` and the README cannot drift from the code; ``bound`` is checked by config
    validation, ``serve_max`` caps what a request to the HTTP service may ask for (``serve_bound``)."""
    metadata = {"help": help, "bound": bound, "names": names or Names(), "serve_max": serve_max}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def help_of(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    return text() if callable(text) else text


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def bound_errors(section: str, settings: Any) -> list[str]:
    """Every field of ``settings`` outside its bound, or not finite, as ``section.key must be ..., got ...``."""
    errors = []
    for f in dataclasses.fields(settings):
        value, bound = getattr(settings, f.name), f.metadata.get("bound")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            errors.append(f"{section}.{f.name} must be finite, got {value}")
        elif bound is not None and not bound.holds(value):
            optional = type(None) in typing.get_args(typing.get_type_hints(type(settings))[f.name])
            errors.append(f"{section}.{f.name} must be {bound.describe()}{' or null' if optional else ''}, "
                          f"got {value}")
    return errors


def serve_bound(f: dataclasses.Field) -> Bound:
    """The bound of a request to the service: the config's, capped at ``serve_max``."""
    return dataclasses.replace(f.metadata["bound"], high=f.metadata["serve_max"])


# ---------------------------------------------------------------------------------------------- from plain data


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file; a syntax error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise MedsumError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and context_mark is not None:
            problem += f" ({context} started at line {context_mark.line + 1})"
        raise MedsumError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MedsumError(f"{path}: expected a mapping of config keys at the top level")
    return data


def _type_error(key: str, want: str, value: Any) -> str:
    return f"{key}: expected {want}, got {value!r}"


def coerce(key: str, annotation: Any, value: Any, errors: list[str]) -> Any:
    """Checks (and gently converts, e.g. '3e-4' -> 3e-4) one value against its annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, inner[0], value, errors)
    if value is None:
        errors.append(f"{key}: must not be null")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        errors.append(_type_error(key, "true or false", value))
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        errors.append(_type_error(key, "an integer", value))
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        errors.append(_type_error(key, "a number", value))
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        errors.append(_type_error(key, "a string", value))
    elif origin is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return [coerce(f"{key}[{i}]", args[0], v, errors) for i, v in enumerate(value)]
        errors.append(_type_error(key, "a list", value))
    else:
        return value
    return value


def build_dataclass(cls: type, values: dict, prefix: str, errors: list[str], unknown: Callable[[str], str]) -> Any:
    """Builds ``cls`` from a mapping; bad types, and unknown keys as ``unknown(dotted key)`` words them, are
    appended to ``errors``."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            # a misspelled section (`trian.max_steps`) is reported by its full keys, so the nearest can be suggested
            nested = flatten(value, f"{dotted}.") if isinstance(value, dict) and value else {dotted: value}
            errors.extend(unknown(k) for k in nested)
            continue
        kwargs[key] = coerce(dotted, hints[key], value, errors)
    return cls(**kwargs)


@dataclass
class MethodConfig:
    """Base of every method's settings; each method module subclasses it with its own fields and its name's
    default (the registry in ``medsum.methods`` lists the methods)."""

    name: str = setting("", "Adaptation method.")

    def validate(self) -> list[str]:
        """Checks that need more than one setting's bound (e.g. one setting depending on another)."""
        return []
