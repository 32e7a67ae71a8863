"""Tensors of arbitrary Python objects in shared memory: the original BlazeFL's helpers.

An original-style process-pool worker (`ProcessPoolClientTrainer` with a static `worker`)
returns its uplink without copying tensor bytes through the pipe: the parent preallocates a
buffer package whose tensors live in shared memory (`process_tensors_in_object(buffer,
"move")`), the worker copies its results into that buffer and returns a *receipt*, the same
object with every tensor replaced by an `SHMHandle` (`process_tensors_in_object(package,
"replace")`), and the parent puts the two back together (`reconstruct_from_shared_memory`).

Objects are walked through lists, tuples, dicts and instance `__dict__`s (dataclasses
included), at most `max_depth` levels deep, and circular references are followed once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch

__all__ = [
    "SHMHandle",
    "process_tensors_in_object",
    "reconstruct_from_shared_memory",
    "share_in_one_segment",
]

T = TypeVar("T")
_MISSING: Any = object()  # "the buffer has nothing at this place"


@dataclass(frozen=True)
class SHMHandle:
    """Placeholder for a tensor that travels through shared memory instead of the pipe.

    It carries nothing: its position in the receipt names the tensor of the buffer package
    that holds the bytes.

    Example:
        >>> receipt = process_tensors_in_object(package, mode="replace")
        >>> isinstance(receipt.model_parameters, SHMHandle)
        True
    """


def process_tensors_in_object(obj: T, mode: Literal["move", "replace"], max_depth: int = 10) -> T:
    """Move every tensor of `obj` to shared memory, or copy `obj` with tensors replaced.

    Args:
        obj: any object; lists, tuples, dicts and instance `__dict__`s are walked.
        mode: "move" calls `share_memory_()` on every tensor, in place, and returns `obj`
            itself; "replace" returns a copy of `obj` (`obj` is untouched) where every tensor
            is an `SHMHandle` and every other value is kept.
        max_depth: how many container levels to walk (`obj` is level 0, its `__dict__` 1, the
            fields 2, ...); a tensor at the last level is still handled, a container there is
            kept as it is.

    Returns:
        `obj` ("move") or its tensor-free receipt ("replace").

    Raises:
        ValueError: an unknown `mode`.

    Example:
        >>> buffer = process_tensors_in_object(make_buffer(), mode="move")
        >>> receipt = process_tensors_in_object(result, mode="replace")
    """
    if mode == "move":
        _move(obj, max_depth)
        return obj
    if mode == "replace":
        result: T = _Replacer(max_depth).visit(obj, 0)
        return result
    raise ValueError(f"mode must be 'move' or 'replace', got {mode!r}")


def _move(obj: Any, max_depth: int) -> None:
    for tensor in _tensors(obj, max_depth):
        tensor.share_memory_()


def _tensors(obj: Any, max_depth: int) -> list[torch.Tensor]:
    """Every distinct tensor reachable from `obj` within `max_depth` levels, in walk order."""
    seen: set[int] = set()
    found: list[torch.Tensor] = []
    # an explicit stack instead of recursion: deep but legal structures never hit the
    # interpreter's recursion limit
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        current, depth = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, torch.Tensor):
            found.append(current)
        elif depth < max_depth:
            stack.extend((child, depth + 1) for child in reversed(_children(current)))
    return found


def share_in_one_segment(objs: list[Any], max_depth: int = 10) -> None:
    """Like `process_tensors_in_object(obj, "move")` for every object of `objs`, with one
    shared-memory segment for all their tensors instead of one per tensor.

    Each CPU tensor keeps its identity, shape and values; its data moves into the segment
    (`Tensor.set_`). Creating a segment costs about as much for 250 KB as for 25 MB, and a
    process that receives many of these tensors opens one segment instead of many.

    Args:
        objs: the objects (e.g. one uplink buffer per client).
        max_depth: as for `process_tensors_in_object`.
    """
    tensors = [
        t
        for obj in objs
        for t in _tensors(obj, max_depth)
        if t.device.type == "cpu" and not t.is_shared()
    ]
    offsets, total = [], 0
    for t in tensors:
        offsets.append(total)
        total += -(-t.numel() * t.element_size() // 64) * 64  # 64-byte aligned slots
    if not tensors:
        return
    storage = torch.empty(total, dtype=torch.uint8).share_memory_().untyped_storage()
    with torch.no_grad():
        for t, offset in zip(tensors, offsets, strict=True):
            values = t.detach().clone()
            contiguous = values.stride()
            t.set_(storage, offset // t.element_size(), values.shape, contiguous)
            t.copy_(values)


def _children(obj: Any) -> list[Any]:
    if isinstance(obj, list | tuple):
        return list(obj)
    if isinstance(obj, dict):
        return list(obj.values())
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return [obj.__dict__]
    return []


class _Replacer:
    """One "replace" walk; `memo` maps an original object's id to its copy, so shared and
    circular references come out shared and circular."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.memo: dict[int, Any] = {}
        self.keep: list[Any] = []  # keeps originals alive so their ids stay unique

    def visit(self, obj: Any, depth: int) -> Any:
        if isinstance(obj, torch.Tensor):
            return SHMHandle()
        if id(obj) in self.memo:
            return self.memo[id(obj)]
        if depth >= self.max_depth:
            return obj
        self.keep.append(obj)
        if isinstance(obj, list):
            out: list[Any] = []
            self.memo[id(obj)] = out
            out.extend(self.visit(item, depth + 1) for item in obj)
            return out
        if isinstance(obj, tuple):
            items = [self.visit(item, depth + 1) for item in obj]
            # a namedtuple is rebuilt from its fields, a plain tuple from an iterable
            rebuilt = type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
            self.memo[id(obj)] = rebuilt
            return rebuilt
        if isinstance(obj, dict):
            new: dict[Any, Any] = {}
            self.memo[id(obj)] = new
            for key, value in obj.items():
                new[key] = self.visit(value, depth + 1)
            return new
        if hasattr(obj, "__dict__") and not isinstance(obj, type):
            clone = copy.copy(obj)
            self.memo[id(obj)] = clone
            # bypasses __setattr__, so frozen dataclasses are copied too
            clone.__dict__.update(self.visit(obj.__dict__, depth + 1))
            return clone
        return obj


def reconstruct_from_shared_memory(handle_obj: T, shm_obj: T) -> T:
    """Put a receipt and its shared-memory buffer back together.

    Both objects are walked side by side: where `handle_obj` holds an `SHMHandle`, the value
    at the same place in `shm_obj` (the tensor in shared memory) is taken; everything else
    comes from `handle_obj`, so scalars and metadata set by the worker are kept.

    Args:
        handle_obj: the receipt returned by a worker.
        shm_obj: the buffer package whose tensors the worker filled.

    Returns:
        A new object shaped like `handle_obj` with real tensors.

    Raises:
        ValueError: the two objects do not have the same shape where a handle is.

    Example:
        >>> package = reconstruct_from_shared_memory(receipt, buffer)
    """
    memo: dict[int, Any] = {}

    def walk(handle: Any, shm: Any) -> Any:
        if isinstance(handle, SHMHandle):
            if shm is _MISSING:
                raise ValueError(
                    "the receipt has an SHMHandle where the shared-memory buffer has no value: "
                    "give prepare_uplink_package_buffer a tensor in every field the worker "
                    "returns as a handle"
                )
            return shm
        if id(handle) in memo:
            return memo[id(handle)]
        if isinstance(handle, list):
            out: list[Any] = []
            memo[id(handle)] = out
            out.extend(walk(h, s) for h, s in _zip(handle, shm))
            return out
        if isinstance(handle, tuple):
            items = [walk(h, s) for h, s in _zip(handle, shm)]
            rebuilt = type(handle)(*items) if hasattr(handle, "_fields") else type(handle)(items)
            memo[id(handle)] = rebuilt
            return rebuilt
        if isinstance(handle, dict):
            new: dict[Any, Any] = {}
            memo[id(handle)] = new
            for key, value in handle.items():
                new[key] = walk(value, _item(shm, key))
            return new
        if hasattr(handle, "__dict__") and not isinstance(handle, type):
            clone = copy.copy(handle)
            memo[id(handle)] = clone
            clone.__dict__.update(walk(handle.__dict__, getattr(shm, "__dict__", _MISSING)))
            return clone
        return handle

    result: T = walk(handle_obj, shm_obj)
    return result


def _zip(handle: Any, shm: Any) -> Any:
    if isinstance(shm, list | tuple) and len(shm) == len(handle):
        return zip(handle, shm, strict=True)
    # no matching buffer here: fine unless a handle below needs one (walk says so)
    return ((h, _MISSING) for h in handle)


def _item(shm: Any, key: Any) -> Any:
    if not isinstance(shm, dict):
        return _MISSING  # no buffer here: only a handle below it would need one
    return shm.get(key, _MISSING)
