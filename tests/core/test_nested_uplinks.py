"""Uplinks holding nested tensors (a state_dict, tuples, lists, named tuples, dataclasses) and
non-JSON metadata arrive intact, with the same hash, in every execution mode; a value with no
canonical bytes is one line naming its field. A workload holding a `torch.Generator` runs in
a process pool (workers used to die with "unable to resize file")."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
import torch

from blazefl.core import (
    BaseClientTrainer,
    ClientTrainingError,
    ProcessPoolClientTrainer,
    ThreadPoolClientTrainer,
    package_layout,
    package_sha256,
)
from tests.core.nested_workloads import (
    GeneratorWorkload,
    NestedUplink,
    NestedWorkload,
    ScalarDownlink,
    nested_downlink,
)

MODES = ["sequential", "threads", "shared_memory", "storage"]


def make(mode: str, workload: Any) -> BaseClientTrainer[Any, Any]:
    if mode == "sequential":
        return BaseClientTrainer(workload, seed=3)
    if mode == "threads":
        return ThreadPoolClientTrainer(workload, seed=3, num_workers=2)
    return ProcessPoolClientTrainer(workload, seed=3, num_workers=2, ipc_mode=mode)  # type: ignore[arg-type]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(
            same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__
        )
    return bool(a == b)


def rounds(mode: str) -> list[list[Any]]:
    with make(mode, NestedWorkload()) as trainer:
        return [list(trainer.train_round(nested_downlink(), [0, 2, 5], round=r)) for r in (1, 2)]


def test_nested_uplinks_are_identical_in_every_mode() -> None:
    reference = rounds("sequential")
    first = reference[0][0].uplink
    assert isinstance(first.state, OrderedDict) and isinstance(first.stats.count, np.int64)
    for mode in MODES[1:]:
        results = rounds(mode)
        for got_round, want_round in zip(results, reference, strict=True):
            for got, want in zip(got_round, want_round, strict=True):
                assert got.sha256 == want.sha256, mode
                assert same(got.uplink, want.uplink), mode
                assert package_sha256(got.uplink) == got.sha256, mode


def test_layout_round_trips_nested_tensors() -> None:
    with BaseClientTrainer(NestedWorkload(), seed=0) as trainer:
        uplink = next(iter(trainer.train_round(nested_downlink(), [1]))).uplink
    layout = package_layout(uplink)
    assert layout.nested == {"state", "pair", "history", "stats", "inner"}
    arena = torch.empty(layout.nbytes, dtype=torch.uint8)
    layout.write(uplink, arena)
    assert same(pickle.loads(pickle.dumps(layout)).read(arena, copy=True), uplink)


def test_dict_order_does_not_change_the_hash_and_one_byte_does() -> None:
    with BaseClientTrainer(NestedWorkload(), seed=0) as trainer:
        uplink: NestedUplink = next(iter(trainer.train_round(nested_downlink(), [1]))).uplink
    base = package_sha256(uplink)
    uplink.metadata = dict(reversed(list(uplink.metadata.items())))
    assert package_sha256(uplink) == base
    uplink.pair[1][0] += 1
    assert package_sha256(uplink) != base


@pytest.mark.parametrize("mode", ["sequential", "shared_memory"])
def test_a_value_with_no_canonical_bytes_is_one_line_naming_the_field(mode: str) -> None:
    trainer = make(mode, NestedWorkload(bad_metadata=True))
    with trainer, pytest.raises(ClientTrainingError) as info:
        list(trainer.train_round(nested_downlink(), [0]))
    message = str(info.value)
    assert "\n" not in message
    assert "'metadata'" in message and "Linear" in message


@pytest.mark.parametrize("mode", MODES)
def test_a_workload_holding_a_generator_runs_in_every_mode(mode: str) -> None:
    def run(mode: str) -> list[torch.Tensor]:
        workload = GeneratorWorkload(torch.Generator().manual_seed(5), torch.arange(4.0))
        with make(mode, workload) as trainer:
            return [
                r.uplink.value for r in trainer.train_round(ScalarDownlink(torch.ones(1)), [0, 3])
            ]

    assert all(map(torch.equal, run(mode), run("sequential")))
