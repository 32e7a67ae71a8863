"""Model construction by name, optionally with initial weights drawn from an explicit generator."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from blazefl.core.protocols import ModelSelector as ModelSelectorProtocol
from blazefl.models.char_lstm import char_lstm
from blazefl.models.cnn import CNN
from blazefl.models.inputs import factory_kwargs, is_image_input, model_factory_hook
from blazefl.models.resnet import resnet18
from blazefl.models.small_cnn import SmallCNN
from blazefl.registry import Registry
from blazefl.reproducibility.global_rng import GLOBAL_RNG_LOCK, global_rng_borrowed

__all__ = ["MODELS", "ModelSelector", "build_model"]

ModelFactory = Callable[..., nn.Module]
"""`factory(num_classes=, in_channels=, image_size=, dropout=) -> nn.Module` for images, or
`factory(num_classes=, input_shape=, dropout=[, input_dtype=])` for samples of any shape
(`blazefl.models.inputs`: each factory gets the keywords it accepts)."""

MODELS: Registry[ModelFactory] = Registry("model", adapt=model_factory_hook)
"""Models by config name (`model.name`); a user's own factory is given as 'pkg.module:factory'
(a plain function, or an `nn.Module` subclass) and called with the keyword arguments of
:data:`ModelFactory`; anything else is refused on import, before it is called."""
MODELS.register("cnn", lambda **kw: CNN(**kw))
MODELS.register("cnn_small", lambda *, dropout, **kw: SmallCNN(**kw))
MODELS.register(
    "resnet18",
    lambda *, dropout, image_size, **kw: resnet18(
        small_input=image_size <= _SMALL_INPUT_MAX_SIDE, **kw
    ),
)
MODELS.register("char_lstm", char_lstm)  # int64 character ids (shakespeare), not images
"""Names accepted by :func:`build_model` and :meth:`ModelSelector.select_model`."""

_SMALL_INPUT_MAX_SIDE = 64


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    input_dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Build a model by name.

    Without ``generator`` the model is built as usual, drawing its initial weights from torch's
    global RNG. With a (CPU) ``generator`` the global RNG's state is restored after
    construction (so it is not advanced), and every parameter and buffer is then initialised from
    ``generator`` in sorted module-name order: Linear and (for ``"cnn"`` and ``"cnn_small"``) Conv
    weights with PyTorch's default kaiming-uniform (``a=sqrt(5)``, i.e.
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), ResNet convs with torchvision's kaiming-normal
    (``fan_out``, relu), biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, norm weights 1 and
    biases 0, running stats reset, embeddings ``N(0, 1)`` and LSTM weights and biases
    ``U(-1/sqrt(hidden), 1/sqrt(hidden))`` (``"char_lstm"``; PyTorch's defaults too). Same
    generator state -> identical weights, whatever thread builds the model.

    Args:
        name: one of :data:`MODELS`.
        num_classes: number of output logits.
        in_channels: image channels.
        image_size: square input side (``"cnn"`` needs >= 16, ``"cnn_small"`` >= 4, e.g. 8x8
            digits); ResNet uses the small-image stem when it is <= 64.
        dropout: dropout probability (``"cnn"`` only; set ``model.generator`` before training).
        generator: CPU generator for the initial weights; advanced by the draws.
        input_shape: the per-sample shape the model receives (default: ``(in_channels,
            image_size, image_size)``); passed to a user factory that declares it. The
            built-ins take float images ``[C, H, W]`` only.
        input_dtype: what the model receives: ``torch.float32`` (images, vectors) or
            ``torch.int64`` (token ids); passed to a user factory that declares it.

    Returns:
        The model on the CPU, in training mode.

    Raises:
        ValueError: unknown ``name``, dropout for a model without dropout, non-CPU generator,
            non-image input for a built-in or for a factory without ``input_shape``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = build_model("cnn", num_classes=10, generator=g)
        >>> sum(p.numel() for p in model.parameters())
        62006
    """
    factory = MODELS.get(name)  # RegistryError (a ValueError) for an unknown name
    shape = (in_channels, image_size, image_size) if input_shape is None else tuple(input_shape)
    args = factory_kwargs(
        factory,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        dropout=dropout,
        input_shape=shape,
        input_dtype=input_dtype,
    )
    tokens = input_dtype == torch.int64
    if not is_image_input(shape, input_dtype) and "input_shape" not in args:
        what = "the built-in model" if name in MODELS else "model factory"
        raise ValueError(
            f"{what} {name!r} takes images [C, H, W] (in_channels=, image_size=), but the "
            f"data's samples are {shape} {str(input_dtype).removeprefix('torch.')}: name a "
            "factory that declares input_shape= (model.name: pkg.module:factory"
            + ("; char_lstm for character ids)" if len(shape) == 1 and tokens else ")")
        )
    if name not in MODELS:
        return _build_user_model(factory, name, args, generator)
    if name != "cnn" and dropout:
        raise ValueError(f"model {name!r} has no dropout; dropout={dropout} is only for 'cnn'")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator, got device {generator.device}")
    if generator is None:  # the caller asked for torch's own init (global draws)
        with GLOBAL_RNG_LOCK:
            return factory(**args)
    # Construction draws its throwaway default init from the global RNG; the borrow puts its
    # state back. (Building on the meta device would avoid the draws but imports torch's
    # symbolic-shape machinery: ~0.4 s and ~40 MB per process.)
    with global_rng_borrowed():
        model = factory(**args)
    conv_init = "kaiming_normal_fan_out" if name == "resnet18" else "default"
    _init_from_generator(model, generator, conv_init)
    return model


def _build_user_model(
    factory: ModelFactory,
    name: str,
    args: dict[str, Any],
    generator: torch.Generator | None,
) -> nn.Module:
    """Call a user's factory with `args` (`factory_kwargs`); with a generator, its default
    init draws from a global RNG seeded from that generator (and restored afterwards), so the
    weights are a function of the generator alone, whatever init scheme the user's modules
    use."""
    if generator is None:
        with GLOBAL_RNG_LOCK:
            model = factory(**args)
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with global_rng_borrowed(seed):  # seeded, built and restored; no other borrow between
            model = factory(**args)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model factory {name!r} returned {type(model).__name__}, not a Module")
    return model


@torch.no_grad()
def _init_from_generator(module: nn.Module, generator: torch.Generator, conv_init: str) -> None:
    """Initialise every parameter and buffer of ``module`` from ``generator``, in name order."""
    done: set[int] = set()
    for _, sub in sorted(module.named_modules(), key=lambda item: item[0]):
        if isinstance(sub, _ConvNd | nn.Linear):
            weight = sub.weight
            if isinstance(sub, _ConvNd) and conv_init == "kaiming_normal_fan_out":
                nn.init.kaiming_normal_(
                    weight, mode="fan_out", nonlinearity="relu", generator=generator
                )
            else:
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
            done.add(id(weight))
            if sub.bias is not None:
                fan_in = weight[0].numel()  # in_channels/groups * kernel elements
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(sub.bias, -bound, bound, generator=generator)
                done.add(id(sub.bias))
        elif isinstance(sub, _BatchNorm | nn.GroupNorm | nn.LayerNorm):
            if sub.weight is not None:
                nn.init.ones_(sub.weight)
                done.add(id(sub.weight))
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
                done.add(id(sub.bias))
            if isinstance(sub, _BatchNorm):
                sub.reset_running_stats()
                done.update(id(b) for b in sub.buffers(recurse=False))
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, generator=generator)
            if sub.padding_idx is not None:
                sub.weight[sub.padding_idx].zero_()
            done.add(id(sub.weight))
        elif isinstance(sub, nn.RNNBase):
            # PyTorch's reset_parameters: every weight and bias U(-1/sqrt(h), 1/sqrt(h)), in
            # the module's own parameter order (weight_ih_l0, weight_hh_l0, bias_ih_l0, ...)
            bound = 1.0 / math.sqrt(sub.hidden_size)
            for param in sub.parameters(recurse=False):
                nn.init.uniform_(param, -bound, bound, generator=generator)
                done.add(id(param))
    # to_empty() leaves garbage in anything not handled above: refuse rather than return it.
    left = [
        n for n, t in (*module.named_parameters(), *module.named_buffers()) if id(t) not in done
    ]
    if left:
        raise RuntimeError(f"no generator-driven initialisation rule for {left}")


class ModelSelector(ModelSelectorProtocol[str]):
    """BlazeFL-compatible factory: pick a model by name for a fixed data shape.

    An implementation of `blazefl.core.ModelSelector` (the original BlazeFL's protocol).

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        image_size: square input side length.

    Example:
        >>> ModelSelector(num_classes=10).select_model("cnn")
        CNN(...)
    """

    MODELS: Registry[ModelFactory] = MODELS

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32) -> None:
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size

    def select_model(self, name: str, generator: torch.Generator | None = None) -> nn.Module:
        """Build the model called ``name`` (see :func:`build_model`).

        Args:
            name: one of :data:`MODELS`.
            generator: optional CPU generator for the initial weights.

        Returns:
            The model.

        Raises:
            ValueError: unknown ``name``.
        """
        return build_model(
            name, self.num_classes, self.in_channels, self.image_size, generator=generator
        )
