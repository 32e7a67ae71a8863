"""torchvision's CIFAR-10, MNIST and Fashion-MNIST from a local folder (never downloaded),
converted to the project's uint8 `ImageDataset`."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from blazefl.data.datasets import DatasetNotFoundError, ImageDataset

__all__ = ["TORCHVISION_DATASETS", "load_torchvision_dataset"]


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10_FILES = (
    *(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
)


@dataclass(frozen=True)
class _TorchvisionSpec:
    class_name: str  # attribute of torchvision.datasets
    folder: str  # what torchvision expects directly under root
    files: tuple[str, ...]  # files torchvision requires inside `folder`
    mean: tuple[float, ...]
    std: tuple[float, ...]


_TORCHVISION_SPECS = {
    "cifar10": _TorchvisionSpec(
        "CIFAR10",
        "cifar-10-batches-py",
        _CIFAR10_FILES,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "mnist": _TorchvisionSpec("MNIST", "MNIST/raw", _MNIST_FILES, (0.1307,), (0.3081,)),
    "fashion_mnist": _TorchvisionSpec(
        "FashionMNIST", "FashionMNIST/raw", _MNIST_FILES, (0.2860,), (0.3530,)
    ),
}

#: The torchvision datasets that load from a local folder.
TORCHVISION_DATASETS = tuple(_TORCHVISION_SPECS)


def _to_nchw_uint8(data: object, channels: int) -> torch.Tensor:
    """torchvision stores CIFAR as numpy [N, H, W, C] and MNIST as a tensor [N, H, W]."""
    tensor = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data))
    tensor = tensor.to(torch.uint8)
    if channels == 1:
        return tensor.unsqueeze(1).contiguous()
    return tensor.permute(0, 3, 1, 2).contiguous()


def load_torchvision_dataset(
    name: str, root: str | os.PathLike[str], train: bool = True
) -> ImageDataset:
    """Load CIFAR-10, MNIST or Fashion-MNIST from a local folder in torchvision's layout.

    Downloads are disabled: the files must already be under ``root`` (e.g.
    ``root/cifar-10-batches-py/data_batch_1`` or ``root/MNIST/raw/train-images-idx3-ubyte``).
    torchvision is imported here, lazily, so the rest of blazefl works without it.

    Args:
        name: ``"cifar10"``, ``"mnist"`` or ``"fashion_mnist"``.
        root: folder holding torchvision's dataset folder.
        train: load the train split (True) or the test split (False).

    Returns:
        An ``ImageDataset`` with ``uint8 [N, C, H, W]`` images and the dataset's standard
        mean/std.

    Raises:
        DatasetNotFoundError: the folder or one of its files is missing, or torchvision rejects
            the files (e.g. CIFAR-10 checksum mismatch).

    Example:
        >>> load_torchvision_dataset("mnist", "/data").shape  # doctest: +SKIP
        (1, 28, 28)
    """
    if name not in _TORCHVISION_SPECS:
        raise ValueError(
            f"unknown torchvision dataset {name!r}; allowed: {', '.join(_TORCHVISION_SPECS)}"
        )
    spec = _TORCHVISION_SPECS[name]
    root_path = Path(root).expanduser()
    folder = root_path / spec.folder
    missing = [f for f in spec.files if not (folder / f).is_file()]
    # torchvision's MNIST also accepts its legacy processed/{training,test}.pt files.
    legacy = folder.parent / "processed"
    has_legacy = spec.folder.endswith("/raw") and all(
        (legacy / f).is_file() for f in ("training.pt", "test.pt")
    )
    if missing and not has_legacy:
        what = f"{folder} lacks " + ", ".join(missing) if folder.is_dir() else f"no {folder}"
        raise DatasetNotFoundError(
            f"{name} not found under {root_path} ({what}): put the "
            f"torchvision {spec.folder!r} folder there (downloads are disabled)"
        )

    try:
        import torchvision.datasets as tv_datasets
    except ImportError as exc:  # pragma: no cover - torchvision is a declared dependency
        raise ImportError(f"loading {name} needs torchvision: pip install torchvision") from exc
    dataset_cls: Callable[..., object] = getattr(tv_datasets, spec.class_name)
    try:
        tv_dataset = dataset_cls(root=str(root_path), train=train, download=False)
    except (
        RuntimeError,
        ValueError,
        TypeError,
        pickle.UnpicklingError,
        EOFError,
        AssertionError,
    ) as exc:
        raise DatasetNotFoundError(
            f"{name} under {root_path} is unreadable or corrupted ({exc}); replace the "
            f"torchvision {spec.folder!r} folder with an intact copy (downloads are disabled)"
        ) from exc

    images = _to_nchw_uint8(tv_dataset.data, len(spec.mean))  # type: ignore[attr-defined]
    labels = torch.as_tensor(np.asarray(tv_dataset.targets), dtype=torch.int64)  # type: ignore[attr-defined]
    num_classes = len(tv_dataset.classes)  # type: ignore[attr-defined]
    return ImageDataset(images, labels, num_classes, spec.mean, spec.std)
