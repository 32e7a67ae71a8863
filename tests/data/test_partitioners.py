"""Partitioners: exact cover, determinism, minimum sizes, skew, and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from blazefl.data import (
    PARTITIONERS,
    dirichlet_partition,
    iid_partition,
    partition_indices,
    quantity_partition,
    shard_partition,
)

labels_strategy = st.lists(st.integers(0, 9), min_size=1, max_size=300).map(
    lambda xs: np.array(xs, dtype=np.int64)
)
seeds = st.integers(0, 2**32 - 1)
#: The partitioners that split labels by a seed ("natural" groups by the data's users:
#: tests/data/test_leaf.py).
SEEDED = tuple(name for name in PARTITIONERS.names() if name != "natural")


def _is_exact_cover(parts: list[np.ndarray], n: int) -> bool:
    joined = np.concatenate(parts)
    return len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


@settings(max_examples=80, deadline=None)
@given(
    labels=labels_strategy,
    data=st.data(),
    method=st.sampled_from(SEEDED),
    seed=seeds,
    alpha=st.floats(0.05, 100.0),
)
def test_partitions_are_sorted_disjoint_cover_and_nonempty(
    labels: np.ndarray, data: st.DataObject, method: str, seed: int, alpha: float
) -> None:
    num_clients = data.draw(st.integers(1, min(len(labels), 20)))
    shards_per_client = data.draw(st.integers(1, 3))
    assume(method != "shards" or num_clients * shards_per_client <= len(labels))
    parts = partition_indices(
        labels, num_clients, method, seed, alpha=alpha, shards_per_client=shards_per_client
    )
    assert len(parts) == num_clients
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)  # sorted, unique
    assert _is_exact_cover(parts, len(labels))  # so also pairwise disjoint
    assert min(len(p) for p in parts) >= 1


@settings(max_examples=30, deadline=None)
@given(labels=labels_strategy, method=st.sampled_from(SEEDED), seed=seeds)
def test_partitions_are_deterministic_per_seed(labels: np.ndarray, method: str, seed: int) -> None:
    num_clients = max(1, len(labels) // 10)
    first = partition_indices(labels, num_clients, method, seed, shards_per_client=1)
    second = partition_indices(labels, num_clients, method, seed, shards_per_client=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


@settings(max_examples=40, deadline=None)
@given(
    labels=labels_strategy,
    data=st.data(),
    method=st.sampled_from(("iid", "dirichlet", "quantity")),
    seed=seeds,
)
def test_every_client_gets_min_samples(
    labels: np.ndarray, data: st.DataObject, method: str, seed: int
) -> None:
    min_samples = data.draw(st.integers(1, 5))
    assume(len(labels) >= min_samples)
    num_clients = data.draw(st.integers(1, min(20, len(labels) // min_samples)))
    parts = partition_indices(
        labels, num_clients, method, seed, alpha=0.05, min_samples=min_samples
    )
    assert min(len(p) for p in parts) >= min_samples
    assert _is_exact_cover(parts, len(labels))


def test_dirichlet_rebalances_deterministically_when_redraws_keep_failing() -> None:
    # 40 clients, alpha 0.01, 100 samples: no draw gives everyone 2 samples, so the
    # deterministic rebalance must step in.
    labels = np.arange(100) % 10
    first = dirichlet_partition(labels, 40, 0, alpha=0.01, min_samples=2)
    second = dirichlet_partition(labels, 40, 0, alpha=0.01, min_samples=2)
    assert min(len(p) for p in first) >= 2
    assert _is_exact_cover(first, 100)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("method", SEEDED)
def test_different_seeds_give_different_partitions(method: str) -> None:
    labels = np.repeat(np.arange(10), 50)
    a = partition_indices(labels, 10, method, seed=0)
    b = partition_indices(labels, 10, method, seed=1)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_tensor_and_array_labels_give_same_partition() -> None:
    labels = np.arange(200) % 7
    a = partition_indices(labels, 5, "dirichlet", seed=3)
    b = partition_indices(torch.from_numpy(labels), 5, "dirichlet", seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_public_functions_match_dispatcher() -> None:
    labels = np.arange(120) % 6
    pairs = [
        (iid_partition(labels, 4, 9), partition_indices(labels, 4, "iid", 9)),
        (
            dirichlet_partition(labels, 4, 9, alpha=0.3),
            partition_indices(labels, 4, "dirichlet", 9, alpha=0.3),
        ),
        (
            shard_partition(labels, 4, 9, shards_per_client=3),
            partition_indices(labels, 4, "shards", 9, shards_per_client=3),
        ),
        (
            quantity_partition(labels, 4, 9, alpha=0.3),
            partition_indices(labels, 4, "quantity", 9, alpha=0.3),
        ),
    ]
    for direct, dispatched in pairs:
        assert all(np.array_equal(x, y) for x, y in zip(direct, dispatched, strict=True))


def _mean_max_class_share(parts: list[np.ndarray], labels: np.ndarray) -> float:
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


def test_dirichlet_label_skew_grows_as_alpha_falls() -> None:
    labels = np.repeat(np.arange(10), 200)

    def skew(alpha: float) -> float:
        return float(
            np.mean(
                [
                    _mean_max_class_share(dirichlet_partition(labels, 10, s, alpha=alpha), labels)
                    for s in range(5)
                ]
            )
        )

    flat, mid, sharp = skew(100.0), skew(1.0), skew(0.1)
    assert flat < 0.2  # near IID: 10 classes, max share close to 0.1
    assert flat < mid < sharp
    assert sharp > 0.5


def test_quantity_sizes_spread_as_alpha_falls_while_iid_is_even() -> None:
    labels = np.zeros(2000, dtype=np.int64)

    def size_std(alpha: float) -> float:
        return float(
            np.mean(
                [
                    np.std([len(p) for p in quantity_partition(labels, 10, s, alpha=alpha)])
                    for s in range(5)
                ]
            )
        )

    assert size_std(0.1) > 3 * size_std(100.0)
    assert {len(p) for p in iid_partition(labels, 10, 0)} == {200}


@pytest.mark.parametrize("shards_per_client", [1, 2, 3])
def test_label_pure_shards_give_at_most_shards_per_client_labels(shards_per_client: int) -> None:
    num_clients, shard_size = 10, 7
    # Each class fills a whole number of shards, so every shard holds a single label.
    labels = np.repeat(np.arange(num_clients), shards_per_client * shard_size)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    parts = shard_partition(labels, num_clients, 1, shards_per_client=shards_per_client)
    assert all(len(np.unique(labels[p])) <= shards_per_client for p in parts)
    assert {len(p) for p in parts} == {shards_per_client * shard_size}


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"num_clients": 0}, ["num_clients", "0"]),
        ({"num_clients": -3}, ["num_clients", "-3"]),
        ({"method": "zipf"}, ["'zipf'", "iid", "dirichlet", "shards", "quantity"]),
        ({"method": "dirichlet", "alpha": 0.0}, ["alpha", "0.0"]),
        ({"method": "quantity", "alpha": -1.0}, ["alpha", "-1.0"]),
        ({"method": "shards", "shards_per_client": 0}, ["shards_per_client", "0"]),
        ({"num_clients": 11}, ["num_clients=11", "10"]),
        ({"method": "shards", "num_clients": 4, "shards_per_client": 3}, ["12", "10"]),
        ({"min_samples": 0}, ["min_samples", "0"]),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_value(kwargs: dict, fragments: list[str]) -> None:
    args = {"labels": np.arange(10) % 3, "num_clients": 2, "method": "iid", "seed": 0, **kwargs}
    with pytest.raises(ValueError) as info:
        partition_indices(**args)
    assert all(fragment in str(info.value) for fragment in fragments), str(info.value)
