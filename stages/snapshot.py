"""A round's snapshot files: the global model, the server's RNG streams and state, the new
per-client data of the clients the round sampled, and the client index; built as canonical
bytes before anything is written.

Layout of a round directory::

    global.safetensors              the global model
    rng.safetensors                 the server's RNG streams
    state/server.safetensors        stateful algorithms: server state
    clients.safetensors             rounds >= 1: the clients this round sampled, each one's RNG
                                    streams (`00042/rng/python`, ...) and persistent state
                                    (`00042/state/<name>`, stateful algorithms)
    index/chunk-NNNN.safetensors    the client index, 1,024 clients per chunk: one int32 per
                                    client, the round whose clients.safetensors holds its latest
                                    data (-1: none, the client's initial streams derived from
                                    (seed, client id) and no state)
    trace.safetensors               rounds >= 1: the step trace of every sampled client
    code/<sha256>.py                round 0 only: the user's source files the run executes,
                                    content-addressed (the manifest's `user_code` maps each
                                    path to its hash)

What a round writes grows with the clients it sampled, not with all clients: one clients file
for the sampled clients, and the index chunks that name one of them; every other chunk is a
hard link to the previous round's identical file (same hash in the manifest). A round's
manifest lists its chunks and its clients file, so it grows with #clients / 1,024, and loading
round t reads each client's data from the round its index names, that round's clients file
checked against its manifest, which round t's manifest chains to through `parent`. Round 0
writes no per-client file: every index entry is -1.

Runs of manifest formats 1 and 2 hold one file per client instead (`rng/client-NNNNN` and
`state/client-NNNNN`); `client_of` names them for the readers (show, diff, verify's checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from blazefl.core.serialization import model_state_dict
from blazefl.core.server import StatefulServer
from blazefl.stages.artifacts import safetensors_bytes
from blazefl.stages.client_index import CLIENTS, INDEX, chunk_file, clients_bytes, index_files

__all__ = [
    "GLOBAL",
    "RNG",
    "CLIENT_RNG",
    "STATE",
    "SERVER_STATE",
    "CODE",
    "TRACE",
    "CLIENTS",
    "INDEX",
    "chunk_file",
    "client_file",
    "client_of",
    "snapshot_files",
    "RoundOutputs",
]

GLOBAL = "global.safetensors"
RNG = "rng.safetensors"
#: Folder of the per-client RNG files of formats 1 and 2 (read, never written).
CLIENT_RNG = "rng"
STATE = "state"
SERVER_STATE = f"{STATE}/server.safetensors"
CODE = "code"
#: The round's step trace: every sampled client's local steps (`blazefl.core.step_trace`).
TRACE = "trace.safetensors"


def client_file(folder: str, cid: int) -> str:
    """A per-client file of formats 1-2: `rng/client-00042.safetensors`."""
    return f"{folder}/client-{cid:05d}.safetensors"


def client_of(name: str, folder: str) -> int | None:
    """The client id of a per-client file name of formats 1-2 in `folder`, or None if it is
    not one (only the canonical spelling counts: `client-7` is not a client's file)."""
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
    sampled: list[int],
    index: torch.Tensor,
    previous: dict[str, bytes] | None = None,
) -> dict[str, bytes]:
    """Every file of a round snapshot, as canonical bytes.

    Args:
        server: the server (its model, RNG suite and, if stateful, `state_tensors()`).
        rng_states: the RNG state of (at least) every sampled client.
        client_states: persistent client state (stateful algorithms).
        sampled: the clients whose data this round writes (none in round 0).
        index: the client index after this round (int32, one entry per client).
        previous: the previous round's index chunk files: a chunk holding no sampled client
            is that very bytes object (so the commit can link it).

    Returns:
        {relative path: bytes}.
    """
    files = {
        GLOBAL: safetensors_bytes(model_state_dict(server.model)),
        RNG: safetensors_bytes(server.rng.state_tensors()),
    }
    if isinstance(server, StatefulServer):  # declared: state_tensors + load_state_tensors
        files[SERVER_STATE] = safetensors_bytes(server.state_tensors())
    if sampled:
        files[CLIENTS] = clients_bytes(sampled, rng_states, client_states)
    files.update(index_files(index, sampled, previous))
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
    #: `ray` mode: the clients the driver trained itself while Ray's actors started (its
    #: timings file says so; bytes do not depend on it). None in the other modes.
    driver_clients: int | None = None
