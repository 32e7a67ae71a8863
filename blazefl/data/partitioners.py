"""Split a dataset's sample indices among clients: IID, Dirichlet label skew, shards, quantity
skew, and the natural partition of a federated dataset (one client per user).

Every partitioner returns one sorted ``int64`` index array per client; the arrays are pairwise
disjoint, their union is exactly ``range(len(labels))`` and every client gets at least
``min_samples`` indices. All randomness comes from ``np.random.default_rng(seed)``, so a seed
fixes the partition on any machine with the same numpy.

A researcher's own partitioner is named by import path (`data.partition: mypkg.split:by_writer`):
a plain function `fn(*, labels, num_clients, generator, features=...)` that draws only from
`generator` (a numpy Generator seeded from the experiment seed), may take `features` (the
training images, uint8, one row per sample) if it declares that argument, and returns one
index list per client: disjoint, in range, none empty (checked, one line otherwise).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from blazefl.registry import Registry, RegistryError, function_accepting, is_import_path

__all__ = [
    "PARTITIONERS",
    "PartitionError",
    "wants_features",
    "dirichlet_partition",
    "iid_partition",
    "natural_partition",
    "partition_indices",
    "quantity_partition",
    "shard_partition",
]

_WITH_FEATURES = function_accepting("labels", "num_clients", "generator", "features")
_WITHOUT_FEATURES = function_accepting("labels", "num_clients", "generator")


def _adapt_partitioner(obj: Any, path: str) -> Any:
    """A plain function taking labels=, num_clients=, generator= and, if declared, features=."""
    try:
        return _WITH_FEATURES(obj, path)
    except RegistryError:
        return _WITHOUT_FEATURES(obj, path)


#: Partition methods by config name (`data.partition`); a user's own is named by import path.
PARTITIONERS: Registry[Callable[..., Any]] = Registry("partition", adapt=_adapt_partitioner)


class PartitionError(ValueError):
    """A user partitioner that raised or returned something other than index lists."""


# Dirichlet draws that leave a client under min_samples are redrawn this many times before the
# deterministic rebalance kicks in (tiny alpha with many clients may never succeed by chance).
_MAX_DIRICHLET_TRIES = 100


def _as_labels(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels
    array = np.asarray(array)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_common(num_samples: int, num_clients: int, min_samples: int) -> None:
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
        raise ValueError(f"num_clients must be an int, got {num_clients!r}")
    if num_clients <= 0:
        raise ValueError(f"num_clients must be > 0, got {num_clients}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    if num_samples < num_clients * min_samples:
        raise ValueError(
            f"num_clients={num_clients} with min_samples={min_samples} needs at least "
            f"{num_clients * min_samples} samples, got {num_samples}"
        )


def _check_alpha(alpha: float) -> None:
    if not alpha > 0 or not np.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid_partition(
    labels: np.ndarray | torch.Tensor, num_clients: int, seed: int, *, min_samples: int = 1
) -> list[np.ndarray]:
    """Shuffle all indices and deal them into ``num_clients`` near-equal parts.

    Args:
        labels: one label per sample (only its length is used).
        num_clients: number of clients (> 0).
        seed: seed of ``np.random.default_rng``.
        min_samples: smallest allowed client size (>= 1).

    Returns:
        One sorted ``int64`` index array per client; sizes differ by at most one.

    Example:
        >>> [len(p) for p in iid_partition(np.zeros(10, dtype=int), 3, seed=0)]
        [4, 3, 3]
    """
    y = _as_labels(labels)
    _check_common(len(y), num_clients, min_samples)
    rng = np.random.default_rng(seed)
    return _finish(np.array_split(rng.permutation(len(y)), num_clients))


def _rebalance(parts: list[np.ndarray], min_samples: int) -> list[np.ndarray]:
    """Move samples from the largest clients to those under ``min_samples``.

    Deterministic: clients are served in id order, the donor is the largest client (lowest id on
    ties) and it gives away its last indices, so the result depends only on the input parts.
    """
    parts = [p.copy() for p in parts]
    for cid in range(len(parts)):
        while len(parts[cid]) < min_samples:
            sizes = np.array([len(p) for p in parts])
            donor = int(np.argmax(sizes))
            give = min(min_samples - len(parts[cid]), len(parts[donor]) - min_samples)
            parts[cid] = np.concatenate([parts[cid], parts[donor][-give:]])
            parts[donor] = parts[donor][:-give]
    return parts


def dirichlet_partition(
    labels: np.ndarray | torch.Tensor,
    num_clients: int,
    seed: int,
    *,
    alpha: float = 0.5,
    min_samples: int = 1,
) -> list[np.ndarray]:
    """Label skew: each class is split over clients by proportions drawn from Dirichlet(alpha).

    Smaller ``alpha`` concentrates each class on fewer clients (alpha -> inf approaches IID).
    Draws leaving a client under ``min_samples`` are redrawn (up to 100 times); if that still
    fails, the largest clients deterministically hand samples to the small ones.

    Args:
        labels: one integer label per sample.
        num_clients: number of clients (> 0).
        seed: seed of ``np.random.default_rng``.
        alpha: Dirichlet concentration (> 0).
        min_samples: smallest allowed client size (>= 1).

    Returns:
        One sorted ``int64`` index array per client.

    Example:
        >>> y = np.repeat(np.arange(10), 100)
        >>> parts = dirichlet_partition(y, 5, seed=0, alpha=0.1)
        >>> sum(len(p) for p in parts)
        1000
    """
    y = _as_labels(labels)
    _check_common(len(y), num_clients, min_samples)
    _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == k) for k in np.unique(y)]
    for _ in range(_MAX_DIRICHLET_TRIES):
        samples, owners = [], []
        for members in by_class:
            shuffled = rng.permutation(members)
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(shuffled)).astype(np.int64)
            samples.append(shuffled)
            # client of each shuffled position: how many cuts lie at or before it (the
            # chunks np.split(shuffled, cuts) would give, without a Python loop per client)
            owners.append(np.searchsorted(cuts, np.arange(len(shuffled)), side="right"))
        owner = np.concatenate(owners)
        counts = np.bincount(owner, minlength=num_clients)
        if counts.min() >= min_samples:
            break
    # each client's samples in class order, then shuffled order: what the rebalancing reads
    grouped = np.concatenate(samples)[np.argsort(owner, kind="stable")]
    parts = np.split(grouped, np.cumsum(counts)[:-1])
    if counts.min() >= min_samples:
        return _finish(parts)
    return _finish(_rebalance(parts, min_samples))


def shard_partition(
    labels: np.ndarray | torch.Tensor,
    num_clients: int,
    seed: int,
    *,
    shards_per_client: int = 2,
    min_samples: int = 1,
) -> list[np.ndarray]:
    """Pathological non-IID (McMahan et al.): sort by label, cut into shards, deal shards out.

    Indices are sorted by label (stable), cut into ``num_clients * shards_per_client`` shards of
    near-equal size, and each client gets ``shards_per_client`` shards chosen at random. When
    shards are label-pure a client sees at most ``shards_per_client`` labels.

    Args:
        labels: one integer label per sample.
        num_clients: number of clients (> 0).
        seed: seed of ``np.random.default_rng``.
        shards_per_client: shards per client (> 0).
        min_samples: smallest allowed client size (>= 1).

    Returns:
        One sorted ``int64`` index array per client.

    Example:
        >>> y = np.repeat(np.arange(10), 10)
        >>> parts = shard_partition(y, 5, seed=0, shards_per_client=2)
        >>> max(len(np.unique(y[p])) for p in parts) <= 2
        True
    """
    y = _as_labels(labels)
    _check_common(len(y), num_clients, min_samples)
    if isinstance(shards_per_client, bool) or shards_per_client <= 0:
        raise ValueError(f"shards_per_client must be > 0, got {shards_per_client}")
    num_shards = num_clients * shards_per_client
    if num_shards > len(y):
        raise ValueError(
            f"num_clients * shards_per_client = {num_shards} shards exceed the "
            f"{len(y)} samples; lower num_clients or shards_per_client"
        )
    smallest_client = (len(y) // num_shards) * shards_per_client
    if smallest_client < min_samples:
        raise ValueError(
            f"min_samples={min_samples} cannot be met: {num_shards} shards of {len(y)} samples "
            f"give some clients only {smallest_client}"
        )
    rng = np.random.default_rng(seed)
    shards = np.array_split(np.argsort(y, kind="stable"), num_shards)
    owned = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return _finish([np.concatenate([shards[s] for s in row]) for row in owned])


def quantity_partition(
    labels: np.ndarray | torch.Tensor,
    num_clients: int,
    seed: int,
    *,
    alpha: float = 0.5,
    min_samples: int = 1,
) -> list[np.ndarray]:
    """Quantity skew: client sizes follow Dirichlet(alpha) proportions; labels stay IID.

    Every client first gets ``min_samples``; the rest is shared by the Dirichlet proportions
    (largest remainders get the leftover units), so no redraw is ever needed.

    Args:
        labels: one label per sample (only its length is used).
        num_clients: number of clients (> 0).
        seed: seed of ``np.random.default_rng``.
        alpha: Dirichlet concentration (> 0); smaller means more unequal sizes.
        min_samples: smallest allowed client size (>= 1).

    Returns:
        One sorted ``int64`` index array per client.

    Example:
        >>> parts = quantity_partition(np.zeros(100, dtype=int), 4, seed=0, alpha=0.5)
        >>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 1
        (100, True)
    """
    y = _as_labels(labels)
    _check_common(len(y), num_clients, min_samples)
    _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(num_clients, alpha))
    spare = len(y) - num_clients * min_samples
    exact = shares * spare
    sizes = np.floor(exact).astype(np.int64)
    # Largest-remainder rounding; argsort is stable so ties go to the lower client id.
    leftover = spare - int(sizes.sum())
    sizes[np.argsort(-(exact - sizes), kind="stable")[:leftover]] += 1
    sizes += min_samples
    perm = rng.permutation(len(y))
    return _finish(np.split(perm, np.cumsum(sizes)[:-1]))


def natural_partition(
    users: np.ndarray | None, num_clients: int, *, min_samples: int = 1
) -> list[np.ndarray]:
    """One client per user: client i holds exactly the samples of the i-th user in code order
    (the sorted user names, `blazefl.data.users`). Uses no randomness.

    Every user becomes a client, so `num_clients` must equal the number of users: a subset
    of users is chosen when the data are made (LEAF's ``--sf`` fraction), where it is part of
    the recorded data, not silently here.

    Args:
        users: one user code per sample (``int64 [N]``, `SampleUsers.codes`); None when the
            dataset carries no users.
        num_clients: data.clients; must equal the number of distinct users.
        min_samples: smallest allowed client size (>= 1).

    Returns:
        One sorted ``int64`` index array per user.

    Raises:
        ValueError: no users, a different number of clients, or a user under min_samples;
            one line each, with the fix.

    Example:
        >>> [p.tolist() for p in natural_partition(np.array([1, 0, 1, 2]), 3)]
        [[1], [0, 2], [3]]
    """
    if users is None:
        raise ValueError(
            "data.partition natural needs a dataset that records which user each sample came "
            "from (femnist, shakespeare, or a loader using blazefl.data.with_users)"
        )
    codes = np.asarray(users)
    if codes.ndim != 1 or (codes.size and not np.issubdtype(codes.dtype, np.integer)):
        raise ValueError(f"user codes must be 1-D integers, got {codes.dtype} {codes.shape}")
    distinct, inverse = np.unique(codes, return_inverse=True)
    if len(distinct) != num_clients:
        raise ValueError(
            f"data.partition natural gives each of the {len(distinct)} users its own client: "
            f"set data.clients: {len(distinct)} (got {num_clients}; to use fewer users, "
            "sample them when making the data, e.g. LEAF's --sf)"
        )
    # a stable argsort keeps each user's samples in index order; the counts cut it per user
    order = np.argsort(inverse.reshape(-1), kind="stable")
    counts = np.bincount(inverse.reshape(-1), minlength=len(distinct))
    if len(counts) and int(counts.min()) < min_samples:
        raise ValueError(
            f"user {int(np.argmin(counts))} holds {int(counts.min())} samples, under "
            f"min_samples={min_samples}"
        )
    return _finish(np.split(order, np.cumsum(counts)[:-1]))


def partition_indices(
    labels: np.ndarray | torch.Tensor,
    num_clients: int,
    method: str,
    seed: int,
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_samples: int = 1,
    features: np.ndarray | None = None,
    users: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Partition sample indices among clients with one of ``PARTITIONERS``.

    Args:
        labels: one integer label per sample (numpy array or tensor).
        num_clients: number of clients (> 0).
        method: ``"iid"``, ``"dirichlet"``, ``"shards"``, ``"quantity"``, ``"natural"`` or
            the import path of a user partitioner.
        seed: seed of ``np.random.default_rng`` (the only randomness used).
        alpha: Dirichlet concentration for ``"dirichlet"`` and ``"quantity"``.
        shards_per_client: shards per client for ``"shards"``.
        min_samples: smallest allowed client size.
        features: one row per sample, for a user partitioner that declares `features`.
        users: one user code per sample (`blazefl.data.sample_users`), for ``"natural"``.

    Returns:
        ``num_clients`` sorted, pairwise disjoint ``int64`` arrays covering
        ``range(len(labels))``.

    Example:
        >>> y = np.arange(100) % 10
        >>> parts = partition_indices(y, 4, "dirichlet", seed=0, alpha=0.5)
        >>> sorted(np.concatenate(parts).tolist()) == list(range(100))
        True
    """
    if is_import_path(method):
        return _user_partition(method, _as_labels(labels), num_clients, seed, features)
    if method == "iid":
        return iid_partition(labels, num_clients, seed, min_samples=min_samples)
    if method == "dirichlet":
        return dirichlet_partition(labels, num_clients, seed, alpha=alpha, min_samples=min_samples)
    if method == "shards":
        return shard_partition(
            labels, num_clients, seed, shards_per_client=shards_per_client, min_samples=min_samples
        )
    if method == "quantity":
        return quantity_partition(labels, num_clients, seed, alpha=alpha, min_samples=min_samples)
    if method == "natural":
        if users is not None and len(users) != len(labels):
            raise ValueError(f"users ({len(users)}) and labels ({len(labels)}) differ in length")
        return natural_partition(users, num_clients, min_samples=min_samples)
    raise ValueError(f"unknown partition method {method!r}; allowed: {PARTITIONERS.choices_text()}")


def wants_features(method: str) -> bool:
    """Whether the partitioner `method` names declares a `features` argument (built-ins do not)."""
    if not is_import_path(method):
        return False
    return "features" in inspect.signature(PARTITIONERS.get(method)).parameters


def _user_partition(
    method: str, labels: np.ndarray, num_clients: int, seed: int, features: np.ndarray | None
) -> list[np.ndarray]:
    """Call a user partitioner and check what it returns (disjoint, in range, none empty)."""
    fn = PARTITIONERS.get(method)
    kwargs: dict[str, Any] = {
        "labels": labels.copy(),
        "num_clients": num_clients,
        "generator": np.random.default_rng(seed),
    }
    if wants_features(method):
        kwargs["features"] = features
    where = f"data.partition {method!r}"
    try:
        parts = fn(**kwargs)
    except Exception as exc:
        text = " ".join(str(exc).split())[:160]
        raise PartitionError(f"{where} raised {type(exc).__name__}: {text}; fix it") from None
    if not isinstance(parts, list | tuple) or len(parts) != num_clients:
        got = f"{len(parts)} lists" if isinstance(parts, list | tuple) else type(parts).__name__
        raise PartitionError(
            f"{where} must return one index list per client ({num_clients}), got {got}"
        )
    out, seen = [], np.zeros(len(labels), dtype=bool)
    for cid, part in enumerate(parts):
        try:
            idx = np.asarray(part)
        except Exception:
            idx = np.asarray([None])
        if idx.ndim != 1 or not idx.size or not np.issubdtype(idx.dtype, np.integer):
            raise PartitionError(
                f"{where}: client {cid}'s indices must be a non-empty 1-D list of integers"
            )
        if (
            idx.min() < 0
            or idx.max() >= len(labels)
            or seen[idx].any()
            or len(set(idx.tolist())) != idx.size
        ):
            raise PartitionError(
                f"{where}: client {cid}'s indices must lie in [0, {len(labels)}) and belong to "
                "no other client"
            )
        seen[idx] = True
        out.append(np.sort(idx.astype(np.int64)))
    return out


for _name, _fn in (
    ("iid", iid_partition),
    ("dirichlet", dirichlet_partition),
    ("shards", shard_partition),
    ("quantity", quantity_partition),
    ("natural", natural_partition),
):
    PARTITIONERS.register(_name, _fn)
