"""A round's snapshot files: the global model, every RNG stream and, for stateful algorithms,
server and per-client state; built as canonical bytes before anything is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from blazefl.core.serialization import model_state_dict
from blazefl.stages.artifacts import safetensors_bytes

__all__ = ["GLOBAL", "RNG", "STATE", "client_key", "rng_tensors", "snapshot_files", "RoundOutputs"]

GLOBAL = "global.safetensors"
RNG = "rng.safetensors"
STATE = "state"  # stateful algorithms: state/server.safetensors, state/client-NNNNN.safetensors


def client_key(cid: int) -> str:
    return f"client-{cid:05d}"


def rng_tensors(
    server_rng: Any, client_states: dict[int, dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """All RNG streams of a round as one flat dict (server.* and client-NNNNN.*)."""
    out = {f"server.{k}": v for k, v in server_rng.state_tensors().items()}
    for cid, state in client_states.items():
        for k, v in state.items():
            out[f"{client_key(cid)}.{k}"] = v
    return out


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
        cache: serialized client states of the previous snapshot; entries of clients not in
            `changed` are reused instead of serialized again, and the cache is updated.
        changed: clients whose state changed since `cache` was filled.

    Returns:
        {relative path: bytes}.
    """
    files = {
        GLOBAL: safetensors_bytes(model_state_dict(server.model)),
        RNG: safetensors_bytes(rng_tensors(server.rng, rng_states)),
    }
    if hasattr(server, "state_tensors"):
        files[f"{STATE}/server.safetensors"] = safetensors_bytes(server.state_tensors())
    cache = {} if cache is None else cache
    for cid in sorted(client_states):
        name = f"{STATE}/{client_key(cid)}.safetensors"
        if name not in cache or changed is None or cid in changed:
            cache[name] = safetensors_bytes(client_states[cid])
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
