"""LEAF's federated datasets, FEMNIST (one user per writer) and Shakespeare (one user per
speaking role), read from the JSON files LEAF's scripts write; nothing is downloaded.

LEAF (https://github.com/TalwalkarLab/leaf) writes ``data/train/*.json`` and
``data/test/*.json``, each ``{"users": [...], "num_samples": [...], "user_data": {user:
{"x": [...], "y": [...]}}}``. Copy those two folders into a folder of their own and point
``data.root`` at it (the whole folder is hashed into the run's record, and LEAF's own data
folder also holds the raw downloads).

- FEMNIST: x is 784 floats in [0, 1] (a 28x28 grey image, LEAF's ``pixel / 255``), y a class
  in 0..61 (digits, upper case, lower case). Loaded as uint8 images ``[N, 1, 28, 28]``
  (``round(x * 255)``, which gives LEAF's original 8-bit pixels back exactly), normalised
  with mean 0 and std 1 so the model sees LEAF's own values; no augmentation (a mirrored or
  shifted character is another character or none). The built-in CNNs take it.
- Shakespeare: x is a string of 80 characters, y the character that follows. Loaded as a
  `FeatureDataset` of int64 ids ``[N, 80]`` over `SHAKESPEARE_VOCAB` (LEAF's 80 characters,
  in LEAF's order, so an id is LEAF's index); any other character is `SHAKESPEARE_UNKNOWN`
  (80). Labels are the next character's id; there are 81 classes. A sequence is not an image.

Samples are ordered by user (sorted names), then as the files list them; the user of each
training sample is attached (`blazefl.data.users`) so that ``data.partition: natural`` gives
every user its own client. Users with no samples in a split are left out of it.

Example:
    >>> train = load_femnist("data/femnist", train=True)
    >>> train.images.shape[1:], train.num_classes, len(sample_users(train).names)
    (torch.Size([1, 28, 28]), 62, 3)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blazefl.data.datasets import DatasetNotFoundError, ImageDataset
from blazefl.data.features import FeatureDataset
from blazefl.data.users import MAX_USER_NAME, SampleUsers, with_users

__all__ = [
    "FEMNIST_CLASSES",
    "LEAF_DATASETS",
    "MAX_LEAF_FILE_BYTES",
    "MAX_LEAF_FILES",
    "MAX_LEAF_SAMPLES",
    "MAX_LEAF_SPLIT_BYTES",
    "SHAKESPEARE_UNKNOWN",
    "SHAKESPEARE_VOCAB",
    "count_users",
    "load_femnist",
    "load_shakespeare",
]

#: FEMNIST's classes: 10 digits, 26 upper-case and 26 lower-case letters.
FEMNIST_CLASSES = 62
_FEMNIST_SIDE = 28
#: LEAF's Shakespeare characters (``models/utils/language_utils.py``'s ALL_LETTERS), in
#: LEAF's order: id i is character i.
SHAKESPEARE_VOCAB = (
    "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
)
#: The id of every character outside the vocabulary (LEAF itself would give -1).
SHAKESPEARE_UNKNOWN = len(SHAKESPEARE_VOCAB)
_SHAKESPEARE_CLASSES = SHAKESPEARE_UNKNOWN + 1
_MAX_SEQUENCE = 4096  # characters per Shakespeare sample (LEAF's are 80)

#: Largest JSON file read (json holds a file whole, as Python objects several times its size;
#: LEAF's largest, Shakespeare's single train file of the full data, is ~0.4 GB).
MAX_LEAF_FILE_BYTES = 2 << 30
#: Most JSON bytes per split (as much as data.root may hold to be hashed).
MAX_LEAF_SPLIT_BYTES = 64 << 30
#: Most JSON files per split.
MAX_LEAF_FILES = 10_000
#: Most samples per split (LEAF's Shakespeare has 4.2 M, FEMNIST 0.8 M), checked before the
#: split's arrays are allocated.
MAX_LEAF_SAMPLES = 10_000_000

# Where the data come from, for the one-line messages: how LEAF makes each dataset.
_HOW_TO_MAKE = {
    "femnist": "./preprocess.sh -s niid --sf 0.05 -k 0 -t sample",
    "shakespeare": "./preprocess.sh -s niid --sf 0.2 -k 0 -t sample -tf 0.8",
}

# One user's samples, decoded: (samples, labels) numpy arrays.
_Decoder = Callable[[list[Any], list[Any], str], tuple[np.ndarray, np.ndarray]]


class LeafFormatError(DatasetNotFoundError):
    """A LEAF folder or file that is missing or not in LEAF's format (one line, with the fix)."""


def _fix(name: str, root: Path) -> str:
    how = _HOW_TO_MAKE.get(name, "./preprocess.sh as its README says")
    return (
        f"make it with LEAF (git clone https://github.com/TalwalkarLab/leaf; cd "
        f"leaf/data/{name}; {how}) and copy data/train and data/test into {root}"
    )


def _split_files(name: str, root: str | os.PathLike[str] | None, split: str) -> list[Path]:
    """The split's JSON files, sorted by name, each checked for size before it is read."""
    if root is None:
        raise LeafFormatError(
            f"dataset {name!r} is read from LEAF's JSON files: set data.root to the folder "
            "holding LEAF's train/ and test/ folders"
        )
    base = Path(root)
    folder = base / split
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise LeafFormatError(
            f"data.root {base} has no LEAF {split} files ({folder}/*.json): {_fix(name, base)}"
        )
    if len(files) > MAX_LEAF_FILES:
        raise LeafFormatError(
            f"{folder} holds {len(files)} JSON files, more than {MAX_LEAF_FILES}: point "
            "data.root at one LEAF dataset's train/ and test/ folders"
        )
    total = 0
    for path in files:
        size = path.stat().st_size
        total += size
        if size > MAX_LEAF_FILE_BYTES:
            raise LeafFormatError(
                f"{path} is {size:,} bytes, over the {MAX_LEAF_FILE_BYTES:,} bytes read per "
                "file: split its users over several files of LEAF's format"
            )
        if total > MAX_LEAF_SPLIT_BYTES:
            raise LeafFormatError(
                f"{folder} holds more than {MAX_LEAF_SPLIT_BYTES:,} bytes of JSON: sample fewer "
                "users with LEAF (--sf)"
            )
    return files


def _read_json(path: Path, name: str, root: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        text = " ".join(str(exc).split())[:80]
        raise LeafFormatError(
            f"{path} is not readable JSON ({type(exc).__name__}: {text}): {_fix(name, root)}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("users"), list):
        raise LeafFormatError(
            f"{path} is not in LEAF's format (an object with 'users', 'num_samples' and "
            f"'user_data'): {_fix(name, root)}"
        )
    return data


def _file_users(
    data: dict[str, Any], path: Path, fix: str
) -> list[tuple[str, list[Any], list[Any]]]:
    """(user, x, y) of every user the file lists, checked against `num_samples`."""
    users, user_data, counts = data["users"], data.get("user_data"), data.get("num_samples")
    bad = None
    if not isinstance(user_data, dict):
        bad = "'user_data' is not an object"
    elif counts is not None and (not isinstance(counts, list) or len(counts) != len(users)):
        bad = "'num_samples' is not one count per user"
    if bad:
        raise LeafFormatError(f"{path} is not in LEAF's format ({bad}): {fix}")
    out = []
    for i, user in enumerate(users):
        entry = user_data.get(user) if type(user) is str else None  # type: ignore[union-attr]
        if not (type(user) is str and 0 < len(user) <= MAX_USER_NAME) or not isinstance(
            entry, dict
        ):
            raise LeafFormatError(
                f"{path}: user {str(user)[:40]!r} is not a name (at most {MAX_USER_NAME} "
                f"characters) with an entry in 'user_data': {fix}"
            )
        x, y = entry.get("x"), entry.get("y")
        if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y):
            raise LeafFormatError(
                f"{path}: user {user!r} needs lists 'x' and 'y' of one length: {fix}"
            )
        if counts is not None and (type(counts[i]) is not int or counts[i] != len(x)):
            raise LeafFormatError(
                f"{path}: user {user!r} has {len(x)} samples but num_samples says "
                f"{str(counts[i])[:20]}: {fix}"
            )
        out.append((user, x, y))
    return out


def _load_split(
    name: str, root: str | os.PathLike[str] | None, train: bool, decode: _Decoder
) -> tuple[np.ndarray, np.ndarray, SampleUsers]:
    """Every user's samples of the split, ordered by sorted user name: (samples, labels,
    users). Counts are bounded before the split's arrays are joined."""
    split = "train" if train else "test"
    files = _split_files(name, root, split)
    base = Path(root)  # type: ignore[arg-type]  # _split_files refused None
    fix = _fix(name, base)
    decoded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seen_in: dict[str, Path] = {}
    total = 0
    for path in files:
        data = _read_json(path, name, base)
        for user, x, y in _file_users(data, path, fix):
            if user in seen_in:
                raise LeafFormatError(
                    f"user {user!r} appears in both {seen_in[user]} and {path} (LEAF writes "
                    f"each user once per split): {fix}"
                )
            seen_in[user] = path
            total += len(x)
            if total > MAX_LEAF_SAMPLES:
                raise LeafFormatError(
                    f"{base / split} holds more than {MAX_LEAF_SAMPLES:,} samples: sample "
                    "fewer users with LEAF (--sf)"
                )
            if x:  # a user without samples in this split is no client of it
                decoded[user] = decode(x, y, f"{path}: user {user!r}")
        del data  # the parsed file is the largest thing held; free it before the next
    if not decoded:
        raise LeafFormatError(f"{base / split} holds no samples: {fix}")
    names = sorted(decoded)
    samples = np.concatenate([decoded[u][0] for u in names])
    labels = np.concatenate([decoded[u][1] for u in names])
    counts = [len(decoded[u][1]) for u in names]
    codes = np.repeat(np.arange(len(names), dtype=np.int64), counts)
    return samples, labels, SampleUsers(codes, tuple(names))


def _femnist_user(x: list[Any], y: list[Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    """One writer's images: 784 floats in [0, 1] each -> uint8 [n, 1, 28, 28]."""
    side = _FEMNIST_SIDE
    try:
        pixels = np.asarray(x, dtype=np.float64)
        labels = np.asarray(y)
    except (TypeError, ValueError, OverflowError):
        pixels, labels = np.empty(0), np.empty(0)
    if pixels.shape != (len(x), side * side):
        raise ValueError(f"{where}: every x must be {side * side} numbers (a 28x28 image)")
    if not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
        raise ValueError(f"{where}: pixel values must lie in [0, 1]")
    if labels.shape != (len(y),) or labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: every y must be an integer class")
    if labels.min() < 0 or labels.max() >= FEMNIST_CLASSES:
        raise ValueError(f"{where}: classes must lie in [0, {FEMNIST_CLASSES})")
    # LEAF stores pixel / 255: rounding x * 255 gives the pixel back, the same on every machine
    images = np.rint(pixels * 255.0).astype(np.uint8).reshape(len(x), 1, side, side)
    return images, labels.astype(np.int64)


# codepoint -> id for ASCII; everything at or past 128 is unknown (index 128).
_CHAR_IDS = np.full(129, SHAKESPEARE_UNKNOWN, dtype=np.int64)
_CHAR_IDS[[ord(c) for c in SHAKESPEARE_VOCAB]] = np.arange(len(SHAKESPEARE_VOCAB))


def _char_ids(strings: list[str], length: int) -> np.ndarray:
    """int64 ids [n, length] of strings that all have `length` characters."""
    # numpy's fixed-width unicode is UTF-32: a view gives every character's codepoint
    points = np.array(strings, dtype=f"<U{length}").view(np.uint32).reshape(len(strings), length)
    return _CHAR_IDS[np.minimum(points, len(_CHAR_IDS) - 1)]


def _shakespeare_decoder() -> _Decoder:
    """A decoder that also holds every sequence of the split to the first one's length."""
    length: list[int] = []

    def decode(x: list[Any], y: list[Any], where: str) -> tuple[np.ndarray, np.ndarray]:
        chars = all(type(c) is str and len(c) == 1 for c in y)
        if not chars or not all(type(s) is str for s in x):
            raise ValueError(f"{where}: x must be strings and y single characters")
        sizes = {len(s) for s in x}
        if not length:
            length.append(min(sizes))
        if sizes != {length[0]} or not 0 < length[0] <= _MAX_SEQUENCE:
            raise ValueError(
                f"{where}: every x must have the same length (LEAF's 80 characters; at most "
                f"{_MAX_SEQUENCE}), got lengths {sorted(sizes)[:3]}"
            )
        return _char_ids(x, length[0]), _char_ids(y, 1).reshape(-1)

    return decode


def _decoded(name: str, load: Callable[[], Any], root: Any) -> Any:
    """Run `load`; a sample that is malformed is one line naming it and the fix."""
    try:
        return load()
    except LeafFormatError:
        raise
    except ValueError as exc:
        raise LeafFormatError(f"{exc}: {_fix(name, Path(root))}") from None


def load_femnist(root: str | os.PathLike[str] | None, *, train: bool = True) -> ImageDataset:
    """LEAF's FEMNIST split from ``root/train/*.json`` or ``root/test/*.json``.

    Args:
        root: data.root, the folder holding LEAF's ``train/`` and ``test/`` folders.
        train: the train split (True) or the test split (False).

    Returns:
        uint8 images ``[N, 1, 28, 28]``, 62 classes, ordered by writer; the writers are
        attached (`blazefl.data.sample_users`).

    Raises:
        LeafFormatError: a missing folder, a file over the bounds or not in LEAF's format;
            one line naming the file and how to make it with LEAF's scripts.

    Example:
        >>> load_femnist("data/femnist", train=False).images.dtype
        torch.uint8
    """
    images, labels, users = _decoded(
        "femnist", lambda: _load_split("femnist", root, train, _femnist_user), root
    )
    data = ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        num_classes=FEMNIST_CLASSES,
        mean=(0.0,),
        std=(1.0,),
        crop_padding=0,
        hflip=False,
    )
    return with_users(data, users)


def load_shakespeare(root: str | os.PathLike[str] | None, *, train: bool = True) -> FeatureDataset:
    """LEAF's Shakespeare split from ``root/train/*.json`` or ``root/test/*.json``.

    Args:
        root: data.root, the folder holding LEAF's ``train/`` and ``test/`` folders.
        train: the train split (True) or the test split (False).

    Returns:
        int64 character ids ``[N, L]`` (L = 80 for LEAF's data) over `SHAKESPEARE_VOCAB`,
        labels the next character's id, 81 classes, ordered by speaking role; the roles are
        attached (`blazefl.data.sample_users`).

    Raises:
        LeafFormatError: a missing folder, a file over the bounds or not in LEAF's format;
            one line naming the file and how to make it with LEAF's scripts.

    Example:
        >>> load_shakespeare("data/shakespeare").shape
        (80,)
    """
    ids, labels, users = _decoded(
        "shakespeare",
        lambda: _load_split("shakespeare", root, train, _shakespeare_decoder()),
        root,
    )
    data = FeatureDataset(
        torch.from_numpy(ids), torch.from_numpy(labels), num_classes=_SHAKESPEARE_CLASSES
    )
    return with_users(data, users)


def count_users(root: str | os.PathLike[str], name: str = "<dataset>") -> int:
    """The users with training samples under ``root/train`` (what `data.clients` must be
    for ``data.partition: natural``), read without decoding the samples.

    Args:
        root: data.root, the folder holding LEAF's ``train/`` and ``test/`` folders.
        name: the dataset, for how the messages say to make the files.

    Returns:
        The number of users with at least one training sample.

    Raises:
        LeafFormatError: as the loaders.

    Example:
        >>> count_users("data/femnist")
        3
    """
    base = Path(root)
    users: set[str] = set()
    for path in _split_files(name, base, "train"):
        records = _file_users(_read_json(path, name, base), path, _fix(name, base))
        users.update(user for user, x, _ in records if x)
    return len(users)


#: Loaders by `data.dataset` name, registered in `blazefl.data.DATASETS`.
LEAF_DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "femnist": load_femnist,
    "shakespeare": load_shakespeare,
}
