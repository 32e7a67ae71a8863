"""Test helpers: read and edit the per-client data of a run (format 3: one clients file per
round and a chunked client index, `blazefl.stages.snapshot`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "index_of",
    "clients_in",
    "latest_data",
    "sampled",
    "edit_clients",
    "flip_tensor_byte",
]

CLIENTS = "clients.safetensors"


def index_of(round_dir: Path) -> torch.Tensor:
    """A round's client index (every chunk, in order)."""
    chunks = sorted((round_dir / "index").glob("chunk-*.safetensors"))
    return torch.cat([load_file(p)["round"] for p in chunks])


def clients_in(round_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    """A round's clients file by client: {cid: {"rng/torch": ..., "state/x": ...}}."""
    path = round_dir / CLIENTS
    out: dict[int, dict[str, torch.Tensor]] = {}
    if not path.exists():
        return out
    for name, tensor in load_file(path).items():
        cid, _, rest = name.partition("/")
        out.setdefault(int(cid), {})[rest] = tensor
    return out


def latest_data(run: Path, t: int) -> dict[int, tuple[int, dict[str, torch.Tensor]]]:
    """Every stored client's latest data as of round t: {cid: (round holding it, tensors)}."""
    index = index_of(run / f"round-{t:04d}")
    files: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    out = {}
    for cid, r in enumerate(index.tolist()):
        if r >= 0:
            files.setdefault(r, clients_in(run / f"round-{r:04d}"))
            out[cid] = (r, files[r][cid])
    return out


def sampled(round_dir: Path) -> list[int]:
    """The clients a round sampled (its manifest's `clients`)."""
    return json.loads((round_dir / "manifest.json").read_text())["clients"]


def edit_clients(
    round_dir: Path, edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
) -> None:
    """Rewrite a round's clients file with `edit(tensors)` (then reseal the manifest)."""
    path = round_dir / CLIENTS
    tensors = edit(load_file(path))
    path.chmod(0o644)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, path)


def flip_tensor_byte(path: Path, tensor: str, offset: int) -> None:
    """Flip the low bit of byte `offset` of `tensor`'s data in a safetensors file, in place
    (same size: only the hash tells)."""
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    start, end = header[tensor]["data_offsets"]
    assert 0 <= offset < end - start, (tensor, offset, end - start)
    data[8 + n + start + offset] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
