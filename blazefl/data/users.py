"""Which user (writer, speaking role, device) each sample of a dataset came from.

Federated datasets such as LEAF's FEMNIST and Shakespeare are collections of users' data; the
"natural" partition (`data.partition: natural`) gives each user its own client. A loader
attaches the per-sample user ids to the dataset it returns with :func:`with_users`; `prepare`
stores them next to the training samples (`train_users`, and the sorted names in the store's
attributes) so that `partition`, which reads only the store, can group by them.

The ids are kept as an attribute of the dataset object rather than a dataclass field, so
``dataclasses.replace`` (how algorithms slice or move a dataset) drops them: a slice never
carries ids of samples it no longer holds.

Example:
    >>> ds = with_users(synthetic_dataset(4, seed=0), ["b", "a", "b", "c"])
    >>> sample_users(ds)
    SampleUsers(codes=array([1, 0, 1, 2]), names=('a', 'b', 'c'))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

__all__ = ["MAX_USER_NAME", "SampleUsers", "sample_users", "with_users"]

#: Longest user name kept (LEAF's are ~10 characters); longer is a malformed file.
MAX_USER_NAME = 256

# Not a dataclass field of ImageDataset (see the module docstring): an instance attribute.
_ATTR = "_blazefl_users"

D = TypeVar("D")


# eq=False: the generated __eq__ would compare arrays elementwise and fail on bool().
@dataclass(frozen=True, eq=False)
class SampleUsers:
    """Per-sample user ids as codes into the sorted user names.

    Args:
        codes: ``int64 [N]``: sample i belongs to user ``names[codes[i]]``.
        names: the distinct user names, sorted (code order is name order).

    Example:
        >>> SampleUsers(np.array([0, 0, 1]), ("f0001", "f0002")).counts().tolist()
        [2, 1]
    """

    codes: np.ndarray
    names: tuple[str, ...]

    def counts(self) -> np.ndarray:
        """Samples per user, in code order."""
        return np.bincount(self.codes, minlength=len(self.names))


def with_users(data: D, users: Sequence[str] | SampleUsers) -> D:
    """Attach one user per sample to `data` (in place) and return it.

    Codes follow the sorted names (Python's string order), so the same users give the same
    codes whatever order the loader read them in.

    Args:
        data: an ``ImageDataset`` or ``FeatureDataset`` (anything with ``len``).
        users: one user name (str) per sample, or a ready `SampleUsers` (what a loader that
            already grouped its samples by sorted user builds, without sorting N names).

    Returns:
        `data`, now answering :func:`sample_users`.

    Raises:
        ValueError: not one user per sample, a name that is empty or longer than
            `MAX_USER_NAME`, or (a `SampleUsers`) codes out of range or names not sorted.

    Example:
        >>> with_users(ds, ["w1"] * len(ds)) is ds
        True
    """
    n = len(data)  # type: ignore[arg-type]
    if isinstance(users, SampleUsers):
        record = users
    else:
        per_sample = list(users)
        if len(per_sample) != n:
            raise ValueError(f"need one user per sample ({n}), got {len(per_sample)}")
        _check_names(per_sample)
        names, codes = np.unique(np.asarray(per_sample, dtype=object), return_inverse=True)
        record = SampleUsers(codes.astype(np.int64).reshape(-1), tuple(str(u) for u in names))
    _check_record(record, n)
    object.__setattr__(data, _ATTR, record)  # frozen dataclasses refuse plain assignment
    return data


def _check_names(names: list[Any]) -> None:
    if not all(type(u) is str and 0 < len(u) <= MAX_USER_NAME for u in names):
        raise ValueError(f"user names must be non-empty str of at most {MAX_USER_NAME} chars")


def _check_record(record: SampleUsers, n: int) -> None:
    codes, names = record.codes, list(record.names)
    _check_names(names)
    if not isinstance(codes, np.ndarray) or codes.dtype != np.int64 or codes.shape != (n,):
        raise ValueError(f"user codes must be int64 [{n}], one per sample")
    if names != sorted(set(names)):
        raise ValueError("user names must be distinct and sorted")
    if n and (int(codes.min()) < 0 or int(codes.max()) >= len(names)):
        raise ValueError(f"user codes must lie in [0, {len(names)})")


def sample_users(data: Any) -> SampleUsers | None:
    """The user ids :func:`with_users` attached to `data` (None when it has none).

    Example:
        >>> sample_users(synthetic_dataset(4, seed=0)) is None
        True
    """
    found = getattr(data, _ATTR, None)
    return found if isinstance(found, SampleUsers) else None
