"""Properties of the models: sizes, shapes, selection errors, generator-only randomness."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from blazefl.models import CNN, MODELS, ModelSelector, SmallCNN, build_model, resnet18


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_bytes(model: nn.Module) -> dict[str, bytes]:
    return {k: v.detach().contiguous().numpy().tobytes() for k, v in model.state_dict().items()}


def test_cnn_has_exactly_62006_parameters_for_cifar_shape() -> None:
    assert n_params(CNN(num_classes=10, in_channels=3, image_size=32)) == 62_006


@pytest.mark.parametrize(("channels", "size"), [(3, 32), (1, 28)])
def test_cnn_forward_shape_for_cifar_and_mnist(channels: int, size: int) -> None:
    model = CNN(num_classes=10, in_channels=channels, image_size=size)
    assert model(torch.zeros(4, channels, size, size)).shape == (4, 10)


def test_cnn_rejects_too_small_images_and_bad_dropout() -> None:
    with pytest.raises(ValueError, match="image_size.*cnn_small"):
        CNN(image_size=8)
    with pytest.raises(ValueError, match="dropout"):
        CNN(dropout=1.0)


def test_small_cnn_fits_8x8_digits_with_6090_parameters() -> None:
    model = SmallCNN(num_classes=10, in_channels=1, image_size=8)
    assert n_params(model) == 6_090
    assert model(torch.zeros(4, 1, 8, 8)).shape == (4, 10)


@pytest.mark.parametrize(("channels", "size"), [(1, 4), (1, 28), (3, 32), (3, 10)])
def test_small_cnn_forward_shape_for_other_image_sizes(channels: int, size: int) -> None:
    model = build_model("cnn_small", 7, in_channels=channels, image_size=size)
    assert model(torch.zeros(2, channels, size, size)).shape == (2, 7)


def test_small_cnn_rejects_too_small_images_and_dropout() -> None:
    with pytest.raises(ValueError, match="image_size"):
        SmallCNN(image_size=3)
    with pytest.raises(ValueError, match="dropout"):
        build_model("cnn_small", 10, in_channels=1, image_size=8, dropout=0.5)


def test_small_cnn_generator_init_uses_default_bounds() -> None:
    model: Any = build_model(
        "cnn_small", 10, in_channels=1, image_size=8, generator=torch.Generator().manual_seed(0)
    )
    for layer, fan_in in ((model.conv1, 9), (model.conv2, 16 * 9), (model.fc, 32 * 2 * 2)):
        bound = 1.0 / fan_in**0.5
        assert 0.9 * bound < layer.weight.abs().max() <= bound
        assert layer.bias.abs().max() <= bound


def test_model_selector_builds_each_model() -> None:
    selector = ModelSelector(num_classes=7, in_channels=1, image_size=28)
    assert tuple(selector.MODELS) == tuple(MODELS)
    assert tuple(MODELS) == ("cnn", "cnn_small", "resnet18", "char_lstm")
    assert selector.select_model("cnn")(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_unknown_model_name_raises_value_error_naming_it_and_allowed_names() -> None:
    with pytest.raises(ValueError, match=r"'vgg'.*cnn, cnn_small, resnet18"):
        ModelSelector(num_classes=10).select_model("vgg")
    with pytest.raises(ValueError, match="vgg"):
        build_model("vgg", num_classes=10)


@pytest.mark.parametrize("name", MODELS)
def test_build_model_with_same_generator_seed_gives_identical_bytes(name: str) -> None:
    torch.manual_seed(0)
    global_before = torch.get_rng_state().clone()
    # char_lstm takes character ids, the others images
    kw: dict[str, Any] = (
        {"input_shape": (12,), "input_dtype": torch.int64} if name == "char_lstm" else {}
    )
    a = build_model(name, 10, generator=torch.Generator().manual_seed(5), **kw)
    b = build_model(name, 10, generator=torch.Generator().manual_seed(5), **kw)
    c = build_model(name, 10, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(torch.get_rng_state(), global_before), "global torch RNG was used"
    assert state_bytes(a) == state_bytes(b)
    assert state_bytes(a) != state_bytes(c)


def test_build_model_with_generator_matches_default_init_scale() -> None:
    model: Any = build_model("cnn", 10, generator=torch.Generator().manual_seed(0))
    bound = 1.0 / (16 * 5 * 5) ** 0.5  # fc1 fan_in = 400
    assert model.fc1.weight.abs().max() <= bound
    assert model.fc1.weight.abs().max() > 0.9 * bound
    resnet = build_model("resnet18", 10, generator=torch.Generator().manual_seed(0))
    bn: Any = resnet.get_submodule("layer1.0.bn1")
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert int(bn.num_batches_tracked) == 0


def test_build_model_rejects_dropout_for_resnet() -> None:
    with pytest.raises(ValueError, match="dropout"):
        build_model("resnet18", 10, dropout=0.5)


def test_dropout_uses_only_its_generator() -> None:
    model: Any = build_model("cnn", 10, dropout=0.5, generator=torch.Generator().manual_seed(1))
    model.train()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))

    model.generator = torch.Generator().manual_seed(3)
    torch.manual_seed(100)
    global_before = torch.get_rng_state().clone()
    first = model(x)
    assert torch.equal(torch.get_rng_state(), global_before), "dropout used the global RNG"

    model.generator = torch.Generator().manual_seed(3)
    torch.manual_seed(200)  # a different global state must not matter
    assert torch.equal(model(x), first)

    model.generator = torch.Generator().manual_seed(4)
    assert not torch.equal(model(x), first)


def test_dropout_training_without_generator_raises_runtime_error() -> None:
    model = CNN(dropout=0.5).train()
    with pytest.raises(RuntimeError, match="generator"):
        model(torch.zeros(1, 3, 32, 32))


def test_dropout_is_identity_in_eval_mode_without_generator() -> None:
    model = CNN(dropout=0.5)
    plain = CNN()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), plain.eval()(x))


def test_resnet18_forward_on_cifar_batch() -> None:
    model: Any = resnet18(num_classes=10, in_channels=3)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet18_keeps_imagenet_stem_for_large_input() -> None:
    model: Any = ModelSelector(num_classes=10, in_channels=1, image_size=96).select_model(
        "resnet18"
    )
    assert model.conv1.kernel_size == (7, 7) and model.conv1.in_channels == 1
    assert isinstance(model.maxpool, nn.MaxPool2d)
