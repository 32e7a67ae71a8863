"""scikit-learn's bundled handwritten digits: a real dataset that needs no download.

1,797 grayscale 8x8 images of the digits 0-9 (the UCI "optical recognition of handwritten
digits" test set) ship inside scikit-learn, so experiments on real data run offline. scikit-learn
is an optional extra (``pip install 'blazefl[digits]'``), imported only when the set is loaded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from blazefl.data.datasets import ImageDataset

__all__ = [
    "DIGITS_CROP_PADDING",
    "DIGITS_TEST_FRACTION",
    "MissingDependencyError",
    "load_digits_dataset",
]

DIGITS_TEST_FRACTION = 0.2
"""Share of every class held out as the test split (359 test, 1,438 train images)."""

DIGITS_CROP_PADDING = 1
"""Augmentation padding: one pixel shifts a digit by up to 1/8 of the image, as 4 does on 32."""

# The split is part of the dataset, not of the experiment: a fixed seed (never the experiment
# seed) keeps one test set for every run, as MNIST's fixed train/test files do.
_SPLIT_SEED = 0
_NUM_CLASSES = 10
_MAX_LEVEL = 16  # scikit-learn's pixels are counts 0..16 of set bits in 4x4 blocks
# Per-pixel mean/std of the train split in [0, 1] units (checked by tests/data/test_digits.py).
_DIGITS_MEAN = (0.3050,)
_DIGITS_STD = (0.3757,)


class MissingDependencyError(ImportError, ValueError):
    """An optional dependency is not installed.

    An ``ImportError`` for code that expects one, and a ``ValueError`` so that the CLI reports it
    as a one-line error like any other fixable input problem.
    """


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(images [1797, 8, 8] float64 in 0..16, labels [1797])`` from scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise MissingDependencyError(
            "the digits dataset needs scikit-learn: pip install 'blazefl[digits]'"
        ) from exc
    bunch: Any = load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target)


def _split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train, test)`` indices, each in one fixed shuffled order.

    Walks one fixed permutation and sends the first ``round(0.2 * n_k)`` images of every class k
    to the test split, so both splits keep the classes' proportions.
    """
    rng = np.random.default_rng(np.random.SeedSequence(_SPLIT_SEED))
    order = rng.permutation(len(labels))
    shuffled = labels[order]
    is_test = np.zeros(len(labels), dtype=bool)
    for k in range(_NUM_CLASSES):
        where = np.flatnonzero(shuffled == k)
        n_test = int(len(where) * DIGITS_TEST_FRACTION + 0.5)  # round half up, not to even
        is_test[where[:n_test]] = True
    return order[~is_test], order[is_test]


def load_digits_dataset(train: bool = True) -> ImageDataset:
    """Load scikit-learn's handwritten digits as a ``1 x 8 x 8`` ``ImageDataset``.

    Pixels 0..16 are scaled to ``uint8`` 0..255 exactly (``(v * 255 + 8) // 16``, integer
    arithmetic). The train/test split is stratified and fixed: 20% of every class
    (:data:`DIGITS_TEST_FRACTION`) is the test split, chosen by a permutation with a fixed seed,
    so every experiment seed sees the same 1,438 train and 359 test images, in the same order.
    Like the other real datasets it loads whole: there is no ``size`` and no ``seed``.

    Training augmentation fits 8x8 digits: a random crop after 1 pixel of padding and no
    horizontal flip (a mirrored 2, 3 or 7 is not a digit).

    Args:
        train: the train split (True) or the test split (False).

    Returns:
        An ``ImageDataset`` with 10 classes, ``crop_padding=1`` and ``hflip=False``.

    Raises:
        MissingDependencyError: scikit-learn is not installed (an ``ImportError`` and a
            ``ValueError``).

    Example:
        >>> ds = load_digits_dataset(train=False)  # doctest: +SKIP
        >>> len(ds), ds.shape, ds.num_classes  # doctest: +SKIP
        (359, (1, 8, 8), 10)
    """
    raw_images, raw_labels = _sklearn_digits()
    levels = raw_images.astype(np.int64)
    if not np.array_equal(levels, raw_images) or levels.min() < 0 or levels.max() > _MAX_LEVEL:
        raise ValueError(  # guards against a future scikit-learn changing the bundled data
            f"scikit-learn's digits are no longer integers in 0..{_MAX_LEVEL}: "
            "pin scikit-learn to a release that still bundles the original data"
        )
    pixels = ((levels * 255 + _MAX_LEVEL // 2) // _MAX_LEVEL).astype(np.uint8)
    labels = raw_labels.astype(np.int64)
    train_idx, test_idx = _split_indices(labels)
    chosen = train_idx if train else test_idx
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(pixels[chosen, None, :, :])),
        labels=torch.from_numpy(labels[chosen]),
        num_classes=_NUM_CLASSES,
        mean=_DIGITS_MEAN,
        std=_DIGITS_STD,
        crop_padding=DIGITS_CROP_PADDING,
        hflip=False,
    )
