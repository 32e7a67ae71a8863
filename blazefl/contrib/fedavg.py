"""FedAvg written against the original BlazeFL's contracts, under the original's names.

The package's own FedAvg (`blazefl.algorithms.fedavg`) is a workload run by the package's
trainers; this module is the original's `blazefl.contrib.fedavg`: a server handler and three
client trainers (sequential, threads, processes) with the original's constructor arguments,
driven by the user's own loop (`sample_clients`, `downlink_package`, `local_process`,
`uplink_package`, `load`, `if_stop`).

Example:
    >>> server = FedAvgBaseServerHandler(selector, name, data, 5, 100, 1.0, "cpu", 50, 42)
    >>> trainer = FedAvgThreadPoolClientTrainer(selector, name, data, "cpu", 100, 5, 50,
    ...                                         0.1, 42, num_parallels=4)
    >>> while not server.if_stop():
    ...     trainer.local_process(server.downlink_package(), server.sample_clients())
    ...     for package in trainer.uplink_package():
    ...         server.load(package)
"""

from blazefl.contrib.fedavg_clients import (
    FedAvgBaseClientTrainer,
    FedAvgClientConfig,
    FedAvgProcessPoolClientTrainer,
    FedAvgThreadPoolClientTrainer,
    train_client,
)
from blazefl.contrib.fedavg_packages import (
    FedAvgDownlinkPackage,
    FedAvgPartitionedDataset,
    FedAvgPartitionType,
    FedAvgUplinkPackage,
)
from blazefl.contrib.fedavg_server import FedAvgBaseServerHandler

__all__ = [
    "FedAvgBaseClientTrainer",
    "FedAvgBaseServerHandler",
    "FedAvgClientConfig",
    "FedAvgDownlinkPackage",
    "FedAvgPartitionType",
    "FedAvgPartitionedDataset",
    "FedAvgProcessPoolClientTrainer",
    "FedAvgThreadPoolClientTrainer",
    "FedAvgUplinkPackage",
    "train_client",
]
