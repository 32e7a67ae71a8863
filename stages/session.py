"""The `Session` that computes rounds from artifacts and commits them.

The same `Session` serves one-off stages (`blazefl stage round`), the in-process runner
(`blazefl run`, pools kept warm across rounds) and `verify` (compute, compare, never commit),
so all three produce bytes through one code path.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import torch

from blazefl.core.loop import ExecutionSettings, run_round
from blazefl.core.ray_pool import DRIVER_LABEL
from blazefl.core.serialization import load_model_state_dict, model_state_dict
from blazefl.core.server import StatefulServer
from blazefl.core.step_trace import combine_traces
from blazefl.data import ImageDataset
from blazefl.reproducibility import RNGSuite, pin_client_threads
from blazefl.stages.artifacts import (
    MANIFEST,
    ArtifactError,
    RunDir,
    atomic_dir,
    atomic_write,
    canonical_json,
    code_version,
    environment,
    manifest_code,
    safetensors_bytes,
    sha256_bytes,
)
from blazefl.stages.client_index import (
    CLIENTS,
    chunk_of,
    initial_index,
    load_tensors,
    parse_index,
)
from blazefl.stages.client_load import ManifestChain, load_clients
from blazefl.stages.config import RunConfig, byte_config, config_sha256
from blazefl.stages.evaluate import round_metrics, round_summary
from blazefl.stages.manifest_schema import MANIFEST_FORMAT, round_format
from blazefl.stages.provenance import check_round_provenance, check_stores
from blazefl.stages.snapshot import (
    CODE,
    GLOBAL,
    RNG,
    SERVER_STATE,
    STATE,
    TRACE,
    RoundOutputs,
    snapshot_files,
)
from blazefl.stages.stores import build_from_stores
from blazefl.stages.temp_cleanup import claim_pymp_dir, owned_temp_dir
from blazefl.stages.tensor_checks import ArtifactContentError, check_tensors
from blazefl.stages.user_code import config_code

__all__ = ["Session"]


class Session:
    """Computes rounds of one run from its artifacts; pools stay warm across rounds.

    Args:
        config: the validated config.
        run: run directory.
        execution: mode / workers / IPC (default: the config's `runtime`; never change bytes).
        data: the in-memory (train, test) sets equal to the store's, if the caller has them.
        code_check: refuse artifacts made with other user code than the current folder's
            (off only for `verify --code-from here`).

    Example:
        >>> with Session(config, RunDir("artifacts/default")) as s:
        ...     s.load(2); out = s.compute(3); s.commit(out)
    """

    def __init__(
        self,
        config: RunConfig,
        run: RunDir,
        execution: ExecutionSettings | None = None,
        data: tuple[ImageDataset, ImageDataset] | None = None,
        code_check: bool = True,
    ) -> None:
        self.config = config
        self.run = run
        # the user's modules this run executes, hashed once: every round records the same
        self.user_code = config_code(config)
        self.code_check = code_check
        # the stores must have been made with this config (else: one line, nothing trained)
        self.store_hashes = check_stores(config, run, code_check)
        self.exp = build_from_stores(config, run, data)
        self.execution = execution or ExecutionSettings.of(self.exp.spec.runtime)
        self._temp = contextlib.ExitStack()
        storage_dir = None
        if self.execution.mode == "processes":
            claim_pymp_dir()  # so a later run can remove it if this process is SIGKILLed
            if self.execution.ipc == "storage":  # IPC files inside a folder named for this pid
                storage_dir = self._temp.enter_context(owned_temp_dir())
        threads = self.exp.spec.runtime.threads_per_client
        pin_client_threads(threads)
        try:
            self.server = self.exp.server()
            self.trainer = self.execution.make_trainer(
                self.exp.workload(),
                seed=self.exp.spec.seed,
                threads_per_client=threads,
                device=self.exp.spec.runtime.device,
                storage_dir=storage_dir,
            )
        except BaseException:
            self._temp.close()
            raise
        self.loaded: int | None = None
        self.parent: dict[str, str] = {}
        #: the client index as of the loaded (or last computed) round, and its chunk files
        self.index = initial_index(self.exp.spec.data.clients)
        self._chunks: dict[str, bytes] = {}
        self._chain = ManifestChain(run, self.exp.spec.data.clients)

    # -- state in and out ----------------------------------------------------------------
    def load(self, t: int) -> None:
        """Load round t's snapshot (global model, RNG streams, algorithm state, every client's
        latest data) as the starting point of round t+1.

        Round t's manifest must match its schema and have been made with this config from
        these stores; every file is read inside the run (bounded, no symlink), must match the
        hash in the manifest and hold the tensor names, dtypes and shapes this run expects.
        Clients' data come from the clients files of the rounds round t's index names, each
        checked against its round's manifest, reached from round t's through `parent`.
        """
        clients = self.exp.spec.data.clients
        manifest = self.run.manifest(t, max_clients=clients)
        code = self.user_code if self.code_check else manifest["user_code"]
        check_round_provenance(self.config, self.run, t, manifest, self.store_hashes, code)
        pre = f"round-{t:04d}/"
        recorded: dict[str, str] = manifest["outputs"]
        known = (GLOBAL, RNG, SERVER_STATE, TRACE, CLIENTS)  # the trace is evidence, not state
        unknown = [
            n
            for n in sorted(recorded)
            if n not in known and chunk_of(n) is None and not n.startswith(f"{CODE}/")
        ]
        if unknown:
            raise ArtifactContentError(f"{pre}{unknown[0]} is not a snapshot file: tampered run")
        files = {
            name: self.run.read_file(pre + name)
            for name in sorted(recorded)
            # code is checked by verify (nothing here runs it); clients files by load_clients
            if not name.startswith(f"{CODE}/") and name not in (CLIENTS, TRACE)
        }
        for name, data in files.items():
            if recorded[name] != sha256_bytes(data):
                raise ArtifactError(
                    f"{pre}{name} does not match the hash in its manifest (changed after it "
                    f"was written): restore it, or delete {self.run.round_dir(t)} and run again"
                )
        chunks = {n: b for n, b in files.items() if chunk_of(n) is not None}
        index = parse_index(chunks, clients, t)
        data = load_clients(self.run, t, manifest, index, self._chain)
        model = load_tensors(pre + GLOBAL, files[GLOBAL])
        own = model_state_dict(self.server.model)
        check_tensors(model, {k: (v.dtype, tuple(v.shape)) for k, v in own.items()}, pre + GLOBAL)
        self._load_rng(files, {c: rng for c, (rng, _) in data.items()}, index, t)
        load_model_state_dict(self.server.model, model)
        states = {c: state for c, (_, state) in data.items() if state}
        self._load_state(files, states, index, t)
        self.index = index
        self._chunks = chunks  # reused (and linked) for chunks a round does not change
        self.server.round = t
        self.loaded = t
        self.parent = {pre + MANIFEST: self.run.manifest_sha256(self.run.round_dir(t) / MANIFEST)}
        self.parent.update({pre + name: sha for name, sha in recorded.items()})

    def _load_state(
        self,
        files: dict[str, bytes],
        clients: dict[int, dict[str, torch.Tensor]],
        index: torch.Tensor,
        t: int,
    ) -> None:
        """The server's state (stateful algorithms) and the clients' persistent states, all
        of one layout (a client whose state differs was tampered with)."""
        server_file = SERVER_STATE
        pre = f"round-{t:04d}/"
        stateful = isinstance(self.server, StatefulServer)
        if stateful != (server_file in files):
            raise ArtifactContentError(
                f"{pre}{server_file} is {'missing' if stateful else 'unexpected'} for "
                f"{self.config.spec.fl.algorithm}: the run is tampered or from another algorithm"
            )
        reference: tuple[int, dict[str, tuple[torch.dtype, tuple[int, ...]]]] | None = None
        for cid, tensors in sorted(clients.items()):
            layout = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
            if reference is None:
                reference = (cid, layout)
            where = f"round-{int(index[cid]):04d}/{CLIENTS}: client {cid}'s state"
            check_tensors(tensors, reference[1], f"{where} (unlike client {reference[0]}'s)")
        if stateful:
            got = self._tensors(pre + server_file, files[server_file])
            for k, v in self.server.state_tensors().items():  # names and dtypes are fixed
                if k in got and got[k].dtype != v.dtype:
                    raise ArtifactContentError(
                        f"{pre}{server_file}: tensor {k} has dtype {got[k].dtype}, expected "
                        f"{v.dtype}: the run is tampered"
                    )
            try:
                self.server.load_state_tensors(got)
            except (KeyError, ValueError, RuntimeError, IndexError) as exc:
                raise ArtifactError(
                    f"{pre}{STATE} is incomplete or corrupt ({str(exc)[:100]}): delete the "
                    "round and run again"
                ) from None
        self.trainer.client_states = clients

    @staticmethod
    def _tensors(where: str, data: bytes) -> dict[str, torch.Tensor]:
        return load_tensors(where, data)

    def _client_rng_keys(self) -> tuple[str, ...]:
        """A client stream's keys: a GPU run's streams also carry `torch_cuda`."""
        cuda = self.exp.spec.runtime.device != "cpu"
        return ("python", "numpy", "torch", "torch_cuda") if cuda else ("python", "numpy", "torch")

    def _load_rng(
        self,
        files: dict[str, bytes],
        clients: dict[int, dict[str, torch.Tensor]],
        index: torch.Tensor,
        t: int,
    ) -> None:
        """The server's streams and the stored clients', each exactly the streams this run has
        (1-D uint8 states; `load_state_tensors` validates their contents). Clients without
        stored streams start from their initial ones (the trainer derives them)."""
        assert self.server.rng is not None
        pre = f"round-{t:04d}/"
        server_keys = tuple(self.server.rng.state_tensors())
        client_keys = self._client_rng_keys()

        def streams(
            where: str, tensors: dict[str, torch.Tensor], keys: tuple[str, ...]
        ) -> dict[str, torch.Tensor]:
            expected = {k: (torch.uint8, tuple(tensors[k].shape)) for k in keys if k in tensors}
            check_tensors(tensors, {**dict.fromkeys(keys, (torch.uint8, (0,))), **expected}, where)
            for k, v in tensors.items():
                if v.dim() != 1:
                    raise ArtifactContentError(
                        f"{where}: tensor {k} has {v.dim()} dims, expected 1: tampered run"
                    )
            return tensors

        if RNG not in files:
            raise ArtifactError(
                f"{pre}{RNG} is missing from the round: delete the round and run again"
            )
        where = pre + RNG
        try:
            self.server.rng.load_state_tensors(
                streams(where, self._tensors(where, files[RNG]), server_keys)
            )
            states = {}
            for cid, tensors in sorted(clients.items()):
                where = f"round-{int(index[cid]):04d}/{CLIENTS}: client {cid}'s RNG streams"
                states[cid] = streams(where, tensors, client_keys)
                RNGSuite.from_state_tensors(states[cid])  # a state that does not unpack is corrupt
        except (KeyError, ValueError) as exc:
            if isinstance(exc, ArtifactError | ArtifactContentError):
                raise
            raise ArtifactError(
                f"{where} is corrupt or from another config ({str(exc)[:100]}): delete the "
                "round and run again"
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
        sampled = list(result.clients)
        self.index[sampled] = t
        files = snapshot_files(
            self.server,
            self.trainer.rng_states,
            self.trainer.client_states,
            sampled,
            self.index,
            self._chunks,
        )
        if result.traces:  # where each client's steps went: the auditor's evidence
            files[TRACE] = safetensors_bytes(combine_traces(result.traces))
        summary = result.summary
        # a reused index chunk is the very bytes object of the previous round: its hash is
        # known and the commit can link it instead of writing it again
        parent = f"round-{t - 1:04d}/"
        unchanged = frozenset(
            n
            for n, data in files.items()
            if self._chunks.get(n) is data and parent + n in self.parent
        )
        self._chunks = {n: data for n, data in files.items() if chunk_of(n) is not None}
        outputs = {
            n: self.parent[parent + n] if n in unchanged else sha256_bytes(data)
            for n, data in files.items()
        }
        manifest = {
            "clients": result.clients,
            "code": manifest_code(),
            "config": byte_config(self.config),
            "config_sha256": config_sha256(self.config),
            "environment": environment(
                self.config.spec.runtime.threads_per_client, self.config.spec.runtime.device
            ),
            "format": MANIFEST_FORMAT,
            # the parent manifest's hash covers every file of the parent round (and, through
            # its own parent, of every earlier round whose clients file the index names)
            "inputs": {**self.store_hashes, parent + MANIFEST: self.parent[parent + MANIFEST]},
            "kind": "round",
            "outputs": outputs,
            "parent": self.parent[f"round-{t - 1:04d}/{MANIFEST}"],
            "round": t,
            "sizes": {n: len(data) for n, data in files.items()},
            "summary": round_summary(summary),
            "uplinks": {f"{c:05d}": h for c, h in sorted(result.uplink_sha256.items())},
            "user_code": self.user_code,
        }
        if result.client_settings:  # only when a server gives some: other runs keep their bytes
            manifest["client_settings"] = {
                f"{c:05d}": s for c, s in sorted(result.client_settings.items())
            }
        if result.client_environments:  # mixed Ray nodes: the run never claims one environment
            manifest["client_environments"] = {
                f"{c:05d}": e for c, e in sorted(result.client_environments.items())
            }
            manifest["format"] = round_format(manifest)
        metrics = round_metrics(
            t, summary.get("test_accuracy"), summary.get("test_loss"), manifest["summary"]
        )
        self.loaded = t
        self.parent = {
            f"round-{t:04d}/{MANIFEST}": sha256_bytes(canonical_json(manifest)),
            **{f"round-{t:04d}/{k}": v for k, v in outputs.items()},
        }
        placed = getattr(self.trainer, "client_nodes", None)  # ray mode: who ran each client
        return RoundOutputs(
            t,
            files,
            manifest,
            metrics,
            seconds,
            result.uplink_sha256,
            unchanged=unchanged,
            driver_clients=None
            if placed is None
            else sum(placed.get(c) == DRIVER_LABEL for c in result.clients),
        )

    def commit(self, out: RoundOutputs) -> float:
        """Write a computed round atomically, then its metrics and timings.

        Returns:
            Seconds spent writing the round's artifacts.
        """
        start = time.perf_counter()
        previous = self.run.round_dir(out.round - 1)
        with atomic_dir(self.run.round_dir(out.round), self.run.root) as tmp:
            for name, data in out.files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                if name in out.unchanged:
                    with contextlib.suppress(OSError):  # no hard links here: write a copy
                        os.link(previous / name, tmp / name, follow_symlinks=False)
                        continue
                (tmp / name).write_bytes(data)
            (tmp / MANIFEST).write_bytes(canonical_json(out.manifest))
        root = self.run.root
        atomic_write(self.run.metrics_path(out.round), canonical_json(out.metrics), root)
        write_seconds = time.perf_counter() - start
        timings = {
            "clients": len(out.manifest["clients"]),
            "code": code_version(),
            "ipc": self.execution.ipc,
            "mode": self.execution.mode,
            "round": out.round,
            "round_seconds": out.seconds,
            "workers": self.execution.workers,
            "write_seconds": write_seconds,
        }
        if out.driver_clients is not None:
            timings["driver_clients"] = out.driver_clients
        atomic_write(self.run.timings_path(out.round), canonical_json(timings), root)
        return write_seconds

    def close(self) -> None:
        try:
            self.trainer.close()
        finally:
            self._temp.close()  # after the pool: its workers no longer write there

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
