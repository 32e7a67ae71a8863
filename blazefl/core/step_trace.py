"""The step trace: a compact fingerprint of every local step of every client, so a divergence
between two runs (or between a run and its re-execution) is located at (round, client, epoch,
step) and explained: different samples, a different random stream, or the same inputs through
different kernels.

Per step, four 64-bit fingerprints are recorded after the optimizer step:

- ``batch``: BLAKE2b-64 of the batch's sample indices (int64 bytes);
- ``rng``: BLAKE2b-64 of the client generator's state (the stream that shuffles and augments);
- ``bits``: the sum, in int64, of the raw bit patterns of the model's flat float state (each
  float32 read as an int32);
- ``value``: the float64 sum of the flat float state.

plus, per client, the fingerprint of its generator before the first step (``start_rng``).

Why these: a difference in any one parameter changes ``bits`` (a change of a single float's
bit pattern by d changes the int64 sum by d, and 0 < |d| < 2**32), so a step whose only effect
is one differing weight is never missed; several differing weights are missed only if their
bit-pattern changes sum to exactly zero *and* their float64 sum is unchanged, which for the
independent rounding differences that different kernels produce is vanishingly rare (and the
next step, where differences spread, is then named). Both reductions run on the device the
model lives on and are read once per client, not once per step, so the cost is two passes over
the parameters per step: about 1 % of a step of the 62k-parameter CNN, less for ResNet-18.

A plugin with its own training loop adds its steps with :func:`record_step`; the built-in
`LocalSGD` records its own. Outside a client task (no active trace) recording does nothing.

Example:
    >>> with tracing(rng.torch) as trace:
    ...     for epoch in range(2):
    ...         for batch in batches:
    ...             ...  # forward, backward, optimizer step
    ...             record_step(batch, rng.torch, flat_params, epoch=epoch)
    >>> trace.tensors()["bits"].shape
    torch.Size([steps])
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator, Mapping

import torch

__all__ = [
    "TRACE_COLUMNS",
    "StepTrace",
    "active_trace",
    "combine_traces",
    "split_traces",
    "generator_fingerprint",
    "indices_fingerprint",
    "record_step",
    "tracing",
]

#: The per-step columns of a client's trace (and their dtypes), in file order.
TRACE_COLUMNS: dict[str, torch.dtype] = {
    "epoch": torch.int64,
    "batch": torch.int64,
    "rng": torch.int64,
    "bits": torch.int64,
    "value": torch.float64,
}

_ACTIVE: contextvars.ContextVar[StepTrace | None] = contextvars.ContextVar(
    "blazefl_step_trace", default=None
)
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _digest64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def indices_fingerprint(indices: torch.Tensor) -> int:
    """BLAKE2b-64 of a batch's sample indices (as int64), as a signed int.

    Example:
        >>> indices_fingerprint(torch.tensor([3, 1])) == indices_fingerprint(torch.tensor([3, 1]))
        True
    """
    cpu = indices.detach().to("cpu", torch.int64).contiguous()
    return _digest64(cpu.numpy().tobytes())


def generator_fingerprint(generator: torch.Generator | None) -> int:
    """BLAKE2b-64 of a generator's state (0 for None).

    Example:
        >>> generator_fingerprint(torch.Generator().manual_seed(0)) != 0
        True
    """
    if generator is None:
        return 0
    return _digest64(generator.get_state().numpy().tobytes())


def _bits_view(flat: torch.Tensor) -> torch.Tensor:
    """The raw bit patterns of a float vector as signed integers of the same width."""
    return flat.detach().reshape(-1).view(_BITS[flat.element_size()])


class StepTrace:
    """One client's step fingerprints (see the module docstring).

    Args:
        start_rng: the fingerprint of the client's generator before its first step.
    """

    def __init__(self, start_rng: int = 0) -> None:
        self.start_rng = start_rng
        self._epoch: list[int] = []
        self._batch: list[int] = []
        self._rng: list[int] = []
        # the parameter reductions stay on the model's device until the client ends
        self._bits: list[torch.Tensor] = []
        self._value: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self._epoch)

    def add(
        self,
        batch: torch.Tensor,
        generator: torch.Generator | None,
        params: torch.Tensor,
        epoch: int,
    ) -> None:
        """Record one step (after the optimizer step); see :func:`record_step`."""
        with torch.no_grad():
            self._bits.append(_bits_view(params).sum(dtype=torch.int64))
            self._value.append(params.detach().sum(dtype=torch.float64))
        self._epoch.append(int(epoch))
        self._batch.append(indices_fingerprint(batch))
        self._rng.append(generator_fingerprint(generator))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The trace as CPU tensors: one row per step (`TRACE_COLUMNS`) and `start_rng`."""
        bits = torch.stack(self._bits).cpu() if self._bits else torch.zeros(0, dtype=torch.int64)
        value = (
            torch.stack(self._value).cpu() if self._value else torch.zeros(0, dtype=torch.float64)
        )
        return {
            "epoch": torch.tensor(self._epoch, dtype=torch.int64),
            "batch": torch.tensor(self._batch, dtype=torch.int64),
            "rng": torch.tensor(self._rng, dtype=torch.int64),
            "bits": bits,
            "value": value,
            "start_rng": torch.tensor([self.start_rng], dtype=torch.int64),
        }


def active_trace() -> StepTrace | None:
    """The trace of the client task running in this thread, or None."""
    return _ACTIVE.get()


@contextlib.contextmanager
def tracing(generator: torch.Generator | None) -> Iterator[StepTrace]:
    """Collect the steps recorded in this thread while the block runs (one client task).

    Args:
        generator: the client's generator, fingerprinted before the first step.
    """
    trace = StepTrace(generator_fingerprint(generator))
    token = _ACTIVE.set(trace)
    try:
        yield trace
    finally:
        _ACTIVE.reset(token)


def record_step(
    batch: torch.Tensor,
    generator: torch.Generator | None,
    params: torch.Tensor,
    *,
    epoch: int = 0,
) -> None:
    """Add one local step to the running client's trace (call it after the optimizer step).

    The built-in `LocalSGD` calls it for you; a plugin with its own loop calls it once per
    step so its runs are audited to the step like the built-ins'. Nothing happens outside a
    client task.

    Args:
        batch: the step's sample indices (any integer tensor, any device).
        generator: the generator the step drew from (shuffling, augmentation), or None.
        params: the model's flat float state after the step (e.g. `flatten_module_` output),
            or any float tensor standing for it.
        epoch: the local epoch (0-based) the step belongs to.

    Example:
        >>> record_step(batch_indices, rng.torch, self.flat, epoch=e)
    """
    trace = _ACTIVE.get()
    if trace is not None:
        trace.add(batch, generator, params, epoch)


def combine_traces(traces: Mapping[int, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One round's client traces as one table (the round's `trace.safetensors`): the
    `TRACE_COLUMNS` of every step plus `cid` (its client), in ascending client id, and
    `clients` / `start_rng` with one entry per client.

    Example:
        >>> table = combine_traces({3: trace3, 5: trace5})
        >>> split_traces(table)[5]["bits"].equal(trace5["bits"])
        True
    """
    cids = sorted(traces)
    out = {
        name: torch.cat([traces[c][name].to(dtype) for c in cids])
        if cids
        else torch.zeros(0, dtype=dtype)
        for name, dtype in TRACE_COLUMNS.items()
    }
    counts = [int(traces[c]["epoch"].numel()) for c in cids]
    out["cid"] = torch.repeat_interleave(
        torch.tensor(cids, dtype=torch.int64), torch.tensor(counts, dtype=torch.int64)
    )
    out["clients"] = torch.tensor(cids, dtype=torch.int64)
    out["start_rng"] = (
        torch.cat([traces[c]["start_rng"].to(torch.int64).reshape(1) for c in cids])
        if cids
        else torch.zeros(0, dtype=torch.int64)
    )
    return out


def split_traces(table: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """The inverse of :func:`combine_traces`: every client's trace by client id.

    Raises:
        ValueError: the table is not one `combine_traces` wrote (missing or ragged columns).
    """
    needed = {*TRACE_COLUMNS, "cid", "clients", "start_rng"}
    if set(table) != needed:
        raise ValueError(f"a step trace holds {sorted(needed)}, got {sorted(table)}")
    rows = int(table["cid"].numel())
    if any(int(table[c].numel()) != rows or table[c].dim() != 1 for c in (*TRACE_COLUMNS, "cid")):
        raise ValueError("the columns of a step trace must be 1-D and of one length")
    clients = table["clients"].tolist()
    if len(clients) != int(table["start_rng"].numel()):
        raise ValueError("a step trace needs one start_rng per client")
    out = {}
    cid_col = table["cid"]
    for i, c in enumerate(clients):
        mask = cid_col == c
        out[int(c)] = {name: table[name][mask] for name in TRACE_COLUMNS}
        out[int(c)]["start_rng"] = table["start_rng"][i : i + 1]
    return out
