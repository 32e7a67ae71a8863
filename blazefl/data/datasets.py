"""Image datasets as plain uint8 tensors, and the built-in synthetic set.

Every dataset is held in memory as one ``uint8`` tensor ``[N, C, H, W]`` plus ``int64`` labels;
normalisation to float happens per batch (``ImageDataset.normalize``) so that the stored bytes
are what gets hashed, partitioned and shipped to workers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from blazefl.data.transforms import random_crop, random_horizontal_flip

__all__ = ["DatasetNotFoundError", "ImageDataset", "synthetic_dataset"]


class DatasetNotFoundError(ValueError):
    """A real dataset's files are missing (or corrupted) under the given root folder."""


# eq=False: the generated __eq__ would compare tensors elementwise and fail on bool().
@dataclass(frozen=True, eq=False)
class ImageDataset:
    """An in-memory image classification dataset.

    Args:
        images: ``uint8`` tensor ``[N, C, H, W]`` (made contiguous if it is not).
        labels: ``int64`` tensor ``[N]``.
        num_classes: number of classes; labels lie in ``[0, num_classes)``.
        mean: per-channel mean in ``[0, 1]`` pixel units, used by ``normalize``.
        std: per-channel standard deviation in ``[0, 1]`` pixel units.
        crop_padding: training augmentation (``augment``): zero padding, in pixels, before the
            random crop back to ``H x W`` (>= 0; 0 disables the crop). The default 4 suits
            32x32 images; tiny images want less.
        hflip: training augmentation: mirror left-right with probability 0.5. Right for
            natural images, wrong for digits and text.

    Example:
        >>> ds = synthetic_dataset(100, seed=0)
        >>> image, label = ds[0]
        >>> image.shape, image.dtype, ds.shape
        (torch.Size([3, 32, 32]), torch.float32, (3, 32, 32))
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 4
    hflip: bool = True

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be a uint8 tensor [N, C, H, W], got {self.images.dtype} "
                f"with shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(
                f"labels must be an int64 tensor [N], got {self.labels.dtype} "
                f"with shape {tuple(self.labels.shape)}"
            )
        if len(self.labels) != len(self.images):
            raise ValueError(
                f"images and labels differ in length: {len(self.images)} != {len(self.labels)}"
            )
        if len(self.labels) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes
        ):
            raise ValueError(
                f"labels must lie in [0, num_classes={self.num_classes}), got range "
                f"[{int(self.labels.min())}, {int(self.labels.max())}]"
            )
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"mean/std need one value per channel ({channels}), "
                f"got mean={self.mean}, std={self.std}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")
        # numpy scalars are accepted (stores hand them back) and turned into plain Python ones.
        padding = self.crop_padding
        if isinstance(padding, bool | np.bool_) or not isinstance(padding, int | np.integer):
            raise ValueError(f"crop_padding must be an int >= 0, got {padding!r}")
        if padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {padding}")
        if not isinstance(self.hflip, bool | np.bool_):
            raise ValueError(f"hflip must be True or False, got {self.hflip!r}")
        # frozen dataclass: object.__setattr__ is the sanctioned way to fix fields up in init.
        object.__setattr__(self, "crop_padding", int(padding))
        object.__setattr__(self, "hflip", bool(self.hflip))
        if not self.images.is_contiguous():
            object.__setattr__(self, "images", self.images.contiguous())
        # x_norm = (x/255 - mean)/std = x * scale + shift; precomputed once, shaped [C, 1, 1]
        # so it broadcasts over both [C, H, W] and [B, C, H, W].
        std = torch.tensor(self.std, dtype=torch.float64)
        mean = torch.tensor(self.mean, dtype=torch.float64)
        scale = (1.0 / (255.0 * std)).to(torch.float32).view(-1, 1, 1)
        shift = (-mean / std).to(torch.float32).view(-1, 1, 1)
        object.__setattr__(self, "_scale", scale)
        object.__setattr__(self, "_shift", shift)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return ``(normalised float32 image [C, H, W], label)``."""
        return self.normalize(self.images[index]), int(self.labels[index])

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape: ``(C, H, W)`` for images."""
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    @property
    def features(self) -> torch.Tensor:
        """The stored samples (``images``), by the name non-image datasets use."""
        return self.images

    @property
    def input_dtype(self) -> torch.dtype:
        """What the model receives: float32 (``normalize``'s output)."""
        return torch.float32

    def describe(self) -> str:
        """``"images (3, 32, 32) uint8"``: how messages name this dataset's samples."""
        return f"images {self.shape} uint8"

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same images, labels and normalisation constants on ``device`` (``self`` when
        already there): ``normalize`` then gives the same bits of the same ops there.

        Example:
            >>> ds.to("cpu") is ds
            True
        """
        if self.images.device == torch.device(device):
            return self
        moved = dataclasses.replace(
            self, images=self.images.to(device), labels=self.labels.to(device)
        )
        for name in ("_scale", "_shift"):  # computed on the CPU by __post_init__
            object.__setattr__(moved, name, getattr(self, name).to(device))
        return moved

    def augment(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Apply this dataset's training augmentation to a ``[B, C, H, W]`` batch.

        Random crop after ``crop_padding`` pixels of zero padding, then (if ``hflip``) a
        left-right flip with probability 0.5, both drawing only from ``generator``. With the
        defaults this is exactly the CIFAR recipe (padding 4 + flip).

        Args:
            batch: images of any dtype (usually the ``uint8`` batch before ``normalize``).
            generator: the only source of randomness.

        Returns:
            The augmented batch (``batch`` itself when there is nothing to do).

        Example:
            >>> ds = synthetic_dataset(8, seed=0)
            >>> ds.augment(ds.images, torch.Generator().manual_seed(0)).shape
            torch.Size([8, 3, 32, 32])
        """
        out = random_crop(batch, self.crop_padding, generator)
        if self.hflip:
            out = random_horizontal_flip(out, 0.5, generator)
        return out

    def normalize(self, batch_uint8: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Convert ``uint8`` images (``[C, H, W]`` or ``[B, C, H, W]``) to normalised float32.

        Args:
            batch_uint8: ``uint8`` images with this dataset's channel count.
            out: optional preallocated float32 tensor of the same shape, written in place so
                that hot training loops do not allocate per batch.

        Returns:
            ``out`` (or a new tensor) holding ``(x / 255 - mean) / std``.

        Example:
            >>> ds = synthetic_dataset(8, seed=0)
            >>> buf = torch.empty(8, 3, 32, 32)
            >>> ds.normalize(ds.images, out=buf) is buf
            True
        """
        if batch_uint8.dtype != torch.uint8:
            raise ValueError(f"normalize expects a uint8 tensor, got {batch_uint8.dtype}")
        if out is None:  # on the batch's device (a GPU copy of the dataset normalises there)
            out = torch.empty(batch_uint8.shape, dtype=torch.float32, device=batch_uint8.device)
        elif out.dtype != torch.float32 or out.shape != batch_uint8.shape:
            raise ValueError(
                f"out must be float32 with shape {tuple(batch_uint8.shape)}, "
                f"got {out.dtype} {tuple(out.shape)}"
            )
        # Same three elementwise passes whether or not `out` is given, so bits never differ.
        out.copy_(batch_uint8)
        out.mul_(self._scale)  # type: ignore[attr-defined]
        out.add_(self._shift)  # type: ignore[attr-defined]
        return out


# --- synthetic ---------------------------------------------------------------------------------

# Knobs of the synthetic task, tuned so a LeNet with FedAvg (10 IID clients, 1 local epoch)
# goes from ~30% after round 1 to ~80% after round 5: learnable, but not in one batch.
_MAX_SHIFT = 3  # samples are the prototype shifted by up to this many pixels each way
_GRID = 6  # prototypes are smooth: random values on a GRID x GRID lattice, upsampled
_SHARED_WEIGHT = 1.0  # a component common to all classes makes prototypes look alike
_MAX_MIX = 0.6  # up to this share of another class's prototype is blended in (lam > .5: hard)
_NOISE = 1.0  # per-pixel uniform noise, std in units of the prototype std
_PIXEL_SCALE = 52.0  # prototype units -> uint8 levels around 128; little clipping at 0/255
_CHUNK = 2048  # samples per vectorised chunk: bounds peak float32 memory to ~25 MB
_SYNTH_MEAN = 0.5
_SYNTH_STD = 0.25


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Smoothstep interpolation weights ``[n_out, n_in]`` from a coarse lattice to pixels."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    frac = pos - i0
    frac = frac * frac * (3.0 - 2.0 * frac)  # C1-smooth at lattice points, no visible creases
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    weights[rows, i0] = 1.0 - frac
    weights[rows, i0 + 1] = frac
    return weights


def _shifted_prototypes(seed: int, num_classes: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Return ``[K, S*S, C, H, W]`` float32: every class prototype at every pixel shift.

    Prototypes depend only on ``seed`` (stream 0), so train and test share them.
    """
    c, h, w = shape
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    shared = rng.standard_normal((1, c, _GRID, _GRID))
    specific = rng.standard_normal((num_classes, c, _GRID, _GRID))
    lattice = _SHARED_WEIGHT * shared + specific
    pad = 2 * _MAX_SHIFT
    # einsum without `optimize` runs numpy's own loops (no BLAS), so the bits never depend on
    # a BLAS build or its thread count.
    protos = np.einsum(
        "hi,kcij,wj->kchw", _interp_matrix(h + pad, _GRID), lattice, _interp_matrix(w + pad, _GRID)
    )
    protos -= protos.mean(axis=(1, 2, 3), keepdims=True)
    protos /= protos.std(axis=(1, 2, 3), keepdims=True)
    # Precomputing all shifts (K * 49 images) turns per-sample shifting into one gather.
    n_off = pad + 1
    table = np.empty((num_classes, n_off * n_off, c, h, w), dtype=np.float32)
    for dy in range(n_off):
        for dx in range(n_off):
            table[:, dy * n_off + dx] = protos[:, :, dy : dy + h, dx : dx + w]
    return table


def synthetic_dataset(
    size: int,
    seed: int,
    train: bool = True,
    num_classes: int = 10,
    shape: tuple[int, int, int] = (3, 32, 32),
) -> ImageDataset:
    """Generate the built-in CIFAR-shaped synthetic classification dataset.

    Each class has a smooth random prototype image derived from ``seed`` alone. A sample is its
    class prototype shifted by up to 3 pixels, blended with up to 60% of another class's
    prototype, with random contrast, a per-channel brightness offset and per-pixel noise. Labels
    are a shuffled balanced sequence, so every class appears when ``size >= num_classes``.
    Train and test samples come from different streams derived from ``seed``.

    Only explicit numpy Generators are used (never global RNG state), so the same arguments give
    identical bytes on every call and in any thread. 20,000 samples take well under a second.

    Args:
        size: number of samples (> 0).
        seed: non-negative experiment seed.
        train: draw the train split (True) or the test split (False).
        num_classes: number of classes (>= 2).
        shape: per-image ``(C, H, W)``.

    Returns:
        An ``ImageDataset`` with mean 0.5 and std 0.25 per channel.

    Example:
        >>> ds = synthetic_dataset(1000, seed=0)
        >>> len(ds), ds.images.dtype, ds.num_classes
        (1000, torch.uint8, 10)
    """
    if size <= 0:
        raise ValueError(f"size must be > 0, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape}")
    c, h, w = (int(v) for v in shape)
    table = _shifted_prototypes(seed, num_classes, (c, h, w))
    n_off = table.shape[1]

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1 if train else 2,)))
    labels = rng.permutation(np.arange(size, dtype=np.int64) % num_classes)
    other = (labels + rng.integers(1, num_classes, size)) % num_classes  # never the own class
    shift = rng.integers(0, n_off, size)
    other_shift = rng.integers(0, n_off, size)
    lam = rng.uniform(0.0, _MAX_MIX, size)
    contrast = rng.uniform(0.5, 1.3, size)
    own_weight = (contrast * (1.0 - lam)).astype(np.float32)[:, None, None, None]
    other_weight = (contrast * lam).astype(np.float32)[:, None, None, None]
    brightness = rng.normal(0.0, 0.3, (size, c)).astype(np.float32)[:, :, None, None]
    # uniform on [-.5, .5) has std 1/sqrt(12); it is ~8x faster to draw than Gaussian noise.
    noise_scale = np.float32(_NOISE * np.sqrt(12.0))

    images = np.empty((size, c, h, w), dtype=np.uint8)
    for start in range(0, size, _CHUNK):
        part = slice(start, min(size, start + _CHUNK))
        x = table[labels[part], shift[part]]
        x *= own_weight[part]
        mix = table[other[part], other_shift[part]]
        mix *= other_weight[part]
        x += mix
        x += brightness[part]
        noise = rng.random(x.shape, dtype=np.float32)
        noise -= np.float32(0.5)
        noise *= noise_scale
        x += noise
        x *= np.float32(_PIXEL_SCALE)
        x += np.float32(128.0)
        np.clip(x, 0.0, 255.0, out=x)
        np.rint(x, out=x)
        images[part] = x
    return ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        num_classes=num_classes,
        mean=(_SYNTH_MEAN,) * c,
        std=(_SYNTH_STD,) * c,
    )


# --- torchvision datasets ----------------------------------------------------------------------
