"""Ray mode on the embedded runtime, run as `python -m tests.core.ray_embedded_checks OUT`
inside a network namespace (`tests/core/test_ray_mode.py`); writes what it saw to OUT as
JSON, for the tests to judge. One process, so Ray starts twice in all instead of per check.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import psutil
import torch

from blazefl import ExperimentSpec, simulate
from blazefl.core.client_task import ClientTrainingError
from blazefl.core.ray_pool import DRIVER_LABEL, NodeEnvironmentError, RayClientTrainer
from blazefl.core.trainers import BaseClientTrainer
from tests.core.workloads import TINY_SPEC, all_clients, faulty, run_all_clients, tiny_experiment

SPEC = TINY_SPEC.updated({"model.dropout": 0.25})


def outcome(spec: ExperimentSpec, mode: str) -> dict[str, Any]:
    server, rounds = simulate(spec, mode=mode, workers=2)  # type: ignore[arg-type]
    return {
        "model": hashlib.sha256(server.flat.numpy().tobytes()).hexdigest(),
        "uplinks": [{str(k): v for k, v in r.uplink_sha256.items()} for r in rounds],
        "summaries": [r.summary for r in rounds],
        "traces": [sorted(r.traces) for r in rounds],
    }


def driver_then_actors(max_rounds: int = 4) -> dict[str, Any]:
    """Rounds on a runtime the trainer starts itself, whose clients sleep a second each: the
    driver trains the first ones while Ray starts, the actors the rest once they are ready
    (the rounds go on until an actor has trained a client). Every client's hash, and who ran
    it, against the sequential trainer's hashes."""
    slow, fast = faulty(delay_s=1.0), faulty()
    payload = tiny_experiment().server().downlink_package()
    rounds: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    with (
        RayClientTrainer(slow, seed=0, num_workers=2) as ray_trainer,
        BaseClientTrainer(fast, seed=0) as sequential,
    ):
        for t in range(1, max_rounds + 1):
            ray_sha = {r.cid: r.sha256 for r in ray_trainer.train_round(payload, all_clients(), t)}
            plain = {r.cid: r.sha256 for r in sequential.train_round(payload, all_clients(), t)}
            ran = {cid: ray_trainer.client_nodes[cid] for cid in all_clients()}
            rounds.append(
                {
                    "same": ray_sha == plain,
                    "by_driver": [cid for cid, where in ran.items() if where == DRIVER_LABEL],
                    "by_actors": [cid for cid, where in ran.items() if where != DRIVER_LABEL],
                }
            )
            if rounds[-1]["by_actors"]:
                import ray._private.state  # the running runtime's own settings

                settings = ray._private.state.state.get_system_config()
                break
    return {"rounds": rounds, "system_config": settings}


def main(out: str) -> None:
    import ray

    seen: dict[str, Any] = {}
    # 1. the embedded runtime: started by the trainer, stopped by its close()
    seen["fedavg"] = [outcome(SPEC, "sequential"), outcome(SPEC, "ray")]
    seen["initialized_after"] = ray.is_initialized()
    seen["children_after"] = [p.name() for p in psutil.Process().children(recursive=True)]
    seen["driver_then_actors"] = driver_then_actors()

    # 2. a Ray session of the caller's own: used, left running
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=30)  # WARNING
    for name, spec in {
        "scaffold": TINY_SPEC.updated({"fl.algorithm": "scaffold"}),
        "dsfl": TINY_SPEC.updated(
            {
                "fl.algorithm": "dsfl",
                "dsfl.open_size": 160,
                "dsfl.public_size_per_round": 64,
                "dsfl.kd_epochs": 1,
            }
        ),
    }.items():
        seen[name] = [outcome(spec, "sequential"), outcome(spec, "ray")]
    seen["initialized_kept"] = ray.is_initialized()

    # 3. a client that raises is named, as the pools name it
    try:
        with RayClientTrainer(faulty(fault_cid=3), seed=0, num_workers=2) as trainer:
            run_all_clients(trainer)
        seen["fault"] = None
    except ClientTrainingError as exc:
        seen["fault"] = {"cid": exc.cid, "message": str(exc).splitlines()[0]}

    # 4. a node whose environment differs from the driver's: refused, or warned about
    workload = tiny_experiment().workload()
    trainer = RayClientTrainer(workload, seed=0, num_workers=2)
    trainer.driver_environment = {**trainer.driver_environment, "cpu_isa": "NOT-THIS-ONE"}
    try:
        with trainer:
            run_all_clients(trainer)
        seen["mismatch"] = None
    except NodeEnvironmentError as exc:
        seen["mismatch"] = str(exc)
    warnings: list[str] = []
    mixed = RayClientTrainer(
        workload, seed=0, num_workers=2, allow_mixed_env=True, warn=warnings.append
    )
    mixed.driver_environment = {**mixed.driver_environment, "cpu_isa": "NOT-THIS-ONE"}
    payload = tiny_experiment().server().downlink_package()
    with mixed:
        results = list(mixed.train_round(payload, all_clients(), 1))
    got = {r.cid: r.sha256 for r in results}
    seen["mixed"] = {
        "environments": {str(r.cid): r.environment for r in results},
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),  # the node's, recorded per client
        "warnings": warnings,
        "client_nodes": {str(k): v for k, v in mixed.client_nodes.items()},
        "sha": {str(k): v for k, v in got.items()},
    }
    with RayClientTrainer(workload, seed=0, num_workers=2) as plain:
        seen["plain_sha"] = {
            str(r.cid): r.sha256 for r in plain.train_round(payload, all_clients(), 1)
        }
    ray.shutdown()
    with open(out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main(sys.argv[1])
