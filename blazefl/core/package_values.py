"""Nested package fields: tensors inside containers, and canonical hashing of any field.

A package field may hold tensors inside dicts (a `state_dict`), lists, tuples (named tuples
too) and nested dataclasses. `extract_tensors` pulls them out into layout slots and leaves a
skeleton with `TensorRef` placeholders, which travels with the layout's scalars and is filled
back in by `fill_tensors`. `canonical_bytes` encodes any such value for `package_sha256`.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["TensorRef", "canonical_bytes", "extract_tensors", "fill_tensors", "tensor_at"]

_MAX_DEPTH = 64  # deeper than any sane package; a cycle ends here with one line


@dataclass(frozen=True)
class TensorRef:
    """Placeholder for the tensor of layout slot `index` inside a nested field's skeleton."""

    index: int


def _is_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def extract_tensors(
    value: Any, field: str, add: Callable[[torch.Tensor, tuple[Any, ...]], int]
) -> Any:
    """`value` with every nested tensor replaced by `TensorRef(add(tensor, path))`.

    Args:
        value: a field's value (not itself a tensor).
        field: the field's name (for error messages).
        add: records a tensor found at `path` (keys/indices/attribute names below the field)
            and returns its slot index.

    Returns:
        `value` itself when it holds no tensor, else a rebuilt copy holding `TensorRef`s.
    """

    def walk(obj: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(obj, torch.Tensor):
            return TensorRef(add(obj, path))
        if len(path) > _MAX_DEPTH:
            raise ValueError(
                f"package field {field!r} nests deeper than {_MAX_DEPTH} levels (a cycle?): "
                "flatten it"
            )
        if isinstance(obj, dict):
            items = {k: walk(v, (*path, k)) for k, v in obj.items()}
            if all(items[k] is obj[k] for k in obj):
                return obj
            clone = copy.copy(obj)  # keeps OrderedDict / defaultdict and their settings
            clone.clear()
            clone.update(items)
            return clone
        if isinstance(obj, list | tuple):
            new = [walk(v, (*path, i)) for i, v in enumerate(obj)]
            if all(a is b for a, b in zip(new, obj, strict=True)):
                return obj
            if isinstance(obj, list):
                return new
            return type(obj)(*new) if hasattr(obj, "_fields") else type(obj)(new)
        if _is_instance(obj):
            names = [f.name for f in dataclasses.fields(obj)]
            values = {n: walk(getattr(obj, n), (*path, n)) for n in names}
            if all(values[n] is getattr(obj, n) for n in names):
                return obj
            clone = copy.copy(obj)
            for name, v in values.items():
                object.__setattr__(clone, name, v)  # frozen dataclasses too
            return clone
        return obj

    return walk(value, ())


def fill_tensors(skeleton: Any, tensors: list[torch.Tensor]) -> Any:
    """The skeleton with every `TensorRef(i)` replaced by `tensors[i]`."""
    if isinstance(skeleton, TensorRef):
        return tensors[skeleton.index]
    if isinstance(skeleton, dict):
        clone = copy.copy(skeleton)
        clone.clear()
        clone.update({k: fill_tensors(v, tensors) for k, v in skeleton.items()})
        return clone
    if isinstance(skeleton, list):
        return [fill_tensors(v, tensors) for v in skeleton]
    if isinstance(skeleton, tuple):
        new = [fill_tensors(v, tensors) for v in skeleton]
        return type(skeleton)(*new) if hasattr(skeleton, "_fields") else type(skeleton)(new)
    if _is_instance(skeleton):
        clone = copy.copy(skeleton)
        for f in dataclasses.fields(skeleton):
            object.__setattr__(clone, f.name, fill_tensors(getattr(skeleton, f.name), tensors))
        return clone
    return skeleton


def tensor_at(value: Any, path: tuple[Any, ...]) -> torch.Tensor:
    """The tensor at `path` below a field's value (as recorded by `extract_tensors`)."""
    for key in path:
        value = value[key] if isinstance(value, dict | list | tuple) else getattr(value, key)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected a tensor at {path!r}, got {type(value).__name__}")
    return value


def canonical_bytes(value: Any, field: str) -> bytes:
    """A canonical encoding of `value` for hashing: equal values give equal bytes.

    Tensors and numpy arrays contribute dtype, shape and the sha256 of their bytes; dicts and
    sets are ordered by their members' encodings, so insertion order does not matter; lists,
    tuples and dataclasses keep their order; numbers, strings and None are JSON.

    Raises:
        ValueError: a value of another type (one line naming `field`).
    """

    def enc(obj: Any, depth: int) -> bytes:
        if depth > _MAX_DEPTH:
            raise ValueError(
                f"package field {field!r} nests deeper than {_MAX_DEPTH} levels (a cycle?): "
                "flatten it"
            )
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            raw = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().data).digest()
            return f"T{t.dtype}{tuple(t.shape)}".encode() + raw
        if isinstance(obj, np.ndarray):
            raw = hashlib.sha256(np.ascontiguousarray(obj).view(np.uint8).data).digest()
            return f"A{obj.dtype.str}{obj.shape}".encode() + raw
        if isinstance(obj, np.generic):
            return enc(obj.item(), depth + 1)
        if isinstance(obj, enum.Enum) and not isinstance(obj, str | int):
            return f"E{type(obj).__qualname__}.{obj.name}".encode()
        if obj is None or isinstance(obj, bool | int | float | str):
            return b"J" + json.dumps(obj).encode()
        if isinstance(obj, bytes | bytearray):
            return b"B" + bytes(obj)
        if isinstance(obj, dict):
            items = sorted(_framed(enc(k, depth + 1)) + enc(v, depth + 1) for k, v in obj.items())
            return b"D" + b"".join(_framed(i) for i in items)
        if isinstance(obj, set | frozenset):
            return b"S" + b"".join(sorted(_framed(enc(v, depth + 1)) for v in obj))
        if isinstance(obj, list | tuple):
            tag = b"L" if isinstance(obj, list) else b"U"
            return tag + b"".join(_framed(enc(v, depth + 1)) for v in obj)
        if _is_instance(obj):
            parts = (
                _framed(f.name.encode()) + _framed(enc(getattr(obj, f.name), depth + 1))
                for f in dataclasses.fields(obj)
            )
            return f"C{type(obj).__qualname__}".encode() + b"".join(parts)
        raise ValueError(
            f"package field {field!r} holds a {type(obj).__name__}, which has no canonical "
            "bytes to hash: use tensors, arrays, numbers, strings, bytes, lists, tuples, dicts, "
            "sets or dataclasses"
        )

    return enc(value, 0)


def _framed(data: bytes) -> bytes:
    """Length-prefixed, so concatenations cannot be confused."""
    return len(data).to_bytes(8, "little") + data
