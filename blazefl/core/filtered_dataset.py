"""`FilteredDataset`: a subset of a dataset selected by indices (the original BlazeFL's name and
signature), vectorised: tensor data is gathered with one `index_select`, and a batch of
indices returns a whole batch at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["FilteredDataset", "IndexLike", "LengthMismatchError", "index_tensor", "take"]


class LengthMismatchError(ValueError, AssertionError):
    """Data and targets of different lengths. A ValueError, and an AssertionError as in the
    original BlazeFL (which asserted the lengths)."""


IndexLike = Sequence[int] | np.ndarray | torch.Tensor


def index_tensor(indices: IndexLike) -> torch.Tensor:
    """`indices` as a 1-D int64 tensor (ValueError for anything else)."""
    array = indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
    if array.size == 0:
        return torch.empty(0, dtype=torch.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"indices must be a 1-D integer sequence, got {array.dtype} {array.shape}")
    return torch.from_numpy(array.astype(np.int64))


def take(source: Any, index: torch.Tensor) -> Any:
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

    Raises:
        LengthMismatchError: data and targets differ in length (a ValueError and an
            AssertionError).

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
        if original_targets is not None and len(original_data) != len(original_targets):
            raise LengthMismatchError(
                f"original_data has {len(original_data)} items but original_targets has "
                f"{len(original_targets)}: pass targets aligned with the data"
            )
        index = index_tensor(indices)
        self.indices = index.numpy()
        self.data = take(original_data, index)
        self.targets = None if original_targets is None else take(original_targets, index)
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
            batch = index_tensor(index)
            image = self.data.index_select(0, batch)
            target = None if self.targets is None else take(self.targets, batch)
        if self.transform is not None:
            image = self.transform(image)
        if target is None:
            return image
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target
