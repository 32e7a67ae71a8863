"""Model state as one flat vector, and as a sorted state dict for artifacts."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["flatten_module_", "float_state_names", "model_state_dict", "load_model_state_dict"]


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
    flat = torch.empty(total, dtype=next(iter(dtypes)) if dtypes else torch.float32)
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
