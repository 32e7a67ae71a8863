"""`SHMHandle`, `process_tensors_in_object` and `reconstruct_from_shared_memory` keep the
original BlazeFL's semantics: move/replace modes, containers, circular references, depth."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from blazefl.core import SHMHandle, process_tensors_in_object, reconstruct_from_shared_memory
from blazefl.core.shared_memory import share_in_one_segment

Point = namedtuple("Point", ["x", "y"])


@dataclass
class Leaf:
    tensor: torch.Tensor
    tag: int


@dataclass
class Tree:
    weights: torch.Tensor
    extras: dict[str, Any]
    leaf: Leaf
    items: list[Any] = field(default_factory=list)
    back: Any = None


@dataclass(frozen=True)
class Frozen:
    tensor: torch.Tensor
    name: str


def tree() -> Tree:
    return Tree(
        weights=torch.arange(6.0).reshape(2, 3),
        extras={"lr": 0.1, "mask": torch.ones(3, dtype=torch.bool)},
        leaf=Leaf(torch.zeros(2), 7),
        items=[torch.full((2,), 3.0), Point(torch.ones(1), "y"), "text"],
    )


def tensors_of(obj: Tree) -> list[torch.Tensor]:
    return [obj.weights, obj.extras["mask"], obj.leaf.tensor, obj.items[0], obj.items[1].x]


def test_move_shares_every_tensor_in_place() -> None:
    obj = tree()
    assert process_tensors_in_object(obj, mode="move") is obj
    assert all(t.is_shared() for t in tensors_of(obj))


def test_replace_copies_with_handles_and_leaves_the_original_alone() -> None:
    obj = tree()
    receipt = process_tensors_in_object(obj, mode="replace")
    assert receipt is not obj and receipt.leaf is not obj.leaf
    assert isinstance(receipt.weights, SHMHandle)
    assert isinstance(receipt.extras["mask"], SHMHandle) and receipt.extras["lr"] == 0.1
    assert isinstance(receipt.leaf.tensor, SHMHandle) and receipt.leaf.tag == 7
    assert isinstance(receipt.items[1], Point) and isinstance(receipt.items[1].x, SHMHandle)
    assert receipt.items[2] == "text"
    assert all(isinstance(t, torch.Tensor) for t in tensors_of(obj))


def test_reconstruct_takes_tensors_from_the_buffer_and_the_rest_from_the_receipt() -> None:
    buffer = process_tensors_in_object(tree(), mode="move")
    receipt = process_tensors_in_object(tree(), mode="replace")
    receipt.leaf.tag = 99  # set by the worker
    receipt.extras["loss"] = 0.5  # metadata the buffer never had
    package = reconstruct_from_shared_memory(receipt, buffer)
    assert package.leaf.tag == 99 and package.extras["loss"] == 0.5
    assert package.weights is buffer.weights and package.items[1].x is buffer.items[1].x
    assert not any(isinstance(t, SHMHandle) for t in tensors_of(package))


def test_circular_and_shared_references_survive_both_directions() -> None:
    obj = tree()
    obj.back = obj
    obj.items.append(obj.extras)  # shared, not circular
    process_tensors_in_object(obj, mode="move")
    receipt = process_tensors_in_object(obj, mode="replace")
    assert receipt.back is receipt
    assert receipt.items[-1] is receipt.extras
    package = reconstruct_from_shared_memory(receipt, obj)
    assert package.back is package and package.weights is obj.weights


def test_max_depth_limits_the_walk() -> None:
    obj = tree()
    # level 0 the object, 1 its __dict__, 2 the fields: a top-level tensor is still replaced,
    # a container at the last level is kept as it is
    receipt = process_tensors_in_object(obj, mode="replace", max_depth=2)
    assert isinstance(receipt.weights, SHMHandle)
    assert receipt.leaf is obj.leaf and isinstance(receipt.leaf.tensor, torch.Tensor)
    calls = []
    original = torch.Tensor.share_memory_
    try:
        torch.Tensor.share_memory_ = lambda self: calls.append(self) or self  # type: ignore[method-assign]
        process_tensors_in_object(obj, mode="move", max_depth=2)
    finally:
        torch.Tensor.share_memory_ = original  # type: ignore[method-assign]
    assert len(calls) == 1  # only `weights` is within reach


def test_frozen_dataclasses_and_tuples_are_copied() -> None:
    receipt = process_tensors_in_object((Frozen(torch.ones(1), "f"), 3), mode="replace")
    assert isinstance(receipt, tuple) and receipt[1] == 3
    assert isinstance(receipt[0].tensor, SHMHandle) and receipt[0].name == "f"
    back = reconstruct_from_shared_memory(receipt, (Frozen(torch.ones(1) * 2, "x"), 0))
    assert torch.equal(back[0].tensor, torch.full((1,), 2.0)) and back[0].name == "f"


def test_bad_input_is_one_line() -> None:
    with pytest.raises(ValueError, match="mode must be 'move' or 'replace'"):
        process_tensors_in_object(tree(), mode="copy")  # type: ignore[arg-type]
    receipt = process_tensors_in_object(tree(), mode="replace")
    with pytest.raises(ValueError, match="prepare_uplink_package_buffer"):
        reconstruct_from_shared_memory(receipt, Tree(torch.ones(1), {}, Leaf(torch.ones(1), 0)))
    assert SHMHandle() == SHMHandle()


def test_share_in_one_segment_keeps_objects_and_values() -> None:
    buffers = [tree() for _ in range(3)]
    buffers[0].weights = torch.randn(5, 3).t()  # non-contiguous
    before = [[t.clone() for t in tensors_of(b)] for b in buffers]
    ids = [[id(t) for t in tensors_of(b)] for b in buffers]
    share_in_one_segment(buffers)
    storages = {t.untyped_storage().data_ptr() for b in buffers for t in tensors_of(b)}
    assert len(storages) == 1  # one segment for all of them
    for b, values, identities in zip(buffers, before, ids, strict=True):
        assert [id(t) for t in tensors_of(b)] == identities
        assert all(t.is_shared() for t in tensors_of(b))
        assert all(map(torch.equal, tensors_of(b), values))
    share_in_one_segment([])  # nothing to do
