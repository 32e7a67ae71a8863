"""Model state as one flat vector, and as a sorted state dict for artifacts.

:func:`serialize_model` / :func:`deserialize_model` keep the original BlazeFL contract (every
``state_dict`` entry, buffers included, in ``state_dict`` order); :func:`flatten_module_` is this
package's zero-copy variant for the hot path (floating-point tensors only, re-pointed in place).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "deserialize_model",
    "flatten_module_",
    "float_state_names",
    "load_model_state_dict",
    "model_state_dict",
    "serialize_model",
]


def serialize_model(model: nn.Module, cpu: bool = True) -> torch.Tensor:
    """Concatenate every ``state_dict`` entry of ``model`` into one new 1-D tensor.

    Parameters and buffers alike (``BatchNorm`` running stats and its integer
    ``num_batches_tracked`` too), flattened in ``state_dict`` order; mixed dtypes follow torch's
    type promotion (float32 parameters with an int64 buffer give float32). The result never
    aliases the model.

    Args:
        model: the model to read.
        cpu: move the result to the CPU (default); ``False`` keeps it on the model's device.

    Returns:
        A fresh 1-D tensor of ``sum(t.numel() for t in model.state_dict().values())`` elements
        (empty float32 for a model without state).

    Example:
        >>> net = nn.Linear(3, 2)
        >>> serialize_model(net).shape
        torch.Size([8])
    """
    tensors = [t.detach().reshape(-1) for t in model.state_dict().values()]
    flat = torch.cat(tensors) if tensors else torch.empty(0)
    return flat.cpu() if cpu else flat


def deserialize_model(model: nn.Module, serialized_parameters: torch.Tensor) -> None:
    """Copy a :func:`serialize_model` vector back into ``model``'s state in place.

    Each ``state_dict`` entry takes the next ``numel`` elements, cast to its own dtype and moved
    to its own device, so a model built the same way gets back exactly its state.

    Args:
        model: the model to update (same architecture as the serialized one).
        serialized_parameters: 1-D tensor from :func:`serialize_model`.

    Raises:
        ValueError: the vector's length is not the model's total state size.

    Example:
        >>> a, b = nn.Linear(3, 2), nn.Linear(3, 2)
        >>> deserialize_model(b, serialize_model(a))
        >>> torch.equal(a.weight, b.weight)
        True
    """
    state = list(model.state_dict().values())
    expected = sum(t.numel() for t in state)
    flat = serialized_parameters.reshape(-1)
    if flat.numel() != expected:
        raise ValueError(
            f"serialized model has {flat.numel()} elements but the model's state has "
            f"{expected}; serialize a model with the same architecture"
        )
    offset = 0
    with torch.no_grad():
        for tensor in state:
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()


def float_state_names(module: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers, in `state_dict` order."""
    return [k for k, v in module.state_dict().items() if v.is_floating_point()]


def flatten_module_(module: nn.Module) -> torch.Tensor:
    """Re-point every floating-point parameter and buffer of `module` into one flat tensor.

    Afterwards loading a global model is one `flat.copy_(vector)` and producing an uplink is
    one `flat.clone()`: no per-tensor Python loop on the hot path. Create optimizers after
    calling this (they must hold the re-pointed parameters).

    Args:
        module: the model; modified in place.

    Returns:
        The flat float32 vector (a view source of every float tensor in the module).

    Example:
        >>> flat = flatten_module_(model); flat.copy_(global_vector)
    """
    entries: list[tuple[nn.Module, str, bool, torch.Tensor]] = []
    shared_buffers: list[tuple[nn.Module, str, torch.Tensor]] = []
    seen: set[int] = set()  # tied parameters/buffers get one slot, not one per owner
    for mod in module.modules():
        for name, p in mod._parameters.items():
            if p is not None and p.is_floating_point() and id(p) not in seen:
                seen.add(id(p))
                entries.append((mod, name, True, p))
        for name, b in mod._buffers.items():
            if b is None or not b.is_floating_point():
                continue
            if id(b) in seen:
                shared_buffers.append((mod, name, b))
            else:
                seen.add(id(b))
                entries.append((mod, name, False, b))
    # parameters first, then buffers: the parameters then form one prefix `flat[:n]` that a
    # flat optimizer (`FlatSGD`) updates with a single fused op per step
    entries.sort(key=lambda e: not e[2])
    dtypes = {t.dtype for *_, t in entries}
    if len(dtypes) > 1:
        raise TypeError(f"flatten_module_ needs one float dtype, found {sorted(map(str, dtypes))}")
    total = sum(t.numel() for *_, t in entries)
    # on the module's device: a model moved to a GPU keeps its flat vector there
    device = entries[0][3].device if entries else None
    flat = torch.empty(total, dtype=next(iter(dtypes)) if dtypes else torch.float32, device=device)
    offset = 0
    views: dict[int, torch.Tensor] = {}
    for mod, name, is_param, t in entries:
        view = flat[offset : offset + t.numel()].view_as(t)
        view.copy_(t.detach())
        if is_param:
            t.data = view  # the Parameter object stays (tied owners share it)
        else:
            mod._buffers[name] = view
            views[id(t)] = view
        offset += t.numel()
    for mod, name, b in shared_buffers:  # a buffer registered in two modules: one view
        mod._buffers[name] = views[id(b)]
    return flat


def model_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict, keys sorted, tensors contiguous and detached (for safetensors)."""
    state = module.state_dict()
    return {k: state[k].detach().contiguous().clone() for k in sorted(state)}


def load_model_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into `module` in place (keeps flat views intact); names must match exactly.

    Raises:
        ValueError: on missing/unexpected keys or shape mismatch, naming them.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"model state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for k, v in own.items():
            if v.shape != state[k].shape:
                raise ValueError(
                    f"shape mismatch for {k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
                )
            v.copy_(state[k])
