"""torch's process-global RNG is never used by client work, model construction (the one
place the package touches it, through `blazefl.reproducibility.global_rng`) is safe from
several threads at once, and no other package code seeds or sets a global generator."""

from __future__ import annotations

import ast
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from blazefl import simulate
from blazefl.core.trainers import BaseClientTrainer, ThreadPoolClientTrainer
from blazefl.models import build_model
from tests.algorithms.test_dsfl import build, small_setup
from tests.core.workloads import TINY_SPEC


def interleaving_factory(
    *, num_classes: int, in_channels: int, image_size: int, dropout: float
) -> nn.Module:
    """A user's factory whose default init draws from the global RNG, yielding the GIL between
    layers so that concurrent builds interleave unless construction is serialised."""
    del in_channels, image_size, dropout
    layers = []
    for _ in range(20):
        layers.append(nn.Linear(8, 8))
        time.sleep(0)
    return nn.Sequential(*layers, nn.Linear(8, num_classes))


FACTORY = f"{__name__}:interleaving_factory"


def image_factory(
    *, num_classes: int, in_channels: int, image_size: int, dropout: float
) -> nn.Module:
    """A user's model for images (its init: torch's own, global draws seeded by the package)."""
    del dropout
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))


ROOT = Path(__file__).resolve().parents[2]

#: Where package code may seed, set or fork torch's (or numpy's, python's) global generators.
ALLOWED = {"blazefl/reproducibility/global_rng.py", "blazefl/reproducibility/snapshot.py"}
GLOBAL_CALLS = {"manual_seed", "set_rng_state", "fork_rng", "seed", "seed_everything"}


def test_package_code_touches_the_global_generators_only_where_allowed() -> None:
    found = []
    for path in sorted((ROOT / "blazefl").rglob("*.py")) + sorted((ROOT / "stages").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            owner = ast.unparse(node.func.value) if isinstance(node.func, ast.Attribute) else ""
            # a generator object's own seed (`generator.manual_seed`) is not the global one
            if name in GLOBAL_CALLS and owner in {"", "torch", "torch.random", "torch.cuda",
                                                  "random", "np.random", "numpy.random",
                                                  "torch.default_generator"}:  # fmt: skip
                found.append(f"{rel}:{node.lineno} {ast.unparse(node.func)}")
    assert any(f.startswith("blazefl/reproducibility/global_rng.py") for f in found)  # seen
    assert [f for f in found if f.split(":")[0] not in ALLOWED] == []
    # and the script helpers of snapshot.py are never called by the package itself
    assert not [f for f in found if f.endswith("seed_everything")]


def _seeded_build() -> nn.Module:
    return build_model(FACTORY, num_classes=3, generator=torch.Generator().manual_seed(5))


def test_seeded_user_models_built_in_threads_equal_a_lone_build() -> None:
    expected = _seeded_build().state_dict()
    results: list[dict[str, torch.Tensor]] = []

    def worker() -> None:
        for _ in range(5):
            results.append(_seeded_build().state_dict())
            build_model(FACTORY, num_classes=3)  # unseeded draws racing with the seeded ones

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 30
    for got in results:
        assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox", "fedavgm", "scaffold", "dsfl"])
@pytest.mark.parametrize("mode", ["sequential", "threads"])
def test_a_whole_simulation_leaves_the_global_rng_untouched(algorithm: str, mode: str) -> None:
    spec = TINY_SPEC.updated(
        {
            "fl.algorithm": algorithm,
            "fl.rounds": 1,
            "dsfl.open_size": 160,
            "dsfl.public_size_per_round": 80,
        }
    )
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    simulate(spec, mode=mode, workers=2)  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), before)


def test_a_user_model_built_inside_client_work_leaves_no_trace_and_the_same_bytes() -> None:
    """DS-FL builds a client's first model inside client work; for a user's model that seeds
    the global generator (under the borrow), in threads as in sequence."""
    server, workload = build(small_setup())
    name = f"{__name__}:image_factory"
    workload = replace(workload, init_model=None, model=replace(workload.model, name=name))
    payload = server.downlink_package()
    cids = list(range(6))
    hashes = []
    for trainer in (
        BaseClientTrainer(workload, seed=0),
        ThreadPoolClientTrainer(workload, seed=0, num_workers=3),
    ):
        with trainer:
            hashes.append({r.cid: r.sha256 for r in trainer.train_round(payload, cids, 1)})
    assert hashes[0] == hashes[1]
