"""runtime.device: validation, the worker -> device rule, placement helpers, CUDA RNG state.

Everything here runs on a CPU-only machine; tests that need a GPU skip with a reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from blazefl.algorithms.common import dataset_on, evaluate_model
from blazefl.core import devices
from blazefl.core.devices import (
    DEVICE_RULE,
    DeviceUnavailableError,
    assigned_device,
    build_worker,
    configure_cuda_determinism,
    current_worker_device,
    device_environment,
    model_generator,
    parse_device,
    run_devices,
    worker_device,
)
from blazefl.data import synthetic_dataset
from blazefl.hparams import HParamError
from blazefl.models import build_model
from blazefl.reproducibility import RNGSuite, create_rng_suite
from blazefl.spec import ExperimentSpec, RuntimeConfig

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")
no_cuda_only = pytest.mark.skipif(CUDA, reason="checks the CPU-only refusal; this machine has CUDA")


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12"])
def test_valid_devices_pass_config_validation_on_any_machine(device: str) -> None:
    assert RuntimeConfig(device=device).device == device
    assert ExperimentSpec.from_flat({"runtime.device": device}).runtime.device == device


@pytest.mark.parametrize("device", ["cuda:x", "gpu", "CUDA", "cuda:", "cuda:01", "mps", "", 0])
def test_invalid_devices_are_one_line_errors(device: object) -> None:
    with pytest.raises(HParamError) as err:
        ExperimentSpec.from_flat({"runtime.device": device})
    assert "runtime.device must be" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="runtime.device must be"):
        parse_device(device)


def test_device_changes_bytes_and_is_in_the_schema() -> None:
    from blazefl.spec import schema

    spec = schema()["runtime.device"]
    assert spec.default == "cpu" and spec.affects_bytes


def test_an_algorithm_without_gpu_support_is_refused_at_parse_time() -> None:
    with pytest.raises(HParamError, match="does not run on a GPU yet"):
        ExperimentSpec.from_flat({"fl.algorithm": "fedprox", "runtime.device": "cuda"})
    assert ExperimentSpec.from_flat({"fl.algorithm": "dsfl", "runtime.device": "cuda"})


def test_the_rule_maps_workers_round_robin() -> None:
    gpus = ["cuda:0", "cuda:1", "cuda:2"]
    assert [worker_device(gpus, w) for w in range(7)] == [*gpus, *gpus, "cuda:0"]
    assert worker_device(["cpu"], 5) == "cpu"
    assert DEVICE_RULE == "worker-index-mod-device-count"
    with pytest.raises(ValueError):
        worker_device([], 0)


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[int, str]]:
    """Pretend this machine has 4 GPUs (names editable by the test)."""
    names = {i: "Fake GPU 80GB" for i in range(4)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(names))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: names[torch.device(d).index])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    yield names


def test_fake_multi_gpu_mapping(fake_gpus: dict[int, str]) -> None:
    assert run_devices("cuda") == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert run_devices("cuda:2") == ["cuda:2"]
    devs = run_devices("cuda")
    # a 6-worker pool: workers 4 and 5 share GPUs 0 and 1 with workers 0 and 1
    assert [worker_device(devs, w) for w in range(6)] == [*devs, "cuda:0", "cuda:1"]
    env = device_environment("cuda")
    assert env["gpu"] == "Fake GPU 80GB" and env["gpu_count"] == 4
    assert env["device_rule"] == DEVICE_RULE and env["gpu_capability"] == "9.0"
    assert device_environment("cuda:1")["gpu_count"] == 1
    with pytest.raises(DeviceUnavailableError, match="has 4 GPU"):
        run_devices("cuda:4")


def test_gpus_of_different_models_are_refused(fake_gpus: dict[int, str]) -> None:
    fake_gpus[3] = "Other GPU"
    with pytest.raises(DeviceUnavailableError, match="different models"):
        run_devices("cuda")
    assert run_devices("cuda:3") == ["cuda:3"]  # one GPU is fine


@no_cuda_only
def test_cuda_on_a_cpu_only_machine_is_one_line() -> None:
    with pytest.raises(DeviceUnavailableError) as err:
        run_devices("cuda")
    assert "CUDA is not available" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)
    from blazefl.core.loop import make_trainer

    with pytest.raises(DeviceUnavailableError):
        make_trainer("sequential", object(), seed=0, device="cuda")  # type: ignore[arg-type]
    env = device_environment("cuda")  # what a CPU machine can say about a GPU run
    assert env["device_rule"] == DEVICE_RULE and "gpu" not in env


def test_cpu_records_nothing_and_places_nothing() -> None:
    assert device_environment("cpu") == {}
    assert run_devices("cpu") == ["cpu"]
    assert current_worker_device() == torch.device("cpu")
    with assigned_device("cpu"):
        assert current_worker_device() == torch.device("cpu")
    data = synthetic_dataset(16, seed=0)
    assert dataset_on(data, "cpu") is data


def test_model_generator_picks_the_devices_generator() -> None:
    suite = create_rng_suite(0, 3)
    assert model_generator(suite, "cpu") is suite.torch_cpu
    with pytest.raises(ValueError, match="no torch_cuda"):
        model_generator(suite, "cuda:0")


def test_evaluate_model_on_cpu_device_is_the_in_place_evaluation() -> None:
    data = synthetic_dataset(40, seed=0, train=False)
    model = build_model("cnn", 10, generator=torch.Generator().manual_seed(0))
    assert evaluate_model(model, data, device="cpu") == evaluate_model(model, data)


@pytest.fixture
def restore_flags() -> Iterator[None]:
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,  # type: ignore[attr-defined]
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.utils.deterministic.fill_uninitialized_memory = before[2]  # type: ignore[attr-defined]
    if before[3] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def test_configure_cuda_determinism_sets_every_flag(restore_flags: None) -> None:
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    configure_cuda_determinism()
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_init_client_thread_on_cuda_keeps_strict_mode(restore_flags: None) -> None:
    devices.init_client_thread(1, "cuda:0")  # sets flags only; touches no GPU
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.get_num_threads() == 1


# -- on a GPU --------------------------------------------------------------------------------
@needs_cuda
def test_cuda_rng_state_is_captured_and_restored() -> None:
    suite = create_rng_suite(7, 2, device="cuda")
    state = suite.state_tensors()
    assert "torch_cuda" in state and state["torch_cuda"].device.type == "cpu"
    first = torch.rand(4, device="cuda", generator=suite.torch_cuda)
    twin = RNGSuite.from_state_tensors(state)
    assert twin.torch_cuda is not None
    assert torch.equal(torch.rand(4, device="cuda", generator=twin.torch_cuda), first)


@needs_cuda
def test_a_worker_that_ignores_its_gpu_is_refused() -> None:
    class CpuOnly:
        def make_worker(self) -> object:
            return object()

    with pytest.raises(ValueError, match="does not support runtime.device"):
        build_worker(CpuOnly(), "cuda:0")


@needs_cuda
@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_fedavg_with_dropout_on_cuda_is_identical_across_modes(mode: str) -> None:
    from blazefl.experiment import simulate

    spec = ExperimentSpec.from_flat(
        {
            "data.size": 300,
            "data.test_size": 100,
            "data.clients": 4,
            "fl.clients_per_round": 3,
            "fl.rounds": 2,
            "model.dropout": 0.25,
            "train.local_epochs": 1,
            "train.batch_size": 32,
            "runtime.device": "cuda",
        }
    )
    base, base_rounds = simulate(spec, mode="sequential")
    other, other_rounds = simulate(spec, mode=mode, workers=2)
    assert torch.equal(base.flat, other.flat)
    assert [r.uplink_sha256 for r in base_rounds] == [r.uplink_sha256 for r in other_rounds]
    assert base.flat.device.type == "cpu"
