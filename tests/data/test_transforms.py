"""Transforms: reproducible from the generator alone, exact edge cases, no global RNG use."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from blazefl.data import (
    GeneratorDropout,
    GeneratorRandomCrop,
    GeneratorRandomHorizontalFlip,
    dropout,
    random_crop,
    random_horizontal_flip,
)

Op = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

OPS: dict[str, Op] = {
    "crop": lambda x, g: random_crop(x, 4, g),
    "flip": lambda x, g: random_horizontal_flip(x, 0.5, g),
    "dropout": lambda x, g: dropout(x, 0.3, g),
}


def _batch(seed: int = 0, b: int = 16) -> torch.Tensor:
    return torch.rand(b, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", OPS)
def test_same_generator_state_gives_same_output(name: str) -> None:
    x = _batch()
    assert torch.equal(OPS[name](x, _gen(1)), OPS[name](x, _gen(1)))


@pytest.mark.parametrize("name", OPS)
def test_different_generator_state_gives_different_output(name: str) -> None:
    x = _batch()
    assert not torch.equal(OPS[name](x, _gen(1)), OPS[name](x, _gen(2)))


@pytest.mark.parametrize("name", OPS)
def test_ops_leave_global_rng_untouched(name: str) -> None:
    before = torch.get_rng_state()
    OPS[name](_batch(), _gen(0))
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("name", OPS)
def test_threads_reproduce_sequential_results(name: str) -> None:
    x = _batch(b=64)
    sequential = [OPS[name](x, _gen(s)) for s in range(8)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda s: OPS[name](x, _gen(s)), range(8)))
    assert all(torch.equal(a, b) for a, b in zip(sequential, threaded, strict=True))


def test_flip_probability_zero_is_identity_and_one_flips_all() -> None:
    x = _batch()
    assert torch.equal(random_horizontal_flip(x, 0.0, _gen(0)), x)
    assert torch.equal(random_horizontal_flip(x, 1.0, _gen(0)), x.flip(-1))


def test_flip_flips_each_sample_whole_or_not_at_all() -> None:
    x = _batch(b=200)
    out = random_horizontal_flip(x, 0.5, _gen(3))
    flipped = torch.tensor([torch.equal(o, f) for o, f in zip(out, x.flip(-1), strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert torch.all(flipped ^ kept)
    assert 60 < int(flipped.sum()) < 140


def test_crop_keeps_shape_and_dtype() -> None:
    x = (torch.rand(5, 3, 32, 32) * 255).to(torch.uint8)
    out = random_crop(x, 4, _gen(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert random_crop(x, 4, _gen(0), size=(24, 28)).shape == (5, 3, 24, 28)


def test_crop_with_padding_zero_is_identity() -> None:
    x = _batch()
    assert torch.equal(random_crop(x, 0, _gen(0)), x)


def test_crop_is_a_window_of_the_zero_padded_image() -> None:
    x = _batch(b=8) + 1.0  # strictly positive, so padding zeros are distinguishable
    pad = 3
    out = random_crop(x, pad, _gen(5))
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = set()
    for b in range(len(x)):
        matches = [
            (t, l)
            for t in range(2 * pad + 1)
            for l in range(2 * pad + 1)  # noqa: E741
            if torch.equal(out[b], padded[b, :, t : t + 12, l : l + 12])
        ]
        assert matches, f"sample {b} is not a crop of its padded image"
        offsets.update(matches)
    assert len(offsets) > 1  # per-sample offsets, not one shared offset


def test_dropout_keeps_expectation_and_drop_rate() -> None:
    x = torch.ones(200_000)
    out = dropout(x, 0.3, _gen(0))
    assert abs(out.mean().item() - 1.0) < 0.01
    assert abs((out == 0).float().mean().item() - 0.3) < 0.01
    assert torch.allclose(out[out != 0], torch.tensor(1 / 0.7))


def test_dropout_edge_cases() -> None:
    x = _batch()
    assert dropout(x, 0.5, _gen(0), training=False) is x
    assert dropout(x, 0.0, _gen(0)) is x
    assert torch.equal(dropout(x, 1.0, _gen(0)), torch.zeros_like(x))
    with pytest.raises(ValueError, match="1.5"):
        dropout(x, 1.5, _gen(0))


def test_dropout_gradient_is_the_scaled_mask() -> None:
    x = torch.ones(1000, requires_grad=True)
    out = dropout(x, 0.5, _gen(4))
    out.sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, out.detach())  # d(x*m)/dx = m, and out = m when x = 1


MODULES = {
    "crop": (lambda: GeneratorRandomCrop(12, padding=2), lambda x, g: random_crop(x, 2, g)),
    "flip": (
        lambda: GeneratorRandomHorizontalFlip(0.5),
        lambda x, g: random_horizontal_flip(x, 0.5, g),
    ),
    "dropout": (lambda: GeneratorDropout(0.4), lambda x, g: dropout(x, 0.4, g)),
}


@pytest.mark.parametrize("name", MODULES)
def test_module_matches_function_for_same_generator(name: str) -> None:
    make, function = MODULES[name]
    module = make()
    module.generator = _gen(7)
    x = _batch()
    assert torch.equal(module(x), function(x, _gen(7)))


@pytest.mark.parametrize("name", MODULES)
def test_module_without_generator_fails_clearly_in_training(name: str) -> None:
    module = MODULES[name][0]()
    with pytest.raises(RuntimeError, match="generator"):
        module(_batch())


@pytest.mark.parametrize("name", MODULES)
def test_module_in_eval_mode_is_identity_without_generator(name: str) -> None:
    module = MODULES[name][0]().eval()
    x = _batch()
    assert module(x) is x


def test_generator_is_not_in_state_dict() -> None:
    drop = GeneratorDropout(0.5)
    drop.generator = _gen(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), drop)
    assert set(module.state_dict()) == {"0.weight", "0.bias"}
