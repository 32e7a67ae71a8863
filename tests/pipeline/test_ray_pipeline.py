"""`blazefl run --mode ray` on a Ray cluster of a head and two worker nodes on this machine
(loopback only, in a network namespace: `tests/core/ray_support.py`). The head has no CPUs,
so every client actor runs on a worker node, while the driver alone writes the run.

Compared byte for byte (`blazefl diff`, exit 0) with sequential runs: FedAvg, SCAFFOLD,
DS-FL, the custom-algorithm example and 10,000 clients (10 sampled per round); `verify --mode
ray` re-executes runs. Faults: the driver SIGKILLed then resumed, and a worker node killed
mid-round (Ray restarts its actor on the other node and retries the client, or the run stops
with one line and a resume finishes it): both end with the bytes of the sequential run.

These are the slow multi-node tests (about 3 minutes in all on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result

from tests.core.ray_support import (
    BIN,
    ROOT,
    TINY_RAY_SETS,
    LocalCluster,
    local_cluster,
    needs_namespace,
    needs_ray,
)

pytestmark = [needs_ray, needs_namespace, pytest.mark.slow]

EXAMPLE = ROOT / "examples" / "custom_algorithm"
DSFL = ["dsfl.open_size=40", "dsfl.public_size_per_round=20", "dsfl.kd_epochs=1"]
ALGORITHMS = {
    "fedavg": ["fl.algorithm=fedavg"],
    "scaffold": ["fl.algorithm=scaffold"],
    "dsfl": ["fl.algorithm=dsfl", *DSFL],
}
EXAMPLE_SETS = [
    "data.size=200",
    "data.test_size=50",
    "data.clients=4",
    "fl.clients_per_round=4",
    "fl.rounds=2",
]


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with local_cluster(workers=2, cpus=2) as c:
        yield c


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray-runs")


def _sequential(blazefl: Callable[..., Result], out: Path, sets: list[str]) -> Path:
    if not out.exists():
        result = blazefl("run", "--out", str(out), "-q", "--mode", "sequential", *_sets(sets))
        assert result.exit_code == 0, result.output
    return out


def _ray_run(
    cluster: LocalCluster, out: Path, sets: list[str], *extra: str, cwd: Path = ROOT
) -> None:
    args = [str(BIN / "blazefl"), "run", "--out", str(out), "-q", "--mode", "ray"]
    done = cluster.ns.run([*args, "--workers", "2", *extra, *_sets(sets)], cwd)
    assert done.returncode == 0, done.stderr[-3000:]


def _same(blazefl: Callable[..., Result], a: Path, b: Path) -> None:
    result = blazefl("diff", str(a), str(b))
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("identical:")


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_a_cluster_run_has_the_bytes_of_a_sequential_run(
    cluster: LocalCluster, runs: Path, blazefl: Callable[..., Result], algorithm: str
) -> None:
    sets = [*TINY_RAY_SETS, *ALGORITHMS[algorithm]]
    ref = _sequential(blazefl, runs / f"{algorithm}-sequential", sets)
    out = runs / f"{algorithm}-ray"
    # three ways to name the cluster: the flag, RAY_ADDRESS, and "auto" (the README's)
    how = {"fedavg": ["--ray-address", "auto"], "scaffold": ["--ray-address", cluster.address]}
    if algorithm == "dsfl":
        done = cluster.ns.run(
            [str(BIN / "blazefl"), "run", "--out", str(out), "-q", "--mode", "ray",
             "--workers", "2", *_sets(sets)],
            ROOT,
            RAY_ADDRESS=cluster.address,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        _ray_run(cluster, out, sets, *how[algorithm])
    _same(blazefl, ref, out)


def test_verify_re_executes_on_the_cluster(
    cluster: LocalCluster, runs: Path, blazefl: Callable[..., Result]
) -> None:
    out = runs / "scaffold-sequential"
    if not out.exists():
        pytest.skip("needs the SCAFFOLD run of the test above")
    args = [str(BIN / "blazefl"), "verify", str(out), "--mode", "ray", "--workers", "2"]
    done = cluster.ns.run([*args, "--ray-address", cluster.address], ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "rounds 0-2: OK" in done.stdout or done.stdout.count(": OK") >= 3, done.stdout


def test_the_custom_algorithm_example_runs_on_the_cluster(
    cluster: LocalCluster, runs: Path, blazefl: Callable[..., Result]
) -> None:
    """The user's modules (examples/custom_algorithm) import on every node: the same folder."""
    ref, out = runs / "custom-sequential", runs / "custom-ray"
    cwd = os.getcwd()
    os.chdir(EXAMPLE)  # import paths are looked up in the folder blazefl runs in
    try:
        _sequential(blazefl, ref, EXAMPLE_SETS)
    finally:
        os.chdir(cwd)
    _ray_run(cluster, out, EXAMPLE_SETS, "--ray-address", cluster.address, cwd=EXAMPLE)
    _same(blazefl, ref, out)


#: 10,000 clients (2 samples each), 10 sampled per round.
MANY = [
    *TINY_RAY_SETS,
    "data.clients=10000",
    "data.size=20000",
    "fl.clients_per_round=10",
    "fl.rounds=3",
]


def test_ten_thousand_clients_run_and_verify_on_the_cluster(
    cluster: LocalCluster, runs: Path, blazefl: Callable[..., Result]
) -> None:
    ref = _sequential(blazefl, runs / "many-sequential", MANY)
    out = runs / "many-ray"
    _ray_run(cluster, out, MANY, "--ray-address", cluster.address)
    _same(blazefl, ref, out)
    args = [str(BIN / "blazefl"), "verify", str(out), "--mode", "ray", "--workers", "2"]
    done = cluster.ns.run([*args, "--ray-address", cluster.address], ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "rounds 0-3: all OK", done.stdout
    for t in (1, 2, 3):  # what a round records grows with the clients sampled, not with all
        m = json.loads((out / f"round-{t:04d}" / "manifest.json").read_bytes())
        assert len(m["clients"]) == 10 and sum(m["sizes"].values()) < 500_000, m["sizes"]


LONG = [*TINY_RAY_SETS, "fl.rounds=4", "data.size=400", "train.local_epochs=2"]


def _start(cluster: LocalCluster, out: Path):  # type: ignore[no-untyped-def]
    args = [str(BIN / "blazefl"), "run", "--out", str(out), "--mode", "ray", "--workers", "2"]
    return cluster.ns.popen([*args, "--ray-address", cluster.address, *_sets(LONG)], ROOT)


def _after_round_1(proc) -> None:  # type: ignore[no-untyped-def]
    for line in proc.stderr:
        if line.startswith("round   1/"):
            return
    raise AssertionError(f"no round finished (exit {proc.wait()})")


def _long_run_past_round_1(
    cluster: LocalCluster, runs: Path, blazefl: Callable[..., Result], name: str
):  # type: ignore[no-untyped-def]
    """The sequential reference of LONG, and a Ray run of it that has finished round 1."""
    ref = _sequential(blazefl, runs / "long-sequential", LONG)
    out = runs / name
    proc = _start(cluster, out)
    _after_round_1(proc)
    return ref, out, proc


def test_the_driver_sigkilled_then_resumed_gives_the_same_bytes(
    cluster: LocalCluster, runs: Path, blazefl: Callable[..., Result]
) -> None:
    ref, out, proc = _long_run_past_round_1(cluster, runs, blazefl, "long-driver-killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    _ray_run(cluster, out, LONG, "--ray-address", cluster.address)  # resumes after round 1
    _same(blazefl, ref, out)


def test_a_worker_node_killed_mid_round_costs_no_byte(
    cluster: LocalCluster, runs: Path, blazefl: Callable[..., Result]
) -> None:
    ref, out, proc = _long_run_past_round_1(cluster, runs, blazefl, "long-node-killed")
    victim = cluster.worker_raylets()[0]
    victim.kill()  # the node's raylet; its worker processes go with it
    rest = proc.stderr.read()
    proc.wait(timeout=180)
    try:
        if proc.returncode != 0:  # Ray gave up: one line naming the client, then resume
            errors = [line for line in rest.splitlines() if line.startswith("error:")]
            assert proc.returncode == 1 and len(errors) == 1, rest[-3000:]
            assert "while training client" in errors[0], errors
            cluster.add_worker()
            _ray_run(cluster, out, LONG, "--ray-address", cluster.address)
        _same(blazefl, ref, out)
    finally:
        if len(cluster.worker_raylets()) < 2:
            cluster.add_worker()  # for any test after this one


def test_the_run_directory_is_the_drivers_alone(runs: Path) -> None:
    """Workers never see the run directory: nothing but the driver's files is in it."""
    out = runs / "fedavg-ray"
    if not out.exists():
        pytest.skip("needs the FedAvg run above")
    names = {p.name for p in out.iterdir()}
    assert names <= {
        "dataset", "partitions", "metrics", "timings", "summary.json", "plots",
        ".gitignore", ".blazefl.lock", *(f"round-{t:04d}" for t in range(3)),
    }, names  # fmt: skip
    assert sys.executable  # the driver ran with this interpreter (see BIN)
