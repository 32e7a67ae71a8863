"""The tiny two-round experiment several end-to-end tests share (about a second per run on
2 cores): one list, so a test module changes it only by adding to it."""

from __future__ import annotations

#: `--set` items of the tiny experiment: 4 clients, all sampled, 2 rounds.
TWO_ROUNDS = [
    "model.name=cnn_small",
    "data.size=200",
    "data.test_size=100",
    "data.clients=4",
    "fl.clients_per_round=4",
    "fl.rounds=2",
    "train.local_epochs=1",
]
