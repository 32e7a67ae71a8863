"""BlazeFL-compatible dataset views: ``FilteredDataset`` and ``PartitionedDataset``.

``PartitionedDataset`` ties an ``ImageDataset`` to per-client index arrays (from
``partition_indices``) and hands out each client's subset or a DataLoader over it. Loaders
yield whole batches through one vectorised gather instead of collating samples one by one,
and shuffle only with the generator they are given.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from blazefl.core.filtered_dataset import FilteredDataset, index_tensor
from blazefl.core.protocols import PartitionedDataset as PartitionedDatasetProtocol
from blazefl.data.datasets import ImageDataset

__all__ = ["FilteredDataset", "PartitionedDataset"]


class _BatchIndices(Sampler[list[int]]):
    """Yields index batches; shuffles with exactly one ``randperm`` per epoch when given a
    generator (drawn when iteration starts, so the generator advances the same amount whether
    or not the epoch is consumed to the end)."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator | None) -> None:
        self.size = size
        self.batch_size = batch_size
        self.generator = generator

    def __iter__(self) -> Iterator[list[int]]:
        if self.generator is None:
            order = torch.arange(self.size)
        else:
            order = torch.randperm(self.size, generator=self.generator)
        return iter(order.split(self.batch_size))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)


def _keep_batch(batch: Any) -> Any:
    # Batches come out of the dataset already stacked; the default collate would turn the
    # (images, labels) tuple into a list.
    return batch


class PartitionedDataset(PartitionedDatasetProtocol[str]):
    """A training set split among clients, plus an optional test set.

    An implementation of `blazefl.core.PartitionedDataset` (the original BlazeFL's protocol).

    Args:
        train: the training ``ImageDataset``.
        client_indices: one index array per client (e.g. from ``partition_indices``).
        test: the test ``ImageDataset`` (needed only for ``type_="test"``).

    Example:
        >>> from blazefl.data import partition_indices, synthetic_dataset
        >>> train = synthetic_dataset(1000, seed=0)
        >>> test = synthetic_dataset(200, seed=0, train=False)
        >>> parts = partition_indices(train.labels, 10, "iid", seed=0)
        >>> data = PartitionedDataset(train, parts, test)
        >>> loader = data.get_dataloader("train", 3, 32, torch.Generator().manual_seed(0))
        >>> images, labels = next(iter(loader))
        >>> images.shape, labels.dtype
        (torch.Size([32, 3, 32, 32]), torch.int64)

    Concurrency: all methods only read shared state, so clients in different threads may call
    them at once; each thread must use its own generator.
    """

    def __init__(
        self,
        train: ImageDataset,
        client_indices: Sequence[np.ndarray],
        test: ImageDataset | None = None,
    ) -> None:
        if len(client_indices) == 0:
            raise ValueError("client_indices must hold at least one client's index array")
        parts: list[np.ndarray] = []
        for cid, part in enumerate(client_indices):
            array = index_tensor(part).numpy()
            if array.size and (array.min() < 0 or array.max() >= len(train)):
                raise ValueError(
                    f"client {cid} has indices outside [0, {len(train)}): "
                    f"min {array.min()}, max {array.max()}"
                )
            parts.append(array)
        self.train = train
        self.test = test
        self._parts = parts

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self._parts)

    def _check_cid(self, cid: int | None) -> int:
        if cid is None or not 0 <= cid < self.num_clients:
            raise ValueError(f"cid must be in [0, {self.num_clients}), got {cid}")
        return cid

    def client_indices(self, cid: int) -> np.ndarray:
        """Return a copy of client ``cid``'s ``int64`` indices into the train set."""
        return self._parts[self._check_cid(cid)].copy()

    def client_sizes(self) -> list[int]:
        """Return the number of training samples of each client, in client-id order."""
        return [len(p) for p in self._parts]

    def get_dataset(self, type_: str, cid: int | None = None) -> FilteredDataset:
        """Return client ``cid``'s training subset (``"train"``) or the whole test set.

        Args:
            type_: ``"train"`` (needs ``cid``) or ``"test"`` (``cid`` is ignored).
            cid: client id in ``[0, num_clients)``.

        Returns:
            A ``FilteredDataset`` yielding normalised float32 images and int64 labels.
        """
        if type_ == "train":
            indices = self.client_indices(self._check_cid(cid))
            source = self.train
        elif type_ == "test":
            if self.test is None:
                raise ValueError("this PartitionedDataset was built without a test set")
            indices = np.arange(len(self.test))
            source = self.test
        else:
            raise ValueError(f"type_ must be 'train' or 'test', got {type_!r}")
        return FilteredDataset(indices, source.images, source.labels, transform=source.normalize)

    def get_dataloader(
        self,
        type_: str,
        cid: int | None,
        batch_size: int | None,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        """Return a loader of ``(images [B, C, H, W] float32, labels [B] int64)`` batches.

        Args:
            type_: ``"train"`` or ``"test"``, as in ``get_dataset``.
            cid: client id (for ``"train"``).
            batch_size: samples per batch (> 0; None: the whole subset in one batch, as in the
                original BlazeFL); the last batch may be smaller.
            generator: shuffles with one ``randperm`` per epoch; None keeps index order. The
                process-global RNG is never touched.

        Returns:
            A single-process ``DataLoader`` (batches are gathered, not collated per sample).
        """
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        dataset = self.get_dataset(type_, cid)
        if batch_size is None:
            batch_size = max(1, len(dataset))
        return DataLoader(
            dataset,
            batch_size=None,  # the sampler already yields whole batches of indices
            sampler=_BatchIndices(len(dataset), batch_size, generator),
            collate_fn=_keep_batch,
            # DataLoader draws a worker base seed from `generator` (global RNG if None) on every
            # iter(); a private generator keeps that draw off both the caller's and the global.
            generator=torch.Generator(),
        )
