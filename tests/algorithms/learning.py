"""The small learning task every algorithm's learning test shares (1,200 synthetic samples on 8
IID clients, 4 rounds of 2 local epochs: FedAvg reaches 0.74 test accuracy with seed 0, where
chance is 0.1), as dotted config keys an algorithm's test extends with its own."""

LEARN_FLAT = {
    "seed": 0,
    "data.size": 1200,
    "data.test_size": 500,
    "data.clients": 8,
    "data.partition": "iid",
    "fl.rounds": 4,
    "fl.clients_per_round": None,
    "train.local_epochs": 2,
    "train.batch_size": 16,
    "train.lr": 0.05,
    "train.momentum": 0.7,
    "train.weight_decay": 0.0,
    "train.augment": False,
}
