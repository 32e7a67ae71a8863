"""Registries: look up algorithms, models and datasets by name, or a user's own by import path.

A built-in is registered under a short name (`fedavg`, `cnn`, `synthetic`); a researcher's own
is named in the config by import path, `package.module:attribute`, and imported on first use.
The same registry serves the library, the config schema (its names are the allowed choices) and
the CLI, so a list of choices exists in exactly one place.

Example:
    >>> MODELS = Registry[Callable[..., nn.Module]]("model")
    >>> MODELS.register("cnn", build_cnn)
    >>> MODELS.get("cnn") is build_cnn, MODELS.get("mypkg.nets:tiny_cnn")
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "RegistryError", "is_import_path", "import_object", "callable_accepting"]

T = TypeVar("T")

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class RegistryError(ValueError):
    """An unknown name or an import path that does not resolve; the message says the fix."""


def is_import_path(name: str) -> bool:
    """True for `package.module:attribute` (the syntax for user code in the config)."""
    return bool(_IMPORT_PATH.match(name))


_import_lock = threading.Lock()


def import_object(path: str, what: str) -> object:
    """Import `package.module:attr.sub` and return the attribute.

    The current working directory is put on `sys.path` first (as `python -m` does), so a
    user's own module next to params.yaml is found when the `blazefl` command runs there.

    Raises:
        RegistryError: malformed path, module not importable, attribute missing.
    """
    if not is_import_path(path):
        raise RegistryError(f"{what} {path!r} is not an import path like 'mypkg.module:Name'")
    module_name, _, attr = path.partition(":")
    with _import_lock:
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        try:
            obj: object = importlib.import_module(module_name)
        except ImportError as exc:
            raise RegistryError(
                f"{what} {path!r}: cannot import {module_name} ({exc}); run from the folder "
                "that holds the package, or install it"
            ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"{what} {path!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def callable_accepting(*keywords: str) -> Callable[[Any, str], Any]:
    """An `adapt` hook for registries of functions: the user's object must be callable with
    these keyword arguments (checked once, on import, instead of failing mid-run)."""

    def adapt(obj: Any, path: str) -> Any:
        try:
            inspect.signature(obj).bind(**dict.fromkeys(keywords))
        except (TypeError, ValueError):
            wanted = ", ".join(f"{k}=" for k in keywords)
            raise RegistryError(
                f"{path!r} must be a function accepting {wanted} (keyword arguments)"
            ) from None
        return obj

    return adapt


class Registry(Generic[T]):
    """Named built-ins plus import paths for user code.

    Args:
        kind: what the registry holds ("algorithm", "model", "dataset"), used in messages.
        adapt: applied once to an imported object (e.g. instantiate a class, check it).

    Iterating yields the built-in names in registration order; `name in registry` is True
    for built-ins only (import paths are checked by `get`).
    """

    def __init__(self, kind: str, adapt: Callable[[Any, str], T] | None = None) -> None:
        self.kind = kind
        self._adapt = adapt
        self._items: dict[str, T] = {}
        self._imported: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        """Add a built-in under `name` (a plain identifier); returns `obj`."""
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"{self.kind} name {name!r} must be lower-case letters, digits, _")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def names(self) -> tuple[str, ...]:
        """The built-in names, in registration order."""
        return tuple(self._items)

    def valid(self, name: str) -> bool:
        """True for a built-in name or any well-formed import path (resolved later)."""
        return name in self._items or is_import_path(name)

    def choices_text(self) -> str:
        return f"{', '.join(self._items)} or an import path like 'mypkg.module:Name'"

    def get(self, name: str) -> T:
        """The built-in called `name`, or the object at import path `name`.

        Raises:
            RegistryError: unknown name, or an import path that does not resolve.
        """
        if name in self._items:
            return self._items[name]
        if name in self._imported:
            return self._imported[name]
        if not is_import_path(name):
            raise RegistryError(f"unknown {self.kind} {name!r}; choose {self.choices_text()}")
        raw = import_object(name, self.kind)
        obj: T = self._adapt(raw, name) if self._adapt else raw  # type: ignore[assignment]
        self._imported[name] = obj
        return obj

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"
