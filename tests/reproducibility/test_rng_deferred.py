"""`RNGSuite.from_state_tensors(deferred=True)`: the same draws and the same state bytes as an
eager load, with the python and numpy streams decoded only when a client uses them."""

from __future__ import annotations

import pickle

import pytest
import torch

from blazefl.reproducibility.rng import RNGSuite, create_rng_suite


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("use", [(), ("torch",), ("numpy",), ("python",), ("torch", "numpy")])
def test_deferred_load_draws_and_captures_like_an_eager_load(use: tuple[str, ...]) -> None:
    saved = create_rng_suite(7, 3).state_tensors()
    suites = [RNGSuite.from_state_tensors(saved), RNGSuite.from_state_tensors(saved, True)]
    draws = []
    for suite in suites:
        got = []
        if "torch" in use:
            got.append(torch.randperm(20, generator=suite.torch_cpu).tolist())
        if "numpy" in use:
            got.append(suite.numpy.random(3).tolist())
        if "python" in use:
            got.append(suite.python.random())
        draws.append(got)
    assert draws[0] == draws[1]
    assert _same(suites[0].state_tensors(), suites[1].state_tensors())
    if not use:
        assert _same(suites[1].state_tensors(), saved)  # unused: the input bytes, unchanged


def test_a_deferred_suite_survives_pickling_and_loading_new_state() -> None:
    saved = create_rng_suite(1, 2).state_tensors()
    other = create_rng_suite(1, 9).state_tensors()
    clone = pickle.loads(pickle.dumps(RNGSuite.from_state_tensors(saved, deferred=True)))
    assert clone.numpy.random() == RNGSuite.from_state_tensors(saved).numpy.random()
    suite = RNGSuite.from_state_tensors(saved, deferred=True)
    suite.load_state_tensors(other)
    assert _same(suite.state_tensors(), other)


def test_unknown_attributes_still_raise() -> None:
    suite = RNGSuite.from_state_tensors(create_rng_suite(0).state_tensors(), deferred=True)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = suite.nope  # type: ignore[attr-defined]
