"""Datasets, client partitioners and generator-driven transforms.

Everything random here takes an explicit seed or ``torch.Generator``; nothing reads or advances
the process-global RNG.
"""

from blazefl.data.catalog import DATASETS, DatasetLoader, load_dataset
from blazefl.data.dataset import FilteredDataset, PartitionedDataset
from blazefl.data.datasets import DatasetNotFoundError, ImageDataset, synthetic_dataset
from blazefl.data.digits import (
    DIGITS_TEST_FRACTION,
    MissingDependencyError,
    load_digits_dataset,
)
from blazefl.data.features import FEATURE_DTYPES, FeatureDataset
from blazefl.data.leaf import SHAKESPEARE_VOCAB, load_femnist, load_shakespeare
from blazefl.data.partitioners import (
    PARTITIONERS,
    dirichlet_partition,
    iid_partition,
    natural_partition,
    partition_indices,
    quantity_partition,
    shard_partition,
)
from blazefl.data.torchvision_data import load_torchvision_dataset
from blazefl.data.transforms import (
    GeneratorDropout,
    GeneratorRandomCrop,
    GeneratorRandomHorizontalFlip,
    dropout,
    random_crop,
    random_horizontal_flip,
)
from blazefl.data.users import SampleUsers, sample_users, with_users

__all__ = [
    "DATASETS",
    "DIGITS_TEST_FRACTION",
    "PARTITIONERS",
    "DatasetLoader",
    "DatasetNotFoundError",
    "FEATURE_DTYPES",
    "FeatureDataset",
    "FilteredDataset",
    "GeneratorDropout",
    "GeneratorRandomCrop",
    "GeneratorRandomHorizontalFlip",
    "ImageDataset",
    "MissingDependencyError",
    "PartitionedDataset",
    "SHAKESPEARE_VOCAB",
    "SampleUsers",
    "dirichlet_partition",
    "dropout",
    "iid_partition",
    "natural_partition",
    "load_dataset",
    "load_digits_dataset",
    "load_femnist",
    "load_shakespeare",
    "load_torchvision_dataset",
    "partition_indices",
    "quantity_partition",
    "random_crop",
    "random_horizontal_flip",
    "sample_users",
    "shard_partition",
    "synthetic_dataset",
    "with_users",
]
