"""BlazeFL-compatible dataset views: ``FilteredDataset`` and ``PartitionedDataset``.

``PartitionedDataset`` ties an ``ImageDataset`` to per-client index arrays (from
``partition_indices``) and hands out each client's subset or a DataLoader over it. Loaders
yield whole batches through one vectorised gather instead of collating samples one by one,
and shuffle only with the generator they are given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from blazefl.data.datasets import ImageDataset

__all__ = ["FilteredDataset", "PartitionedDataset"]

IndexLike = Sequence[int] | np.ndarray | torch.Tensor


def _index_tensor(indices: IndexLike) -> torch.Tensor:
    array = indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
    if array.size == 0:
        return torch.empty(0, dtype=torch.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"indices must be a 1-D integer sequence, got {array.dtype} {array.shape}")
    return torch.from_numpy(array.astype(np.int64))


def _take(source: Any, index: torch.Tensor) -> Any:
    """Subset tensors/arrays with one gather (a contiguous copy); other sequences item by item."""
    if isinstance(source, torch.Tensor):
        return source.index_select(0, index)
    if isinstance(source, np.ndarray):
        return source[index.numpy()]
    return [source[i] for i in index.tolist()]


class FilteredDataset(Dataset):
    """A subset of a dataset, selected by ``indices`` (the BlazeFL name and signature).

    Indexing with an int returns one ``(transform(image), target_transform(label))`` pair (just
    the image when there are no targets). When the data is a tensor, indexing with a list, array
    or tensor of ints returns the whole batch at once; ``transform`` and ``target_transform``
    then receive batched tensors, which ``ImageDataset.normalize`` handles.

    Args:
        indices: positions of the kept samples in ``original_data``.
        original_data: images (tensor ``[N, ...]``, array or sequence).
        original_targets: labels aligned with ``original_data``, or None.
        transform: applied to images on access.
        target_transform: applied to labels on access.

    Example:
        >>> from blazefl.data import synthetic_dataset
        >>> ds = synthetic_dataset(100, seed=0)
        >>> sub = FilteredDataset([3, 5, 7], ds.images, ds.labels, transform=ds.normalize)
        >>> len(sub), sub[0][0].dtype
        (3, torch.float32)
    """

    def __init__(
        self,
        indices: IndexLike,
        original_data: Any,
        original_targets: Any | None = None,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        index = _index_tensor(indices)
        self.indices = index.numpy()
        self.data = _take(original_data, index)
        self.targets = None if original_targets is None else _take(original_targets, index)
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int | IndexLike) -> Any:
        if isinstance(index, torch.Tensor) and index.dim() == 0:
            index = int(index)
        if isinstance(index, int | np.integer):
            image = self.data[index]
            target = None if self.targets is None else self.targets[index]
            if isinstance(target, torch.Tensor | np.generic):
                target = int(target)  # match torchvision: scalar labels are Python ints
        else:
            if not isinstance(self.data, torch.Tensor):
                raise TypeError("batched indexing needs tensor data; index with an int instead")
            batch = _index_tensor(index)
            image = self.data.index_select(0, batch)
            target = None if self.targets is None else _take(self.targets, batch)
        if self.transform is not None:
            image = self.transform(image)
        if target is None:
            return image
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


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


class PartitionedDataset:
    """A training set split among clients, plus an optional test set.

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
            array = _index_tensor(part).numpy()
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
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        """Return a loader of ``(images [B, C, H, W] float32, labels [B] int64)`` batches.

        Args:
            type_: ``"train"`` or ``"test"``, as in ``get_dataset``.
            cid: client id (for ``"train"``).
            batch_size: samples per batch (> 0); the last batch may be smaller.
            generator: shuffles with one ``randperm`` per epoch; None keeps index order. The
                process-global RNG is never touched.

        Returns:
            A single-process ``DataLoader`` (batches are gathered, not collated per sample).
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        dataset = self.get_dataset(type_, cid)
        return DataLoader(
            dataset,
            batch_size=None,  # the sampler already yields whole batches of indices
            sampler=_BatchIndices(len(dataset), batch_size, generator),
            collate_fn=_keep_batch,
            # DataLoader draws a worker base seed from `generator` (global RNG if None) on every
            # iter(); a private generator keeps that draw off both the caller's and the global.
            generator=torch.Generator(),
        )
