"""Bad input raises an error that names the offending value and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from blazefl import (
    BaseClientTrainer,
    ExperimentSpec,
    ProcessPoolClientTrainer,
    ThreadPoolClientTrainer,
    build_experiment,
    load_dataset,
    make_trainer,
    simulate,
)
from tests.core.workloads import TINY_SPEC

SPEC_ERRORS = [
    pytest.param({"seed": -1}, ["seed", "-1", ">= 0"], id="seed"),
    pytest.param({"data.clients": 0}, ["clients", "0", ">= 1"], id="clients-zero"),
    pytest.param({"data.clients": -3}, ["-3", ">= 1"], id="clients-negative"),
    pytest.param(
        {"data.dataset": "imagenet"}, ["'imagenet'", "synthetic", "cifar10"], id="dataset"
    ),
    pytest.param({"model.name": "vgg16"}, ["'vgg16'", "cnn", "resnet18"], id="model"),
    pytest.param({"data.partition": "banana"}, ["'banana'", "iid", "dirichlet"], id="partitioner"),
    pytest.param({"data.alpha": 0.0}, ["alpha", "0.0", "> 0"], id="alpha-0"),
    pytest.param({"data.alpha": -1.0}, ["alpha", "-1.0", "> 0"], id="alpha-neg"),
    pytest.param({"data.alpha": float("nan")}, ["alpha", "finite"], id="alpha-nan"),
    pytest.param({"train.lr": float("inf")}, ["lr", "finite"], id="lr-inf"),
    pytest.param({"fl.clients_per_round": 9}, ["clients_per_round", "9", "8"], id="per-round-big"),
    pytest.param({"fl.clients_per_round": 0}, ["clients_per_round", "0", "1"], id="per-round-zero"),
    pytest.param(
        {"runtime.threads_per_client": 0}, ["threads_per_client", "0", ">= 1"], id="threads"
    ),
    pytest.param(
        {"runtime.threads_per_client": 100000}, ["threads_per_client", "<= 256"], id="threads-huge"
    ),
    pytest.param({"data.size": 0}, ["size", "0", ">= 1"], id="data-size"),
    pytest.param({"data.size": 10**9}, ["size", "<= 2000000"], id="data-size-huge"),
    pytest.param({"seed": 2**64}, ["seed", "<="], id="seed-2-64"),
]


def _assert_names(message: str, needles: list[str]) -> None:
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


@pytest.mark.parametrize(("change", "needles"), SPEC_ERRORS)
def test_bad_spec_value_is_named_with_what_is_allowed(change: dict, needles: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        TINY_SPEC.updated(change)
    _assert_names(str(info.value), needles)


def test_more_clients_than_samples_is_rejected() -> None:
    spec = TINY_SPEC.updated({"data.size": 50, "data.clients": 60, "fl.clients_per_round": None})
    with pytest.raises(ValueError) as info:
        build_experiment(spec)
    _assert_names(str(info.value), ["60", "50", "<="])


def test_missing_data_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", root=missing)
    _assert_names(str(info.value), ["cifar10", str(missing), "downloads are disabled"])
    spec = ExperimentSpec.from_flat(
        {
            "data.dataset": "cifar10",
            "data.root": str(missing),
            "data.clients": 2,
            "fl.clients_per_round": 2,
        }
    )
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        build_experiment(spec)


def test_real_dataset_without_root_says_what_to_set() -> None:
    with pytest.raises(ValueError, match="data.root"):
        load_dataset("mnist")


@pytest.fixture(scope="module")
def workload():  # type: ignore[no-untyped-def]
    return build_experiment(TINY_SPEC.updated({"data.size": 80})).workload()


@pytest.mark.parametrize("workers", [0, -1])
def test_workers_must_be_positive(workload, workers: int) -> None:  # type: ignore[no-untyped-def]
    for mode in ("sequential", "threads", "processes"):
        with pytest.raises(ValueError, match=rf"workers must be >= 1, got {workers}"):
            make_trainer(mode, workload, seed=0, workers=workers)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"num_workers must be >= 1, got {workers}"):
        ThreadPoolClientTrainer(workload, seed=0, num_workers=workers)
    with pytest.raises(ValueError, match=rf"num_workers must be >= 1, got {workers}"):
        ProcessPoolClientTrainer(workload, seed=0, num_workers=workers)


def test_unknown_mode_is_named(workload) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as info:
        make_trainer("gpu", workload, seed=0)  # type: ignore[arg-type]
    _assert_names(str(info.value), ["'gpu'", "sequential", "threads", "processes"])
    with pytest.raises(ValueError, match="'gpu'"):
        simulate(TINY_SPEC.updated({"data.size": 80}), mode="gpu")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["sequential", "threads", "processes"])
def test_unknown_ipc_is_named_in_every_mode(workload, mode: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as info:
        make_trainer(mode, workload, seed=0, ipc="pipes")  # type: ignore[arg-type]
    _assert_names(str(info.value), ["'pipes'", "shared_memory", "storage"])


def test_process_pool_rejects_bad_ipc_and_fork(workload) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as info:
        ProcessPoolClientTrainer(workload, seed=0, num_workers=1, ipc_mode="pipes")  # type: ignore[arg-type]
    _assert_names(str(info.value), ["'pipes'", "shared_memory", "storage"])
    with pytest.raises(ValueError) as info:
        ProcessPoolClientTrainer(workload, seed=0, num_workers=1, start_method="fork")  # type: ignore[arg-type]
    _assert_names(str(info.value), ["'fork'", "spawn", "forkserver"])


@pytest.mark.parametrize("threads", [0, -2])
def test_threads_per_client_must_be_positive(workload, threads: int) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=rf"threads_per_client must be >= 1, got {threads}"):
        BaseClientTrainer(workload, seed=0, threads_per_client=threads)
    with pytest.raises(ValueError, match=rf"threads_per_client must be >= 1, got {threads}"):
        make_trainer("threads", workload, seed=0, workers=2, threads_per_client=threads)


def test_duplicate_client_ids_are_rejected(workload) -> None:  # type: ignore[no-untyped-def]
    trainer = BaseClientTrainer(workload, seed=0)
    with pytest.raises(ValueError, match="duplicate"):
        list(trainer.train_round(None, [1, 1], 1))  # type: ignore[arg-type]
