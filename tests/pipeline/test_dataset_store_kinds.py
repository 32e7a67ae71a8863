"""The dataset store holds uint8 images in the layout of every earlier version (read back
unchanged, rewritten byte for byte) and a `FeatureDataset`'s float32 / int64 samples with their
kind, dtype and shape recorded; a store whose records do not add up is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from blazefl.data import FeatureDataset, ImageDataset, synthetic_dataset
from blazefl.stages.artifacts import ArtifactError, RunDir
from blazefl.stages.config import RunConfig, default_config
from blazefl.stages.prepare import tree_hashes, write_dataset_store
from blazefl.stages.stores import load_dataset_store, load_labels, partition_features

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "v2" / "fedavg" / "run"


def _config(**values: object) -> dict[str, object]:
    config = default_config()
    config.update(values)
    return config


def test_a_stored_image_dataset_reads_back_and_rewrites_byte_for_byte(tmp_path: Path) -> None:
    train, test = load_dataset_store(RunDir(GOLDEN))  # written by the code before this change
    assert type(train) is ImageDataset and type(test) is ImageDataset
    want = synthetic_dataset(32, seed=0), synthetic_dataset(16, seed=0, train=False)
    for got, ref in zip((train, test), want, strict=True):
        assert torch.equal(got.images, ref.images) and torch.equal(got.labels, ref.labels)
        assert (got.mean, got.std, got.crop_padding, got.hflip) == (
            ref.mean,
            ref.std,
            ref.crop_padding,
            ref.hflip,
        )
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    config = _config(**{"data.size": 32, "data.test_size": 16})
    write_dataset_store(config, run, train, test, data_files={})
    recorded = json.loads((GOLDEN / "dataset" / "manifest.json").read_text())["files"]
    assert tree_hashes(run.dataset) == recorded


@pytest.mark.parametrize(
    "features",
    [
        torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(2, 2, 3).repeat(10, 1, 1) / 7,
        torch.arange(20 * 5, dtype=torch.int64).reshape(20, 5) % 13,
    ],
    ids=["float32", "int64"],
)
def test_feature_datasets_round_trip(features: torch.Tensor, tmp_path: Path) -> None:
    labels = torch.arange(20) % 4
    train = FeatureDataset(features, labels, 4)
    test = FeatureDataset(features[:6].clone(), labels[:6].clone(), 4)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    write_dataset_store(_config(), run, train, test, data_files={})
    attrs = json.loads((run.dataset / "zarr.json").read_text())["attributes"]
    assert attrs == {
        "dtype": str(features.dtype).removeprefix("torch."),
        "kind": "features",
        "num_classes": 4,
        "sample_shape": list(features.shape[1:]),
    }
    got_train, got_test = load_dataset_store(run)
    for got, ref in ((got_train, train), (got_test, test)):
        assert isinstance(got, FeatureDataset) and got.num_classes == 4
        assert torch.equal(got.images, ref.images) and got.images.dtype == ref.images.dtype
        assert torch.equal(got.labels, ref.labels)
    assert load_labels(run).tolist() == labels.tolist()
    config = _config(**{"data.partition": "tests.pipeline.test_dataset_store_kinds:with_features"})
    stored = partition_features(RunConfig.of(config), run)
    assert stored is not None and stored.dtype == features.numpy().dtype


def with_features(*, labels: object, num_clients: int, generator: object, features: object) -> list:
    return []  # only its signature matters: it declares `features`


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda a: a.update(kind="audio"), "kind 'audio'"),
        (lambda a: a.update(dtype="float64"), "dtype 'float64'"),
        (lambda a: a.update(sample_shape=[2, 4]), "records [2, 4]"),
        (lambda a: a.update(sample_shape="x"), "not a layout this version reads"),
        (lambda a: a.update(num_classes="4"), "corrupt attributes"),
    ],
)
def test_a_store_whose_records_do_not_add_up_is_one_line(
    edit: object, fragment: str, tmp_path: Path
) -> None:
    features = torch.zeros(8, 2, 3)
    data = FeatureDataset(features, torch.zeros(8, dtype=torch.int64), 2)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    write_dataset_store(_config(), run, data, data, data_files={})
    path = run.dataset / "zarr.json"
    path.chmod(0o644)
    meta = json.loads(path.read_text())
    edit(meta["attributes"])  # type: ignore[operator]
    path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError) as err:
        load_dataset_store(run)
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_an_image_store_without_kind_is_images(tmp_path: Path) -> None:
    copy = Path(shutil.copytree(GOLDEN / "dataset", tmp_path / "run" / "dataset"))
    assert "kind" not in json.loads((copy / "zarr.json").read_text())["attributes"]
    assert load_labels(RunDir(tmp_path / "run")).shape == (32,)
