"""LEAF's FEMNIST and Shakespeare from files in LEAF's JSON format: what loads (images, token
ids, users in sorted order), the natural partition (client i holds exactly user i's samples),
other partitioners on the same data, char_lstm, and every malformed input as one line."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from blazefl.data import (
    DATASETS,
    PARTITIONERS,
    FeatureDataset,
    ImageDataset,
    load_dataset,
    natural_partition,
    partition_indices,
    sample_users,
    synthetic_dataset,
    with_users,
)
from blazefl.data import leaf as leaf_module
from blazefl.data.leaf import SHAKESPEARE_UNKNOWN, SHAKESPEARE_VOCAB, LeafFormatError, count_users
from blazefl.data.leaf_users import main as users_main
from blazefl.experiment import ExperimentSpec, build_experiment
from blazefl.models import build_model
from tests.data.leaf_files import (
    FEMNIST_WRITERS,
    SHAKESPEARE_ROLES,
    write_femnist,
    write_shakespeare,
)


@pytest.fixture(scope="module")
def femnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_femnist(tmp_path_factory.mktemp("leaf") / "femnist")


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shakespeare(tmp_path_factory.mktemp("leaf") / "shakespeare")


def _raw(root: Path, split: str) -> dict[str, dict[str, list]]:
    """Every user's raw LEAF entry of a split, across its files."""
    out: dict[str, dict[str, list]] = {}
    for path in sorted((root / split).glob("*.json")):
        out.update(json.loads(path.read_text())["user_data"])
    return out


def test_registered_by_name() -> None:
    assert {"femnist", "shakespeare"} <= set(DATASETS.names())
    assert "natural" in PARTITIONERS.names()


def test_femnist_loads_as_uint8_images_by_sorted_writer(femnist: Path) -> None:
    train = load_dataset("femnist", root=femnist)
    test = load_dataset("femnist", root=femnist, train=False)
    assert type(train) is ImageDataset and train.images.dtype == torch.uint8
    assert tuple(train.images.shape) == (30, 1, 28, 28) and len(test) == 12
    assert train.num_classes == 62 and not train.hflip and train.crop_padding == 0
    users = sample_users(train)
    assert users is not None and users.names == tuple(sorted(FEMNIST_WRITERS))
    raw = _raw(femnist, "train")
    start = 0
    for code, writer in enumerate(users.names):
        n = len(raw[writer]["y"])
        assert (users.codes[start : start + n] == code).all()
        pixels = np.asarray(raw[writer]["x"]).reshape(n, 1, 28, 28)
        # LEAF's pixel / 255 comes back to the exact 8-bit pixel
        assert np.array_equal(train.images[start : start + n].numpy(), np.rint(pixels * 255))
        assert train.labels[start : start + n].tolist() == raw[writer]["y"]
        start += n
    # the model sees LEAF's own [0, 1] values (those of the last writer here)
    seen = train.normalize(train.images[start - n : start])
    assert torch.allclose(seen, torch.from_numpy(pixels).float(), atol=1e-6)


def test_shakespeare_loads_as_token_ids_not_images(shakespeare: Path) -> None:
    train = load_dataset("shakespeare", root=shakespeare)
    assert isinstance(train, FeatureDataset) and train.images.dtype == torch.int64
    assert train.shape == (80,) and train.num_classes == len(SHAKESPEARE_VOCAB) + 1 == 81
    assert train.describe() == "samples (80,) int64"
    users = sample_users(train)
    assert users is not None and users.names == tuple(sorted(SHAKESPEARE_ROLES))
    raw = _raw(shakespeare, "train")
    ids = {c: i for i, c in enumerate(SHAKESPEARE_VOCAB)}
    start = 0
    for role in users.names:
        for line, nxt in zip(raw[role]["x"], raw[role]["y"], strict=True):
            want = [ids.get(c, SHAKESPEARE_UNKNOWN) for c in line]
            assert train.images[start].tolist() == want
            assert int(train.labels[start]) == ids.get(nxt, SHAKESPEARE_UNKNOWN)
            start += 1
    # 'é' is no LEAF character: the fixed unknown id, first in HAMLET's first line
    assert int(train.images[0, 0]) == SHAKESPEARE_UNKNOWN
    assert SHAKESPEARE_VOCAB[:3] == "\n !" and SHAKESPEARE_VOCAB.index("a") == 53


def test_natural_partition_gives_each_user_its_own_client(femnist: Path) -> None:
    spec = ExperimentSpec.from_flat(
        {
            "data.dataset": "femnist",
            "data.root": str(femnist),
            "data.partition": "natural",
            "data.clients": 3,
            "fl.clients_per_round": 2,
        }
    )
    exp = build_experiment(spec)
    users = sample_users(exp.train)
    assert users is not None
    for cid in range(3):
        lo, hi = int(exp.partition.offsets[cid]), int(exp.partition.offsets[cid + 1])
        held = exp.partition.indices[lo:hi].numpy()
        assert held.tolist() == np.flatnonzero(users.codes == cid).tolist()


def test_natural_partition_refuses_another_client_count_in_one_line() -> None:
    codes = np.array([0, 0, 1, 2, 2])
    with pytest.raises(ValueError, match=r"each of the 3 users .* set data.clients: 3 \(got 4"):
        natural_partition(codes, 4)
    with pytest.raises(ValueError, match="records which user each sample came from"):
        partition_indices(np.zeros(5, dtype=np.int64), 3, "natural", seed=0)
    parts = partition_indices(np.zeros(5, dtype=np.int64), 3, "natural", seed=0, users=codes)
    assert [p.tolist() for p in parts] == [[0, 1], [2], [3, 4]]


def test_natural_partition_on_synthetic_data_is_one_line(tmp_path: Path) -> None:
    spec = ExperimentSpec.from_flat(
        {
            "data.size": 100,
            "data.partition": "natural",
            "data.clients": 3,
            "fl.clients_per_round": 2,
        }  # fmt: skip
    )
    with pytest.raises(ValueError, match="data.partition natural needs a dataset"):
        build_experiment(spec)


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards", "quantity"])
def test_other_partitioners_work_on_leaf_data(method: str, shakespeare: Path) -> None:
    train = load_dataset("shakespeare", root=shakespeare)
    parts = partition_indices(train.labels, 4, method, seed=1, shards_per_client=1)
    joined = np.sort(np.concatenate(parts))
    assert np.array_equal(joined, np.arange(len(train)))


def test_users_are_dropped_by_replace_and_checked() -> None:
    ds = with_users(synthetic_dataset(4, seed=0), ["b", "a", "b", "c"])
    users = sample_users(ds)
    assert users is not None and users.codes.tolist() == [1, 0, 1, 2]
    assert users.names == ("a", "b", "c") and users.counts().tolist() == [1, 2, 1]
    assert sample_users(dataclasses.replace(ds, images=ds.images[:2], labels=ds.labels[:2])) is None
    with pytest.raises(ValueError, match="one user per sample"):
        with_users(synthetic_dataset(4, seed=0), ["a"])


def test_count_users_and_its_command(femnist: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert count_users(femnist) == 3
    assert users_main([str(femnist)]) == 0 and capsys.readouterr().out.strip() == "3"
    assert users_main([str(femnist / "missing")]) == 2
    assert "no LEAF train files" in capsys.readouterr().err


def test_char_lstm_is_leafs_model_and_refuses_images() -> None:
    make = lambda: build_model(  # noqa: E731
        "char_lstm", 81, input_shape=(80,), input_dtype=torch.int64,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    model, again = make(), make()
    assert model.embedding.embedding_dim == 8 and model.lstm.hidden_size == 256
    assert model.lstm.num_layers == 2 and model.head.out_features == 81
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert model(torch.zeros(3, 80, dtype=torch.int64)).shape == (3, 81)
    with pytest.raises(ValueError, match="char_lstm' takes int64 character ids"):
        build_model("char_lstm", 62, 1, 28, input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="char_lstm for character ids"):
        build_model("cnn", 81, input_shape=(80,), input_dtype=torch.int64)


def test_builtin_cnns_run_on_femnist(femnist: Path) -> None:
    train = load_dataset("femnist", root=femnist)
    for name in ("cnn", "cnn_small", "resnet18"):
        model = build_model(name, 62, 1, 28, generator=torch.Generator().manual_seed(0))
        assert model.eval()(train.normalize(train.images[:2])).shape == (2, 62)


def _edit(root: Path, change) -> None:  # type: ignore[no-untyped-def]
    path = sorted((root / "train").glob("*.json"))[0]
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _first(doc: dict) -> dict:  # type: ignore[type-arg]
    return doc["user_data"][doc["users"][0]]


def _duplicate(root: Path) -> None:
    """The first file's first user in the second file too."""
    first, second = sorted((root / "train").glob("*.json"))
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    user = a["users"][0]
    b["users"].append(user)
    b["num_samples"].append(a["num_samples"][0])
    b["user_data"][user] = a["user_data"][user]
    second.write_text(json.dumps(b))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda root: (root / "train").rename(root / "gone"), "has no LEAF train files"),
        (lambda root: next((root / "train").glob("*.json")).write_text("{"), "not readable JSON"),
        (lambda root: _edit(root, lambda d: d.pop("user_data")), "'user_data' is not an object"),
        (lambda root: _edit(root, lambda d: d["num_samples"].__setitem__(0, 99)),
         "num_samples says 99"),
        (lambda root: _edit(root, lambda d: _first(d)["x"][0].pop()), "784 numbers"),
        (lambda root: _edit(root, lambda d: _first(d)["x"][0].__setitem__(0, 2.0)),
         "pixel values must lie in [0, 1]"),
        (lambda root: _edit(root, lambda d: _first(d)["y"].__setitem__(0, 62)),
         "classes must lie in [0, 62)"),
        (lambda root: _edit(root, lambda d: _first(d)["y"].__setitem__(0, "a")), "integer class"),
        (_duplicate, "appears in both"),
        (lambda root: _edit(root, lambda d: d.__setitem__("users", 5)), "not in LEAF's format"),
    ],
    ids=["missing", "json", "user_data", "num_samples", "width", "range", "class", "label",
         "duplicate", "users"],
)  # fmt: skip
def test_malformed_femnist_is_one_line_naming_the_file_and_fix(
    change: Callable[[Path], object], fragment: str, tmp_path: Path
) -> None:
    root = write_femnist(tmp_path / "femnist")
    change(root)
    with pytest.raises(LeafFormatError) as info:
        load_dataset("femnist", root=root)
    message = str(info.value)
    assert fragment in message and "\n" not in message, message
    assert "preprocess.sh -s niid" in message or "data.root" in message


def test_malformed_shakespeare_lines_are_one_line(tmp_path: Path) -> None:
    root = write_shakespeare(tmp_path / "shakespeare")
    _edit(root, lambda d: _first(d)["x"].__setitem__(0, "short"))
    with pytest.raises(LeafFormatError, match="same length .* lengths \\[5, 80\\]"):
        load_dataset("shakespeare", root=root)
    _edit(root, lambda d: _first(d)["x"].__setitem__(0, 7))
    with pytest.raises(LeafFormatError, match="x must be strings and y single characters"):
        load_dataset("shakespeare", root=root)


def test_reads_are_bounded_before_they_happen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_shakespeare(tmp_path / "shakespeare")
    with pytest.raises(LeafFormatError, match="set data.root to the folder"):
        load_dataset("shakespeare", root=None)
    monkeypatch.setattr(leaf_module, "MAX_LEAF_SAMPLES", 20)
    with pytest.raises(LeafFormatError, match="more than 20 samples: sample fewer users"):
        load_dataset("shakespeare", root=root)
    monkeypatch.setattr(leaf_module, "MAX_LEAF_FILE_BYTES", 1000)
    # the size is refused from the file's metadata: nothing of it is read
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read a file over the bound"))
    with pytest.raises(LeafFormatError, match="over the 1,000 bytes read per file"):
        load_dataset("shakespeare", root=root)
    monkeypatch.setattr(leaf_module, "MAX_LEAF_FILE_BYTES", 1 << 30)
    monkeypatch.setattr(leaf_module, "MAX_LEAF_SPLIT_BYTES", 1000)
    with pytest.raises(LeafFormatError, match="more than 1,000 bytes of JSON"):
        load_dataset("shakespeare", root=root)
