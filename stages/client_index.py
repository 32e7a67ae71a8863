"""The per-client part of a round snapshot: one clients file and a chunked client index.

- `clients.safetensors` holds the clients a round sampled: client 42's RNG streams as
  `00042/rng/python`, `00042/rng/numpy`, `00042/rng/torch` (`torch_cuda` on a GPU run) and
  its persistent state as `00042/state/<name>` (stateful algorithms). One file per round,
  whatever the number of clients sampled: a round never pays per client in files.
- `index/chunk-NNNN.safetensors` holds one int32 tensor `round` for clients
  [1024 N, 1024 (N+1)): for each client, the round whose clients file holds its latest data,
  or -1 when it was never sampled (its initial streams are derived from (seed, client id) and
  are never stored). A chunk naming none of the round's sampled clients is the previous
  round's chunk, byte for byte (the commit hard-links it).

Parsing is strict: canonical client ids (5+ digits, as in `uplinks`), below `data.clients`,
only `rng/` and `state/` entries, chunks of exactly their length and dtype, index entries in
[-1, t]; anything else is one line naming the file and calling the run tampered.
"""

from __future__ import annotations

import torch

from blazefl.stages.artifacts import ArtifactError, safetensors_bytes
from blazefl.stages.tensor_checks import ArtifactContentError, check_tensors

__all__ = [
    "CLIENTS",
    "INDEX",
    "CHUNK",
    "chunk_file",
    "chunk_of",
    "chunk_names",
    "clients_bytes",
    "index_files",
    "initial_index",
    "parse_index",
    "split_clients",
    "load_tensors",
    "ClientData",
]

CLIENTS = "clients.safetensors"
INDEX = "index"
#: Clients per index chunk: a chunk is 4 KiB, so a round sampling 10 of 100,000 clients
#: writes at most 40 KiB of index while its manifest lists 98 chunks (about 14 KiB).
CHUNK = 1024
_KEY = "round"
_TAMPERED = "the run is tampered; restore it from its source"

ClientData = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def chunk_file(i: int) -> str:
    """`index/chunk-0003.safetensors`: clients [3072, 4096)."""
    return f"{INDEX}/chunk-{i:04d}.safetensors"


def chunk_names(clients: int) -> list[str]:
    """The index chunk files of a run with `clients` clients, in order."""
    return [chunk_file(i) for i in range((clients + CHUNK - 1) // CHUNK)]


def chunk_of(name: str) -> int | None:
    """The chunk number of an index chunk file name, or None (canonical spelling only)."""
    prefix, suffix = f"{INDEX}/chunk-", ".safetensors"
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    stem = name[len(prefix) : -len(suffix)]
    if not stem.isascii() or not stem.isdecimal() or name != chunk_file(int(stem)):
        return None
    return int(stem)


def initial_index(clients: int) -> torch.Tensor:
    """Round 0's index: no client has data in any round yet."""
    return torch.full((clients,), -1, dtype=torch.int32)


def clients_bytes(
    sampled: list[int],
    rng_states: dict[int, dict[str, torch.Tensor]],
    client_states: dict[int, dict[str, torch.Tensor]],
) -> bytes:
    """The clients file of a round: each sampled client's RNG streams and current state."""
    tensors: dict[str, torch.Tensor] = {}
    for cid in sampled:
        for key, value in rng_states[cid].items():
            tensors[f"{cid:05d}/rng/{key}"] = value
        for key, value in (client_states.get(cid) or {}).items():
            tensors[f"{cid:05d}/state/{key}"] = value
    return safetensors_bytes(tensors)


def index_files(
    index: torch.Tensor, sampled: list[int], previous: dict[str, bytes] | None
) -> dict[str, bytes]:
    """The index chunk files after a round: a chunk holding none of `sampled` is reused from
    `previous` (the very bytes object) when it is there."""
    changed = {cid // CHUNK for cid in sampled}
    out = {}
    for i, name in enumerate(chunk_names(len(index))):
        if previous is not None and i not in changed and name in previous:
            out[name] = previous[name]
        else:  # a copy: the slice would drag the whole index's storage along
            out[name] = safetensors_bytes({_KEY: index[i * CHUNK : (i + 1) * CHUNK].clone()})
    return out


def load_tensors(where: str, data: bytes) -> dict[str, torch.Tensor]:
    """safetensors bytes as tensors; damaged bytes are one line naming the file."""
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # safetensors raises several types on damaged bytes
        raise ArtifactError(
            f"{where} is corrupt ({str(exc).splitlines()[0][:100]}): delete its round and run again"
        ) from None


def parse_index(chunks: dict[str, bytes], clients: int, t: int) -> torch.Tensor:
    """Round t's client index from its chunk files (already hash-checked).

    Args:
        chunks: {chunk file name: bytes}, exactly `chunk_names(clients)`.
        clients: data.clients.
        t: the round (entries must lie in [-1, t]).

    Raises:
        ArtifactError: a chunk missing or corrupt; ArtifactContentError: a chunk of the wrong
            length or dtype, or naming a round outside [-1, t].
    """
    pre = f"round-{t:04d}/"
    parts = []
    for i, name in enumerate(chunk_names(clients)):
        if name not in chunks:
            raise ArtifactError(
                f"{pre}{name} is missing from the round: delete the round and run again"
            )
        tensors = load_tensors(pre + name, chunks[name])
        size = min(CHUNK, clients - i * CHUNK)
        check_tensors(tensors, {_KEY: (torch.int32, (size,))}, pre + name)
        part = tensors[_KEY]
        bad = ((part < -1) | (part > t)).nonzero()
        if len(bad):
            j = int(bad[0])
            raise ArtifactContentError(
                f"{pre}{name}: client {i * CHUNK + j} is said to be in round {int(part[j])}, "
                f"not one of rounds 0-{t}: {_TAMPERED}"
            )
        parts.append(part)
    return torch.cat(parts) if parts else initial_index(0)


def split_clients(
    tensors: dict[str, torch.Tensor], where: str, clients: int
) -> dict[int, ClientData]:
    """A clients file's tensors by client: {cid: (RNG streams, persistent state)}.

    Raises:
        ArtifactContentError: a tensor name that is not `NNNNN/rng/<key>` or
            `NNNNN/state/<key>` of a client below `clients`, or a client without RNG streams.
    """
    out: dict[int, ClientData] = {}
    for name, tensor in tensors.items():
        stem, _, rest = name.partition("/")
        kind, _, key = rest.partition("/")
        canonical = stem.isascii() and stem.isdecimal() and f"{int(stem):05d}" == stem
        if not canonical or kind not in ("rng", "state") or not key:
            raise ArtifactContentError(
                f"{where}: tensor {name[:60]!r} is not a client's rng/ or state/ entry: {_TAMPERED}"
            )
        cid = int(stem)
        if cid >= clients:
            raise ArtifactContentError(
                f"{where}: client {cid} is not a client of this run (data.clients is {clients}): "
                f"{_TAMPERED}"
            )
        out.setdefault(cid, ({}, {}))[kind == "state"][key] = tensor
    for cid, (rng, _) in out.items():
        if not rng:
            raise ArtifactContentError(f"{where}: client {cid} has no RNG streams: {_TAMPERED}")
    return out
