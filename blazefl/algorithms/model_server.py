"""`ModelServerHandler`: the set-up every model-holding server shares, in one place.

FedAvg, FedAvgM, SCAFFOLD, DS-FL and a researcher's own server all hold a global model as one
flat vector, count its trainable weights the same way, take uplinks in ascending client-id
order, report the same base metrics and, when they keep state between rounds, snapshot it.
Each of those is written once here; an algorithm adds only what makes it different.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic

import torch
from torch import nn

from blazefl.algorithms.common import evaluate_model
from blazefl.core.packages import DownlinkT, UplinkT
from blazefl.core.serialization import flatten_module_
from blazefl.core.server import BaseServerHandler, ServerSettings

__all__ = ["ModelServerHandler", "trainable_count"]


def trainable_count(model: nn.Module) -> int:
    """The number of float parameter entries of `model`, tied parameters once: the length of
    the prefix of `flatten_module_(model)` that holds the trainable weights.

    Example:
        >>> trainable_count(nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in dict.fromkeys(model.parameters()) if p.is_floating_point())


class ModelServerHandler(BaseServerHandler[UplinkT, DownlinkT], Generic[UplinkT, DownlinkT]):
    """Base of servers that hold a global model (subclass it; `load` and `global_update` are
    the algorithm's).

    Args:
        model: the global model; its float parameters and buffers become views into `flat`.
        settings: counts, the server's generators, test set and evaluation device.
        hparams: the algorithm's hyper-parameters (its config section), kept as `hparams`.

    Attributes (besides `BaseServerHandler`'s):
        model: the global model.
        flat: the model's float state as one vector (`flatten_module_`): parameters first,
            tied ones once, then buffers.
        num_params: how many leading entries of `flat` are trainable weights.
        params: `flat[:num_params]`, a view (write it to move the model's weights).
        hparams: as given.
        test_set / eval_device: from the settings; `summary` evaluates there.
        train_loss: the last round's mean client loss as the algorithm defines it (None
            before the first round).

    State that outlives a round: name tensor attributes in the class variable `state`
    (``state = ("m", "v")``) and the pipeline snapshots them every round and restores them
    before the next one (`state_tensors` / `load_state_tensors` are provided; a restore checks
    names, dtypes, shapes and finiteness against the attributes' current values). A class that
    needs other checks defines the two methods itself instead.

    Example:
        >>> class Mean(ModelServerHandler[MyUplink, MyDownlink]):
        ...     def load(self, payload):
        ...         self.check_order(payload.cid)
        ...         ...
    """

    #: names of tensor attributes snapshotted with every round (empty: no state)
    state: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # the pipeline treats a server with these two methods as stateful; give them only to
        # classes that declare state, so a stateless server writes no state file
        if cls.state and "state_tensors" not in cls.__dict__:
            cls.state_tensors = ModelServerHandler._declared_state  # type: ignore[attr-defined]
        if cls.state and "load_state_tensors" not in cls.__dict__:
            cls.load_state_tensors = ModelServerHandler._load_declared_state  # type: ignore[attr-defined]

    def __init__(self, model: nn.Module, settings: ServerSettings, hparams: Any = None) -> None:
        super().__init__(settings)
        self.model = model
        self.flat = flatten_module_(model)
        self.num_params = trainable_count(model)
        self.hparams = hparams
        self.test_set = settings.test_set
        self.eval_device = settings.eval_device
        self.train_loss: float | None = None
        self._last_cid = -1

    @property
    def params(self) -> torch.Tensor:
        """The trainable weights, `flat[:num_params]` (a view)."""
        return self.flat[: self.num_params]

    def check_order(self, cid: int) -> None:
        """Refuse an uplink that does not come after the last one in client-id order (the
        aggregation order is part of the result bytes).

        Raises:
            ValueError: `cid` is not greater than the previous uplink's.
        """
        if cid <= self._last_cid:
            raise ValueError("uplinks must be loaded in ascending client-id order")
        self._last_cid = cid

    def end_round(self) -> None:
        """Advance the round counter and accept a new round's uplinks (call at the end of
        `global_update`)."""
        self.round += 1
        self._last_cid = -1

    def round_metrics(self) -> dict[str, Any]:
        """The algorithm's own metrics of the last round, reported between `train_loss` and
        the test metrics (override to add some; numbers only)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """`round`, `train_loss` (after the first round), `round_metrics()` and, with a test
        set, `test_loss` and `test_accuracy` of the current global model."""
        out: dict[str, Any] = {"round": self.round}
        if self.train_loss is not None:
            out["train_loss"] = self.train_loss
        out.update(self.round_metrics())
        if self.test_set is not None:
            metrics = evaluate_model(self.model, self.test_set, device=self.eval_device)
            out["test_loss"], out["test_accuracy"] = metrics["loss"], metrics["accuracy"]
        return out

    # -- declared state (see the class docstring) ---------------------------------------------
    def _declared_state(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).clone().contiguous() for name in self.state}

    def _load_declared_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if set(tensors) != set(self.state):
            raise ValueError(
                f"{type(self).__name__} state must hold {sorted(self.state)}, got {sorted(tensors)}"
            )
        for name in self.state:
            now, got = getattr(self, name), tensors[name]
            if got.dtype != now.dtype or got.shape != now.shape:
                raise ValueError(
                    f"state {name!r} must be {now.dtype} {list(now.shape)}, got {got.dtype} "
                    f"{list(got.shape)}"
                )
            if got.is_floating_point() and not bool(torch.isfinite(got).all()):
                raise ValueError(f"state {name!r} holds NaN or infinite values")
        for name in self.state:
            setattr(self, name, tensors[name].clone().contiguous())
