"""Model factories learn the data's input shape: image-era factories get exactly the call they
always got (same weights), a factory declaring `input_shape` / `input_dtype` gets them, and a
model that does not fit the data is one line from `check_model_fits`."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from blazefl.algorithms.fedavg import ModelSpec
from blazefl.data import FeatureDataset, synthetic_dataset
from blazefl.experiment import ExperimentSpec, model_spec_for
from blazefl.models import build_model
from blazefl.models.inputs import check_model_fits, factory_kwargs, model_factory_hook
from blazefl.registry import RegistryError

ALL = {
    "num_classes": 3,
    "in_channels": 0,
    "image_size": 0,
    "dropout": 0.0,
    "input_shape": (20,),
    "input_dtype": torch.int64,
}


def image_era(*, num_classes: int, in_channels: int, image_size: int, dropout: float) -> Any:
    return nn.Linear(in_channels * image_size * image_size, num_classes)


def forwards(**kw: Any) -> Any:  # forwards everything to a constructor: no new keywords
    return nn.Linear(3, kw["num_classes"])


def shaped(*, num_classes: int, input_shape: tuple[int, ...], dropout: float) -> Any:
    return nn.Linear(math.prod(input_shape), num_classes)


def typed(*, num_classes: int, input_shape: Any, input_dtype: Any, dropout: float) -> Any:
    return nn.Linear(math.prod(input_shape), num_classes)


def both(*, num_classes: int, in_channels: int, image_size: int, dropout: float, **kw: Any) -> Any:
    return nn.Linear(3, num_classes)


def no_shape(*, num_classes: int, dropout: float) -> Any:
    return nn.Linear(3, num_classes)


def test_each_factory_gets_the_keywords_it_accepts() -> None:
    image = {"num_classes", "in_channels", "image_size", "dropout"}
    assert factory_kwargs(image_era, **ALL).keys() == image
    assert factory_kwargs(forwards, **ALL).keys() == image
    assert factory_kwargs(both, **ALL).keys() == image  # **kw is not a declaration
    assert factory_kwargs(shaped, **ALL) == {"num_classes": 3, "dropout": 0.0, "input_shape": (20,)}
    assert factory_kwargs(typed, **ALL)["input_dtype"] is torch.int64


def test_the_registry_admits_image_or_shape_factories_only() -> None:
    for factory in (image_era, forwards, shaped, typed, both):
        assert model_factory_hook(factory, "m:f") is factory
    with pytest.raises(RegistryError, match="or num_classes=, input_shape=, dropout="):
        model_factory_hook(no_shape, "m:no_shape")
    with pytest.raises(RegistryError, match="a plain Python function"):
        model_factory_hook(print, "builtins:print")


def test_image_models_are_built_as_before() -> None:
    spec = model_spec_for(ExperimentSpec(), synthetic_dataset(4, seed=0))
    assert (spec.in_channels, spec.image_size, spec.input_shape) == (3, 32, (3, 32, 32))
    built = spec.build(torch.Generator().manual_seed(5))
    legacy = build_model("cnn", 10, 3, 32, generator=torch.Generator().manual_seed(5))
    for (name, a), (_, b) in zip(
        built.state_dict().items(), legacy.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_feature_data_gives_the_shape_and_dtype() -> None:
    data = FeatureDataset(torch.zeros(4, 6), torch.zeros(4, dtype=torch.int64), 3)
    spec = model_spec_for(ExperimentSpec(), data)
    assert (spec.in_channels, spec.image_size) == (0, 0)
    assert (spec.input_shape, spec.input_dtype) == ((6,), torch.float32)
    with pytest.raises(ValueError, match=r"built-in model 'cnn' takes images .* \(6,\) float32"):
        spec.build(torch.Generator())
    model = build_model(
        "tests.models.test_input_shape:typed", 3, 0, 0, input_shape=(6,), generator=None
    )
    assert isinstance(model, nn.Linear) and model.in_features == 6


def test_a_fitting_model_passes_and_changes_nothing() -> None:
    data = FeatureDataset(torch.randn(5, 6), torch.arange(5) % 3, 3)
    model = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5), nn.Linear(4, 3))
    before = torch.get_rng_state()
    check_model_fits(model, data, "m", "d")
    assert model.training and torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        (nn.Linear(7, 3), "input [1, 6] float32 (samples (6,) float32; RuntimeError"),
        (nn.Linear(6, 4), "gave [1, 4] float32, expected float logits [1, 3]"),
        (nn.Flatten(), "gave [1, 6] float32"),
    ],
)
def test_a_mismatch_is_one_line(model: nn.Module, fragment: str) -> None:
    data = FeatureDataset(torch.randn(5, 6), torch.arange(5) % 3, 3)
    with pytest.raises(ValueError) as err:
        check_model_fits(model, data, "mymodel:mlp", "mydata:table")
    line = str(err.value)
    assert "\n" not in line and fragment in line, line
    assert line.startswith("model.name 'mymodel:mlp' does not fit data.dataset 'mydata:table'")


def test_the_largest_token_id_is_fed_too() -> None:
    ids = torch.zeros(6, 4, dtype=torch.int64)
    ids[4, 2] = 11  # only sample 4 holds a token the embedding lacks
    data = FeatureDataset(ids, torch.zeros(6, dtype=torch.int64), 2)
    model = nn.Sequential(nn.Embedding(10, 3), nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ValueError, match="largest token id 11; IndexError"):
        check_model_fits(model, data, "m", "d")
    check_model_fits(
        nn.Sequential(nn.Embedding(12, 3), nn.Flatten(), nn.Linear(12, 2)), data, "m", "d"
    )


def test_model_spec_defaults_are_the_image_ones() -> None:
    spec = ModelSpec("cnn_small", 10, 1, 8)
    assert spec.input_shape is None and spec.input_dtype == torch.float32
    assert sum(p.numel() for p in spec.build(torch.Generator()).parameters()) > 0
