"""Registries: look up algorithms, models and datasets by name, or a user's own by import path.

A built-in is registered under a short name (`fedavg`, `cnn`, `synthetic`); a researcher's own
is named in the config by import path, `package.module:attribute`, and imported on first use.
The same registry serves the library, the config schema (its names are the allowed choices) and
the CLI, so a list of choices exists in exactly one place. What an import path resolves to is
checked by kind (`adapt`, e.g. `function_accepting`) before anything of it is instantiated or
called: `subprocess:Popen` as an algorithm or `os:system` as a model is one line of error.

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
import traceback
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Generic, TypeVar

__all__ = [
    "Registry",
    "RegistryError",
    "is_import_path",
    "import_object",
    "function_accepting",
    "describe_kind",
]

T = TypeVar("T")

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class RegistryError(ValueError):
    """An unknown name or an import path that does not resolve; the message says the fix."""


def is_import_path(name: str) -> bool:
    """True for `package.module:attribute` (the syntax for user code in the config)."""
    return bool(_IMPORT_PATH.match(name))


# re-entrant: a user module may itself look up an import path while it is being imported
_import_lock = threading.RLock()


@contextmanager
def _cwd_on_sys_path() -> Iterator[bool]:
    """The current folder on `sys.path` for the duration of an import (as `python -m` does).

    Only the entry added here is taken out again: what the imported module itself does to
    `sys.path` is its own business. Yields whether the folder was added.
    """
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield added
    finally:
        if added:
            with suppress(ValueError):
                sys.path.remove(cwd)


def import_object(path: str, what: str) -> object:
    """Import `package.module:attr.sub` and return the attribute.

    The current working directory is on `sys.path` while the module is imported (as
    `python -m` does), so a user's own module next to params.yaml is found when the `blazefl`
    command runs there; `sys.path` is restored afterwards (see `Registry.get` for when the
    folder stays). A string that is not a well-formed import path is refused before anything
    is imported.

    Args:
        path: `package.module:attribute`, as the config names user code.
        what: the kind of object, for messages ("algorithm", "model", "dataset").

    Returns:
        The attribute.

    Raises:
        RegistryError: malformed path, module not importable or raising on import, attribute
            missing.

    Example:
        >>> import_object("os.path:join", "function") is os.path.join
        True
    """
    if not is_import_path(path):
        raise RegistryError(f"{what} {path!r} is not an import path like 'mypkg.module:Name'")
    module_name, _, attr = path.partition(":")
    with _import_lock, _cwd_on_sys_path():
        try:
            obj: object = importlib.import_module(module_name)
        except ImportError as exc:
            raise RegistryError(
                f"{what} {path!r}: cannot import {module_name} ({exc}); run from the folder "
                "that holds the package, or install it"
            ) from None
        except (Exception, SystemExit) as exc:  # the user's module is broken: one line
            raise RegistryError(
                f"{what} {path!r}: importing {module_name} raised {_one_line(exc)}; fix that module"
            ) from None
        # still on the path: a module `__getattr__` may import a submodule lazily
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise RegistryError(f"{what} {path!r}: {module_name} has no attribute {attr!r}")
            obj = getattr(obj, part)
    return obj


def _one_line(exc: BaseException) -> str:
    """`RuntimeError: boom (at mypkg/algo.py:12)`: the exception and the line that raised it
    (a syntax error's own line), bounded, on one line."""
    where = ""
    if isinstance(exc, SyntaxError):  # its str() carries the place already, in other words
        text = " ".join(str(exc.msg).split())[:300]
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else ""
    else:
        text = " ".join(str(exc).split())[:300]
    if not where and (frames := traceback.extract_tb(exc.__traceback__)):
        where = f"{frames[-1].filename}:{frames[-1].lineno}"
    cwd = os.getcwd() + os.sep
    where = where.removeprefix(cwd)
    line = f"{type(exc).__name__}: {text}" + (f" (at {where})" if where else "")
    return " ".join(line.split())


def _keep_cwd_for(module_name: str) -> None:
    """Leave the current folder on `sys.path` if `module_name` was imported from it.

    Process-pool workers (spawn, forkserver) start with a copy of this process's `sys.path`
    and unpickle the client workload by module name: a user's module found in the current
    folder is only importable there while the folder stays on the path. So once a user object
    from such a module has passed its kind check, the folder goes back where the import had it
    (first, as `python -m` puts it); refused or failed imports leave `sys.path` as it was.
    """
    cwd = os.getcwd()
    top = sys.modules.get(module_name.partition(".")[0])
    spec = getattr(top, "__spec__", None)
    if spec is None or cwd in sys.path:
        return
    # a package: its folder; a module: its file ("built-in" / "frozen" origins are no place)
    places = list(spec.submodule_search_locations or ())
    if spec.has_location and spec.origin and not places:
        places.append(spec.origin)
    inside = [p for p in places if os.path.dirname(os.path.abspath(p)) == cwd]
    if inside:
        with _import_lock:
            if cwd not in sys.path:
                sys.path.insert(0, cwd)


def describe_kind(obj: object) -> str:
    """What an object is, for a one-line message: its type's name, never its repr.

    Args:
        obj: anything an import path resolved to.

    Returns:
        "class Popen" for a class, else "a"/"an" and the type's name ("a function", "a module",
        "a builtin_function_or_method", "a partial"), reduced to identifier characters.

    Example:
        >>> describe_kind(print), describe_kind(dict)
        ('a builtin_function_or_method', 'class dict')
    """
    # type(), not isinstance(): a user's `__class__` property cannot change the answer
    is_class = issubclass(type(obj), type)
    name = (obj if is_class else type(obj)).__name__  # type: ignore[attr-defined]
    # one line, bounded: a class's __name__ is whatever string its author set
    safe = re.sub(r"[^\w.]", "?", str(name))[:80] or "?"
    if is_class:
        return f"class {safe}"
    return f"{'an' if safe[0] in 'aeiouAEIOU' else 'a'} {safe}"


def function_accepting(
    *keywords: str, subclass_of: type | None = None, subclass_name: str = ""
) -> Callable[[Any, str], Any]:
    """An `adapt` hook that admits only a plain Python function (or, with `subclass_of`, a
    subclass of it) callable with these keyword arguments.

    Checked on import, before anything is called: a builtin (`os:system`), a C function, a
    `functools.partial`, a module, an instance or an unrelated class (`subprocess:Popen`) is
    refused with one line naming the import path, what it resolved to and what it must be.

    Args:
        keywords: the keyword arguments the registry calls the object with.
        subclass_of: a base class whose subclasses are admitted too (`torch.nn.Module`).
        subclass_name: how messages name it (default: its module and qualified name).

    Returns:
        The hook, `adapt(obj, path) -> obj`.

    Example:
        >>> hook = function_accepting("num_classes", subclass_of=nn.Module)
        >>> MODELS = Registry[Callable[..., nn.Module]]("model", adapt=hook)
    """
    wanted = ", ".join(f"{k}=" for k in keywords)
    must = "a plain Python function (def)"
    if subclass_of is not None:
        base = subclass_name or f"{subclass_of.__module__}.{subclass_of.__qualname__}"
        must += f" or a subclass of {base}"
    must += f" accepting {wanted} (keyword arguments)"

    def adapt(obj: Any, path: str) -> Any:
        # type() is: a FunctionType cannot be subclassed, and isinstance() would trust a
        # user's `__class__` property
        admitted = type(obj) is types.FunctionType or (
            subclass_of is not None and issubclass(type(obj), type) and issubclass(obj, subclass_of)
        )
        if not admitted:
            raise RegistryError(f"{path!r} resolves to {describe_kind(obj)}; name {must}")
        try:
            inspect.signature(obj).bind(**dict.fromkeys(keywords))
        except (TypeError, ValueError):
            raise RegistryError(
                f"{path!r} ({describe_kind(obj)}) must accept {wanted} (keyword arguments)"
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
        _keep_cwd_for(name.partition(":")[0])  # only now: the object passed its kind check
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
