"""Tiny files in LEAF's JSON format, as LEAF's preprocess scripts write them: FEMNIST (writers
x 784 floats in [0, 1], a class in 0..61) and Shakespeare (roles x 80-character strings, the
next character). Used by the loader tests and the pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from blazefl.data.leaf import SHAKESPEARE_VOCAB

FEMNIST_WRITERS = ("f0102_33", "f0007_12", "f0550_01")  # written unsorted, on purpose
SHAKESPEARE_ROLES = ("THE_TEMPEST_PROSPERO", "HAMLET_HAMLET", "KING_LEAR_FOOL")


def _write_split(folder: Path, users: dict[str, dict[str, list]], files: int) -> None:
    """LEAF's layout: users spread over `files` JSON files, each with num_samples."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(users)
    for k in range(files):
        mine = names[k::files]
        doc = {
            "users": mine,
            "num_samples": [len(users[u]["y"]) for u in mine],
            "user_data": {u: users[u] for u in mine},
        }
        (folder / f"all_data_{k}_niid_0_keep_0_{folder.name}_9.json").write_text(json.dumps(doc))


def write_femnist(root: Path, per_writer: int = 10, test_per_writer: int = 4) -> Path:
    """3 writers x `per_writer` train (and `test_per_writer` test) images, in 2 files.

    Each writer draws its own strokes: class k is a bright bar at row 2 + k % 24, so a CNN can
    learn something in a round or two. Pixels are LEAF's ``value / 255`` floats.
    """
    rng = np.random.default_rng(7)
    for split, n in (("train", per_writer), ("test", test_per_writer)):
        users = {}
        for w, writer in enumerate(FEMNIST_WRITERS):
            labels = rng.integers(0, 62, n)
            images = rng.integers(200, 256, (n, 28, 28))  # LEAF: white background (near 1.0)
            for i, k in enumerate(labels):
                images[i, 2 + k % 24, 3 + w : 25] = rng.integers(0, 40)
            x = (images.reshape(n, 784) / 255).tolist()
            users[writer] = {"x": x, "y": [int(k) for k in labels]}
        _write_split(root / split, users, files=2)
    return root


def write_shakespeare(root: Path, per_role: int = 12, test_per_role: int = 4) -> Path:
    """3 roles x `per_role` train (and `test_per_role` test) 80-character lines, in 1 file,
    with a character outside LEAF's vocabulary ('é') in one line."""
    rng = np.random.default_rng(11)
    text = {role: "".join(rng.choice(list("abcdefg ,.\nXYZ"), 400)) for role in SHAKESPEARE_ROLES}
    text[SHAKESPEARE_ROLES[1]] = "é" + text[SHAKESPEARE_ROLES[1]][1:]
    for split, n, start in (("train", per_role, 0), ("test", test_per_role, 200)):
        users = {}
        for role, line in text.items():
            x = [line[start + i : start + i + 80] for i in range(n)]
            y = [line[start + i + 80] for i in range(n)]
            users[role] = {"x": x, "y": y}
        _write_split(root / split, users, files=1)
    assert "é" not in SHAKESPEARE_VOCAB
    return root
