"""Pieces shared by algorithms: client partitions as flat index arrays, and the local SGD loop."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from blazefl.core.cancellation import raise_if_cancelled
from blazefl.core.optim import FlatSGD
from blazefl.core.step_trace import active_trace
from blazefl.data import ImageDataset
from blazefl.hparams import param, validate

__all__ = [
    "ClientPartition",
    "GradHook",
    "TrainHParams",
    "LocalSGD",
    "dataset_on",
    "evaluate_model",
]

#: Called by `LocalSGD.run` after every backward pass, before the optimizer step, with the
#: flat gradient and the flat parameters (views of the model's parameter prefix, see
#: `flatten_module_`); it edits the gradient in place (FedProx's proximal term).
GradHook = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass
class ClientPartition:
    """Every client's sample indices in one flat array (client `c` owns
    `indices[offsets[c]:offsets[c+1]]`). Per-client cost is two integers, never a tensor.

    Args:
        indices: int64 flat indices.
        offsets: int64, length num_clients + 1.

    Example:
        >>> part = ClientPartition.from_lists([np.array([0, 2]), np.array([1])])
        >>> part.client(1)
        tensor([1])
    """

    indices: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def from_lists(cls, parts: Sequence[np.ndarray]) -> ClientPartition:
        """Build from one index array per client."""
        sizes = np.array([len(p) for p in parts], dtype=np.int64)
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        flat = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return cls(torch.from_numpy(flat), torch.from_numpy(offsets))

    @property
    def num_clients(self) -> int:
        return int(self.offsets.numel()) - 1

    def client(self, cid: int) -> torch.Tensor:
        """Indices of client `cid` (a view)."""
        if not 0 <= cid < self.num_clients:
            raise IndexError(f"client id {cid} out of range [0, {self.num_clients})")
        return self.indices[int(self.offsets[cid]) : int(self.offsets[cid + 1])]

    def sizes(self) -> list[int]:
        """Number of samples per client."""
        return torch.diff(self.offsets).tolist()

    def share_memory_(self) -> ClientPartition:
        self.indices.share_memory_()
        self.offsets.share_memory_()
        return self


@dataclass(frozen=True)
class TrainHParams:
    """Local training hyper-parameters (config section `train`; all change result bits)."""

    local_epochs: int = param(2, low=1, high=10_000, doc="local epochs per round")
    batch_size: int = param(50, low=1, high=1_000_000, doc="local batch size")
    lr: float = param(0.05, low=0.0, low_open=True, high=1e6, doc="local SGD learning rate")
    momentum: float = param(0.9, low=0.0, high=1e6, doc="local SGD momentum")
    weight_decay: float = param(0.0005, low=0.0, high=1e6, doc="local SGD weight decay")
    augment: bool = param(True, doc="the dataset's crop/flip (generator-driven)")

    def __post_init__(self) -> None:
        validate(self)


def dataset_on(data: ImageDataset, device: torch.device | str) -> ImageDataset:
    """`data` with samples, labels and (images) normalisation constants on `device` (`data`
    itself on the CPU). Same values, so `normalize` gives the same bits of the same ops.
    Works for an `ImageDataset` and a `FeatureDataset` alike (`data.to(device)`).

    Example:
        >>> dataset_on(ds, "cpu") is ds
        True
    """
    device = torch.device(device)
    if device.type == "cpu":
        return data
    return data.to(device)


class LocalSGD:
    """One worker's reusable training machinery: model, optimizer and batch buffers.

    Built once per worker; `run` trains on one client's indices with that client's generator.
    Nothing here survives from one client to the next except allocations: the optimizer's
    state is cleared and the model weights are overwritten by the caller.

    On a GPU (the model's flat state lives there) the whole training set is copied to the GPU
    once, when the worker is built: a batch is then gathered on the device, and only the
    shuffled order (one int64 vector per epoch) and the augmentation's draws cross from the
    host. Shuffling and augmentation draw from the client's CPU generator on every device.

    Args:
        model: the worker's model.
        flat: its float state, flattened by the caller with `flatten_module_` (on the
            worker's device).
        data: the training set in memory: uint8 images (augmented if `hp.augment`, then
            normalised to float32) or a `FeatureDataset` (float32 or int64 samples, fed to
            the model as they are).
        hp: hyper-parameters.
    """

    def __init__(
        self, model: nn.Module, flat: torch.Tensor, data: ImageDataset, hp: TrainHParams
    ) -> None:
        self.model = model
        self.flat = flat  # the model's float state: fingerprinted after every step (trace)
        self.device = flat.device
        self.data = dataset_on(data, self.device)
        self.hp = hp
        self.optimizer = FlatSGD(model, flat, hp.lr, hp.momentum, hp.weight_decay)
        shape = (hp.batch_size, *data.images.shape[1:])
        # the stored samples of a batch; a second buffer only where normalize converts them
        # (uint8 images -> float32); other samples go to the model as gathered
        self._raw = torch.empty(shape, dtype=data.images.dtype, device=self.device)
        self._x: torch.Tensor | None = None
        if data.images.dtype != data.input_dtype:
            self._x = torch.empty(shape, dtype=data.input_dtype, device=self.device)

    def run(
        self,
        indices: torch.Tensor,
        generator: torch.Generator,
        grad_hook: GradHook | None = None,
        epochs: int | None = None,
        max_steps: int | None = None,
    ) -> float:
        """Train `epochs` epochs (default `local_epochs`) over `indices`, shuffled by
        `generator`, stopping early after `max_steps` steps if given.

        Each epoch draws one permutation and walks it in batches of `batch_size`; the last
        batch of an epoch holds the remainder (it is smaller, not dropped), so an epoch is
        `ceil(len(indices) / batch_size)` steps. Per-client work (FedNova-style) needs no
        extra model: pass each client its own `epochs` or `max_steps`.

        Args:
            indices: the client's sample indices.
            generator: the client's generator (shuffling, augmentation).
            grad_hook: edits the flat gradient in place after every backward pass, before
                weight decay and momentum: `hook(grad, params)`, run without autograd. None
                (the default) adds no op, so FedAvg's bytes do not depend on this seam.
            epochs: epochs for this call (>= 1); None: the config's `local_epochs`.
            max_steps: stop after this many steps (>= 1), mid-epoch if need be; None: no cap.

        Returns:
            Mean training loss over all steps.

        Raises:
            ClientCancelledError: the client's round was stopped (checked between batches).
        """
        epochs = self.hp.local_epochs if epochs is None else epochs
        if epochs < 1 or (max_steps is not None and max_steps < 1):
            raise ValueError(f"epochs and max_steps must be >= 1, got {epochs}, {max_steps}")
        self.optimizer.reset()  # every client starts from fresh momentum
        self.model.train()
        n = int(indices.numel())
        # float64 sum of the float32 losses: the bits of a Python float sum, without a
        # device sync per step
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        steps = 0
        trace = active_trace()  # the running client task's step trace (None outside one)
        for epoch in range(epochs):
            if max_steps is not None and steps >= max_steps:
                break
            order_cpu = indices[torch.randperm(n, generator=generator)]
            order = order_cpu.to(self.device)
            for start in range(0, n, self.hp.batch_size):
                if max_steps is not None and steps >= max_steps:
                    break
                raise_if_cancelled()  # a stopped round ends here, not after all epochs
                batch = order[start : start + self.hp.batch_size]
                b = int(batch.numel())
                raw = torch.index_select(self.data.images, 0, batch, out=self._raw[:b])
                if self.hp.augment:  # a FeatureDataset's augment draws nothing
                    raw = self.data.augment(raw, generator)
                x = self.data.normalize(raw, out=None if self._x is None else self._x[:b])
                y = self.data.labels[batch]
                loss = F.cross_entropy(self.model(x), y)
                self.optimizer.zero_grad()
                loss.backward()
                if grad_hook is not None:
                    with torch.no_grad():
                        grad_hook(self.optimizer.grad, self.optimizer.params)
                self.optimizer.step()
                total.add_(loss.detach())
                steps += 1
                if trace is not None:  # the batch's indices as drawn, on the CPU: no sync
                    batch_cpu = order_cpu[start : start + self.hp.batch_size]
                    trace.add(batch_cpu, generator, self.flat, epoch)
        return float(total) / max(steps, 1)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    data: ImageDataset,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Loss and accuracy of `model` on `data` (fixed batch order, float64 sums).

    Args:
        model / data: the model and the evaluation set (CPU).
        batch_size: evaluation batch size.
        device: evaluate on this device (a copy of the model and data goes there; `model`
            is not moved). None or CPU: in place on the CPU.

    Returns:
        {"loss": mean cross-entropy, "accuracy": fraction correct, "samples": n}.
    """
    if device is not None and torch.device(device).type != "cpu":
        # a generator (dropout) is neither copied nor moved: eval mode draws nothing
        gen = getattr(model, "generator", None)
        memo: dict[int, object] = {} if gen is None else {id(gen): None}
        model = copy.deepcopy(model, memo).to(device)
        data = dataset_on(data, device)
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, len(data)
    for start in range(0, n, batch_size):
        x = data.normalize(data.images[start : start + batch_size])
        y = data.labels[start : start + batch_size]
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum").double())
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1), "samples": n}
