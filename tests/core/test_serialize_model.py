"""serialize_model / deserialize_model keep the original BlazeFL contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from blazefl.core import deserialize_model, serialize_model


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # test-only model construction; client work never uses this RNG
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))


def test_vector_is_every_state_entry_in_state_dict_order() -> None:
    net = small_net(0)
    flat = serialize_model(net)
    state = net.state_dict()
    assert flat.dim() == 1
    assert flat.numel() == sum(t.numel() for t in state.values())
    assert flat.dtype == torch.float32  # int64 num_batches_tracked is promoted
    expected = torch.cat([t.reshape(-1).to(torch.float32) for t in state.values()])
    assert torch.equal(flat, expected)


def test_round_trip_restores_parameters_and_buffers() -> None:
    source, target = small_net(0), small_net(1)
    bn = source[1]
    assert isinstance(bn, nn.BatchNorm2d)
    source.train()
    source(torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0)))  # moves stats
    assert int(bn.num_batches_tracked) == 1
    deserialize_model(target, serialize_model(source))
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), name


def test_vector_does_not_alias_the_model() -> None:
    net = small_net(0)
    flat = serialize_model(net, cpu=False)
    flat.zero_()
    assert not torch.equal(serialize_model(net), flat)


def test_wrong_length_is_a_value_error() -> None:
    net = small_net(0)
    with pytest.raises(ValueError, match="same architecture"):
        deserialize_model(net, serialize_model(net)[:-1])


def test_model_without_state_serializes_to_empty() -> None:
    assert serialize_model(nn.ReLU()).numel() == 0
    deserialize_model(nn.ReLU(), torch.empty(0))
