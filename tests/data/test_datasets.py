"""Datasets: synthetic generator, torchvision loaders on fake files, partitioned views."""

from __future__ import annotations

import hashlib
import pickle
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from blazefl.data import (
    DATASETS,
    DatasetNotFoundError,
    FilteredDataset,
    ImageDataset,
    PartitionedDataset,
    load_dataset,
    load_torchvision_dataset,
    partition_indices,
    synthetic_dataset,
)


def _digest(ds: ImageDataset) -> str:
    h = hashlib.sha256(ds.images.numpy().tobytes())
    h.update(ds.labels.numpy().tobytes())
    return h.hexdigest()


def _nearest_centroid_accuracy(train: ImageDataset, test: ImageDataset) -> float:
    x = train.images.float().flatten(1)
    centroids = torch.stack([x[train.labels == k].mean(0) for k in range(train.num_classes)])
    pred = torch.cdist(test.images.float().flatten(1), centroids).argmin(1)
    return (pred == test.labels).float().mean().item()


# --- synthetic ---------------------------------------------------------------------------------


def test_synthetic_is_byte_identical_for_same_args() -> None:
    assert _digest(synthetic_dataset(500, seed=3)) == _digest(synthetic_dataset(500, seed=3))


def test_synthetic_differs_across_seeds() -> None:
    assert _digest(synthetic_dataset(500, seed=3)) != _digest(synthetic_dataset(500, seed=4))


def test_synthetic_train_and_test_samples_differ() -> None:
    train = synthetic_dataset(500, seed=3, train=True)
    test = synthetic_dataset(500, seed=3, train=False)
    assert not torch.equal(train.images, test.images)


def test_synthetic_train_and_test_share_class_prototypes() -> None:
    # Class means learned on train classify the same seed's test split, not another seed's.
    train = synthetic_dataset(3000, seed=0)
    assert _nearest_centroid_accuracy(train, synthetic_dataset(600, 0, train=False)) > 0.5
    assert _nearest_centroid_accuracy(train, synthetic_dataset(600, 1, train=False)) < 0.3


def test_synthetic_shapes_and_dtypes() -> None:
    ds = synthetic_dataset(64, seed=0, num_classes=5, shape=(1, 28, 20))
    assert ds.images.shape == (64, 1, 28, 20) and ds.images.dtype == torch.uint8
    assert ds.images.is_contiguous()
    assert ds.labels.shape == (64,) and ds.labels.dtype == torch.int64
    assert ds.shape == (1, 28, 20) and len(ds) == 64 and ds.num_classes == 5
    assert len(ds.mean) == len(ds.std) == 1


def test_synthetic_has_every_class_balanced() -> None:
    ds = synthetic_dataset(1000, seed=7)
    counts = torch.bincount(ds.labels, minlength=10)
    assert counts.min() > 0 and counts.max() - counts.min() <= 1


def test_synthetic_uses_no_global_rng() -> None:
    before = torch.get_rng_state()
    np_before = np.random.get_state(legacy=False)
    synthetic_dataset(100, seed=0)
    assert torch.equal(before, torch.get_rng_state())
    np_after = np.random.get_state(legacy=False)
    assert np_before["state"]["pos"] == np_after["state"]["pos"]
    assert np.array_equal(np_before["state"]["key"], np_after["state"]["key"])


def test_synthetic_20k_generates_fast() -> None:
    start = time.perf_counter()
    synthetic_dataset(20000, seed=0)
    # Target is < 1 s; the bound is loose so a busy CI box does not flake.
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"size": 10, "seed": -1}, {"num_classes": 1}])
def test_synthetic_rejects_bad_arguments(kwargs: dict[str, int]) -> None:
    args: dict[str, Any] = {"size": 10, "seed": 0, **kwargs}
    with pytest.raises(ValueError):
        synthetic_dataset(**args)


# --- ImageDataset ------------------------------------------------------------------------------


def test_normalize_matches_formula_and_out_gives_same_bits() -> None:
    ds = synthetic_dataset(16, seed=0)
    expected = (ds.images.double() / 255 - 0.5) / 0.25
    fresh = ds.normalize(ds.images)
    buf = torch.full((16, 3, 32, 32), float("nan"))
    assert ds.normalize(ds.images, out=buf) is buf
    assert torch.equal(fresh, buf)
    assert fresh.dtype == torch.float32
    assert torch.allclose(fresh.double(), expected, atol=1e-5)


def test_getitem_returns_normalised_image_and_int_label() -> None:
    ds = synthetic_dataset(16, seed=0)
    image, label = ds[3]
    assert isinstance(label, int) and label == int(ds.labels[3])
    assert torch.equal(image, ds.normalize(ds.images[3:4])[0])


def test_image_dataset_survives_pickle_round_trip() -> None:
    # Process-pool workloads pickle the dataset; normalisation constants must come along.
    ds = synthetic_dataset(16, seed=0)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone.images, ds.images) and clone.mean == ds.mean
    assert torch.equal(clone.normalize(clone.images), ds.normalize(ds.images))


def test_image_dataset_rejects_wrong_dtypes() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), 2, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="num_classes"):
        ImageDataset(
            torch.zeros(2, 1, 4, 4, dtype=torch.uint8),
            torch.tensor([0, 2]),
            2,
            (0.5,),
            (0.5,),
        )
    with pytest.raises(ValueError, match="per channel"):
        ImageDataset(
            torch.zeros(2, 3, 4, 4, dtype=torch.uint8),
            torch.zeros(2, dtype=torch.int64),
            2,
            (0.5,),
            (0.5,),
        )


# --- load_dataset ------------------------------------------------------------------------------


def test_load_dataset_synthetic_matches_generator() -> None:
    ds = load_dataset("synthetic", size=100, seed=2, train=False)
    assert _digest(ds) == _digest(synthetic_dataset(100, 2, train=False))


def test_load_dataset_unknown_name_lists_allowed() -> None:
    with pytest.raises(ValueError, match="'imagenet'") as info:
        load_dataset("imagenet")
    assert all(name in str(info.value) for name in DATASETS)


def test_load_dataset_real_without_root_asks_for_data_root() -> None:
    with pytest.raises(ValueError, match="data.root"):
        load_dataset("cifar10")


def test_load_dataset_rejects_nonpositive_size() -> None:
    with pytest.raises(ValueError, match="size"):
        load_dataset("synthetic", size=0)


# --- torchvision loaders on fake files ---------------------------------------------------------


def _write_cifar10(root: Path, n_per_batch: int) -> tuple[np.ndarray, list[int]]:
    """Write the torchvision 'cifar-10-batches-py' layout; return the train data and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    all_data, all_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        if name != "test_batch":
            all_data.append(data)
            all_labels.extend(labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return np.vstack(all_data), all_labels


def _write_idx(path: Path, array: np.ndarray) -> None:
    # IDX header: two zero bytes, type code 0x08 (uint8), number of dims; big-endian sizes.
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder_name: str, n: int) -> dict[str, np.ndarray]:
    raw = root / folder_name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n // 2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n // 2, dtype=np.uint8),
    }
    for name, array in arrays.items():
        _write_idx(raw / name, array)
    return arrays


@pytest.fixture
def skip_cifar_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks CIFAR files against the real md5s; fake files only need to exist."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())


@pytest.mark.usefixtures("skip_cifar_md5")
def test_cifar10_loader_returns_nchw_uint8_of_the_files(tmp_path: Path) -> None:
    data, labels = _write_cifar10(tmp_path, n_per_batch=4)
    ds = load_torchvision_dataset("cifar10", tmp_path, train=True)
    assert ds.images.shape == (20, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.images.is_contiguous()
    assert torch.equal(ds.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels
    assert ds.num_classes == 10 and ds.mean == pytest.approx((0.4914, 0.4822, 0.4465))
    assert len(load_dataset("cifar10", root=str(tmp_path), train=False)) == 4


def test_cifar10_checksum_mismatch_is_dataset_not_found(tmp_path: Path) -> None:
    _write_cifar10(tmp_path, n_per_batch=2)
    with pytest.raises(DatasetNotFoundError, match="corrupted"):
        load_torchvision_dataset("cifar10", tmp_path)


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_family_loader_returns_single_channel_uint8(
    tmp_path: Path, name: str, folder: str
) -> None:
    arrays = _write_mnist(tmp_path, folder, n=12)
    train = load_torchvision_dataset(name, tmp_path, train=True)
    test = load_torchvision_dataset(name, tmp_path, train=False)
    assert train.images.shape == (12, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert torch.equal(test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert train.num_classes == 10 and len(train.mean) == len(train.std) == 1


@pytest.mark.parametrize(
    ("name", "folder"),
    [("cifar10", "cifar-10-batches-py"), ("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")],
)
def test_missing_folder_raises_dataset_not_found_naming_it(
    tmp_path: Path, name: str, folder: str
) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_torchvision_dataset(name, root)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(root) in message and folder in message and "\n" not in message


def test_truncated_idx_file_is_dataset_not_found(tmp_path: Path) -> None:
    _write_mnist(tmp_path, "MNIST", n=4)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00")
    with pytest.raises(DatasetNotFoundError, match="corrupted"):
        load_torchvision_dataset("mnist", tmp_path)


def test_missing_file_is_named_in_the_error(tmp_path: Path) -> None:
    _write_mnist(tmp_path, "MNIST", n=4)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_torchvision_dataset("mnist", tmp_path)


# --- FilteredDataset / PartitionedDataset ------------------------------------------------------


@pytest.fixture(scope="module")
def partitioned() -> PartitionedDataset:
    train = synthetic_dataset(300, seed=0)
    test = synthetic_dataset(50, seed=0, train=False)
    return PartitionedDataset(train, partition_indices(train.labels, 4, "dirichlet", 0), test)


def test_filtered_dataset_selects_indices_and_applies_transforms() -> None:
    data = torch.arange(10).view(10, 1)
    sub = FilteredDataset([7, 2], data, torch.arange(10) * 10, lambda x: x + 1, lambda y: -y)
    assert len(sub) == 2
    image, target = sub[0]
    assert image.tolist() == [8] and target == -70 and isinstance(target, int)
    images, targets = sub[[1, 0]]
    assert images.flatten().tolist() == [3, 8] and targets.tolist() == [-20, -70]
    assert FilteredDataset([1], [5, 6])[0] == 6  # no targets: image only


def test_partitioned_train_dataset_is_the_clients_samples(partitioned: PartitionedDataset) -> None:
    for cid in range(partitioned.num_clients):
        indices = partitioned.client_indices(cid)
        ds = partitioned.get_dataset("train", cid)
        assert len(ds) == len(indices) == partitioned.client_sizes()[cid]
        image, label = ds[0]
        assert torch.equal(image, partitioned.train[int(indices[0])][0])
        assert label == int(partitioned.train.labels[indices[0]])
    assert sum(partitioned.client_sizes()) == len(partitioned.train)
    assert len(partitioned.get_dataset("test")) == 50


def test_dataloader_epoch_covers_client_once_in_generator_order(
    partitioned: PartitionedDataset,
) -> None:
    cid = 1
    expected = partitioned.train.labels[partitioned.client_indices(cid)]
    order = torch.randperm(len(expected), generator=torch.Generator().manual_seed(5))
    loader = partitioned.get_dataloader("train", cid, 16, torch.Generator().manual_seed(5))
    batches = list(loader)
    assert all(images.shape[1:] == (3, 32, 32) for images, _ in batches)
    assert all(images.dtype == torch.float32 for images, _ in batches)
    assert torch.equal(torch.cat([labels for _, labels in batches]), expected[order])


def test_dataloader_without_generator_keeps_index_order(partitioned: PartitionedDataset) -> None:
    labels = torch.cat([y for _, y in partitioned.get_dataloader("test", None, 8)])
    assert torch.equal(labels, partitioned.test.labels)  # type: ignore[union-attr]


def test_dataloader_leaves_global_rng_alone(partitioned: PartitionedDataset) -> None:
    before = torch.get_rng_state()
    for _ in partitioned.get_dataloader("train", 0, 8, torch.Generator().manual_seed(0)):
        pass
    assert torch.equal(before, torch.get_rng_state())


def test_partitioned_rejects_bad_cid_type_and_indices(partitioned: PartitionedDataset) -> None:
    with pytest.raises(ValueError, match="cid"):
        partitioned.get_dataset("train", 4)
    with pytest.raises(ValueError, match="cid"):
        partitioned.get_dataset("train", None)
    with pytest.raises(ValueError, match="'val'"):
        partitioned.get_dataset("val", 0)
    with pytest.raises(ValueError, match="outside"):
        PartitionedDataset(partitioned.train, [np.array([0, 300])])
