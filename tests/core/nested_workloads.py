"""Workloads whose uplinks hold nested tensors and non-JSON values, and a workload holding a
`torch.Generator` (process-pool workers import these classes by name)."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from blazefl.core import ClientTask, DownlinkPackage, UplinkPackage

Stats = namedtuple("Stats", ["mean", "count"])


@dataclass
class Inner:
    grad: torch.Tensor
    note: str


@dataclass
class NestedDownlink(DownlinkPackage):
    weights: dict[str, torch.Tensor]


@dataclass
class NestedUplink(UplinkPackage):
    cid: int
    state: dict[str, torch.Tensor]  # a state_dict (an OrderedDict)
    pair: tuple[torch.Tensor, torch.Tensor]
    history: list[torch.Tensor]
    stats: Stats
    inner: Inner
    metadata: dict[Any, Any] = field(default_factory=dict)


class NestedWorker:
    def __init__(self, workload: NestedWorkload) -> None:
        self.workload = workload
        self.model = nn.Linear(3, 2)

    def train(self, task: ClientTask, payload: NestedDownlink, rng: Any) -> tuple[Any, None]:
        self.model.load_state_dict(payload.weights)
        noise = torch.randn(2, 3, generator=rng.torch_cpu)
        with torch.no_grad():
            self.model.weight.add_(noise)
        big = torch.arange(self.workload.history_size, dtype=torch.float64) * task.cid
        uplink = NestedUplink(
            cid=task.cid,
            # cloned: the worker's model is reused by its next client
            state=OrderedDict((k, v.clone()) for k, v in self.model.state_dict().items()),
            pair=(noise.sum(0), torch.tensor([task.cid], dtype=torch.int16)),
            history=[big, noise.bool()],
            stats=Stats(noise.mean(), np.int64(6)),
            inner=Inner(noise.t().contiguous(), f"client {task.cid}"),
            metadata={
                "loss": np.float32(0.5) * task.cid,
                ("round", task.round): {3, 1, 2},
                "tags": frozenset({"a"}),
                "raw": b"\x00\x01",
                "vec": np.arange(3, dtype=np.int32),
            },
        )
        if self.workload.bad_metadata:
            uplink.metadata["model"] = self.model  # no canonical bytes
        return uplink, None


@dataclass
class NestedWorkload:
    history_size: int = 5000  # larger than the downlink: the first round's uplinks overflow
    bad_metadata: bool = False

    def make_worker(self) -> NestedWorker:
        return NestedWorker(self)

    def share_memory(self) -> None:
        pass


@dataclass
class ScalarUplink(UplinkPackage):
    value: torch.Tensor


@dataclass
class ScalarDownlink(DownlinkPackage):
    value: torch.Tensor


class GeneratorWorker:
    def __init__(self, workload: GeneratorWorkload) -> None:
        self.workload = workload

    def train(self, task: ClientTask, payload: ScalarDownlink, rng: Any) -> tuple[Any, None]:
        # a generator carried by the workload, as the original's quickstart dataset carries
        # one in its augmentation transforms: every worker starts from the same state
        fresh = torch.Generator().set_state(self.workload.augment.get_state())
        draw = torch.rand(1, generator=fresh) + torch.rand(1, generator=rng.torch_cpu)
        return ScalarUplink(payload.value + draw + self.workload.data[task.cid]), None


@dataclass
class GeneratorWorkload:
    augment: torch.Generator
    data: torch.Tensor

    def make_worker(self) -> GeneratorWorker:
        return GeneratorWorker(self)

    def share_memory(self) -> None:
        self.data.share_memory_()


def nested_downlink() -> NestedDownlink:
    torch.manual_seed(0)
    return NestedDownlink(OrderedDict(nn.Linear(3, 2).state_dict()))
