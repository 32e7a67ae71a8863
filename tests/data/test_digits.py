"""scikit-learn's bundled digits: split, bytes, augmentation, and FedAvg learning them."""

from __future__ import annotations

import hashlib
import pickle
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from blazefl.algorithms.common import ClientPartition, TrainHParams  # noqa: E402
from blazefl.algorithms.fedavg import (  # noqa: E402
    FedAvgClientWorkload,
    FedAvgServerHandler,
    ModelSpec,
)
from blazefl.core.loop import make_trainer, run_round  # noqa: E402
from blazefl.core.server import ServerSettings  # noqa: E402
from blazefl.data import (  # noqa: E402
    DIGITS_TEST_FRACTION,
    ImageDataset,
    load_dataset,
    load_digits_dataset,
    partition_indices,
    random_crop,
    random_horizontal_flip,
    synthetic_dataset,
)
from blazefl.reproducibility import create_rng_suite  # noqa: E402

# sha256 of images then labels; a change means every digits experiment changes its bytes.
TRAIN_SHA256 = "b696e7bb35bea56a00ce549160ff7a29da63d71b0578f4f2182f8c598629e7c6"
TEST_SHA256 = "483fcb994ef2eb505934c07634c8e4c4d30e866787ddadc800b0f4986a26b2d3"


def _digest(ds: ImageDataset) -> str:
    h = hashlib.sha256(ds.images.numpy().tobytes())
    h.update(ds.labels.numpy().tobytes())
    return h.hexdigest()


def _sklearn_uint8() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch: Any = load_digits()
    levels = np.asarray(bunch.images).astype(np.int64)
    return ((levels * 255 + 8) // 16).astype(np.uint8), np.asarray(bunch.target, dtype=np.int64)


@pytest.fixture(scope="module")
def splits() -> tuple[ImageDataset, ImageDataset]:
    return load_digits_dataset(train=True), load_digits_dataset(train=False)


# --- loader ------------------------------------------------------------------------------------


def test_digits_sizes_shapes_and_augmentation_fields(
    splits: tuple[ImageDataset, ImageDataset],
) -> None:
    train, test = splits
    assert (len(train), len(test)) == (1438, 359)
    for ds in splits:
        assert ds.shape == (1, 8, 8) and ds.images.dtype == torch.uint8
        assert ds.labels.dtype == torch.int64 and ds.num_classes == 10
        assert (ds.crop_padding, ds.hflip) == (1, False)


def test_digits_split_is_byte_identical_on_every_load(
    splits: tuple[ImageDataset, ImageDataset],
) -> None:
    train, test = splits
    assert _digest(load_digits_dataset(train=True)) == _digest(train) == TRAIN_SHA256
    assert _digest(load_digits_dataset(train=False)) == _digest(test) == TEST_SHA256


def test_load_dataset_digits_needs_no_root_and_ignores_size_and_seed(
    splits: tuple[ImageDataset, ImageDataset],
) -> None:
    assert _digest(load_dataset("digits", size=7, seed=3)) == _digest(splits[0])
    assert _digest(load_dataset("digits", seed=9, train=False)) == _digest(splits[1])


def test_digits_splits_are_disjoint_and_cover_the_whole_set(
    splits: tuple[ImageDataset, ImageDataset],
) -> None:
    images, labels = _sklearn_uint8()
    ours = torch.cat([splits[0].images, splits[1].images]).numpy().reshape(len(labels), 64)
    ours_labels = torch.cat([splits[0].labels, splits[1].labels]).numpy()
    # A row is (label, 64 pixels); the same multiset of rows means the same samples.
    expected = np.column_stack([labels, images.reshape(len(labels), 64).astype(np.int64)])
    got = np.column_stack([ours_labels, ours.astype(np.int64)])
    assert np.array_equal(np.unique(expected, axis=0), np.unique(got, axis=0))
    assert len(got) == len(expected)


def test_digits_pixels_are_scaled_exactly_to_the_full_uint8_range(
    splits: tuple[ImageDataset, ImageDataset],
) -> None:
    all_pixels = torch.cat([splits[0].images, splits[1].images])
    assert int(all_pixels.min()) == 0 and int(all_pixels.max()) == 255
    # 17 levels 0..16 map to 17 distinct bytes: (v * 255 + 8) // 16.
    expected = {(v * 255 + 8) // 16 for v in range(17)}
    assert set(torch.unique(all_pixels).tolist()) <= expected


def test_digits_split_is_stratified_and_labels_are_balanced(
    splits: tuple[ImageDataset, ImageDataset],
) -> None:
    _, labels = _sklearn_uint8()
    per_class = np.bincount(labels, minlength=10)
    train_counts = torch.bincount(splits[0].labels, minlength=10).numpy()
    test_counts = torch.bincount(splits[1].labels, minlength=10).numpy()
    assert np.array_equal(train_counts + test_counts, per_class)
    assert np.array_equal(test_counts, np.floor(per_class * DIGITS_TEST_FRACTION + 0.5))
    for counts in (train_counts, test_counts):
        assert counts.min() > 0 and counts.max() / counts.min() < 1.1


def test_digits_splits_are_shuffled_not_in_sklearn_order(
    splits: tuple[ImageDataset, ImageDataset],
) -> None:
    # scikit-learn's file cycles 0, 1, ..., 9; contiguous client shares must not inherit that.
    for ds in splits:
        first = ds.labels[:30].tolist()
        assert first != [i % 10 for i in range(30)]


def test_digits_mean_and_std_match_the_train_split(
    splits: tuple[ImageDataset, ImageDataset],
) -> None:
    pixels = splits[0].images.double() / 255
    assert abs(pixels.mean().item() - splits[0].mean[0]) < 5e-4
    assert abs(pixels.std().item() - splits[0].std[0]) < 5e-4
    normalised = splits[0].normalize(splits[0].images)
    assert abs(normalised.mean().item()) < 0.01 and abs(normalised.std().item() - 1) < 0.01


def test_digits_survive_pickle_with_their_augmentation(
    splits: tuple[ImageDataset, ImageDataset],
) -> None:
    # Process-pool workloads pickle the dataset: a lost field would change what gets trained.
    clone = pickle.loads(pickle.dumps(splits[0]))
    assert (clone.crop_padding, clone.hflip) == (1, False)
    assert _digest(clone) == _digest(splits[0])


# --- augmentation ------------------------------------------------------------------------------


def test_default_augmentation_is_the_cifar_recipe_bit_for_bit() -> None:
    ds = synthetic_dataset(16, seed=0)
    assert (ds.crop_padding, ds.hflip) == (4, True)
    ours, theirs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    got = ds.augment(ds.images, ours)
    expected = random_horizontal_flip(random_crop(ds.images, 4, theirs), 0.5, theirs)
    assert torch.equal(got, expected)
    assert torch.equal(ours.get_state(), theirs.get_state())


def test_digits_augmentation_shifts_by_at_most_one_pixel_and_never_flips(
    splits: tuple[ImageDataset, ImageDataset],
) -> None:
    ds = splits[0]
    batch = ds.images[:64]
    ours, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = ds.augment(batch, ours)
    assert torch.equal(got, random_crop(batch, 1, theirs))
    assert torch.equal(ours.get_state(), theirs.get_state()), "a flip was drawn"
    # Every output is the input shifted by (dy, dx) in {-1, 0, 1}^2 with zero fill.
    padded = torch.nn.functional.pad(batch, (1, 1, 1, 1))
    shifts = [padded[:, :, y : y + 8, x : x + 8] for y in range(3) for x in range(3)]
    matches = torch.stack([(got == s).flatten(1).all(1) for s in shifts]).any(0)
    assert bool(matches.all())


def test_augmentation_without_padding_or_flip_is_identity_and_draws_nothing() -> None:
    base = synthetic_dataset(8, seed=0)
    ds = ImageDataset(base.images, base.labels, 10, base.mean, base.std, 0, False)
    g = torch.Generator().manual_seed(1)
    before = g.get_state()
    assert ds.augment(ds.images, g) is ds.images
    assert torch.equal(g.get_state(), before)


@pytest.mark.parametrize(
    ("field", "value"),
    [("crop_padding", -1), ("crop_padding", 1.5), ("crop_padding", True), ("hflip", "no")],
)
def test_image_dataset_rejects_bad_augmentation_fields(field: str, value: object) -> None:
    base = synthetic_dataset(4, seed=0)
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        ImageDataset(base.images, base.labels, 10, base.mean, base.std, **kwargs)


def test_image_dataset_accepts_numpy_scalars_for_augmentation_fields() -> None:
    # Array stores hand attributes back as numpy scalars; they become plain Python values.
    base = synthetic_dataset(4, seed=0)
    padding: Any = np.int64(2)
    hflip: Any = np.bool_(False)
    ds = ImageDataset(base.images, base.labels, 10, base.mean, base.std, padding, hflip)
    assert type(ds.crop_padding) is int and type(ds.hflip) is bool
    assert (ds.crop_padding, ds.hflip) == (2, False)


# --- FedAvg learns digits ------------------------------------------------------------------------


def test_fedavg_on_a_dirichlet_split_learns_digits_well_above_chance(
    splits: tuple[ImageDataset, ImageDataset],
) -> None:
    # Built from the low-level pieces: 10 non-IID clients (Dirichlet alpha 0.5), all of them
    # every round, the small CNN, the digits augmentation on. Chance is 0.1; after 10 rounds
    # this setup reaches 0.925 (seed 0) and 0.89-0.94 over seeds 0-4 (0.2-0.4 after round 1).
    train, test = splits
    seed, num_clients, rounds = 0, 10, 10
    parts = partition_indices(train.labels.numpy(), num_clients, "dirichlet", seed, alpha=0.5)
    assert len({len(p) for p in parts}) > 1, "the Dirichlet split should be uneven"
    spec = ModelSpec("cnn_small", train.num_classes, 1, 8)
    settings = ServerSettings(
        num_clients, num_clients, rounds, create_rng_suite(seed + 1), test_set=test
    )
    server = FedAvgServerHandler(spec.build(torch.Generator().manual_seed(seed)), settings)
    hparams = TrainHParams(local_epochs=2, batch_size=32, lr=0.05, momentum=0.9, augment=True)
    workload = FedAvgClientWorkload(train, ClientPartition.from_lists(parts), spec, hparams)
    accuracies = []
    with make_trainer("threads", workload, seed=seed, workers=2) as trainer:
        for t in range(1, rounds + 1):
            accuracies.append(run_round(server, trainer, t).summary["test_accuracy"])
    assert accuracies[-1] >= 0.8, accuracies
    assert accuracies[-1] > accuracies[0], accuracies
