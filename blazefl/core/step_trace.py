"""The step trace: a compact fingerprint of every local step of every client, so a divergence
between two runs (or between a run and its re-execution) is located at (round, client, epoch,
step) and explained: different samples, a different random stream, or the same inputs through
different kernels.

Per step, after the optimizer step, three 64-bit fingerprints are recorded:

- ``batch``: of the batch's sample indices (in batch order);
- ``rng``: of the client generator's state (the stream that shuffles and augments);
- ``params``: of the model's flat float state (every float's raw bit pattern);

plus, per client, the fingerprint of its generator before its first step (``start_rng``).

Each fingerprint reads what it covers as 32-bit words (the int64 indices, the generator's
state bytes, every float's bit pattern) and packs two sums modulo 2**32 into 64 bits: the
plain sum of all words, and the sum of the first 2**20 words times fixed pseudo-random odd
weights (PCG64 from a constant seed: the same on every machine). Both are single passes that
run where the tensor lives; the parameter fingerprints are read once per client, never per
step. A difference in one word is always caught (an odd weight times a nonzero difference
below 2**32 is never a multiple of 2**32, nor is the difference itself); differences in
several words among the first 2**20 are missed with probability about 2**-32 over the
weights (measured: none in 12,000 perturbations of 2 to 100 parameters of the CNN by one or
two units in the last place, where a plain sum alone missed 3 % of the two-parameter ones).
Words past 2**20 (large models) count in the plain sum only: there, a multi-word difference
with a zero sum can go unseen for a step; the next step, which mixes every parameter into
every gradient, shows it.

A plugin with its own training loop adds its steps with :func:`record_step`; the built-in
`LocalSGD` records its own. Outside a client task (no active trace) recording does nothing.

Example:
    >>> with tracing(rng.torch) as trace:
    ...     for epoch in range(2):
    ...         for batch in batches:
    ...             ...  # forward, backward, optimizer step
    ...             record_step(batch, rng.torch, flat_params, epoch=epoch)
    >>> trace.tensors()["params"].shape
    torch.Size([steps])
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping

import numpy as np
import torch

__all__ = [
    "TRACE_COLUMNS",
    "StepTrace",
    "active_trace",
    "combine_traces",
    "split_traces",
    "generator_fingerprint",
    "indices_fingerprint",
    "params_fingerprint",
    "record_step",
    "tracing",
]

#: The per-step columns of a client's trace (and their dtypes), in file order.
TRACE_COLUMNS: dict[str, torch.dtype] = {
    "epoch": torch.int64,
    "batch": torch.int64,
    "rng": torch.int64,
    "params": torch.int64,
}

_ACTIVE: contextvars.ContextVar[StepTrace | None] = contextvars.ContextVar(
    "blazefl_step_trace", default=None
)


#: Entries that get a weight of their own (the rest count in the plain sum only).
_WEIGHTED = 1 << 20
_SEED = 0x5EED_7ACE  # fixed: fingerprints are comparable across runs, machines and versions
_WEIGHTS: dict[torch.device, torch.Tensor] = {}


def _weights(device: torch.device) -> torch.Tensor:
    """The 2**20 fixed odd int32 weights, cached per device."""
    w = _WEIGHTS.get(device)
    if w is None:
        raw = np.random.PCG64(_SEED).random_raw(_WEIGHTED).astype(np.uint32).view(np.int32) | 1
        w = _WEIGHTS[device] = torch.from_numpy(raw).to(device)
    return w


def _fingerprint(words: torch.Tensor) -> int | torch.Tensor:
    """Two 32-bit sums of 1-D int32 words packed in one signed 64-bit value: high half the
    weighted sum of the first 2**20 words, low half the plain sum of all of them, both modulo
    2**32 (see the module docstring). A Python int for CPU words; for words on a GPU, a 0-dim
    int64 tensor there (read it later: no synchronisation per step)."""
    w = _weights(words.device)
    n = int(words.numel())
    head = words if n <= _WEIGHTED else words[:_WEIGHTED]
    weighted = (head * (w if n >= _WEIGHTED else w[:n])).sum(dtype=torch.int32)
    plain = words.sum(dtype=torch.int32)
    if words.device.type == "cpu":
        return (int(weighted) << 32) | (int(plain) & 0xFFFFFFFF)
    return weighted.to(torch.int64) * (1 << 32) + (plain.to(torch.int64) & 0xFFFFFFFF)


def _words(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes as 1-D int32 words (zero-padded to a multiple of 4 bytes)."""
    t = t.detach()
    if (
        t.is_contiguous()
        and (t.numel() * t.element_size()) % 4 == 0
        and t.element_size() in (1, 2, 4, 8)
    ):
        return t.reshape(-1).view(torch.int32)
    raw = t.contiguous().reshape(-1).view(torch.uint8)
    if raw.numel() % 4:
        raw = torch.cat([raw, raw.new_zeros(4 - raw.numel() % 4)])
    return raw.view(torch.int32)


def indices_fingerprint(indices: torch.Tensor) -> int:
    """The fingerprint of a batch's sample indices (as int64, in order).

    Example:
        >>> indices_fingerprint(torch.tensor([3, 1])) != indices_fingerprint(torch.tensor([1, 3]))
        True
    """
    return int(_fingerprint(_words(indices.detach().to("cpu", torch.int64))))


def generator_fingerprint(generator: torch.Generator | None) -> int:
    """The fingerprint of a generator's state (0 for None).

    Example:
        >>> generator_fingerprint(torch.Generator().manual_seed(0)) != 0
        True
    """
    if generator is None:
        return 0
    return int(_fingerprint(_words(generator.get_state())))


def params_fingerprint(params: torch.Tensor) -> int | torch.Tensor:
    """The fingerprint of a float tensor's bit patterns: an int on the CPU, a 0-dim int64
    tensor on a GPU (read it when convenient: no synchronisation here).

    Example:
        >>> int(params_fingerprint(torch.ones(3))) != int(params_fingerprint(torch.zeros(3)))
        True
    """
    return _fingerprint(_words(params))


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
        # the parameter fingerprints stay on the model's device until the client ends
        self._params: list[int | torch.Tensor] = []

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
            self._params.append(params_fingerprint(params))
        self._epoch.append(int(epoch))
        self._batch.append(indices_fingerprint(batch))
        self._rng.append(generator_fingerprint(generator))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The trace as CPU tensors: one row per step (`TRACE_COLUMNS`) and `start_rng`."""
        on_device = [torch.as_tensor(p, dtype=torch.int64).cpu() for p in self._params]
        params = torch.stack(on_device) if on_device else torch.zeros(0, dtype=torch.int64)
        return {
            "epoch": torch.tensor(self._epoch, dtype=torch.int64),
            "batch": torch.tensor(self._batch, dtype=torch.int64),
            "rng": torch.tensor(self._rng, dtype=torch.int64),
            "params": params,
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
