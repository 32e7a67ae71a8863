"""Hyper-parameter dataclasses that validate themselves and describe their config keys.

Every setting of an experiment is a field of a frozen dataclass declared with `param(...)`:
its default, bounds, choices, whether it changes result bytes, and a one-line doc. That
declaration is the single source of the config schema: the pipeline derives its keys,
defaults, validation, hash and DVC params from it, and an algorithm's own dataclass (say
`FedProxHParams`) joins the schema under the algorithm's section with no other edit.

Example:
    >>> @dataclass(frozen=True)
    ... class MyHParams:
    ...     mu: float = param(0.01, low=0.0, doc="proximal term weight")
    ...     def __post_init__(self) -> None:
    ...         validate(self)
    >>> MyHParams(mu=-1.0)
    Traceback (most recent call last):
    HParamError: mu must be >= 0.0, got -1.0
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "MAX_SAMPLES",
    "MAX_CLIENTS",
    "MAX_THREADS",
    "MAX_WORKERS",
    "MAX_ROUNDS",
    "INT_MAX",
    "HParamError",
    "param",
    "validate",
    "FieldSpec",
    "field_specs",
    "from_mapping",
]

T = TypeVar("T")

#: Largest integer any setting may hold unless a field says otherwise: seeds and counts must
#: fit the int64 that torch and numpy use, and larger values are always a typo.
INT_MAX = 2**63 - 1


#: Bounds on sizes and counts, checked before anything is allocated or started (a synthetic
#: CIFAR-shaped sample is 3 KB, so the largest synthetic set is 6 GB).
MAX_SAMPLES = 2_000_000
MAX_CLIENTS = 1_000_000
MAX_THREADS = 256
MAX_WORKERS = 256
MAX_ROUNDS = 1_000_000


class HParamError(ValueError):
    """A setting with a wrong type or value; the message names the key and the allowed range."""


@dataclass(frozen=True)
class FieldSpec:
    """What one setting accepts (read from its `param(...)` declaration)."""

    name: str
    type: type
    optional: bool
    default: Any
    low: float | None
    high: float | None
    low_open: bool
    choices: Callable[[], Iterable[str]] | None
    affects_bytes: bool
    doc: str
    high_open: bool = False

    def check(self, value: Any, key: str) -> Any:
        """Validate (and normalise int -> float) one value; `key` names it in messages."""
        if value is None:
            if self.optional:
                return None
            raise HParamError(f"{key} must be {_type_text(self.type)}, got null")
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, self.type) and (self.type is bool or not isinstance(value, bool))
        if not ok:
            raise HParamError(
                f"{key} must be {_type_text(self.type)}, got {value!r} ({type(value).__name__})"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise HParamError(f"{key} must be a finite number, got {value}")
        if self.type in (int, float):
            low, high = self.low, self.high if self.high is not None else INT_MAX
            if low is not None and (value <= low if self.low_open else value < low):
                raise HParamError(
                    f"{key} must be {'>' if self.low_open else '>='} {low}, got {value}"
                )
            if value >= high if self.high_open else value > high:
                raise HParamError(
                    f"{key} must be {'<' if self.high_open else '<='} {high}, got {value}"
                )
        if self.choices is not None:
            allowed = self.choices()
            valid = getattr(allowed, "valid", None)
            if not (valid(value) if callable(valid) else value in tuple(allowed)):
                text = getattr(allowed, "choices_text", None)
                shown = text() if callable(text) else ", ".join(allowed)
                raise HParamError(f"{key} must be {shown}; got {value!r}")
        return value


def _type_text(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        t, t.__name__
    )


def param(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: Callable[[], Iterable[str]] | None = None,
    affects_bytes: bool = True,
    doc: str = "",
) -> Any:
    """Declare a dataclass field that is a setting.

    Args:
        default: the default value (the default experiment's).
        low / high: inclusive bounds (`low_open=True` makes `low` exclusive, `high_open=True`
            makes `high` exclusive: `high=1.0, high_open=True` is "below 1"). Integers are
            bounded by `INT_MAX` unless `high` says less.
        choices: a callable returning the allowed names (a `Registry` accepts import paths
            too); called at validation time, so registries filled later count.
        affects_bytes: False for settings that never change result bytes (execution mode,
            worker count, round count): they stay out of the config hash and DVC params.
        doc: one line for `--help`-style listings.

    Returns:
        A `dataclasses.field` carrying the declaration as metadata.
    """
    meta = {
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "choices": choices,
        "affects_bytes": affects_bytes,
        "doc": doc,
    }
    return dataclasses.field(default=default, metadata={"blazefl": meta})


def _resolve(hint: Any) -> tuple[type, bool]:
    """(base type, optional) of an annotation like `int`, `float | None`."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def field_specs(cls: type) -> list[FieldSpec]:
    """The settings of a dataclass, in declaration order (fields without `param` are skipped)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("blazefl")
        if meta is None:
            continue
        base, optional = _resolve(hints[f.name])
        out.append(FieldSpec(f.name, base, optional, f.default, **meta))
    return out


def validate(obj: Any, prefix: str = "") -> None:
    """Check every `param` field of a dataclass instance (call it from `__post_init__`).

    Int values of float fields are converted in place (frozen dataclasses included).

    Raises:
        HParamError: the first invalid field, named `prefix + name`.
    """
    for spec in field_specs(type(obj)):
        value = spec.check(getattr(obj, spec.name), prefix + spec.name)
        if value is not getattr(obj, spec.name):
            object.__setattr__(obj, spec.name, value)


def from_mapping(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """Build `cls` from a config section, naming keys as `section.key` in every error.

    Raises:
        HParamError: unknown key, wrong type or value.
    """
    specs = {s.name: s for s in field_specs(cls)}
    for key in values:
        if key not in specs:
            known = ", ".join(f"{section}.{k}" for k in specs) or "none"
            raise HParamError(f"unknown config key {section}.{key}; known keys: {known}")
    checked = {k: specs[k].check(v, f"{section}.{k}") for k, v in values.items()}
    try:
        return cls(**checked)
    except HParamError as exc:  # cross-field checks in __post_init__
        raise HParamError(f"{section}: {exc}") from None
