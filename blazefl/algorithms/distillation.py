"""Knowledge-distillation building blocks (DS-FL and other logit-sharing algorithms):
entropy-reduction aggregation, distillation on soft labels, soft-label inference, and the
split of a training set into private data and a shared open set."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from blazefl.core.cancellation import raise_if_cancelled
from blazefl.core.optim import FlatSGD
from blazefl.data import ImageDataset

__all__ = ["distill", "entropy_reduction_aggregation", "predict_soft_labels", "split_open_set"]


def entropy_reduction_aggregation(mean_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """ERA: sharpen averaged soft labels with a temperature softmax, `softmax(mean / T)`.

    Args:
        mean_probs: `[n, C]` averaged client probabilities (any float dtype).
        temperature: `T > 0`; `T < 1 / C` sharpens near-uniform rows too.

    Returns:
        `[n, C]` float32 probabilities (computed in float64, rounded once).

    Example:
        >>> era = entropy_reduction_aggregation(torch.tensor([[0.6, 0.3, 0.1]]), 0.1)
        >>> era.argmax(1), bool(era[0, 0] > 0.6)
        (tensor([0]), True)
    """
    return F.softmax(mean_probs.double() / temperature, dim=1).float()


def distill(
    model: nn.Module,
    optimizer: FlatSGD,
    data: ImageDataset,
    indices: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """Train `model` towards soft `targets` on `data[indices]` with KL(targets || model).

    Samples are shuffled per epoch by `generator` (one `randperm` per epoch).

    Args:
        model / optimizer: the student and its (stateless) optimizer.
        data: the open set.
        indices: int64 `[n]` positions in `data`.
        targets: float32 `[n, C]` probabilities aligned with `indices`.
        epochs / batch_size: the schedule.
        generator: the caller's torch generator.

    Returns:
        Mean KL loss over all steps (0.0 when `indices` is empty).
    """
    n = int(indices.numel())
    model.train()
    total, steps = 0.0, 0
    for _ in range(epochs if n else 0):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            raise_if_cancelled()  # a stopped round ends between batches, as local SGD does
            pick = order[start : start + batch_size]
            x = data.normalize(data.images.index_select(0, indices[pick]))
            log_probs = F.log_softmax(model(x), dim=1)
            loss = F.kl_div(log_probs, targets[pick], reduction="batchmean")
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
    return total / max(steps, 1)


@torch.no_grad()
def predict_soft_labels(
    model: nn.Module, data: ImageDataset, indices: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Softmax outputs of `model` (eval mode) on `data[indices]`, in fixed batches.

    Returns:
        float32 `[len(indices), num_classes]`.
    """
    was_training = model.training
    model.eval()
    parts = [
        F.softmax(model(data.normalize(data.images.index_select(0, chunk))), dim=1)
        for chunk in indices.split(batch_size)
    ]
    model.train(was_training)
    if not parts:
        return torch.empty((0, data.num_classes), dtype=torch.float32)
    return torch.cat(parts).float()


def split_open_set(data: ImageDataset, open_size: int) -> tuple[ImageDataset, ImageDataset]:
    """Split a dataset into (private training part, open set = its last `open_size` samples).

    Both parts own contiguous copies. The open set keeps its labels (for analysis only; DS-FL
    never trains on them).

    Example:
        >>> train, open_set = split_open_set(synthetic_dataset(900, seed=0), 300)
        >>> len(train), len(open_set)
        (600, 300)
    """
    if not 0 < open_size < len(data):
        raise ValueError(f"open_size must be in [1, {len(data) - 1}], got {open_size}")
    cut = len(data) - open_size

    def part(sl: slice) -> ImageDataset:
        # replace() keeps every other field (normalisation, the dataset's augmentation)
        return dataclasses.replace(
            data, images=data.images[sl].clone(), labels=data.labels[sl].clone()
        )

    return part(slice(0, cut)), part(slice(cut, None))
