"""Datasets whose samples are not uint8 images: float vectors (tabular) or token-id sequences.

``FeatureDataset`` holds ``[N, *shape]`` samples of dtype ``float32`` (used as they are) or
``int64`` (token ids, for an embedding) and ``int64`` labels ``[N]``. It is a subclass of
``ImageDataset`` on purpose: every trainer, algorithm and store in the package is written
against ``ImageDataset``'s interface (``images`` holds the samples, ``normalize`` turns a
batch of them into model input, ``augment`` is the training augmentation), and a
``FeatureDataset`` fits that interface with ``normalize`` returning the batch as it is and
``augment`` drawing nothing. The image-only fields (``mean``, ``std``, ``crop_padding``,
``hflip``) are empty.

Example:
    >>> ds = FeatureDataset(torch.randn(100, 20), torch.arange(100) % 3, num_classes=3)
    >>> ds.shape, ds.input_dtype, len(ds)
    ((20,), torch.float32, 100)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from blazefl.data.datasets import ImageDataset

__all__ = ["FEATURE_DTYPES", "FeatureDataset"]

#: Sample dtypes a FeatureDataset holds (uint8 images are ImageDataset's).
FEATURE_DTYPES = (torch.float32, torch.int64)


# init=False: the constructor takes `features`; `dataclasses.replace(ds, images=...)` (which
# algorithms use to slice a dataset) passes the inherited fields, accepted as keywords below.
@dataclass(frozen=True, eq=False, init=False)
class FeatureDataset(ImageDataset):
    """An in-memory classification dataset of samples of any shape.

    Args:
        features: ``[N, *shape]`` samples: ``float32`` vectors or tensors (tabular data,
            embeddings; fed to the model as they are, so scale them in the loader) or
            ``int64`` token ids (sequences, >= 0). Made contiguous if it is not.
        labels: ``int64`` tensor ``[N]``, in ``[0, num_classes)``.
        num_classes: number of classes.
        images, mean, std, crop_padding, hflip: what ``dataclasses.replace`` passes back;
            leave them out (``images`` stands for ``features``, the rest must stay empty).

    Raises:
        ValueError: one line naming the problem (dtype, rank, length, a label out of range,
            NaN or infinite features, negative token ids) and the fix.

    Example:
        >>> tokens = torch.randint(0, 50, (64, 12))
        >>> ds = FeatureDataset(tokens, torch.arange(64) % 2, num_classes=2)
        >>> x, y = ds[0]
        >>> x.shape, x.dtype, ds.augment(tokens, torch.Generator()) is tokens
        (torch.Size([12]), torch.int64, True)
    """

    def __init__(
        self,
        features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_classes: int | None = None,
        *,
        images: torch.Tensor | None = None,
        mean: tuple[float, ...] = (),
        std: tuple[float, ...] = (),
        crop_padding: int = 0,
        hflip: bool = False,
    ) -> None:
        samples = images if images is not None else features
        if samples is None or labels is None or num_classes is None:
            raise ValueError("FeatureDataset needs features, labels and num_classes")
        if tuple(mean) or tuple(std) or crop_padding or hflip:
            raise ValueError(
                "FeatureDataset has no normalisation or crop/flip: for uint8 images use "
                "ImageDataset(images, labels, num_classes, mean, std)"
            )
        # frozen dataclass: object.__setattr__ is the sanctioned way to set fields in init
        for name, value in (
            ("images", samples),
            ("labels", labels),
            ("num_classes", num_classes),
            ("mean", ()),
            ("std", ()),
            ("crop_padding", 0),
            ("hflip", False),
        ):
            object.__setattr__(self, name, value)
        self.__post_init__()

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not isinstance(x, torch.Tensor) or x.dtype not in FEATURE_DTYPES or x.dim() < 2:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
                hint = ": uint8 images belong in ImageDataset"
            elif isinstance(x, torch.Tensor) and x.dtype in FEATURE_DTYPES:
                hint = ": one value per sample is [N, 1] (x[:, None])"
            else:
                hint = ": convert with .float() (values) or .long() (token ids)"
            raise ValueError(
                f"features must be a float32 or int64 tensor [N, *shape], got {got}{hint}"
            )
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"labels must be an int64 tensor [N], got {got}: use .long()")
        if len(y) != len(x):
            raise ValueError(f"features and labels differ in length: {len(x)} != {len(y)}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise ValueError(f"num_classes must be an int, got {self.num_classes!r}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, num_classes={self.num_classes}), got range "
                f"[{int(y.min())}, {int(y.max())}]"
            )
        if x.dtype == torch.float32:
            bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
            if bool(bad.any()):
                raise ValueError(
                    f"features hold NaN or infinity (first in sample {int(bad.nonzero()[0])}): "
                    "fill or drop those values in the loader"
                )
        elif x.numel() and int(x.min()) < 0:
            raise ValueError(f"token ids must be >= 0, got {int(x.min())}: re-map the vocabulary")
        if not x.is_contiguous():
            object.__setattr__(self, "images", x.contiguous())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return ``(sample [*shape], label)``: the sample as stored."""
        return self.images[index], int(self.labels[index])

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape, e.g. ``(20,)`` for 20 features or ``(L,)`` for L tokens."""
        return tuple(int(d) for d in self.images.shape[1:])

    @property
    def input_dtype(self) -> torch.dtype:
        """What the model receives: the stored dtype (float32 values or int64 token ids)."""
        return self.images.dtype

    def augment(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """No augmentation for features: returns ``batch`` and draws nothing from ``generator``.

        Example:
            >>> ds.augment(batch, torch.Generator()) is batch
            True
        """
        return batch

    def normalize(self, batch: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Model input of a batch of samples: the samples themselves (copied into ``out`` if
        one is given, which must have the batch's dtype and shape).

        Args:
            batch: ``[B, *shape]`` or ``[*shape]`` samples of this dataset's dtype.
            out: optional preallocated tensor.

        Returns:
            ``batch`` (or ``out`` holding a copy of it).

        Example:
            >>> ds.normalize(ds.images[:4]).dtype
            torch.float32
        """
        if batch.dtype != self.images.dtype:
            raise ValueError(f"normalize expects {self.images.dtype} samples, got {batch.dtype}")
        if out is None:
            return batch
        if out.dtype != batch.dtype or out.shape != batch.shape:
            raise ValueError(
                f"out must be {batch.dtype} with shape {tuple(batch.shape)}, "
                f"got {out.dtype} {tuple(out.shape)}"
            )
        return out.copy_(batch)

    def to(self, device: torch.device | str) -> FeatureDataset:
        """The same samples and labels on ``device`` (``self`` when already there)."""
        if self.images.device == torch.device(device):
            return self
        return FeatureDataset(self.images.to(device), self.labels.to(device), self.num_classes)

    def describe(self) -> str:
        """``"samples (20,) float32"``: how messages name this dataset's samples."""
        return f"samples {self.shape} {str(self.images.dtype).removeprefix('torch.')}"

    def __repr__(self) -> str:
        return f"FeatureDataset({len(self)} {self.describe()}, num_classes={self.num_classes})"
