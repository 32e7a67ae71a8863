"""Why two runs (or a run and its re-execution) differ: the first difference located at
(round, client, epoch, step) and classified, with its evidence in a line or two.

Classes, as `blazefl diff` and `blazefl verify` name them:

- ``config``: byte-relevant config keys differ (which ones);
- ``user code``: the user's recorded modules differ (which files);
- ``package version``: another blazefl version (or commit) made one of them;
- ``environment``: the recorded environment differs (which fields: torch build, CPU kernels,
  bit-relevant variables);
- ``data``: the dataset or partition stores differ, or a step trained on other samples from
  the same generator state;
- ``random stream``: a client starts from another generator state (its RNG state differs: a
  tampered or mis-restored `clients.safetensors`, or `rng/client-NNNNN` file of an earlier
  format), or draws differently during a step;
- ``numerics``: the same batch from the same generator state and the same parameters before
  the step give different parameters after it: the kernels differ;
- ``server``: every client step is the same, the server's aggregation is not;
- ``sampling``: a client is sampled in one run only.

The step-level classes come from the rounds' step traces (`blazefl.core.step_trace`); the
others from the manifests. Nothing here imports code a run names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from blazefl.core.step_trace import TRACE_COLUMNS, split_traces
from blazefl.stages.artifacts import sha256_bytes
from blazefl.stages.snapshot import CLIENT_RNG, CLIENTS, GLOBAL, TRACE

__all__ = [
    "StepDifference",
    "client_data_differences",
    "first_client_difference",
    "first_step_difference",
    "legacy_rng_difference",
    "manifest_causes",
    "mixed_environments",
    "read_trace",
    "reexecution_notes",
]

#: Per-step columns compared, in the order a difference is explained.
_COLUMNS = tuple(TRACE_COLUMNS)


@dataclass(frozen=True)
class StepDifference:
    """Where two traces of one round first differ, and why.

    Attributes:
        cid: the first (lowest) client whose steps differ.
        epoch / step: the local epoch and the step within it (None: the client as a whole).
        index: the step's position among the client's steps (None as above).
        kind: the class (``data``, ``random stream``, ``numerics``, ``sampling``, ``steps``).
        evidence: one line of evidence.
    """

    cid: int
    epoch: int | None
    step: int | None
    index: int | None
    kind: str
    evidence: str

    def where(self, round: int) -> str:
        """`round R, client C, epoch E, step S` (as far as known)."""
        text = f"round {round}, client {self.cid}"
        if self.epoch is not None:
            text += f", epoch {self.epoch}, step {self.step}"
        return text


def read_trace(data: bytes | None) -> dict[int, dict[str, torch.Tensor]] | None:
    """A round's `trace.safetensors` bytes as per-client traces (None: absent or unreadable:
    a run of an earlier format, or a damaged file the file checks report)."""
    if data is None:
        return None
    from safetensors.torch import load

    try:
        return split_traces(load(data))
    except Exception:  # damaged bytes: the file comparison names the file; no step analysis
        return None


def _row(trace: dict[str, torch.Tensor], i: int) -> tuple[Any, ...]:
    return tuple(trace[c][i].item() for c in _COLUMNS)


def _step_in_epoch(epochs: torch.Tensor, i: int) -> int:
    return i - int((epochs[:i] != epochs[i]).sum()) if i else 0


def _client_difference(
    cid: int, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]
) -> StepDifference | None:
    """The first differing step of one client's two traces (None: identical)."""
    if int(a["start_rng"][0]) != int(b["start_rng"][0]):
        same_batch = len(a["batch"]) and len(b["batch"]) and a["batch"][0] == b["batch"][0]
        then = "same first batch" if same_batch else "so its batches are drawn differently"
        return StepDifference(
            cid,
            int(a["epoch"][0]) if len(a["epoch"]) else None,
            0 if len(a["epoch"]) else None,
            0 if len(a["epoch"]) else None,
            "random stream",
            f"client {cid} starts the round from another generator state ({then}): its RNG "
            "state of the previous round differs (tampered or mis-restored)",
        )
    n = min(len(a["epoch"]), len(b["epoch"]))
    for i in range(n):
        ra, rb = _row(a, i), _row(b, i)
        if ra == rb:
            continue
        epoch, step = int(a["epoch"][i]), _step_in_epoch(a["epoch"], i)
        before = "the same generator state and the same parameters before it (" + (
            "every earlier step is equal)" if i else "the round's global model)"
        )
        if ra[0] != rb[0]:
            kind, text = "steps", f"step {i} belongs to epoch {ra[0]} in A, {rb[0]} in B"
        elif ra[1] != rb[1]:
            kind = "data"
            text = (
                f"the step trained on other samples from {before}: the partition or the "
                "dataset differs"
            )
        elif ra[3] != rb[3]:
            kind = "numerics"
            text = f"same batch, {before}, different parameters after the step: the kernels differ"
        else:
            kind = "random stream"
            text = (
                "same batch and parameters, but the generator advanced differently during the "
                "step: the code draws differently"
            )
        return StepDifference(cid, epoch, step, i, kind, text)
    if len(a["epoch"]) != len(b["epoch"]):
        return StepDifference(
            cid,
            None,
            None,
            None,
            "steps",
            f"client {cid} ran {len(a['epoch'])} local steps in A, {len(b['epoch'])} in B "
            "(every common step equal): its local work differs (config or code)",
        )
    return None


def first_step_difference(
    a: dict[int, dict[str, torch.Tensor]], b: dict[int, dict[str, torch.Tensor]]
) -> StepDifference | None:
    """The first client (ascending id) whose steps differ between two traces of a round,
    with its first differing step and class.

    Returns:
        None when every client's steps are identical.

    Example:
        >>> diff = first_step_difference(read_trace(bytes_a), read_trace(bytes_b))
        >>> diff.where(3), diff.kind
        ('round 3, client 1, epoch 0, step 4', 'numerics')
    """
    for cid in sorted(set(a) | set(b)):
        if cid not in a or cid not in b:
            return StepDifference(
                cid,
                None,
                None,
                None,
                "sampling",
                f"client {cid} trained in {'A' if cid in a else 'B'} only",
            )
        found = _client_difference(cid, a[cid], b[cid])
        if found is not None:
            return found
    return None


def _keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def manifest_causes(
    ma: dict[str, Any], mb: dict[str, Any], stores_differ: list[str] | None = None
) -> list[str]:
    """The run-level classes two round manifests show, one line each (`class: evidence`).

    Args:
        ma / mb: the manifests of the first differing round (A and B).
        stores_differ: names of the stores whose files differ (`dataset`, `partitions`).

    Example:
        >>> manifest_causes({"config": {"train.lr": 0.1}}, {"config": {"train.lr": 0.2}})
        ['config: train.lr: 0.1 (A) vs 0.2 (B)']
    """
    out = []
    ca, cb = ma.get("config", {}), mb.get("config", {})
    if keys := _keys(ca, cb):
        shown = "; ".join(
            f"{k}: {ca.get(k, '(absent)')!r} (A) vs {cb.get(k, '(absent)')!r} (B)" for k in keys[:4]
        )
        out.append(f"config: {shown}" + (f" and {len(keys) - 4} more" if len(keys) > 4 else ""))
    ua, ub = ma.get("user_code", {}), mb.get("user_code", {})
    if files := _keys(ua, ub):
        out.append(f"user code: {', '.join(files[:6])} differ" + (" ..." if len(files) > 6 else ""))
    va, vb = ma.get("code", {}), mb.get("code", {})
    if keys := _keys(va, vb):
        shown = "; ".join(f"{k}: {va.get(k)!r} (A) vs {vb.get(k)!r} (B)" for k in keys)
        out.append(f"package version: {shown}")
    ea, eb = ma.get("environment", {}), mb.get("environment", {})
    if keys := _keys(ea, eb):
        shown = "; ".join(
            f"{k}: {ea.get(k, '(absent)')!r} (A) vs {eb.get(k, '(absent)')!r} (B)" for k in keys[:4]
        )
        out.append(f"environment: {shown}")
    for side, m in (("A", ma), ("B", mb)):
        out.extend(f"environment: {line} ({side})" for line in mixed_environments(m))
    if stores_differ:
        out.append(f"data: the {' and '.join(stores_differ)} store(s) differ")
    return out


def mixed_environments(m: dict[str, Any]) -> list[str]:
    """A round's clients that ran outside the driver's environment (Ray nodes allowed with
    --ray-allow-mixed-env), one line per node naming its clients and differing fields.

    Example:
        >>> m = {"client_environments": {"00002": {"node": "n1", "cpu_isa": "AVX2"}}}
        >>> mixed_environments(m)
        ["client 2 ran on n1: cpu_isa 'AVX2' (the driver's differs)"]
    """
    by_node: dict[str, tuple[list[int], dict[str, Any]]] = {}
    for cid, env in sorted(m.get("client_environments", {}).items()):
        fields = {k: v for k, v in env.items() if k != "node"}
        by_node.setdefault(str(env.get("node")), ([], fields))[0].append(int(cid))
    lines = []
    for node, (cids, fields) in by_node.items():
        shown = ", ".join(f"{k} {v!r}" for k, v in sorted(fields.items())[:4])
        who = f"client {cids[0]}" if len(cids) == 1 else f"clients {_ids(cids)}"
        lines.append(f"{who} ran on {node}: {shown} (the driver's differs)")
    return lines


def _ids(cids: list[int]) -> str:
    return ", ".join(map(str, cids[:8])) + (f" and {len(cids) - 8} more" if len(cids) > 8 else "")


def reexecution_notes(
    t: int,
    outputs: dict[str, str],
    recorded_trace: bytes | None,
    files: dict[str, bytes],
    uplinks_differ: list[int] | None = None,
    read_recorded: Callable[[str], bytes | None] | None = None,
) -> list[str]:
    """Where a re-executed round first left its record, and the class (`verify`).

    Args:
        t: the round.
        outputs: the recorded manifest's file hashes.
        recorded_trace: the recorded `trace.safetensors` bytes (None: none recorded).
        files: the re-executed round's files.
        uplinks_differ: clients whose re-executed uplink hash differs from the record.
        read_recorded: reads a recorded file of the round by name (None when unreadable):
            the recorded clients file, to name the client whose data differ.

    Returns:
        At most one line (A: recorded, B: re-executed).
    """
    recorded, again = read_trace(recorded_trace), read_trace(files.get(TRACE))
    if recorded is None or again is None:
        return []
    step = first_step_difference(recorded, again)
    if step is not None:
        where = f"first differing step: {step.where(t)}"
        return [f"{where}: {step.kind}: {step.evidence} (A: recorded, B: re-executed)"]
    if uplinks_differ:
        return [
            f"every step of client {uplinks_differ[0]} equals the record, but its uplink "
            "differs: the code between its last step and its upload"
        ]
    recorded_clients = read_recorded(CLIENTS) if read_recorded and CLIENTS in files else None
    client = first_client_difference(t, recorded_clients, files.get(CLIENTS))
    if client is not None and outputs.get(CLIENTS) != sha256_bytes(files[CLIENTS]):
        return [
            f"every client step equals the record, but {client} differs: random stream (the "
            "recorded RNG state was tampered or mis-restored)"
        ]
    if GLOBAL in files and outputs.get(GLOBAL) != sha256_bytes(files[GLOBAL]):
        return ["every client step equals the record: the server's aggregation differs"]
    return []


def _split(data: bytes | None) -> dict[int, dict[str, torch.Tensor]] | None:
    """A clients file's tensors grouped by client id (None: absent or unreadable)."""
    if data is None:
        return None
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception:  # damaged bytes: the file comparison names the file
        return None
    out: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        stem, _, rest = name.partition("/")
        if stem.isascii() and stem.isdecimal():
            out.setdefault(int(stem), {})[rest] = tensor
    return out


def client_data_differences(a: bytes | None, b: bytes | None) -> list[tuple[int, str]] | None:
    """Which clients' data differ between two `clients.safetensors` files, in client order:
    (client id, what differs: "RNG state", "state" or "only in A"/"only in B").

    Returns:
        None when either file is absent or unreadable.

    Example:
        >>> client_data_differences(bytes_a, bytes_b)
        [(1, 'RNG state')]
    """
    ca, cb = _split(a), _split(b)
    if ca is None or cb is None:
        return None
    out = []
    for cid in sorted(set(ca) | set(cb)):
        if cid not in ca or cid not in cb:
            out.append((cid, f"only in {'A' if cid in ca else 'B'}"))
            continue
        xa, xb = ca[cid], cb[cid]
        keys = [k for k in sorted(set(xa) | set(xb)) if not _same(xa.get(k), xb.get(k))]
        if keys:
            out.append((cid, "RNG state" if keys[0].startswith("rng/") else "state"))
    return out


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (
        a is not None
        and b is not None
        and a.dtype == b.dtype
        and a.shape == b.shape
        and (bool(a.equal(b)))
    )


def first_client_difference(t: int, a: bytes | None, b: bytes | None) -> str | None:
    """The first client whose data differ between two clients files of round t, in words:
    "client 1's RNG state in round-0001/clients.safetensors" (None: none, or unreadable)."""
    found = client_data_differences(a, b)
    if not found:
        return None
    cid, what = found[0]
    if what.startswith("only in"):
        return f"client {cid}'s data (only in {what[-1]}) in round-{t:04d}/{CLIENTS}"
    return f"client {cid}'s {what} in round-{t:04d}/{CLIENTS}"


def legacy_rng_difference(outputs_a: dict[str, str], outputs_b: dict[str, str]) -> str | None:
    """The first per-client RNG file (formats 1-2: `rng/client-NNNNN`) whose hash differs."""
    rng = sorted(
        k
        for k in set(outputs_a) | set(outputs_b)
        if k.startswith(f"{CLIENT_RNG}/") and outputs_a.get(k) != outputs_b.get(k)
    )
    return rng[0] if rng else None
