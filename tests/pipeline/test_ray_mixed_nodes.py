"""A Ray cluster whose nodes differ from the driver: refused by default, and with
`--ray-allow-mixed-env` run, with the round recording which clients ran on which environment.

The cluster (loopback only, `tests/core/ray_support.py`): a head with no CPUs, a worker node
like the driver, and a worker node started with `MKL_CBWR=AUTO`, a variable the environment
record compares (`env.MKL_CBWR`) and that leaves the bits as they are, so the bytes can be
compared with a sequential run as well.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result

from tests.core.ray_support import (
    BIN,
    ROOT,
    TINY_RAY_SETS,
    LocalCluster,
    Namespace,
    needs_namespace,
    needs_ray,
)

pytestmark = [needs_ray, needs_namespace, pytest.mark.slow]

SETS = [a for s in TINY_RAY_SETS for a in ("--set", s)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    ns = Namespace()
    c = None
    try:
        c = LocalCluster(ns, workers=1, cpus=1)
        c.add_worker(MKL_CBWR="AUTO")
        yield c
    finally:
        if c is not None:
            c.close()
        ns.close()


def _run(cluster: LocalCluster, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = [str(BIN / "blazefl"), "run", "--out", str(out), "-q", "--mode", "ray"]
    return cluster.ns.run(
        [*args, "--workers", "2", "--ray-address", cluster.address, *extra, *SETS], ROOT
    )


def _manifest(run: Path, t: int) -> dict:  # type: ignore[type-arg]
    return json.loads((run / f"round-{t:04d}" / "manifest.json").read_bytes())


def test_a_differing_node_is_refused_in_one_line(cluster: LocalCluster, tmp_path: Path) -> None:
    done = _run(cluster, tmp_path / "refused")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "Ray node 127.0.0.1" in errors[0] and "env.MKL_CBWR 'AUTO'" in errors[0], errors
    assert "--ray-allow-mixed-env" in errors[0]
    assert not (tmp_path / "refused" / "round-0001").exists()


def test_allowed_mixed_nodes_are_recorded_per_client(
    cluster: LocalCluster, tmp_path: Path, blazefl: Callable[..., Result]
) -> None:
    out = tmp_path / "mixed"
    done = _run(cluster, out, "--ray-allow-mixed-env")
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert any("env.MKL_CBWR" in w for w in warnings), done.stderr[-2000:]

    recorded: dict[str, dict] = {}  # type: ignore[type-arg]
    for t in (1, 2):
        m = _manifest(out, t)
        where = m.get("client_environments", {})
        # both actors start on their own node (SPREAD) and take a client each at once
        assert where and set(where) < set(m["uplinks"]), m.get("client_environments")
        assert m["format"] == 4  # the oldest format that has the field
        for env in where.values():
            assert env["node"].startswith("Ray node 127.0.0.1") and env["env.MKL_CBWR"] == "AUTO"
            assert set(env) == {"node", "env.MKL_CBWR"}, env
        recorded.update(where)
    assert "env.MKL_CBWR" not in _manifest(out, 1)["environment"]  # the driver's, as it was

    ref = tmp_path / "sequential"
    result = blazefl("run", "--out", str(ref), "-q", "--mode", "sequential", *SETS)
    assert result.exit_code == 0, result.output
    result = blazefl("diff", str(ref), str(out))
    assert result.exit_code == 1  # the records differ: the run does not claim one environment
    assert "manifest.json differs in: client_environments, format" in result.output
    lines = result.output.splitlines()
    # the same outputs (MKL_CBWR=AUTO changes no bit), the record says where clients ran
    assert any(
        "ran on Ray node 127.0.0.1" in line and "env.MKL_CBWR 'AUTO'" in line for line in lines
    ), result.output

    result = blazefl("verify", str(out), "--mode", "sequential")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "ran on Ray node" in line]
    assert notes and all(n.startswith("note: round ") for n in notes), result.output
    cids = sorted(int(c) for c in recorded)
    assert any(f"client {cids[0]}" in n or f"clients {cids[0]}" in n for n in notes), notes
    assert "all OK" in result.output.splitlines()[-1], result.output
