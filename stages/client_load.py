"""Loading every client's latest data as of round t: from the clients files of the rounds
round t's index names, each reached through round t's manifest chain.

Round t's manifest records the sha256 of round t-1's manifest (`parent`), which records round
t-2's, and so on: a clients file of round r < t is trusted only after every manifest from t-1
down to r hashed to what its child records, and the file to what round r's manifest records.
So a round loads (and re-executes) from what its own manifest names and nothing else.

Example:
    >>> chain = ManifestChain(run, clients=100)
    >>> data = load_clients(run, 5, manifest5, index5, chain)
    >>> sorted(data)[:3]
    [0, 4, 9]
"""

from __future__ import annotations

from typing import Any

import torch

from blazefl.stages.artifacts import MANIFEST, ArtifactError, RunDir, sha256_bytes
from blazefl.stages.client_index import CLIENTS, ClientData, load_tensors, split_clients
from blazefl.stages.manifest_schema import (
    MAX_MANIFEST_BYTES,
    parse_manifest_json,
    validate_round_manifest,
)
from blazefl.stages.tensor_checks import ArtifactContentError

__all__ = ["ManifestChain", "load_clients"]


class ManifestChain:
    """Round manifests reached backwards from a round through `parent` hashes.

    A manifest checked once is kept (with the hash it was checked against), so re-executing
    round after round walks the chain in memory.

    Args:
        run: the run directory.
        clients: data.clients (recorded client ids must be below it).
    """

    def __init__(self, run: RunDir, clients: int) -> None:
        self.run = run
        self.clients = clients
        self._known: dict[int, tuple[str, dict[str, Any]]] = {}

    def back_to(self, t: int, manifest: dict[str, Any], first: int) -> dict[int, dict[str, Any]]:
        """Manifests of rounds `first`..t, each one's bytes hashing to its child's `parent`.

        Raises:
            ArtifactError: a manifest missing, unreadable, or not the one its child names.
        """
        out = {t: manifest}
        expected = manifest["parent"]
        for u in range(t - 1, first - 1, -1):
            known = self._known.get(u)
            if known is None or known[0] != expected:
                known = self._read(u, expected)
                self._known[u] = known
            out[u] = known[1]
            expected = known[1]["parent"]
        return out

    def _read(self, u: int, expected: str) -> tuple[str, dict[str, Any]]:
        rel = f"round-{u:04d}/{MANIFEST}"
        data = self.run.read_file(rel, MAX_MANIFEST_BYTES)
        sha = sha256_bytes(data)
        if sha != expected:
            raise ArtifactError(
                f"{rel} is not the manifest round {u + 1} names as its parent (the chain is "
                f"broken: it was edited or replaced): restore round-{u:04d} from its source"
            )
        m = validate_round_manifest(parse_manifest_json(data, rel), rel, self.clients)
        if m["round"] != u:
            raise ArtifactError(f"{rel} says it is round {m['round']}: the run is tampered")
        return sha, m


def load_clients(
    run: RunDir, t: int, manifest: dict[str, Any], index: torch.Tensor, chain: ManifestChain
) -> dict[int, ClientData]:
    """Every client's latest (RNG streams, persistent state) as of round t; clients whose
    index entry is -1 are left out (they start from their initial streams).

    Args:
        run: the run directory.
        t: the round loaded.
        manifest: round t's manifest (schema- and provenance-checked).
        index: round t's client index (`parse_index`).
        chain: the manifest chain of the run (reused across loads).

    Raises:
        ArtifactError: a clients file missing, corrupt or not matching its round's manifest.
        ArtifactContentError: the index names a round whose clients file does not hold the
            client (a tampered index).
    """
    stored = index >= 0
    if not bool(stored.any()):
        return {}
    rounds = torch.unique(index[stored]).tolist()
    manifests = chain.back_to(t, manifest, rounds[0])
    out: dict[int, ClientData] = {}
    for r in rounds:
        pre = f"round-{r:04d}/"
        wanted = (index == r).nonzero().flatten().tolist()
        recorded = manifests[r]["outputs"].get(CLIENTS)
        if recorded is None:
            raise ArtifactContentError(
                f"round-{t:04d}/index names round {r} for client {wanted[0]}, but round {r} "
                f"has no {CLIENTS}: the run is tampered; restore it from its source"
            )
        data = run.read_file(pre + CLIENTS)
        if sha256_bytes(data) != recorded:
            raise ArtifactError(
                f"{pre}{CLIENTS} does not match the hash in its manifest (changed after it was "
                f"written): restore it, or delete round-{r:04d} and every later round and run "
                "again"
            )
        held = split_clients(load_tensors(pre + CLIENTS, data), pre + CLIENTS, chain.clients)
        for cid in wanted:
            if cid not in held:
                raise ArtifactContentError(
                    f"round-{t:04d}/index names round {r} for client {cid}, but {pre}{CLIENTS} "
                    "does not hold it: the run is tampered; restore it from its source"
                )
            out[cid] = held[cid]
    return out
