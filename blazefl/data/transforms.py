"""Batched, generator-driven augmentation and dropout.

torchvision transforms and ``nn.Dropout`` draw from torch's process-global generator, which
client threads share and race on (see the determinism rules in the README). Everything here
draws only from the ``torch.Generator`` it is given, works on a whole ``[B, C, H, W]`` batch
per call (no Python loop over samples), and so gives the same bits in any thread or worker for
the same generator state.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "GeneratorDropout",
    "GeneratorRandomCrop",
    "GeneratorRandomHorizontalFlip",
    "dropout",
    "random_crop",
    "random_horizontal_flip",
]


def _check_batch(batch: torch.Tensor, name: str) -> None:
    if batch.dim() != 4:
        raise ValueError(f"{name} expects a [B, C, H, W] batch, got shape {tuple(batch.shape)}")


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def random_crop(
    batch: torch.Tensor,
    padding: int,
    generator: torch.Generator,
    *,
    size: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """Zero-pad every image by ``padding`` pixels, then crop each at its own random offset.

    Args:
        batch: ``[B, C, H, W]`` tensor of any dtype.
        padding: pixels of zero padding on each side (>= 0).
        generator: the only source of randomness (two ``randint`` draws of ``B`` per call).
        size: crop ``(height, width)`` (or an int for square); defaults to ``(H, W)``.

    Returns:
        A new ``[B, C, h, w]`` tensor. With ``padding=0`` and the default size, ``batch`` itself
        is returned and the generator is not advanced.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> random_crop(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), 4, g).shape
        torch.Size([8, 3, 32, 32])
    """
    _check_batch(batch, "random_crop")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = batch.shape
    crop_h, crop_w = (h, w) if size is None else _pair(size)
    padded_h, padded_w = h + 2 * padding, w + 2 * padding
    if not (0 < crop_h <= padded_h and 0 < crop_w <= padded_w):
        raise ValueError(
            f"crop size {(crop_h, crop_w)} must fit the padded image {(padded_h, padded_w)}"
        )
    if padded_h == crop_h and padded_w == crop_w:
        return batch  # only one possible crop: skip the copy and the draw
    padded = batch.new_zeros((b, c, padded_h, padded_w))
    padded[:, :, padding : padding + h, padding : padding + w] = batch
    # One draw for all offsets; the upper bound is exclusive, hence + 1.
    top = torch.randint(0, padded_h - crop_h + 1, (b,), generator=generator)
    left = torch.randint(0, padded_w - crop_w + 1, (b,), generator=generator)
    # unfold makes a zero-copy view of every window, [B, C, top, left, h, w]; indexing it with
    # one (top, left) pair per sample copies just the B chosen windows into [B, C, h, w]. This
    # is ~5x faster than per-pixel advanced indexing.
    windows = padded.unfold(2, crop_h, 1).unfold(3, crop_w, 1)
    return windows[torch.arange(b), :, top, left]


def random_horizontal_flip(
    batch: torch.Tensor, p: float, generator: torch.Generator
) -> torch.Tensor:
    """Mirror each image left-right independently with probability ``p``.

    Args:
        batch: ``[B, C, H, W]`` tensor of any dtype.
        p: flip probability in ``[0, 1]``; 0 flips none, 1 flips all.
        generator: the only source of randomness; exactly ``B`` uniforms are drawn per call
            whatever ``p`` is, so the generator's position does not depend on ``p``.

    Returns:
        A new tensor of the same shape.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.arange(4.0).view(1, 1, 1, 4)
        >>> random_horizontal_flip(x, 1.0, g).flatten().tolist()
        [3.0, 2.0, 1.0, 0.0]
    """
    _check_batch(batch, "random_horizontal_flip")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    # rand is in [0, 1): "< p" is never true for p=0 and always true for p=1.
    flip = torch.rand(batch.shape[0], generator=generator) < p
    out = batch.clone()
    chosen = flip.nonzero().squeeze(1)
    if chosen.numel():
        out[chosen] = batch[chosen].flip(-1)
    return out


def dropout(
    x: torch.Tensor, p: float, generator: torch.Generator, training: bool = True
) -> torch.Tensor:
    """Inverted dropout drawing its mask from ``generator`` (never the global RNG).

    Args:
        x: floating-point input of any shape; gradients flow through the multiplication.
        p: probability of zeroing an element, in ``[0, 1]``.
        generator: the only source of randomness (one ``bernoulli_`` over ``x``'s shape).
        training: when False (or ``p == 0``) ``x`` is returned unchanged and nothing is drawn.

    Returns:
        ``x * mask / (1 - p)`` with ``mask ~ Bernoulli(1 - p)``; all zeros when ``p == 1``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> dropout(torch.ones(10_000), 0.5, g).mean().round(decimals=1).item()
        1.0
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    # empty_like does not carry requires_grad, so the mask stays a constant for autograd.
    mask = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator)
    if p < 1.0:
        mask.div_(1.0 - p)
    return x * mask


_NO_GENERATOR = (
    "{name} is in training mode but has no generator: set module.generator = "
    "torch.Generator().manual_seed(...) (one per client/thread) before the forward pass; "
    "the process-global RNG is never used"
)


class _GeneratorModule(nn.Module):
    """Base for modules that draw from a per-instance ``generator`` attribute.

    The generator is neither a parameter nor a buffer, so it is left out of ``state_dict``;
    whoever owns the module's RNG state (the client trainer) sets it before training. A module
    instance, like its generator, must not be shared by concurrently running threads.
    """

    def __init__(self) -> None:
        super().__init__()
        self.generator: torch.Generator | None = None

    def _require_generator(self) -> torch.Generator:
        if self.generator is None:
            raise RuntimeError(_NO_GENERATOR.format(name=type(self).__name__))
        return self.generator


class GeneratorRandomCrop(_GeneratorModule):
    """``nn.Module`` form of ``random_crop``; identity in eval mode.

    Args:
        size: crop ``(height, width)``, or an int for square crops.
        padding: zero padding on each side before cropping.

    Example:
        >>> crop = GeneratorRandomCrop(32, padding=4)
        >>> crop.generator = torch.Generator().manual_seed(0)
        >>> crop(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, size: int | tuple[int, int], padding: int = 0) -> None:
        super().__init__()
        self.size = _pair(size)
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = padding

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return batch
        return random_crop(batch, self.padding, self._require_generator(), size=self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, padding={self.padding}"


class GeneratorRandomHorizontalFlip(_GeneratorModule):
    """``nn.Module`` form of ``random_horizontal_flip``; identity in eval mode.

    Args:
        p: flip probability in ``[0, 1]``.

    Example:
        >>> flip = GeneratorRandomHorizontalFlip(0.5)
        >>> flip.generator = torch.Generator().manual_seed(0)
        >>> flip(torch.zeros(2, 3, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return batch
        return random_horizontal_flip(batch, self.p, self._require_generator())

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GeneratorDropout(_GeneratorModule):
    """Drop-in for ``nn.Dropout`` that draws its mask from ``self.generator``.

    Args:
        p: probability of zeroing an element, in ``[0, 1]``.

    Example:
        >>> drop = GeneratorDropout(0.5)
        >>> drop.generator = torch.Generator().manual_seed(0)
        >>> drop(torch.ones(4, 8)).shape
        torch.Size([4, 8])
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return dropout(x, self.p, self._require_generator(), training=True)

    def extra_repr(self) -> str:
        return f"p={self.p}"
