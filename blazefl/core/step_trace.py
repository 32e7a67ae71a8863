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
state bytes, every float's bit pattern), lays them out as rows of 4,096 columns and packs two
sums modulo 2**32 into 64 bits: the column sums and the row sums, each weighted by fixed
pseudo-random odd weights (PCG64 from a constant seed: the same on every machine). Two
reductions that run where the tensor lives and allocate nothing the size of the tensor (a
step's parameters stay in cache for the next step); parameter fingerprints are read once per
client, never per step. A difference in one word is always caught (an odd weight times a
nonzero difference below 2**32 is never a multiple of 2**32); a difference spread over
several words is missed only if both weighted sums cancel, with probability about 2**-32 over
the weights (measured: none in 12,000 perturbations of 2 to 100 parameters of the CNN by one
or two units in the last place, where a plain sum missed 3 % of the two-parameter ones).

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
from typing import Any

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


#: Words are read as rows of this many columns; the fingerprint weights columns and rows.
_COLS = 1 << 12
#: Rows weighted one by one (past this a tensor of 2**32 words and more shares row weights).
_ROWS = 1 << 20
_SEED = 0x5EED_7ACE  # fixed: fingerprints are comparable across runs, machines and versions
_WEIGHTS: dict[torch.device, torch.Tensor] = {}


def _weights(device: torch.device) -> torch.Tensor:
    """The fixed odd int32 weights: `_COLS` column weights, then `_ROWS` row weights."""
    w = _WEIGHTS.get(device)
    if w is None:
        raw = np.random.PCG64(_SEED).random_raw(_COLS + _ROWS).astype(np.uint32)
        w = _WEIGHTS[device] = torch.from_numpy(raw.view(np.int32) | 1).to(device)
    return w


_NP_WEIGHTS: list[np.ndarray] = []


def _np_weights() -> np.ndarray:
    """The first `_COLS + 1` weights as a numpy array (cached)."""
    if not _NP_WEIGHTS:
        _NP_WEIGHTS.append(_weights(torch.device("cpu"))[: _COLS + 1].numpy())
    return _NP_WEIGHTS[0]


def _pack(cols: Any, rows: Any) -> int:
    return (int(cols) << 32) | (int(rows) & 0xFFFFFFFF)


Partial = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _partial(words: torch.Tensor) -> Partial:
    """The part of a fingerprint that reads the words (two reductions, on their device): the
    column sums and row sums of the full rows, and a copy of the short last row."""
    full = int(words.numel()) // _COLS * _COLS
    grid = words[:full].view(-1, _COLS)
    return grid.sum(0, dtype=torch.int32), grid.sum(1, dtype=torch.int32), words[full:].clone()


def _combine(colsum: torch.Tensor, rowsum: torch.Tensor, tail: torch.Tensor) -> int | torch.Tensor:
    """The fingerprint from `_partial`'s sums: a Python int on the CPU, a 0-dim int64 tensor
    on a GPU."""
    w = _weights(colsum.device)
    if tail.numel():
        colsum = colsum.clone()
        colsum[: tail.numel()] += tail
        rowsum = torch.cat([rowsum, tail.sum(dtype=torch.int32).view(1)])
    rows = int(rowsum.numel())
    row_w = w[_COLS : _COLS + min(rows, _ROWS)].repeat((rows + _ROWS - 1) // _ROWS)[:rows]
    cols_t = (colsum * w[:_COLS]).sum(dtype=torch.int32)
    rows_t = (rowsum * row_w).sum(dtype=torch.int32)
    if colsum.device.type == "cpu":
        return _pack(cols_t, rows_t)
    return cols_t.to(torch.int64) * (1 << 32) + (rows_t.to(torch.int64) & 0xFFFFFFFF)


def _fingerprint(words: torch.Tensor) -> int | torch.Tensor:
    """The fingerprint of 1-D int32 words laid out as rows of `_COLS` columns (the last row
    short): high 32 bits the column sums weighted by fixed odd weights, low 32 bits the row
    sums weighted the same way, both modulo 2**32 (see the module docstring)."""
    n = int(words.numel())
    if words.device.type == "cpu" and n <= _COLS:
        # one row (generator states, batch indices): numpy, less dispatch than torch
        a, wn = words.numpy(), _np_weights()
        rows = (np.array([a.sum(dtype=np.int32)]) * wn[_COLS : _COLS + 1]).sum(dtype=np.int32)
        return _pack((a * wn[:n]).sum(dtype=np.int32), rows)
    return _combine(*_partial(words))


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


def _pack_all(cols: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`_pack` of many: int32 column and row sums -> int64 fingerprints."""
    return cols.to(torch.int64) * (1 << 32) + (rows.to(torch.int64) & 0xFFFFFFFF)


def _rows_fingerprints(words: torch.Tensor) -> torch.Tensor:
    """The fingerprints of each row of a [S, n] int32 CPU tensor with n <= `_COLS` (zero
    padding at the end of a row does not change it)."""
    if words.shape[1] > _COLS:  # rows longer than one grid row (batches of > 2,048 indices)
        return torch.stack([torch.as_tensor(_fingerprint(r)) for r in words])
    w = _weights(words.device)
    cols = (words * w[: words.shape[1]]).sum(1, dtype=torch.int32)
    rows = words.sum(1, dtype=torch.int32) * w[_COLS]
    return _pack_all(cols, rows)


def _padded_words(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Each 1-D tensor's words as one row, zero-padded to the longest ([len, max words])."""
    on_cpu = all(t.device.type == "cpu" and t.dim() == 1 for t in tensors)
    flat = tensors if on_cpu else [t.detach().reshape(-1).to("cpu") for t in tensors]
    if len({t.dtype for t in flat}) == 1 and flat[0].element_size() in (4, 8):
        if len({t.numel() for t in flat}) == 1:
            return torch.stack(flat).view(torch.int32)  # one copy for the common case
        return torch.nn.utils.rnn.pad_sequence(flat, batch_first=True).view(torch.int32)
    rows = [_words(t) for t in flat]
    out = torch.zeros((len(rows), max(int(r.numel()) for r in rows)), dtype=torch.int32)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out


class StepTrace:
    """One client's step fingerprints (see the module docstring).

    A step costs the two reductions over the parameters and a copy of the generator state;
    everything else (the weighted sums, the batch and generator fingerprints) is done once per
    client, for all its steps at once, in `tensors()`, outside the training loop.

    Args:
        start_state: the client's generator state before its first step (None: none).
    """

    def __init__(self, start_state: torch.Tensor | None = None) -> None:
        self._start = start_state
        self._epoch: list[int] = []
        self._batch: list[torch.Tensor] = []
        self._state: list[torch.Tensor | None] = []
        self._params: list[Partial] = []  # on the model's device until the client ends
        # the parameters' words as full rows and a short last row (views, made once per tensor)
        self._words: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

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
        if self._words is None or self._words[0] is not params:  # a loop passes one tensor
            words = _words(params)
            full = int(words.numel()) // _COLS * _COLS
            self._words = (params, words[:full].view(-1, _COLS), words[full:])
        _, grid, tail = self._words
        self._params.append(
            (grid.sum(0, dtype=torch.int32), grid.sum(1, dtype=torch.int32), tail.clone())
        )
        self._state.append(None if generator is None else generator.get_state())
        self._batch.append(batch.detach())
        self._epoch.append(int(epoch))

    def _params_column(self) -> torch.Tensor:
        if not self._params:
            return torch.zeros(0, dtype=torch.int64)
        if len({tuple(t.shape for t in p) for p in self._params}) > 1:  # sizes changed
            return torch.stack([torch.as_tensor(_combine(*p)).cpu() for p in self._params])
        colsum = torch.stack([p[0] for p in self._params])
        rowsum = torch.stack([p[1] for p in self._params])
        tail = torch.stack([p[2] for p in self._params])
        w = _weights(colsum.device)
        if tail.shape[1]:
            colsum[:, : tail.shape[1]] += tail
            rowsum = torch.cat([rowsum, tail.sum(1, dtype=torch.int32)[:, None]], 1)
        rows = rowsum.shape[1]
        row_w = w[_COLS : _COLS + min(rows, _ROWS)].repeat((rows + _ROWS - 1) // _ROWS)[:rows]
        cols_t = (colsum * w[:_COLS]).sum(1, dtype=torch.int32)
        rows_t = (rowsum * row_w).sum(1, dtype=torch.int32)
        return _pack_all(cols_t, rows_t).cpu()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The trace as CPU tensors: one row per step (`TRACE_COLUMNS`) and `start_rng`."""
        states = [self._start, *self._state]
        present = [s for s in states if s is not None]
        if len(present) == len(states) and len({int(s.numel()) for s in present}) == 1:
            # the common case, one stack: every state of one generator has one size
            rng = _rows_fingerprints(torch.stack(present).view(torch.int32))
        else:
            known = [s for s in states if s is not None]
            fps = _rows_fingerprints(_padded_words(known)).tolist() if known else []
            rng = torch.tensor([0 if s is None else fps.pop(0) for s in states])
        no_batch = torch.zeros(0, dtype=torch.int64)
        return {
            "epoch": torch.tensor(self._epoch, dtype=torch.int64),
            "batch": _rows_fingerprints(_padded_words(self._batch)) if self._batch else no_batch,
            "rng": rng[1:].to(torch.int64),
            "params": self._params_column(),
            "start_rng": rng[:1].to(torch.int64),
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
    trace = StepTrace(None if generator is None else generator.get_state())
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
