"""Properties of RNGSuite: exact state round trips, stable bytes, independent streams."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blazefl.reproducibility import SERVER_STREAM_ID, RNGSuite, create_rng_suite

N = 50


def draw_python(suite: RNGSuite) -> list[Any]:
    r = suite.python
    return (
        [r.random() for _ in range(N)] + [r.gauss(0.0, 1.0) for _ in range(5)] + [r.getrandbits(64)]
    )


def draw_numpy(suite: RNGSuite) -> list[Any]:
    g = suite.numpy
    return (
        g.integers(0, 2**31, size=N).tolist()
        + g.integers(0, 10, size=3, dtype=np.uint32).tolist()
        + g.random(N).tolist()
        + g.standard_normal(5).tolist()
    )


def draw_torch(suite: RNGSuite) -> list[Any]:
    g = suite.torch
    return (
        torch.rand(N, generator=g).tolist()
        + torch.randperm(20, generator=g).tolist()
        + torch.randn(5, generator=g).tolist()
    )


DRAWS: dict[str, Callable[[RNGSuite], list[Any]]] = {
    "python": draw_python,
    "numpy": draw_numpy,
    "torch": draw_torch,
}


def warmed_suite(seed: int = 123, stream_id: int = 4) -> RNGSuite:
    """A suite with pending state: python gauss_next set, numpy has_uint32 set."""
    suite = create_rng_suite(seed, stream_id)
    for draw in DRAWS.values():
        draw(suite)
    # gauss() makes values in pairs and uint32 draws use half of a 64-bit word: draw until a
    # value is pending (at most two calls each).
    suite.python.gauss(0.0, 1.0)
    if suite.python.getstate()[2] is None:
        suite.python.gauss(0.0, 1.0)
    suite.numpy.integers(0, 10, dtype=np.uint32)
    if not suite.numpy.bit_generator.state["has_uint32"]:
        suite.numpy.integers(0, 10, dtype=np.uint32)
    torch.rand(3, generator=suite.torch)
    return suite


def global_states() -> tuple[Any, ...]:
    return (random.getstate(), np.random.get_state(legacy=False), torch.get_rng_state().clone())


def assert_global_states_equal(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    assert a[0] == b[0]
    assert a[1]["state"]["pos"] == b[1]["state"]["pos"]
    assert np.array_equal(a[1]["state"]["key"], b[1]["state"]["key"])
    assert (a[1]["has_gauss"], a[1]["gauss"]) == (b[1]["has_gauss"], b[1]["gauss"])
    assert torch.equal(a[2], b[2])


def test_pending_values_are_present_before_capture() -> None:
    suite = warmed_suite()
    assert suite.python.getstate()[2] is not None
    assert suite.numpy.bit_generator.state["has_uint32"] == 1


@pytest.mark.parametrize("kind", list(DRAWS))
def test_state_round_trip_repeats_draws_exactly(kind: str) -> None:
    suite = warmed_suite()
    saved = suite.state_tensors()
    stream_a = DRAWS[kind](suite)

    fresh = RNGSuite.from_state_tensors(saved)
    assert DRAWS[kind](fresh) == stream_a

    suite.load_state_tensors(saved)
    assert DRAWS[kind](suite) == stream_a


def test_state_tensors_are_1d_uint8_with_exact_keys() -> None:
    tensors = warmed_suite().state_tensors()
    assert set(tensors) == {"python", "numpy", "torch"}
    for tensor in tensors.values():
        assert tensor.dtype == torch.uint8 and tensor.dim() == 1 and tensor.device.type == "cpu"


def test_equal_states_give_equal_bytes() -> None:
    a, b = warmed_suite(), warmed_suite()
    ta, tb = a.state_tensors(), b.state_tensors()
    for key in ta:
        assert ta[key].numpy().tobytes() == tb[key].numpy().tobytes()
    # and a restored suite re-captures to the very same bytes
    tc = RNGSuite.from_state_tensors(ta).state_tensors()
    for key in ta:
        assert ta[key].numpy().tobytes() == tc[key].numpy().tobytes()


def test_captured_tensors_do_not_alias_live_state() -> None:
    suite = warmed_suite()
    saved = suite.state_tensors()
    before = {k: v.clone() for k, v in saved.items()}
    for draw in DRAWS.values():
        draw(suite)
    for key in saved:
        assert torch.equal(saved[key], before[key])


def test_same_seed_and_stream_give_same_streams() -> None:
    a, b = create_rng_suite(7, 3), create_rng_suite(7, 3)
    for draw in DRAWS.values():
        assert draw(a) == draw(b)


@pytest.mark.parametrize(("other_seed", "other_stream"), [(8, 3), (7, 4), (7, SERVER_STREAM_ID)])
def test_different_seed_or_stream_give_different_streams(
    other_seed: int, other_stream: int
) -> None:
    a, b = create_rng_suite(7, 3), create_rng_suite(other_seed, other_stream)
    for draw in DRAWS.values():
        assert draw(a) != draw(b)


def test_generators_within_a_suite_are_seeded_differently() -> None:
    suite = create_rng_suite(0, 0)
    words = [
        suite.python.getrandbits(32),
        int(suite.numpy.integers(0, 2**32, dtype=np.uint64)),
        int(torch.randint(0, 2**32, (1,), generator=suite.torch)),
    ]
    assert len(set(words)) == 3


def test_global_rng_untouched_by_creation_and_round_trips() -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    before = global_states()
    suite = create_rng_suite(5, 9)
    for draw in DRAWS.values():
        draw(suite)
    saved = suite.state_tensors()
    suite.load_state_tensors(saved)
    RNGSuite.from_state_tensors(saved)
    assert_global_states_equal(before, global_states())


@pytest.mark.parametrize(
    ("seed", "stream_id", "name"),
    [(-1, 0, "seed"), (0, -1, "stream_id"), (1.5, 0, "seed"), (0, "3", "stream_id")],
)
def test_invalid_seed_or_stream_raises_value_error_naming_it(
    seed: Any, stream_id: Any, name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        create_rng_suite(seed, stream_id)


def corruptions() -> dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]]:
    def replace(key: str, value: torch.Tensor) -> Callable[..., dict[str, torch.Tensor]]:
        return lambda t: {**t, key: value}

    def truncate(key: str) -> Callable[..., dict[str, torch.Tensor]]:
        return lambda t: {**t, key: t[key][:-7].clone()}

    def flip_first(key: str) -> Callable[..., dict[str, torch.Tensor]]:
        def apply(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            bad = t[key].clone()
            bad[0] ^= 0xFF
            return {**t, key: bad}

        return apply

    cases: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
        "missing-key": lambda t: {k: v for k, v in t.items() if k != "numpy"},
        "wrong-dtype": lambda t: {**t, "python": t["python"].to(torch.int32)},
        "wrong-shape": lambda t: {**t, "torch": t["torch"].reshape(2, -1)},
        "numpy-not-json": replace("numpy", torch.full((10,), 0xFF, dtype=torch.uint8)),
        "numpy-unknown-bitgen": replace(
            "numpy",
            torch.frombuffer(bytearray(b'{"bit_generator":"Nope","state":{}}'), dtype=torch.uint8),
        ),
        "numpy-missing-fields": replace(
            "numpy",
            torch.frombuffer(bytearray(b'{"bit_generator":"PCG64","state":{}}'), dtype=torch.uint8),
        ),
        "python-bad-magic": flip_first("python"),
        "empty-torch": replace("torch", torch.empty(0, dtype=torch.uint8)),
    }
    for key in ("python", "numpy", "torch"):
        cases[f"truncated-{key}"] = truncate(key)
    return cases


@pytest.mark.parametrize("case", sorted(corruptions()))
def test_corrupt_state_tensors_raise_value_error_and_leave_suite_untouched(case: str) -> None:
    suite = warmed_suite()
    bad = corruptions()[case](suite.state_tensors())
    before = suite.state_tensors()
    with pytest.raises(ValueError):
        RNGSuite.from_state_tensors(bad)
    with pytest.raises(ValueError):
        suite.load_state_tensors(bad)
    after = suite.state_tensors()
    for key in before:
        assert torch.equal(before[key], after[key])


@pytest.mark.parametrize("bitgen", ["PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"])
def test_other_numpy_bit_generators_round_trip(bitgen: str) -> None:
    suite = create_rng_suite(3, 1)
    suite.numpy = np.random.Generator(getattr(np.random, bitgen)(11))
    suite.numpy.integers(0, 10, dtype=np.uint32)
    saved = suite.state_tensors()
    stream_a = draw_numpy(suite)
    twin = create_rng_suite(4, 2)  # PCG64: load must switch the bit generator class
    twin.load_state_tensors(saved)
    assert type(twin.numpy.bit_generator).__name__ == bitgen
    assert draw_numpy(twin) == stream_a
    assert draw_numpy(RNGSuite.from_state_tensors(saved)) == draw_numpy(
        RNGSuite.from_state_tensors(saved)
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**128),
    stream_id=st.integers(min_value=0, max_value=2**63),
    warmup=st.integers(min_value=0, max_value=5),
)
def test_any_seed_and_stream_reproduce_and_round_trip(
    seed: int, stream_id: int, warmup: int
) -> None:
    a, b = create_rng_suite(seed, stream_id), create_rng_suite(seed, stream_id)
    for _ in range(warmup):
        a.python.gauss(0.0, 1.0)
        a.numpy.integers(0, 7, dtype=np.uint32)
        torch.rand(1, generator=a.torch)
    if warmup == 0:
        for draw in DRAWS.values():
            assert draw(a) == draw(b)
    saved = a.state_tensors()
    stream_a = [draw(a) for draw in DRAWS.values()]
    restored = RNGSuite.from_state_tensors(saved)
    assert [draw(restored) for draw in DRAWS.values()] == stream_a
