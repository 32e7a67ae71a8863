"""Benchmark workloads: the configs and the variants (processes, modes, IPC) run on each.

``workloads()`` lists them by name; ``apply_quick`` shrinks one for ``--quick``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

#: Workload W: the published BlazeFL benchmark scaled to 2 cores.
W_CONFIG: dict[str, Any] = {
    "seed": 0,
    "data.dataset": "synthetic",
    "data.size": 20000,
    "data.test_size": 2000,
    "data.clients": 100,
    "data.partition": "iid",
    "model.name": "cnn",
    "fl.rounds": 3,
    "fl.clients_per_round": 100,
    "train.local_epochs": 2,
    "train.batch_size": 50,
    "train.lr": 0.1,
    "train.momentum": 0.0,
    "train.weight_decay": 0.0,
    "train.augment": False,
    "runtime.threads_per_client": 1,
}

#: Workload shape: the original BlazeFL benchmark's shape (FedAvg, CNN, 100 clients, 5 local
#: epochs, batch 32, CIFAR-shaped data) scaled to 2 cores: 40 samples per client, 3 rounds.
SHAPE_CONFIG: dict[str, Any] = {
    **W_CONFIG,
    "data.size": 4000,
    "data.test_size": 1000,
    "train.local_epochs": 5,
    "train.batch_size": 32,
    "train.lr": 0.05,
}


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # "ref" | "blazefl" | "flower" (benchmarks/flower_sim.py)
    workers: int = 1
    mode: str = "sequential"
    ipc: str = "shared_memory"
    overrides: tuple[tuple[str, Any], ...] = ()  # config keys that differ from the workload's
    reference: str | None = None  # the variant its ratios are taken against
    versus: str | None = None  # a second variant to compare with (W: Flower's simulation)

    @property
    def multiprocess(self) -> bool:
        """More than one process: PSS differs from RSS only then. Ray (blazefl's ray mode and
        Flower) runs gcs_server, raylet and worker processes under the driver."""
        return (
            (self.kind == "ref" and self.workers > 1) or self.uses_ray or (self.mode == "processes")
        )

    @property
    def uses_ray(self) -> bool:
        """Starts a local Ray runtime (the harness runs it on loopback, see run.py)."""
        return self.kind == "flower" or (self.kind == "blazefl" and self.mode == "ray")

    def config(self, base: dict[str, Any]) -> dict[str, Any]:
        cfg = dict(base)
        cfg.update(dict(self.overrides))
        return cfg


def _std_variants(suffix: str = "", overrides: tuple[tuple[str, Any], ...] = ()) -> list[Variant]:
    r1, r2 = f"ref-1{suffix}", f"ref-2{suffix}"
    return [
        Variant(r1, "ref", 1, overrides=overrides),
        Variant(r2, "ref", 2, overrides=overrides),
        Variant(
            f"sequential{suffix}", "blazefl", 1, "sequential", overrides=overrides, reference=r1
        ),
        Variant(f"threads-1{suffix}", "blazefl", 1, "threads", overrides=overrides, reference=r1),
        Variant(f"threads-2{suffix}", "blazefl", 2, "threads", overrides=overrides, reference=r2),
        Variant(
            f"processes-2-shm{suffix}",
            "blazefl",
            2,
            "processes",
            "shared_memory",
            overrides=overrides,
            reference=r2,
        ),
        Variant(
            f"processes-2-sto{suffix}",
            "blazefl",
            2,
            "processes",
            "storage",
            overrides=overrides,
            reference=r2,
        ),
    ]


@dataclass
class Workload:
    name: str
    description: str
    config: dict[str, Any]
    variants: list[Variant]
    prepared_startup: tuple[str, ...] = ("threads-2", "sequential")  # variants timed warm
    quick_config: dict[str, Any] = field(default_factory=dict)
    quick_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


def workloads() -> dict[str, Workload]:
    quick_w = {
        "data.size": 500,
        "data.test_size": 200,
        "data.clients": 10,
        "fl.clients_per_round": 10,
        "fl.rounds": 2,
        "train.local_epochs": 1,
    }
    # W also runs blazefl on the embedded Ray runtime (against processes-2-shm) and Flower's
    # Ray-based simulation of the same experiment, which every blazefl variant is compared with
    w_variants = [
        replace(v, versus="flower-2") if v.kind == "blazefl" else v for v in _std_variants()
    ]
    w_variants += [
        Variant("ray-2", "blazefl", 2, "ray", reference="processes-2-shm", versus="flower-2"),
        Variant("flower-2", "flower", 2, "ray"),
    ]
    w = Workload(
        "W",
        "CNN (62,006 params), synthetic CIFAR-shaped data, 100 clients x 200 samples, all "
        "clients every round, 3 rounds, 2 local epochs, batch 50, SGD lr 0.1 (no momentum, "
        "no weight decay, no augmentation), IID, test set 2,000, 1 intra-op thread per client",
        dict(W_CONFIG),
        w_variants,
        quick_config=quick_w,
    )
    resnet = Workload(
        "resnet18",
        "ResNet-18 (CIFAR stem, 11.2M params), synthetic CIFAR-shaped data, 4 clients x 25 "
        "samples, all clients every round, 3 rounds, 1 local epoch, batch 25, SGD lr 0.1, "
        "IID, test set 50, 1 intra-op thread per client",
        {
            **W_CONFIG,
            "model.name": "resnet18",
            "data.size": 100,
            "data.test_size": 50,
            "data.clients": 4,
            "fl.clients_per_round": 4,
            "train.local_epochs": 1,
            "train.batch_size": 25,
        },
        _std_variants(),
        prepared_startup=("sequential",),
        quick_config={
            "data.size": 8,
            "data.test_size": 8,
            "data.clients": 2,
            "fl.clients_per_round": 2,
            "fl.rounds": 2,
            "train.batch_size": 4,
        },
    )
    c1000 = (("data.clients", 1000), ("fl.clients_per_round", 1000))
    c100 = (("data.clients", 100), ("fl.clients_per_round", 100))
    clients = Workload(
        "clients1000",
        "Workload W's data (20,000 samples) split over 1,000 clients x 20 samples vs 100 "
        "clients x 200 samples, all clients every round, 2 rounds (per-client overhead: "
        "steady round at 1,000 vs 100 clients, against the reference's own ratio; memory)",
        {**W_CONFIG, "fl.rounds": 2},
        [
            Variant("ref-1@100", "ref", 1, overrides=c100),
            Variant("ref-1@1000", "ref", 1, overrides=c1000, reference="ref-1@100"),
            Variant("threads-2@100", "blazefl", 2, "threads", overrides=c100),
            Variant(
                "threads-2@1000",
                "blazefl",
                2,
                "threads",
                overrides=c1000,
                reference="threads-2@100",
            ),
            Variant("processes-2-shm@100", "blazefl", 2, "processes", overrides=c100),
            Variant(
                "processes-2-shm@1000",
                "blazefl",
                2,
                "processes",
                overrides=c1000,
                reference="processes-2-shm@100",
            ),
        ],
        prepared_startup=("threads-2@1000",),
        quick_config={
            "data.size": 1000,
            "data.test_size": 200,
            "fl.rounds": 2,
            "train.local_epochs": 1,
        },
        quick_overrides={
            "@1000": {"data.clients": 100, "fl.clients_per_round": 100},
            "@100": {"data.clients": 10, "fl.clients_per_round": 10},
        },
    )
    shape = Workload(
        "shape",
        "The original BlazeFL benchmark's shape scaled to 2 cores: CNN (62,006 params), "
        "synthetic CIFAR-shaped data, 100 clients x 40 samples, all clients every round, "
        "3 rounds, 5 local epochs, batch 32, SGD lr 0.05 (no momentum, no weight decay, no "
        "augmentation), IID, test set 1,000, 1 intra-op thread per client",
        dict(SHAPE_CONFIG),
        _std_variants(),
        quick_config={
            "data.size": 400,
            "data.test_size": 200,
            "data.clients": 10,
            "fl.clients_per_round": 10,
            "fl.rounds": 2,
            "train.local_epochs": 2,
        },
    )
    return {wl.name: wl for wl in (w, resnet, clients, shape)}


def apply_quick(wl: Workload) -> Workload:
    """Shrink a workload so the whole harness runs in about a minute."""
    variants = []
    for v in wl.variants:
        over = dict(v.overrides)
        for tag, repl in wl.quick_overrides.items():
            if v.name.endswith(tag):
                over.update(repl)
        variants.append(replace(v, overrides=tuple(over.items())))
    shrunk = ", ".join(f"{k}={v}" for k, v in wl.quick_config.items())
    per_variant = "; ".join(
        f"*{tag}: " + ", ".join(f"{k}={v}" for k, v in repl.items())
        for tag, repl in wl.quick_overrides.items()
    )
    note = f" [--quick, shrunk to: {shrunk}{'; ' + per_variant if per_variant else ''}]"
    return Workload(
        wl.name,
        wl.description + note,
        {**wl.config, **wl.quick_config},
        variants,
        wl.prepared_startup,
    )
