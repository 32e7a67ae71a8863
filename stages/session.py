"""The `Session` that computes rounds from artifacts and commits them.

The same `Session` serves one-off stages (`blazefl stage round`), the in-process runner
(`blazefl run`, pools kept warm across rounds) and `verify` (compute, compare, never commit),
so all three produce bytes through one code path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from blazefl.core.loop import ExecutionSettings, run_round
from blazefl.core.serialization import load_model_state_dict
from blazefl.data import ImageDataset
from blazefl.reproducibility import pin_client_threads
from blazefl.stages.artifacts import (
    MANIFEST,
    ArtifactError,
    RunDir,
    atomic_dir,
    atomic_write,
    canonical_json,
    environment,
    sha256_bytes,
    sha256_file,
)
from blazefl.stages.config import byte_config, config_sha256
from blazefl.stages.snapshot import GLOBAL, RNG, STATE, RoundOutputs, client_key, snapshot_files
from blazefl.stages.stores import build_from_stores

__all__ = ["Session"]


class Session:
    """Computes rounds of one run from its artifacts; pools stay warm across rounds.

    Args:
        config: validated flat config.
        run: run directory.
        execution: mode / workers / IPC (default: the config's `runtime`; never change bytes).
        data: the in-memory (train, test) sets equal to the store's, if the caller has them.

    Example:
        >>> with Session(config, RunDir("artifacts/default")) as s:
        ...     s.load(2); out = s.compute(3); s.commit(out)
    """

    def __init__(
        self,
        config: dict[str, Any],
        run: RunDir,
        execution: ExecutionSettings | None = None,
        data: tuple[ImageDataset, ImageDataset] | None = None,
    ) -> None:
        self.config = config
        self.run = run
        self.exp = build_from_stores(config, run, data)
        self.execution = execution or ExecutionSettings.of(self.exp.spec.runtime)
        threads = self.exp.spec.runtime.threads_per_client
        pin_client_threads(threads)
        self.server = self.exp.server()
        self.trainer = self.execution.make_trainer(
            self.exp.workload(), seed=self.exp.spec.seed, threads_per_client=threads
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
            for cid in range(self.exp.spec.data.clients):
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
            "ipc": self.execution.ipc,
            "mode": self.execution.mode,
            "round": out.round,
            "round_seconds": out.seconds,
            "workers": self.execution.workers,
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
