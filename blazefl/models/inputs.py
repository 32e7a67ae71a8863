"""What a model factory is told about its input, and the start-up check that model and data fit.

Image-era factories take ``num_classes=, in_channels=, image_size=, dropout=`` (square images);
a factory for other data declares ``input_shape=`` (the per-sample shape, a tuple) and
optionally ``input_dtype=`` (``torch.float32`` values or ``torch.int64`` token ids). Each
factory is called with the keywords it accepts, so factories written before ``input_shape``
existed get exactly the call they always got (and the same weights).

Example:
    >>> def mlp(*, num_classes, input_shape, dropout):
    ...     return nn.Linear(math.prod(input_shape), num_classes)
    >>> factory_kwargs(mlp, num_classes=3, in_channels=0, image_size=0, dropout=0.0,
    ...                input_shape=(20,), input_dtype=torch.float32)
    {'num_classes': 3, 'dropout': 0.0, 'input_shape': (20,)}
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from blazefl.registry import RegistryError, describe_kind
from blazefl.reproducibility.global_rng import global_rng_borrowed

__all__ = [
    "IMAGE_KEYWORDS",
    "SHAPE_KEYWORDS",
    "check_model_fits",
    "factory_kwargs",
    "is_image_input",
    "model_factory_hook",
]

#: The keywords every factory has been called with (square images).
IMAGE_KEYWORDS = ("num_classes", "in_channels", "image_size", "dropout")
#: The keywords of a factory for samples of any shape (input_dtype is optional on top).
SHAPE_KEYWORDS = ("num_classes", "input_shape", "dropout")
#: Passed only to a factory that names them.
_SHAPE_EXTRA = ("input_shape", "input_dtype")


def _parameters(factory: Callable[..., Any]) -> tuple[set[str], bool]:
    """(keyword names `factory` declares, whether it takes **kwargs)."""
    params = inspect.signature(factory).parameters.values()
    named = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def factory_kwargs(factory: Callable[..., Any], **values: Any) -> dict[str, Any]:
    """The keyword arguments to call `factory` with: the image keywords if it accepts them
    (by name or `**kwargs`, as every factory always has been called), `input_shape` and
    `input_dtype` only if it names them.

    Args:
        factory: the model factory (function or `nn.Module` subclass).
        values: every keyword of `IMAGE_KEYWORDS`, plus `input_shape` and `input_dtype`.

    Returns:
        The subset of `values` to pass.

    Example:
        >>> factory_kwargs(mlp, num_classes=3, in_channels=0, image_size=0, dropout=0.0,
        ...                input_shape=(20,), input_dtype=torch.float32)
        {'num_classes': 3, 'dropout': 0.0, 'input_shape': (20,)}
    """
    named, var_kw = _parameters(factory)
    out = {k: values[k] for k in IMAGE_KEYWORDS if k in named or var_kw}
    out.update({k: values[k] for k in _SHAPE_EXTRA if k in named})
    return out


def model_factory_hook(obj: Any, path: str) -> Any:
    """The `MODELS` registry's import check: a plain function or an `nn.Module` subclass that
    accepts the image keywords or the shape keywords (`input_dtype` too, if it names it: what
    `factory_kwargs` passes must bind); anything else is one line.

    Example:
        >>> MODELS = Registry("model", adapt=model_factory_hook)
    """
    # type() is: a FunctionType cannot be subclassed, and isinstance() would trust a user's
    # `__class__` property
    admitted = type(obj) is types.FunctionType or (
        issubclass(type(obj), type) and issubclass(obj, nn.Module)
    )
    image = ", ".join(f"{k}=" for k in IMAGE_KEYWORDS)
    shape = ", ".join(f"{k}=" for k in SHAPE_KEYWORDS)
    if not admitted:
        raise RegistryError(
            f"{path!r} resolves to {describe_kind(obj)}; name a plain Python function (def) "
            f"or a subclass of torch.nn.Module accepting {image} (keyword arguments)"
        )
    try:  # the call build_model makes: every keyword it would pass must bind
        kwargs = factory_kwargs(obj, **dict.fromkeys((*IMAGE_KEYWORDS, *_SHAPE_EXTRA)))
        inspect.signature(obj).bind(**kwargs)
    except (TypeError, ValueError):
        kwargs = {}
    if {"num_classes", "dropout"} <= kwargs.keys() and (
        {"in_channels", "image_size"} <= kwargs.keys() or "input_shape" in kwargs
    ):
        return obj
    raise RegistryError(
        f"{path!r} ({describe_kind(obj)}) must accept {image} (keyword arguments), or "
        f"{shape} for data that are not images"
    )


def is_image_input(shape: tuple[int, ...], dtype: torch.dtype) -> bool:
    """Whether samples of `shape`/`dtype` reach a model as images: float `[C, H, W]` (what
    the built-in models and image-era factories take).

    Example:
        >>> is_image_input((3, 32, 32), torch.float32), is_image_input((20,), torch.float32)
        (True, False)
    """
    return len(shape) == 3 and dtype.is_floating_point


def _shapes(x: torch.Tensor) -> str:
    return f"{list(x.shape)} {str(x.dtype).removeprefix('torch.')}"


@torch.no_grad()
def check_model_fits(model: nn.Module, data: Any, model_name: str, dataset_name: str) -> None:
    """Feed one sample of `data` to `model` (eval mode, on the CPU) and check the logits.

    A model that cannot take the dataset's samples, or returns other than ``[B,
    num_classes]`` logits, would otherwise fail inside the first client's training step;
    this runs before anything is written. Nothing changes: the model's training flag and
    torch's global RNG are put back, and eval mode draws no dropout masks. For token ids the
    sample holding the largest id is fed too, so an embedding that is too small is caught.

    Args:
        model: a freshly built model (on the CPU).
        data: the training set (`ImageDataset` or `FeatureDataset`).
        model_name / dataset_name: how the message names them (config values).

    Raises:
        ValueError: one line naming the model, the dataset, the shapes and the fix.

    Example:
        >>> check_model_fits(build_model("cnn", 10), synthetic_dataset(4, 0), "cnn", "synthetic")
    """
    if len(data) == 0:
        return
    rows = [0]
    if data.images.dtype == torch.int64:  # token ids: also the sample with the largest id
        rows.append(int(data.images.reshape(len(data), -1).amax(dim=1).argmax()))
    x = data.normalize(data.images[sorted(set(rows))])
    where = f"model.name {model_name!r} does not fit data.dataset {dataset_name!r}"
    was_training = model.training
    try:
        model.eval()
        with global_rng_borrowed():  # a model that draws in eval mode leaves no trace
            out = model(x)
    except Exception as exc:
        text = " ".join(str(exc).split())[:140]
        tokens = data.images.dtype == torch.int64
        hint = f"largest token id {int(data.images.max())}; " if tokens else ""
        raise ValueError(
            f"{where}: input {_shapes(x)} ({data.describe()}; {hint}"
            f"{type(exc).__name__}: {text}): make the model take input_shape {data.shape} "
            "(a factory gets it by declaring input_shape=) or fix the loader"
        ) from None
    finally:
        model.train(was_training)
    want = [len(x), data.num_classes]
    if not isinstance(out, torch.Tensor) or list(out.shape) != want or not out.is_floating_point():
        got = _shapes(out) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{where}: input {_shapes(x)} gave {got}, expected float logits {want} "
            f"(num_classes={data.num_classes}): make the model end in num_classes outputs"
        )
