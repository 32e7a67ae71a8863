"""SGD over a flattened model: one fused update per step instead of one per tensor."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FlatSGD"]


class FlatSGD:
    """SGD with momentum and weight decay on a model flattened by `flatten_module_`.

    The gradients become views of one flat buffer, so zeroing is one op and the update rule
    (the same as `torch.optim.SGD` with dampening 0 and no Nesterov)

        d = grad + weight_decay * p;  buf = d (first step) or momentum * buf + d;  p -= lr * buf

    runs as two or three ops over the whole parameter vector. It also avoids importing
    `torch.optim`, which pulls in torch's compiler stack (~1 s and ~150 MB per process).

    Args:
        model: the model; its parameters must be the leading views of `flat`.
        flat: the vector returned by `flatten_module_(model)`.
        lr / momentum / weight_decay: hyper-parameters.
        grad: the flat gradient buffer of another `FlatSGD` on the same model, to share it
            (two optimizers on one model must not re-point the gradients).

    Example:
        >>> flat = flatten_module_(model); opt = FlatSGD(model, flat, lr=0.1, momentum=0.9)
        >>> opt.zero_grad(); loss.backward(); opt.step()
    """

    def __init__(
        self,
        model: nn.Module,
        flat: torch.Tensor,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        grad: torch.Tensor | None = None,
    ) -> None:
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"need lr > 0, momentum >= 0, weight_decay >= 0; got {lr}, {momentum}, "
                f"{weight_decay}"
            )
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        offset = 0
        params = list(dict.fromkeys(model.parameters()))  # unique, in registration order
        base = flat.untyped_storage().data_ptr()
        for p in params:
            if (
                p.untyped_storage().data_ptr() != base
                or p.storage_offset() != flat.storage_offset() + offset
            ):
                raise ValueError("FlatSGD needs a model flattened by flatten_module_")
            offset += p.numel()
        self.params = flat[:offset]
        if grad is not None and grad.shape != self.params.shape:
            raise ValueError("grad must be the flat gradient of the same model")
        self.grad = grad if grad is not None else torch.zeros_like(self.params)
        self._buf = torch.zeros_like(self.params) if momentum else None
        self._fresh = True
        start = 0
        for p in params:  # backward accumulates in place into these views
            p.grad = self.grad[start : start + p.numel()].view_as(p)
            start += p.numel()

    def reset(self) -> None:
        """Forget the momentum (a new client starts from fresh optimizer state)."""
        self._fresh = True

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero the gradients in place (they stay views of the flat buffer)."""
        del set_to_none
        self.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        d = self.grad
        if self.weight_decay:
            d.add_(self.params, alpha=self.weight_decay)
        if self._buf is not None:
            if self._fresh:
                self._buf.copy_(d)
                self._fresh = False
            else:
                self._buf.mul_(self.momentum).add_(d)
            d = self._buf
        self.params.add_(d, alpha=-self.lr)
