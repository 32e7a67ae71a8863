"""`runtime.mode: ray` under DVC: `dvc repro` runs each round stage on an embedded Ray
runtime (started and stopped by the stage), and the artifacts are those of the sequential
pipeline, file for file. Ray runs on loopback only, in a network namespace of its own
(`tests/core/ray_support.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dvc_helpers import OUT, TINY, base_repo, init_repo, needs_dvc, sets, tree_hashes

from tests.core.ray_support import BIN, Namespace, needs_namespace, needs_ray

pytestmark = [needs_ray, needs_namespace]


@needs_dvc
def test_dvc_repro_with_runtime_mode_ray_gives_the_sequential_bytes(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    sequential = base_repo(tmp_path_factory)  # the tiny pipeline, runtime.mode sequential
    repo = tmp_path / "repo"
    init_repo(repo)
    ns = Namespace()
    try:

        def sh(*args: str) -> str:
            done = ns.run(
                [str(BIN / args[0]), *args[1:]],
                cwd=repo,
                DVC_NO_ANALYTICS="1",
                DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site-cache"),
            )
            assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
            return done.stdout + done.stderr

        ray = {**TINY, "runtime.mode": "ray", "runtime.workers": 2}
        sh("blazefl", "dvc", "--config", "params.yaml", "--out", OUT, *sets(ray))
        assert yaml.safe_load((repo / "params.yaml").read_text())["runtime"]["mode"] == "ray"
        log = sh("dvc", "repro")
        assert "Running stage 'round_002'" in log
    finally:
        ns.close()
    for t in (1, 2):  # the rounds ran on Ray
        timing = json.loads((repo / OUT / "timings" / f"round-{t:04d}.json").read_bytes())
        assert (timing["mode"], timing["workers"]) == ("ray", 2), timing
        # how many of the round's clients the driver trained while the actors started
        assert 0 <= timing["driver_clients"] <= timing["clients"], timing
        plain = json.loads((sequential / OUT / "timings" / f"round-{t:04d}.json").read_bytes())
        assert "driver_clients" not in plain  # no Ray, nothing to say
    # the execution mode is no byte-relevant key: same stages, same files
    assert tree_hashes(repo / OUT) == tree_hashes(sequential / OUT)
    assert (repo / "dvc.yaml").read_text() == (sequential / "dvc.yaml").read_text()
