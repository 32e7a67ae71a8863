"""An original-style process-pool trainer, written against the original BlazeFL's contract.

Worker processes import the static `worker` by name (spawn), so these classes live at module
level in an importable module. The worker handles both IPC modes as the original's contract
asks: paths in storage mode, objects plus `shm_buffer=` in shared-memory mode.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blazefl.core import IPCMode, ProcessPoolClientTrainer, SHMHandle


@dataclass
class Uplink:
    cid: int
    message: str
    tensor: torch.Tensor | SHMHandle
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Downlink:
    message: str
    scale: torch.Tensor


@dataclass
class Config:
    cid: int
    behaviour: str = "ok"  # "ok", "raise", "crash", "slow"
    table: np.ndarray | None = None  # shared by every client's config, like a dataset


def client_result(config: Config, payload: Downlink) -> Uplink:
    if config.behaviour == "raise":
        raise ValueError(f"client {config.cid} broke")
    if config.behaviour == "crash":
        os._exit(3)
    tensor = payload.scale * torch.arange(4, dtype=torch.float32) + config.cid
    extras = {"pid": os.getpid()}
    if config.table is not None:
        extras["table_sum"] = int(config.table.sum())
    return Uplink(config.cid, payload.message + f"<{config.cid}>", tensor, extras)


class OriginalTrainer(ProcessPoolClientTrainer[Uplink, Downlink, Config]):
    """Sets its state in its own `__init__`, as the original's subclasses do."""

    def __init__(
        self,
        num_parallels: int,
        share_dir: Path,
        ipc_mode: IPCMode | str,
        behaviour: dict[int, str] | None = None,
        stop_event: Any = None,
    ) -> None:
        self.num_parallels = num_parallels
        self.share_dir = share_dir
        self.device = "cpu"
        self.cache: list[Uplink] = []
        self.ipc_mode = ipc_mode  # type: ignore[assignment]
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self.behaviour = behaviour or {}
        self.progress_calls: list[int] = []
        self.table: np.ndarray | None = None

    def progress_fn(self, it: list[Any]) -> Any:
        self.progress_calls.append(len(it))
        return it

    def get_client_config(self, cid: int) -> Config:
        return Config(cid, self.behaviour.get(cid, "ok"), self.table)

    def prepare_uplink_package_buffer(self) -> Uplink:
        return Uplink(-1, "", torch.zeros(4))

    @staticmethod
    def worker(
        config: Config | Path,
        payload: Downlink | Path,
        device: str,
        stop_event: Any,
        *,
        shm_buffer: Uplink | None = None,
    ) -> Uplink | Path:
        if isinstance(config, Path) and isinstance(payload, Path):
            loaded: Config = torch.load(config, weights_only=False)
            if loaded.behaviour == "slow":
                while not stop_event.is_set():
                    time.sleep(0.05)
            package = client_result(loaded, torch.load(payload, weights_only=False))
            torch.save(package, config)
            return config
        assert isinstance(config, Config) and isinstance(payload, Downlink)
        assert shm_buffer is not None and isinstance(shm_buffer.tensor, torch.Tensor)
        package = client_result(config, payload)
        assert isinstance(package.tensor, torch.Tensor)
        shm_buffer.tensor.copy_(package.tensor)
        package.tensor = SHMHandle()
        return package


def interrupted_round(share_dir: str) -> None:
    """Target of a child process: a round whose clients never finish on their own."""
    trainer = OriginalTrainer(2, Path(share_dir), IPCMode.STORAGE, {0: "slow", 1: "slow"})
    try:
        trainer.local_process(Downlink("m", torch.ones(())), [0, 1])
    except KeyboardInterrupt:
        print("interrupted", flush=True)
