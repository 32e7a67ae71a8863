"""What the init/round/evaluate stages share: reading the stores, and the `Session` that
computes rounds from artifacts and commits them.

The same `Session` serves one-off stages (`blazefl stage round`), the in-process runner
(`blazefl run`, pools kept warm across rounds) and `verify` (compute, compare, never commit),
so all three produce bytes through one code path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from blazefl.algorithms.common import ClientPartition
from blazefl.algorithms.fedavg import ModelSpec
from blazefl.core.loop import make_trainer, run_round
from blazefl.core.serialization import load_model_state_dict, model_state_dict
from blazefl.data import ImageDataset
from blazefl.experiment import Experiment
from blazefl.reproducibility import pin_client_threads
from blazefl.pipeline.config import byte_config, config_sha256, to_spec
from blazefl.pipeline.store import (
    MANIFEST,
    ArtifactError,
    RunDir,
    atomic_dir,
    atomic_write,
    canonical_json,
    environment,
    safetensors_bytes,
    sha256_bytes,
    sha256_file,
)

GLOBAL = "global.safetensors"
RNG = "rng.safetensors"
STATE = "state"  # stateful algorithms: state/server.safetensors, state/client-NNNNN.safetensors


def client_key(cid: int) -> str:
    return f"client-{cid:05d}"


def _open_group(path: Any, what: str) -> Any:
    import zarr

    if not (path / "zarr.json").exists() or not (path / MANIFEST).exists():
        raise ArtifactError(f"{what} store {path} is missing: run the '{what}' stage first")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for a damaged store
        raise ArtifactError(
            f"{what} store {path} is corrupt ({exc}): delete it and rerun"
        ) from None


def _read_array(group: Any, name: str, where: Any) -> np.ndarray:
    try:
        return np.asarray(group[name][...])
    except Exception as exc:
        raise ArtifactError(
            f"{where}/{name} is missing or corrupt ({exc}): delete and rerun"
        ) from None


def load_labels(run: RunDir) -> np.ndarray:
    """Training labels from the dataset store."""
    return _read_array(_open_group(run.dataset, "prepare"), "train_labels", run.dataset)


def load_dataset_store(run: RunDir) -> tuple[ImageDataset, ImageDataset]:
    """Train and test sets from `RUN/dataset`."""
    group = _open_group(run.dataset, "prepare")
    attrs = dict(group.attrs)
    out = []
    for split in ("train", "test"):
        out.append(
            ImageDataset(
                images=torch.from_numpy(_read_array(group, f"{split}_images", run.dataset)),
                labels=torch.from_numpy(_read_array(group, f"{split}_labels", run.dataset)),
                num_classes=int(attrs["num_classes"]),
                mean=tuple(attrs["mean"]),
                std=tuple(attrs["std"]),
            )
        )
    return out[0], out[1]


def load_partition(run: RunDir) -> ClientPartition:
    """Per-client index arrays from `RUN/partitions`."""
    group = _open_group(run.partitions, "partition")
    indices = _read_array(group, "indices", run.partitions)
    offsets = _read_array(group, "offsets", run.partitions)
    return ClientPartition(torch.from_numpy(indices), torch.from_numpy(offsets))


def build_from_stores(
    config: dict[str, Any],
    run: RunDir,
    data: tuple[ImageDataset, ImageDataset] | None = None,
) -> Experiment:
    """The experiment with data and partition read from the run's stores.

    Args:
        config: validated flat config.
        run: the run directory.
        data: the (train, test) sets already in memory, equal to the store's (the runner
            passes what `prepare` just wrote, instead of reading it back).
    """
    spec = to_spec(config)
    train, test = data if data is not None else load_dataset_store(run)
    part = load_partition(run)
    if part.num_clients != spec.num_clients:
        raise ArtifactError(
            f"partitions hold {part.num_clients} clients but data.clients is "
            f"{spec.num_clients}: rerun the partition stage or use a new --out"
        )
    c, h, _ = train.images.shape[1:]
    return Experiment(
        spec, train, test, part, ModelSpec(spec.model, train.num_classes, c, h, spec.dropout)
    )


def model_spec_from_store(config: dict[str, Any], run: RunDir) -> ModelSpec:
    """The model spec from the dataset store's metadata, without reading any array."""
    group = _open_group(run.dataset, "prepare")
    try:
        c, h, _ = group["train_images"].shape[1:]
        num_classes = int(group.attrs["num_classes"])
    except Exception as exc:
        raise ArtifactError(f"{run.dataset} is corrupt ({exc}): delete it and rerun") from None
    return ModelSpec(config["model.name"], num_classes, c, h, config["model.dropout"])


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


class Session:
    """Computes rounds of one run from its artifacts; pools stay warm across rounds.

    Args:
        config: validated flat config.
        run: run directory.
        mode / workers / ipc: execution mode (defaults from the config; never change bytes).

    Example:
        >>> with Session(config, RunDir("artifacts/default")) as s:
        ...     s.load(2); out = s.compute(3); s.commit(out)
    """

    def __init__(
        self,
        config: dict[str, Any],
        run: RunDir,
        mode: str | None = None,
        workers: int | None = None,
        ipc: str | None = None,
        data: tuple[ImageDataset, ImageDataset] | None = None,
    ) -> None:
        self.config = config
        self.run = run
        self.mode = mode or config["runtime.mode"]
        self.workers = workers or config["runtime.workers"]
        self.ipc = ipc or config["runtime.ipc"]
        pin_client_threads(config["runtime.threads_per_client"])
        self.exp = build_from_stores(config, run, data)
        self.server = self.exp.server()
        self.trainer = make_trainer(
            self.mode,  # type: ignore[arg-type]
            self.exp.workload(),
            seed=self.exp.spec.seed,
            workers=self.workers,
            ipc=self.ipc,  # type: ignore[arg-type]
            threads_per_client=config["runtime.threads_per_client"],
        )
        self.store_hashes = {
            "dataset/manifest.json": run.manifest_sha256(run.dataset / MANIFEST),
            "partitions/manifest.json": run.manifest_sha256(run.partitions / MANIFEST),
        }
        self.loaded: int | None = None
        self.parent: dict[str, str] = {}
        self._state_bytes: dict[str, bytes] = {}  # serialized client states, reused if unchanged

    # -- state in and out ----------------------------------------------------------------
    def load(self, t: int) -> None:
        """Load round t's snapshot (global model, RNG streams, algorithm state) as the
        starting point of round t+1. Every file must match the hash in round t's manifest."""
        manifest = self.run.manifest(t)
        d = self.run.round_dir(t)
        recorded: dict[str, str] = manifest.get("outputs", {})
        if GLOBAL not in recorded or RNG not in recorded:
            raise ArtifactError(f"round-{t:04d}/{MANIFEST} is corrupt (no outputs): rerun it")
        files = {name: self._read(d / name) for name in sorted(recorded)}
        for name, data in files.items():
            if recorded[name] != sha256_bytes(data):
                raise ArtifactError(
                    f"round-{t:04d}/{name} does not match the hash in its manifest (changed "
                    f"after it was written): restore it, or delete {d} and run again"
                )
        from safetensors.torch import load

        try:
            load_model_state_dict(self.server.model, load(files[GLOBAL]))
            rng = load(files[RNG])
            states = {n: load(b) for n, b in files.items() if n.startswith(STATE + "/")}
        except Exception as exc:
            raise ArtifactError(
                f"round-{t:04d} is corrupt ({str(exc).splitlines()[0][:100]}): delete "
                f"{d} and run again"
            ) from None
        self._load_rng(rng, t)
        self._load_state(states, t)
        self._state_bytes = {n: b for n, b in files.items() if n.startswith(STATE + "/")}
        self.server.round = t
        self.loaded = t
        pre = f"round-{t:04d}/"
        self.parent = {pre + MANIFEST: sha256_file(d / MANIFEST)}
        self.parent.update({pre + name: sha for name, sha in recorded.items()})

    def _load_state(self, states: dict[str, dict[str, torch.Tensor]], t: int) -> None:
        server_file = f"{STATE}/server.safetensors"
        try:
            if hasattr(self.server, "load_state_tensors"):
                self.server.load_state_tensors(states[server_file])
            clients = {}
            for name, tensors in states.items():
                if name != server_file:
                    cid = int(name.removeprefix(f"{STATE}/client-").removesuffix(".safetensors"))
                    clients[cid] = tensors
        except (KeyError, ValueError) as exc:
            raise ArtifactError(
                f"round-{t:04d}/{STATE} is incomplete or corrupt ({exc}): delete the round and "
                "run again"
            ) from None
        self.trainer.client_states = clients

    def _read(self, path: Any) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(
                f"{self.run.rel(path)} is missing: delete {self.run.rel(path.parent)} and run again"
            ) from None

    def _load_rng(self, rng: dict[str, torch.Tensor], t: int) -> None:
        assert self.server.rng is not None
        try:
            self.server.rng.load_state_tensors(
                {k: rng[f"server.{k}"] for k in ("python", "numpy", "torch")}
            )
            states: dict[int, dict[str, torch.Tensor]] = {}
            for cid in range(self.exp.spec.num_clients):
                key = client_key(cid)
                states[cid] = {k: rng[f"{key}.{k}"] for k in ("python", "numpy", "torch")}
        except (KeyError, ValueError) as exc:
            raise ArtifactError(
                f"round-{t:04d}/{RNG} is corrupt or from another config (missing {exc}): "
                "delete the round and run again"
            ) from None
        self.trainer.rng_states = states

    # -- computing and committing ----------------------------------------------------------
    def compute(self, t: int, on_client: Callable[[int, int], None] | None = None) -> RoundOutputs:
        """Run round t (round t-1 must be loaded or just computed) without writing anything."""
        if self.loaded != t - 1:
            self.load(t - 1)
        start = time.perf_counter()
        result = run_round(self.server, self.trainer, t, on_client=on_client)
        seconds = time.perf_counter() - start
        files = snapshot_files(
            self.server,
            self.trainer.rng_states,
            self.trainer.client_states,
            self._state_bytes,
            changed=set(result.clients),
        )
        summary = result.summary
        outputs = {name: sha256_bytes(data) for name, data in files.items()}
        manifest = {
            "clients": result.clients,
            "config": byte_config(self.config),
            "config_sha256": config_sha256(self.config),
            "environment": environment(self.config["runtime.threads_per_client"]),
            "inputs": {**self.store_hashes, **self.parent},
            "kind": "round",
            "outputs": outputs,
            "parent": self.parent[f"round-{t - 1:04d}/{MANIFEST}"],
            "round": t,
            "summary": {"train_loss": summary.get("train_loss")},
            "uplinks": {f"{c:05d}": h for c, h in sorted(result.uplink_sha256.items())},
        }
        metrics = {
            "round": t,
            "test_accuracy": summary.get("test_accuracy"),
            "test_loss": summary.get("test_loss"),
            "train_loss": summary.get("train_loss"),
        }
        self.loaded = t
        self.parent = {
            f"round-{t:04d}/{MANIFEST}": sha256_bytes(canonical_json(manifest)),
            **{f"round-{t:04d}/{k}": v for k, v in outputs.items()},
        }
        return RoundOutputs(t, files, manifest, metrics, seconds, result.uplink_sha256)

    def commit(self, out: RoundOutputs) -> float:
        """Write a computed round atomically, then its metrics and timings.

        Returns:
            Seconds spent writing the round's artifacts.
        """
        start = time.perf_counter()
        with atomic_dir(self.run.round_dir(out.round)) as tmp:
            for name, data in out.files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
            (tmp / MANIFEST).write_bytes(canonical_json(out.manifest))
        atomic_write(self.run.metrics_path(out.round), canonical_json(out.metrics))
        write_seconds = time.perf_counter() - start
        timings = {
            "clients": len(out.manifest["clients"]),
            "ipc": self.ipc,
            "mode": self.mode,
            "round": out.round,
            "round_seconds": out.seconds,
            "workers": self.workers,
            "write_seconds": write_seconds,
        }
        atomic_write(self.run.timings_path(out.round), canonical_json(timings))
        return write_seconds

    def close(self) -> None:
        self.trainer.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
