"""`runtime.mode: ray`: the same bytes as every other mode, on a local Ray runtime that starts
and stops with the trainer; a failing client named; a node of another environment refused
(or, when allowed, warned about); Ray optional (one line without it, never imported by
`--help`); Ctrl-C exits 130 within 2 s leaving no Ray process.

Ray runs only in a network namespace of its own (`tests/core/ray_support.py`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from blazefl.core.loop import ExecutionSettings
from blazefl.core.ray_actor import (
    environment_differences,
    environment_digest,
    node_label,
    pickle_workload,
)
from blazefl.modes import EXECUTION_MODES
from blazefl.spec import RuntimeConfig
from tests.core.ray_support import (
    ROOT,
    TINY_RAY_SETS,
    Namespace,
    descendants,
    interrupt_once_actors_run,
    needs_namespace,
    needs_ray,
    ray_env,
)
from tests.core.workloads import all_clients

# -- without a Ray runtime ----------------------------------------------------------------------


def test_ray_is_one_of_the_modes_everywhere() -> None:
    assert "ray" in EXECUTION_MODES
    assert RuntimeConfig(mode="ray").mode == "ray"  # the config's choices come from the tuple
    settings = ExecutionSettings("sequential", 2).with_ray("auto", True)
    assert (settings.ray_address, settings.ray_allow_mixed_env) == ("auto", True)


def test_node_environment_comparison_ignores_what_ray_sets_itself() -> None:
    driver = {"torch": "2.4", "cpu_isa": "AVX512", "gpu_count": 4}
    node = {"torch": "2.4", "cpu_isa": "AVX2", "env.OMP_NUM_THREADS": "1", "gpu_count": 1}
    assert environment_differences(driver, node) == ["cpu_isa 'AVX2' (driver 'AVX512')"]
    assert environment_differences(driver, {**node, "cpu_isa": "AVX512"}) == []
    assert environment_differences({}, {"env.MKL_CBWR": "AVX2"}) == [
        "env.MKL_CBWR 'AVX2' (driver '(absent)')"
    ]
    assert environment_digest(driver) == environment_digest({**driver, "gpu_count": 1})
    assert node_label("10.0.0.5", "8f2c1d0e9b7a6c5d4e3f") == "Ray node 10.0.0.5 (id 8f2c1d0e9b7a)"


def test_the_workload_crosses_to_a_node_by_value_generators_included() -> None:
    import pickle

    generator = torch.Generator().manual_seed(3)
    values = torch.arange(4.0)
    back = pickle.loads(pickle_workload({"g": generator, "t": values}))
    assert torch.equal(back["t"], values)
    assert (
        torch.rand(3, generator=back["g"]).tolist() == torch.rand(3, generator=generator).tolist()
    )


BLOCK_RAY = textwrap.dedent(
    """
    import importlib.abc, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "ray":
                raise ImportError("ray is blocked for this test")
            return None

    sys.meta_path.insert(0, Blocker())
    """
)


@pytest.mark.parametrize("user_setting", [None, "1"])
def test_the_embedded_runtime_reports_no_usage_unless_the_user_asks(
    monkeypatch: pytest.MonkeyPatch, user_setting: str | None
) -> None:
    """Ray reports usage statistics to its servers by default; a runtime blazefl starts does
    not, unless the user's environment says so (Ray itself is not started here)."""
    from blazefl.core import ray_runtime

    seen: dict[str, Any] = {}

    class FakeRay:
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(**kwargs: Any) -> None:
            seen["setting"] = os.environ.get(ray_runtime.USAGE_STATS_ENV)
            seen["kwargs"] = kwargs

    monkeypatch.setattr(ray_runtime, "_ray", lambda: FakeRay)
    if user_setting is None:
        monkeypatch.delenv(ray_runtime.USAGE_STATS_ENV, raising=False)
    else:
        monkeypatch.setenv(ray_runtime.USAGE_STATS_ENV, user_setting)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    start = ray_runtime.RayStart(num_workers=2, threads_per_client=1, device="cpu")
    assert start._connect() is FakeRay and start.owns_runtime
    assert seen["setting"] == (user_setting or "0")
    assert seen["kwargs"]["num_cpus"] == 2
    assert seen["kwargs"]["_system_config"] == ray_runtime.LOCAL_SYSTEM_CONFIG


def test_a_ray_start_that_fails_after_the_driver_trained_every_client_is_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The driver trains while Ray starts (`blazefl.core.ray_pool`); when the round
    ends before the start fails, the results stand and one warning line says Ray never ran
    (Ray itself is not started here: the start is a stand-in that fails after a second)."""
    from blazefl.core.ray_pool import DRIVER_LABEL, RayClientTrainer
    from blazefl.core.trainers import BaseClientTrainer
    from tests.core.workloads import tiny_experiment

    class FailingStart:
        starts_local_runtime = True
        driver_environment: dict[str, Any] = {}

        def key(self) -> tuple[Any, ...]:
            return (2, 1, "cpu", None)

        def begin(self) -> FailingStart:
            return self

        def adopt(self) -> Any:
            time.sleep(1.0)
            raise ValueError("no room for Ray here")

        def close(self) -> None:
            pass

    warnings: list[str] = []
    workload = tiny_experiment().workload()
    payload = tiny_experiment().server().downlink_package()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    trainer = RayClientTrainer(
        workload,
        seed=0,
        num_workers=2,
        warn=warnings.append,
        prestarted=FailingStart(),  # type: ignore[arg-type]
    )
    with trainer, BaseClientTrainer(workload, seed=0) as sequential:
        got = {r.cid: r.sha256 for r in trainer.train_round(payload, all_clients(), 1)}
        want = {r.cid: r.sha256 for r in sequential.train_round(payload, all_clients(), 1)}
        assert set(trainer.client_nodes.values()) == {DRIVER_LABEL}
    assert got == want
    assert warnings == [
        "Ray did not start, so the driver trained every client: ValueError: no room for Ray here"
    ]


def test_without_ray_the_mode_is_one_line_and_help_never_imports_ray(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_RAY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    cli = [sys.executable, "-m", "blazefl.pipeline.cli"]
    out = tmp_path / "run"
    sets = [a for s in TINY_RAY_SETS for a in ("--set", s)]
    for args in (
        ["run", "--out", str(out), "--mode", "ray", *sets],
        ["run", "--out", str(out), *sets, "--set", "runtime.mode=ray"],
        ["verify", str(tmp_path / "nothing"), "--mode", "ray"],
    ):
        done = subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [
            "error: runtime.mode ray needs Ray, which is not installed: "
            "pip install 'blazefl[ray]' (or: pip install 'ray>=2.9')"
        ]
        assert not out.exists()  # before any work
    probe = "import sys; from blazefl.pipeline.cli import main; print('ray' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "False", done.stderr
    done = subprocess.run([*cli, "run", "--help"], capture_output=True, text=True, timeout=120)
    assert "--ray-address" in done.stdout


# -- on the embedded runtime (in a namespace) -----------------------------------------------------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What `tests.core.ray_embedded_checks` saw (one process for every check below)."""
    out = tmp_path_factory.mktemp("ray") / "seen.json"
    ns = Namespace()
    try:
        done = ns.run([sys.executable, "-m", "tests.core.ray_embedded_checks", str(out)], ROOT)
    finally:
        ns.close()
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


@needs_ray
@needs_namespace
@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold", "dsfl"])
def test_ray_mode_gives_the_bytes_of_sequential(embedded: dict[str, Any], algorithm: str) -> None:
    sequential, ray = embedded[algorithm]
    assert ray == sequential  # global model, every uplink, summaries, traces of every client
    assert all(ray["traces"])


@needs_ray
@needs_namespace
def test_the_driver_trains_while_a_local_runtime_starts_with_the_same_bytes(
    embedded: dict[str, Any],
) -> None:
    rounds = embedded["driver_then_actors"]["rounds"]
    assert all(r["same"] for r in rounds), rounds  # every client: the sequential hash
    assert rounds[0]["by_driver"][:1] == [0], rounds  # Ray takes seconds to start
    assert rounds[-1]["by_actors"], rounds  # then the actors take over, within 4 rounds
    driver = [cid for r in rounds for cid in r["by_driver"]]
    assert driver, rounds
    for r in rounds:  # the driver takes the first clients of a round, the actors the rest
        assert r["by_driver"] == all_clients()[: len(r["by_driver"])], rounds


@needs_ray
@needs_namespace
def test_the_local_runtime_runs_with_blazefls_ray_settings(embedded: dict[str, Any]) -> None:
    from blazefl.core.ray_runtime import LOCAL_SYSTEM_CONFIG

    running = embedded["driver_then_actors"]["system_config"]
    assert {key: running.get(key) for key in LOCAL_SYSTEM_CONFIG} == LOCAL_SYSTEM_CONFIG


@needs_ray
@needs_namespace
def test_the_embedded_runtime_stops_with_the_trainer(embedded: dict[str, Any]) -> None:
    assert embedded["initialized_after"] is False
    assert embedded["children_after"] == []  # no raylet, GCS, worker or agent left
    assert embedded["initialized_kept"] is True  # a session of the caller's own is left running


@needs_ray
@needs_namespace
def test_a_client_that_raises_is_named(embedded: dict[str, Any]) -> None:
    assert embedded["fault"] == {
        "cid": 3,
        "message": "client 3 failed in round 1: ValueError: injected failure for client 3",
    }


@needs_ray
@needs_namespace
def test_a_node_of_another_environment_is_refused_unless_allowed(
    embedded: dict[str, Any],
) -> None:
    line = embedded["mismatch"]
    assert line.startswith("Ray node 127.0.0.1 (id ")
    assert "differs from the driver in cpu_isa" in line and "'NOT-THIS-ONE'" in line
    assert "--ray-allow-mixed-env" in line and "\n" not in line
    mixed = embedded["mixed"]
    assert len(mixed["warnings"]) == 1  # one line per node (both actors share the node here)
    assert "differs from the driver in cpu_isa" in mixed["warnings"][0]
    assert set(mixed["client_nodes"]) == set(mixed["sha"])  # which node ran each client
    assert all(v.startswith("Ray node 127.0.0.1") for v in mixed["client_nodes"].values())
    assert mixed["sha"] == embedded["plain_sha"]  # the node really is the same
    # every result says where it ran and what differs there: the round records it
    for cid, where in mixed["environments"].items():
        assert where == {"node": mixed["client_nodes"][cid], "cpu_isa": mixed["cpu_isa"]}


@needs_ray
@needs_namespace
def test_the_embedded_runtime_is_its_own_where_ray_start_left_a_cluster_address() -> None:
    """Given no address, Ray joins the cluster that `ray start` last recorded on the machine
    (RAY_TMPDIR/ray/ray_current_cluster), even a dead one; blazefl's runtime is its own."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    (temp / "ray").mkdir()
    (temp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")  # nobody there
    ns = Namespace()
    try:
        sets = [a for s in TINY_RAY_SETS for a in ("--set", s)]
        args = [sys.executable, "-m", "blazefl.pipeline.cli", "run", "--out", str(temp / "r")]
        done = ns.run([*args, "--mode", "ray", "--workers", "2", "-q", *sets], ROOT,
                      RAY_TMPDIR=str(temp))  # fmt: skip
    finally:
        ns.close()
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning" not in done.stderr, done.stderr[-3000:]  # Ray started (not the driver alone)


@needs_ray
@needs_namespace
def test_ctrl_c_exits_130_within_2_s_and_leaves_no_ray_process(tmp_path: Path) -> None:
    ns = Namespace()
    try:
        sets = [a for s in TINY_RAY_SETS for a in ("--set", s)]
        more = ["--set", "fl.rounds=400", "--set", "data.size=400"]  # interrupted long before
        args = [sys.executable, "-m", "blazefl.pipeline.cli", "run", "--out", str(tmp_path / "r")]
        proc = ns.popen([*args, "--mode", "ray", "--workers", "2", *sets, *more], ROOT)
        seconds, children, stderr = interrupt_once_actors_run(proc, proc.pid)
    finally:
        ns.close()
    assert proc.returncode == 130, stderr[-3000:]
    assert seconds < 2.0, seconds
    assert stderr.rstrip().endswith("interrupted: completed rounds are kept; run again to resume")
    names = {p.pid: p.info["name"] for p in children}  # type: ignore[attr-defined]
    assert "raylet" in names.values(), names  # the runtime was there...
    gone, alive = psutil.wait_procs(children, timeout=0.5)
    assert not alive, [names[p.pid] for p in alive]  # ...and nothing of it is left


@needs_ray
@needs_namespace
def test_ctrl_c_while_ray_is_still_starting_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    """Ray and the actors start in the background while the stores are built: an interrupt
    then waits for that start to finish (it cannot be cut short) and stops it."""
    ns = Namespace()
    try:
        sets = [a for s in TINY_RAY_SETS for a in ("--set", s)]
        args = [sys.executable, "-m", "blazefl.pipeline.cli", "run", "--out", str(tmp_path / "r")]
        proc = ns.popen([*args, "--mode", "ray", "--workers", "2", *sets, "-q"], ROOT)
        deadline = time.monotonic() + 60
        while not any(p.info["name"] == "gcs_server" for p in descendants(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "Ray never started"
            time.sleep(0.02)
        children = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGINT)  # Ray is starting: round 1 has not begun
        _, stderr = proc.communicate(timeout=60)
    finally:
        ns.close()
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.rstrip().endswith("interrupted: completed rounds are kept; run again to resume")
    assert not (tmp_path / "r" / "round-0001").exists()
    gone, alive = psutil.wait_procs(children, timeout=2)
    assert not alive, [p.info["name"] for p in alive]  # type: ignore[attr-defined]


GPU_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    from blazefl import simulate
    from tests.core.workloads import TINY_SPEC
    spec = TINY_SPEC.updated({"runtime.device": "cuda"})
    out = []
    for mode in ("threads", "ray"):
        server, rounds = simulate(spec, mode=mode, workers=2)
        out.append([hashlib.sha256(server.flat.cpu().numpy().tobytes()).hexdigest(),
                    [dict(r.uplink_sha256) for r in rounds]])
    print(json.dumps(out[0] == out[1]))
    """
)


@needs_ray
@needs_namespace
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_workers_share_it_through_ray_with_the_same_bytes() -> None:
    """Each actor asks Ray for half the GPU (2 workers, 1 GPU): same bytes as threads."""
    ns = Namespace()
    try:
        done = ns.run([sys.executable, "-c", GPU_SCRIPT], ROOT)
    finally:
        ns.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "true"


@needs_ray
def test_ray_env_keeps_ray_on_loopback() -> None:
    env = ray_env()
    assert "RAY_ADDRESS" not in env and env["RAY_AUTH_MODE"] == "token"
