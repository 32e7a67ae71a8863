"""Flower's Ray-based simulation running a benchmark workload's experiment (`flower-2`).

The same experiment as ``benchmarks.reference`` and ``blazefl run``: the textbook CNN built by
``reference.build_model`` (same seed, same initial weights), the built-in synthetic data and
IID partition (blazefl's source files loaded by path, the blazefl package never imported),
the same rounds, local epochs, batch size, SGD settings, per-client shuffling generator and
server evaluation on the test set every round.

Flower as its docs show it (flwr 1.42): a ``ServerApp`` whose main runs the ``FedAvg``
strategy (``strategy.start`` with the initial ``ArrayRecord``, the training settings in the
``train_config`` ``ConfigRecord`` and centralised evaluation in ``evaluate_fn``), a
``ClientApp`` with a ``@app.train()`` function that loads the global ``ArrayRecord``, trains its
partition and replies with its ``ArrayRecord`` and a ``MetricRecord`` holding ``num-examples``
(FedAvg weights by it), run by ``flwr.simulation.run_simulation`` on the Ray backend: one
SuperNode per client, ``client_resources`` of ``--threads`` CPUs per client on a Ray runtime of
``--workers x --threads`` CPUs (so ``--workers`` ClientApps run at once).

Nothing is made slower than a careful Flower user would write it; where a choice was open it
favours Flower:

- the client's hot loop is the reference's (``LocalTrainer``: one model and optimizer per actor
  process, reused batch buffers, ``index_select`` + in-place normalisation), and each actor
  builds its data, partition and trainer once, on its first message, as Flower's examples
  cache their federated dataset per process;
- no client-side evaluation (``fraction_evaluate=0``): blazefl and the reference evaluate on
  the server only; the strategy's round-0 centralised evaluation is skipped for the same
  reason (``evaluate_fn`` returns None for round 0);
- ``run_simulation`` (deprecated in 1.42 in favour of ``flwr run``, which drives the same
  Simulation Runtime from a separate SuperLink process) runs it all in this process;
- ``torch.set_num_threads(--threads)`` and glibc's malloc thresholds raised in every process,
  as the reference and blazefl do.

Output: one JSON object (``--json PATH``, else stdout) shaped like the reference's: start-up
(process start to round 1), per-round seconds (round r = end of the round-(r-1) centralised
evaluation to the end of round r's: sampling, training, aggregation, evaluation), final test
metrics, wall time, and the flwr / ray / torch versions.

Usage (with flwr installed, see benchmarks/README.md):
    .venv-flower/bin/python -m benchmarks.flower_sim --workers 2 --clients 100 --size 20000
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import time
from typing import Any

import torch

from benchmarks.reference import (
    LocalTrainer,
    _load_source,
    add_run_args,
    build_model,
    client_generator,
    emit,
    evaluate,
    process_age,
    round_line,
    run_config,
    tune_malloc,
)

#: The settings the ClientApp needs, sent in every round's train ConfigRecord (Flower's way of
#: passing hyperparameters to clients from the ServerApp).
CLIENT_KEYS = (
    "model",
    "size",
    "clients",
    "epochs",
    "batch",
    "lr",
    "momentum",
    "weight_decay",
    "seed",
    "threads",
    "tune_malloc",
)


def load_data(cfg: dict[str, Any], train: bool = True, test: bool = False) -> dict[str, Any]:
    """The reference's data: the synthetic train set and its IID partition (clients), the
    test set (server), and the normalisation x * scale + shift (the reference's, from the
    data set's mean and std)."""
    datasets = _load_source("blazefl/data/datasets.py", "_benchref_datasets")
    out: dict[str, Any] = {}
    if train:
        partitioners = _load_source("blazefl/data/partitioners.py", "_benchref_partitioners")
        ds = out["train"] = datasets.synthetic_dataset(cfg["size"], cfg["seed"])
        out["parts"] = partitioners.partition_indices(
            ds.labels.numpy(), cfg["clients"], "iid", cfg["seed"]
        )
    if test:  # the server needs only this one: no train set generated there
        ds = out["test"] = datasets.synthetic_dataset(cfg["test_size"], cfg["seed"], train=False)
    std = torch.tensor(ds.std, dtype=torch.float64)
    mean = torch.tensor(ds.mean, dtype=torch.float64)
    out["scale"] = (1.0 / (255.0 * std)).to(torch.float32).view(-1, 1, 1)
    out["shift"] = (-mean / std).to(torch.float32).view(-1, 1, 1)
    return out


# -- the ClientApp (runs in the Ray actors) ----------------------------------------------------
#: Per process (one per Ray actor): the data, partition and trainer, built on first use.
_ACTOR_STATE: dict[str, tuple[LocalTrainer, list[torch.Tensor]]] = {}


def _actor_state(cfg: dict[str, Any]) -> tuple[LocalTrainer, list[torch.Tensor]]:
    key = json.dumps(cfg, sort_keys=True)
    state = _ACTOR_STATE.get(key)
    if state is None:
        torch.set_num_threads(cfg["threads"])
        if cfg["tune_malloc"]:
            tune_malloc()
        data = load_data(cfg)
        images, labels = data["train"].images, data["train"].labels
        trainer = LocalTrainer(cfg, images, labels, data["scale"], data["shift"])
        state = (trainer, [torch.from_numpy(p) for p in data["parts"]])
        _ACTOR_STATE[key] = state
    return state


def train_partition(
    state: dict[str, torch.Tensor], cfg: dict[str, Any], cid: int, rnd: int
) -> tuple[dict[str, torch.Tensor], float, int]:
    """Client `cid`'s local training in round `rnd` from the global `state`: its model's
    state, mean training loss and sample count (the reference's loop, data and shuffles)."""
    trainer, parts = _actor_state(cfg)
    torch.set_num_threads(cfg["threads"])
    trainer.model.load_state_dict(state)
    idx = parts[cid]
    gen = client_generator(cfg["seed"], rnd, cid)
    loss_sum, steps = trainer.train_client(trainer.flat, idx, gen)  # flat holds the global model
    return trainer.model.state_dict(), loss_sum / max(steps, 1), int(idx.numel())


def client_train(msg: Any, context: Any) -> Any:
    """`@app.train()`: train this SuperNode's partition from the global model."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    config = msg.content["config"]
    cfg = {k: config[k] for k in CLIENT_KEYS}
    cid = int(context.node_config["partition-id"])
    state = msg.content["arrays"].to_torch_state_dict()
    new_state, loss, n = train_partition(state, cfg, cid, int(config["server-round"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": n})  # FedAvg weighs by n
    content = RecordDict({"arrays": ArrayRecord(new_state), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def client_app() -> Any:
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.train()(client_train)
    return app


# -- the ServerApp (a thread of this process) --------------------------------------------------
def server_app(cfg: dict[str, Any], out: dict[str, Any]) -> Any:
    """FedAvg over all clients every round with centralised evaluation; fills `out`."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        data = load_data(cfg, train=False, test=True)
        test = data["test"]
        model = build_model(cfg["model"], cfg["seed"])
        marks: list[float] = []

        def global_evaluate(server_round: int, arrays: Any) -> Any:
            if server_round == 0:  # before round 1: blazefl and the reference do not evaluate
                marks.append(time.perf_counter())
                out["startup_seconds"] = process_age()
                return None
            model.load_state_dict(arrays.to_torch_state_dict())
            metrics = evaluate(model, test.images, test.labels, data["scale"], data["shift"])
            marks.append(time.perf_counter())
            seconds = marks[-1] - marks[-2]
            out["rounds"].append({"round": server_round, "seconds": seconds})
            out["final_metrics"] = dict(metrics)
            if not cfg["quiet"]:
                round_line(server_round, cfg["rounds"], metrics["test_accuracy"], seconds)
            return MetricRecord(metrics)

        n = cfg["clients"]
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=n,
            min_available_nodes=n,
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=cfg["rounds"],
            train_config=ConfigRecord({k: cfg[k] for k in CLIENT_KEYS}),
            evaluate_fn=global_evaluate,
        )
        last = result.train_metrics_clientapp.get(cfg["rounds"])
        if last is not None and "final_metrics" in out:
            out["final_metrics"]["train_loss"] = float(last["train_loss"])

    return app


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    import flwr
    import ray
    from flwr.simulation import run_simulation

    torch.set_num_threads(cfg["threads"])
    malloc_tuned = tune_malloc() if cfg["tune_malloc"] else False
    out: dict[str, Any] = {"rounds": []}
    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app(cfg, out),
        client_app=client_app(),
        num_supernodes=cfg["clients"],
        backend_name="ray",
        backend_config={
            "client_resources": {"num_cpus": cfg["threads"], "num_gpus": 0.0},
            "init_args": {
                "num_cpus": cfg["workers"] * cfg["threads"],
                "num_gpus": 0,
                "logging_level": logging.WARNING,
            },
        },
    )
    sim_seconds = time.perf_counter() - t0
    rounds = out["rounds"]
    if len(rounds) != cfg["rounds"]:
        raise SystemExit(f"flower simulation ran {len(rounds)} of {cfg['rounds']} rounds")
    steady = [r["seconds"] for r in rounds[1:]]
    return {
        "kind": "flower",
        "config": cfg,
        "flwr": flwr.__version__,
        "ray": ray.__version__,
        "torch": torch.__version__,
        "malloc_tuned": malloc_tuned,
        "startup_seconds": out.get("startup_seconds"),
        "simulation_seconds": sim_seconds,
        "rounds": rounds,
        "steady_round_seconds": sum(steady) / len(steady) if steady else None,
        "final_metrics": out.get("final_metrics", {}),
        "wall_seconds": process_age(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.flower_sim",
        description=(__doc__ or "").split("\n\n")[0],
    )
    add_run_args(p, 2, "ClientApps running at once")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = run_config(args)
    # before flwr is imported (it reads them then): Flower's telemetry and Ray's usage stats
    # would otherwise reach for the network at start and exit
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise SystemExit(
            "flwr is not installed for this interpreter: pip install -e '.[bench-flower,ray]' "
            "(in a venv of its own, see benchmarks/README.md)"
        ) from None
    emit(run(cfg), args.json)


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy: Ray pickles the ClientApp's
    # functions by reference only when their module imports by name in the actors.
    importlib.import_module("benchmarks.flower_sim").main()
