"""A round's snapshot files: the global model, every RNG stream and, for stateful algorithms,
server and per-client state; built as canonical bytes before anything is written.

Layout of a round directory::

    global.safetensors              the global model
    rng.safetensors                 the server's RNG streams
    rng/client-NNNNN.safetensors    one file per client: its RNG streams
    state/server.safetensors        stateful algorithms: server state
    state/client-NNNNN.safetensors  stateful algorithms: one client's persistent state
    code/<sha256>.py                round 0 only: the user's source files the run executes,
                                    content-addressed (the manifest's `user_code` maps each
                                    path to its hash)

Per-client files are what keeps growth proportional to the work done: a round changes only
the files of the clients it sampled, and the commit hard-links every other one to the previous
round's identical file, so each round directory still holds a complete state while the bytes
on disk (and in DVC's content-addressed cache) grow with the sampled clients only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from blazefl.core.serialization import model_state_dict
from blazefl.core.server import StatefulServer
from blazefl.stages.artifacts import safetensors_bytes

__all__ = [
    "GLOBAL",
    "RNG",
    "CLIENT_RNG",
    "STATE",
    "SERVER_STATE",
    "CODE",
    "client_key",
    "client_file",
    "client_of",
    "snapshot_files",
    "RoundOutputs",
]

GLOBAL = "global.safetensors"
RNG = "rng.safetensors"
CLIENT_RNG = "rng"
STATE = "state"
SERVER_STATE = f"{STATE}/server.safetensors"
CODE = "code"
#: The round's step trace: every sampled client's local steps (`blazefl.core.step_trace`).
TRACE = "trace.safetensors"


def client_key(cid: int) -> str:
    return f"client-{cid:05d}"


def client_file(folder: str, cid: int) -> str:
    """`rng/client-00042.safetensors` or `state/client-00042.safetensors`."""
    return f"{folder}/{client_key(cid)}.safetensors"


def client_of(name: str, folder: str) -> int | None:
    """The client id of a per-client file name in `folder`, or None if it is not one (only
    the canonical spelling counts: `client-7` or `client-000007` is not a client's file)."""
    prefix, suffix = f"{folder}/client-", ".safetensors"
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    stem = name[len(prefix) : -len(suffix)]
    if not stem.isascii() or not stem.isdecimal() or name != client_file(folder, int(stem)):
        return None
    return int(stem)


def snapshot_files(
    server: Any,
    rng_states: dict[int, dict[str, torch.Tensor]],
    client_states: dict[int, dict[str, torch.Tensor]],
    cache: dict[str, bytes] | None = None,
    changed: set[int] | None = None,
) -> dict[str, bytes]:
    """Every file of a round snapshot, as canonical bytes.

    Args:
        server: the server (its model, RNG suite and, if stateful, `state_tensors()`).
        rng_states: every client's RNG state.
        client_states: persistent client state (stateful algorithms).
        cache: serialized per-client files of the previous snapshot; entries of clients not
            in `changed` are reused instead of serialized again, and the cache is updated.
        changed: clients whose RNG or state changed since `cache` was filled (None: all).

    Returns:
        {relative path: bytes}.
    """
    files = {
        GLOBAL: safetensors_bytes(model_state_dict(server.model)),
        RNG: safetensors_bytes(server.rng.state_tensors()),
    }
    if isinstance(server, StatefulServer):  # declared: state_tensors + load_state_tensors
        files[SERVER_STATE] = safetensors_bytes(server.state_tensors())
    cache = {} if cache is None else cache
    for folder, per_client in ((CLIENT_RNG, rng_states), (STATE, client_states)):
        for cid in sorted(per_client):
            name = client_file(folder, cid)
            if name not in cache or changed is None or cid in changed:
                cache[name] = safetensors_bytes(per_client[cid])
            files[name] = cache[name]
    return files


@dataclass
class RoundOutputs:
    """A computed round, before (or instead of) being committed."""

    round: int
    files: dict[str, bytes]
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    seconds: float = 0.0
    uplinks: dict[int, str] = field(default_factory=dict)
    #: Files identical to the previous round's, which the commit hard-links instead of writing.
    unchanged: frozenset[str] = frozenset()
