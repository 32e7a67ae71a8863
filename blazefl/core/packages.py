"""Typed packages exchanged between server and clients, and their wire format.

Packages are plain dataclasses. Tensor fields travel through the IPC channel of the trainer
(shared memory, files, or plain references in threads); every other field must be a small
picklable value (int, float, str, ...). The same flattening is used to hash an uplink, so the
hash names exactly the bytes a client sent.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from blazefl.core.package_values import canonical_bytes, extract_tensors, fill_tensors, tensor_at

__all__ = [
    "DownlinkPackage",
    "UplinkPackage",
    "ClientTask",
    "ClientResult",
    "PackageLayout",
    "package_layout",
    "package_sha256",
    "DownlinkT",
    "UplinkT",
]

_ALIGN = 64  # byte alignment of every tensor inside an arena (cache line, SIMD friendly)


@dataclass
class DownlinkPackage:
    """Base class of what the server sends to the sampled clients each round.

    Subclass it as a dataclass with tensor and scalar fields.

    Example:
        >>> @dataclass
        ... class MyDownlink(DownlinkPackage):
        ...     model: torch.Tensor
    """


@dataclass
class UplinkPackage:
    """Base class of what one client sends back to the server after local work.

    Subclass it as a dataclass; tensor fields are moved by the trainer's IPC channel.

    Example:
        >>> @dataclass
        ... class MyUplink(UplinkPackage):
        ...     model: torch.Tensor
        ...     num_samples: int
    """


DownlinkT = TypeVar("DownlinkT", bound=DownlinkPackage)
UplinkT = TypeVar("UplinkT", bound=UplinkPackage)


@dataclass
class ClientTask:
    """One unit of client work: which client, in which round, from which RNG state.

    Attributes:
        round: the round being computed (1-based).
        cid: client id.
        rng: the client's RNG state tensors (see `RNGSuite.state_tensors`).
        state: the client's persistent algorithm state (stateful algorithms only).
        settings: this client's own settings for the round (`BaseServerHandler.client_settings`:
            JSON numbers, strings and booleans by name; empty when the server gives none).
    """

    round: int
    cid: int
    rng: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClientResult:
    """What the trainer yields per client, in sorted client-id order.

    Attributes:
        cid: client id.
        uplink: the client's uplink package.
        rng: the client's RNG state after its work (next round starts from it).
        state: the client's new persistent state, or None.
        sha256: hash of the uplink's canonical bytes (see `package_sha256`).
        trace: the client's step trace (`blazefl.core.step_trace`), or None.
        environment: where the client ran when that environment differs from the driver's
            (a Ray node allowed with `allow_mixed_env`): `{"node": label, field: the node's
            value, ...}` for each differing field; None where it ran in the driver's.
    """

    cid: int
    uplink: Any
    rng: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor] | None = None
    sha256: str = ""
    trace: dict[str, torch.Tensor] | None = None
    environment: dict[str, Any] | None = None


@dataclass(frozen=True)
class _TensorSlot:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    path: tuple[Any, ...] = ()  # below the field, for a tensor nested in a container

    def tensor(self, package: Any) -> torch.Tensor:
        value = getattr(package, self.name)
        return value if not self.path else tensor_at(value, self.path)


@dataclass(frozen=True)
class PackageLayout:
    """Where each tensor field of a package lives inside a flat byte arena.

    Attributes:
        cls: the package dataclass.
        tensors: (field, dtype, shape, byte offset, nbytes, path) per tensor, field order; a
            tensor nested in a field (a dict, list, tuple or dataclass) has its `path` there.
        scalars: the non-tensor fields and their values; a field holding nested tensors is
            kept as a skeleton with `TensorRef` placeholders.
        nbytes: arena bytes needed.
        nested: the fields kept as skeletons.
    """

    cls: type
    tensors: tuple[_TensorSlot, ...]
    scalars: dict[str, Any] = field(default_factory=dict)
    nbytes: int = 0
    nested: frozenset[str] = frozenset()

    def write(self, package: Any, arena: torch.Tensor) -> None:
        """Copy the package's tensors into `arena` (a 1-D uint8 tensor)."""
        for slot in self.tensors:
            src = slot.tensor(package).detach().reshape(-1)
            dst = arena[slot.offset : slot.offset + slot.nbytes]
            dst.view(slot.dtype).copy_(src)

    def write_file(self, package: Any, path: str | os.PathLike[str]) -> None:
        """Write the package's tensors to a file in arena layout, without an arena copy."""
        with open(path, "wb") as f:
            for slot in self.tensors:
                f.seek(slot.offset)
                t = slot.tensor(package).detach().contiguous().reshape(-1)
                f.write(t.view(torch.uint8).numpy().data)
            f.truncate(self.nbytes)

    def read(self, arena: torch.Tensor, copy: bool = False) -> Any:
        """Rebuild the package from `arena`; tensors are views unless `copy`."""
        values: dict[str, Any] = dict(self.scalars)
        tensors = []
        for slot in self.tensors:
            raw = arena[slot.offset : slot.offset + slot.nbytes]
            t = raw.view(slot.dtype).view(slot.shape)
            tensors.append(t.clone() if copy else t)
            if not slot.path:
                values[slot.name] = tensors[-1]
        for name in self.nested:
            values[name] = fill_tensors(values[name], tensors)
        return self.cls(**values)


def package_layout(package: Any) -> PackageLayout:
    """Compute the arena layout of a package dataclass instance.

    Args:
        package: a dataclass instance whose fields are tensors, picklable scalars, or dicts,
            lists, tuples and dataclasses holding tensors (e.g. a `state_dict`).

    Returns:
        The layout; `layout.nbytes` is the arena size it needs.

    Example:
        >>> layout = package_layout(pkg); arena = torch.empty(layout.nbytes, dtype=torch.uint8)
        >>> layout.write(pkg, arena); same = layout.read(arena)
    """
    if not dataclasses.is_dataclass(package):
        raise TypeError(f"packages must be dataclass instances, got {type(package).__name__}")
    slots: list[_TensorSlot] = []
    scalars: dict[str, Any] = {}
    nested: set[str] = set()
    offset = 0

    def add(name: str, value: torch.Tensor, path: tuple[Any, ...]) -> int:
        nonlocal offset
        nbytes = value.numel() * value.element_size()
        slots.append(_TensorSlot(name, value.dtype, tuple(value.shape), offset, nbytes, path))
        offset += -(-nbytes // _ALIGN) * _ALIGN
        return len(slots) - 1

    for f in dataclasses.fields(package):
        value = getattr(package, f.name)
        if isinstance(value, torch.Tensor):
            add(f.name, value, ())
            continue
        skeleton = extract_tensors(value, f.name, functools.partial(add, f.name))
        if skeleton is not value:
            nested.add(f.name)
        scalars[f.name] = skeleton
    return PackageLayout(type(package), tuple(slots), scalars, offset, frozenset(nested))


def package_sha256(package: Any) -> str:
    """SHA-256 of a package's canonical bytes: every field in declaration order.

    Tensors contribute name, dtype, shape and raw bytes; other fields their canonical JSON, or,
    for a value JSON cannot encode (tensors in a dict or list, tuples as dict keys, arrays,
    sets, dataclasses), its `canonical_bytes` (dict order does not matter). Equal packages
    give equal hashes on every execution mode.

    Args:
        package: a dataclass instance.

    Returns:
        Hex digest.

    Raises:
        ValueError: a field holds a value with no canonical bytes (one line naming it).
    """
    h = hashlib.sha256()
    for f in dataclasses.fields(package):
        value = getattr(package, f.name)
        if isinstance(value, torch.Tensor):
            t = value.detach().contiguous()
            h.update(f"{f.name}:{t.dtype}:{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
            continue
        try:
            text = json.dumps(value, sort_keys=True)
        except (TypeError, ValueError):  # not JSON: the canonical encoding, marked apart
            h.update(f"{f.name}~".encode() + canonical_bytes(value, f.name) + b";")
        else:  # JSON-encodable values hash exactly as they always have (pinned digests)
            h.update(f"{f.name}={text};".encode())
    return h.hexdigest()
