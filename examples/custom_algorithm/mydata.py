"""A researcher's own dataset: "stripes", generated from the seed (no files to download).

Each image is a grey 12x12 picture of stripes; the class is the stripes' orientation
(horizontal, vertical, diagonal, anti-diagonal). Frequency, phase, contrast and noise vary per
sample, so the task is easy but not trivial for a small model.

The pipeline calls the loader named in the config (`data.dataset: mydata:stripes`) with
keyword arguments `root`, `size`, `seed` and `train`, and stores what it returns in the run's
dataset store: the loader runs once per run, in the `prepare` stage.

Example:
    >>> data = stripes(root=None, size=8, seed=0, train=True)
    >>> data.images.shape, data.num_classes
    (torch.Size([8, 1, 12, 12]), 4)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from blazefl.data import ImageDataset

__all__ = ["NUM_CLASSES", "SIDE", "stripes"]

NUM_CLASSES = 4  # horizontal, vertical, diagonal, anti-diagonal
SIDE = 12  # image side in pixels


def stripes(*, root: Any, size: int, seed: int, train: bool, **_: Any) -> ImageDataset:
    """Generate `size` stripe images, deterministically from `seed`.

    Only an explicit numpy Generator is used (never a global RNG), so the same arguments give
    the same bytes in every process. Train and test are different streams of the same seed.

    Args:
        root: unused (the data is generated, not read).
        size: number of samples.
        seed: the experiment seed.
        train: the train split (True) or the test split (False).

    Returns:
        uint8 images `[size, 1, 12, 12]` with balanced labels in `[0, 4)`.
    """
    del root  # generated data: nothing to read
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1 if train else 2,)))
    labels = rng.permutation(np.arange(size, dtype=np.int64) % NUM_CLASSES)
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    # the coordinate the stripes run across, per class: rows, columns, and the two diagonals
    across = np.stack([y, x, (x + y) / np.sqrt(2.0), (x - y) / np.sqrt(2.0)])
    period = rng.uniform(3.0, 6.0, size)[:, None, None]
    phase = rng.uniform(0.0, 2.0 * np.pi, size)[:, None, None]
    contrast = rng.uniform(40.0, 100.0, size)[:, None, None]
    wave = np.sin(2.0 * np.pi * across[labels] / period + phase)
    noise = rng.normal(0.0, 25.0, (size, SIDE, SIDE))
    pixels = np.clip(np.rint(128.0 + contrast * wave + noise), 0, 255).astype(np.uint8)
    return ImageDataset(
        images=torch.from_numpy(pixels[:, None]),
        labels=torch.from_numpy(labels),
        num_classes=NUM_CLASSES,
        mean=(0.5,),
        std=(0.25,),
        # augmentation: a 1-pixel random shift keeps the orientation; a mirror would turn a
        # diagonal into an anti-diagonal and change the class, so no flips
        crop_padding=1,
        hflip=False,
    )
