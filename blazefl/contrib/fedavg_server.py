"""The original BlazeFL's FedAvg server: sampling, weighted averaging, evaluation."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from blazefl.contrib.fedavg_packages import (
    FedAvgDownlinkPackage,
    FedAvgPartitionedDataset,
    FedAvgPartitionType,
    FedAvgUplinkPackage,
)
from blazefl.core import BaseServerHandler, ModelSelector, deserialize_model, serialize_model
from blazefl.reproducibility import create_rng_suite

__all__ = ["FedAvgBaseServerHandler"]


class FedAvgBaseServerHandler(BaseServerHandler[FedAvgUplinkPackage, FedAvgDownlinkPackage]):
    """FedAvg's server, with the original BlazeFL's constructor and methods.

    Each round it samples `int(num_clients * sample_ratio)` clients (sorted) with its own
    Python RNG, broadcasts the global model, and once every sampled client's uplink is loaded
    averages them weighted by `data_size` (in client-id order, so the result does not depend on
    the order uplinks arrive in) and advances `round`.

    Args:
        model_selector: builds the global model.
        model_name: the model to build.
        dataset: the partitioned dataset (`get_summary` evaluates on its "test" split).
        global_round: rounds to run.
        num_clients: clients in the federation.
        sample_ratio: fraction of clients sampled per round (0, 1].
        device: where the global model is evaluated.
        batch_size: evaluation batch size.
        seed: seeds the server's `RNGSuite` (sampling, evaluation loader).

    Example:
        >>> server = FedAvgBaseServerHandler(selector, "cnn", data, 5, 100, 0.1, "cpu", 50, 42)
        >>> while not server.if_stop():
        ...     trainer.local_process(server.downlink_package(), server.sample_clients())
        ...     for package in trainer.uplink_package():
        ...         server.load(package)
    """

    def __init__(
        self,
        model_selector: ModelSelector[Any],
        model_name: str,
        dataset: FedAvgPartitionedDataset,
        global_round: int,
        num_clients: int,
        sample_ratio: float,
        device: str,
        batch_size: int,
        seed: int,
    ) -> None:
        if not 0.0 < sample_ratio <= 1.0:
            raise ValueError(f"sample_ratio must be in (0, 1], got {sample_ratio}")
        self.model = model_selector.select_model(model_name)
        self.dataset = dataset
        self.global_round = global_round
        self.num_clients = num_clients
        self.sample_ratio = sample_ratio
        self.device = device
        self.batch_size = batch_size
        self.seed = seed
        self.client_buffer_cache: list[FedAvgUplinkPackage] = []
        self.num_clients_per_round = int(num_clients * sample_ratio)
        self.round = 0
        self.rng_suite = create_rng_suite(seed)

    def sample_clients(self) -> list[int]:
        """This round's clients, sorted ascending, drawn with the server's Python RNG."""
        sample = self.rng_suite.python.sample(range(self.num_clients), self.num_clients_per_round)
        return sorted(sample)

    def if_stop(self) -> bool:
        """True once `global_round` rounds are done."""
        return self.round >= self.global_round

    def load(self, payload: FedAvgUplinkPackage) -> bool:
        """Buffer one client's uplink; aggregate when the round's last one arrives.

        Returns:
            True when this uplink completed the round (the global model was updated).
        """
        self.client_buffer_cache.append(payload)
        if len(self.client_buffer_cache) < self.num_clients_per_round:
            return False
        self.global_update(self.client_buffer_cache)
        self.round += 1
        self.client_buffer_cache = []
        return True

    def global_update(self, buffer: list[FedAvgUplinkPackage]) -> None:  # type: ignore[override]
        """Replace the global model by the `data_size`-weighted average of `buffer`."""
        ordered = sorted(buffer, key=lambda package: package.cid)
        merged = self.aggregate(
            [package.model_parameters for package in ordered],
            [package.data_size for package in ordered],
        )
        deserialize_model(self.model, merged)

    @staticmethod
    def aggregate(parameters_list: list[torch.Tensor], weights_list: list[int]) -> torch.Tensor:
        """Weighted average of flat model vectors.

        Args:
            parameters_list: one vector per client.
            weights_list: one weight per client (e.g. its data size).

        Returns:
            `sum(w_i * p_i) / sum(w_i)`, accumulated in list order.

        Raises:
            ValueError: empty lists, lists of different lengths, or weights summing to 0.
        """
        if not parameters_list or len(parameters_list) != len(weights_list):
            raise ValueError(
                f"need one weight per parameter vector, got {len(parameters_list)} vectors and "
                f"{len(weights_list)} weights"
            )
        total = sum(weights_list)
        if total <= 0:
            raise ValueError(f"the weights must sum to more than 0, got {total}")
        merged = torch.zeros_like(parameters_list[0])
        for parameters, weight in zip(parameters_list, weights_list, strict=True):
            merged.add_(parameters, alpha=weight / total)
        return merged

    @staticmethod
    def evaluate(
        model: torch.nn.Module, test_loader: DataLoader[Any], device: str
    ) -> tuple[float, float]:
        """Mean cross-entropy loss and accuracy of `model` over `test_loader`.

        Returns:
            (loss, accuracy); (0.0, 0.0) for an empty loader.
        """
        model.to(device)
        model.eval()
        criterion = torch.nn.CrossEntropyLoss(reduction="sum")
        loss_sum, correct, seen = 0.0, 0, 0
        with torch.no_grad():
            for inputs, labels in test_loader:
                inputs, labels = inputs.to(device), labels.to(device)
                outputs = model(inputs)
                loss_sum += float(criterion(outputs, labels))
                correct += int((outputs.argmax(dim=1) == labels).sum())
                seen += int(labels.numel())
        if seen == 0:
            return 0.0, 0.0
        return loss_sum / seen, correct / seen

    def get_summary(self) -> dict[str, float]:
        """Server-side evaluation on the dataset's test split.

        Returns:
            {"server_acc": accuracy, "server_loss": mean loss}.
        """
        loader = self.dataset.get_dataloader(
            FedAvgPartitionType.TEST, None, self.batch_size, self.rng_suite.torch_cpu
        )
        loss, accuracy = self.evaluate(self.model, loader, self.device)
        return {"server_acc": accuracy, "server_loss": loss}

    def downlink_package(self) -> FedAvgDownlinkPackage:
        """The current global model as one flat vector."""
        return FedAvgDownlinkPackage(serialize_model(self.model))
