"""The step trace: one row per local step (the built-in loop's and a plugin's own), the same
in every execution mode, cheap fingerprints that never miss a single differing word, and a
round table that splits back into the clients' traces."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from blazefl.core.step_trace import (
    combine_traces,
    generator_fingerprint,
    indices_fingerprint,
    params_fingerprint,
    record_step,
    split_traces,
    tracing,
)
from blazefl.experiment import ExperimentSpec, build_experiment
from tests.pipeline.integrity_helpers import cli, sets


def test_record_step_outside_a_client_task_does_nothing() -> None:
    record_step(torch.tensor([1, 2]), None, torch.ones(3))  # no error, nothing kept


def test_the_built_in_loop_records_every_step() -> None:
    spec = ExperimentSpec.from_flat(
        {"data.size": 200, "data.clients": 2, "fl.clients_per_round": 2, "train.batch_size": 32,
         "train.local_epochs": 2, "model.name": "cnn_small"}
    )  # fmt: skip
    exp = build_experiment(spec)
    worker = exp.workload().make_worker()
    indices = exp.partition.client(0)
    gen = torch.Generator().manual_seed(0)
    with tracing(gen) as trace:
        worker.sgd.run(indices, gen)  # type: ignore[attr-defined]
    t = trace.tensors()
    per_epoch = math.ceil(len(indices) / 32)
    assert t["epoch"].tolist() == [0] * per_epoch + [1] * per_epoch
    assert len(set(t["params"].tolist())) == 2 * per_epoch  # every step moved the weights
    gen2 = torch.Generator().manual_seed(0)
    with tracing(gen2) as capped:
        worker.sgd.run(indices, gen2, max_steps=3)  # type: ignore[attr-defined]
    assert len(capped) == 3


def test_fingerprints_catch_any_single_word_and_order() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, generator=g)
    base = params_fingerprint(x)
    for i in range(0, 3000, 97):
        for delta in (1, -1, 1 << 31):
            y = x.clone()
            y.view(torch.int32)[i] += delta
            assert params_fingerprint(y) != base
    assert indices_fingerprint(torch.tensor([1, 2, 3])) != indices_fingerprint(
        torch.tensor([3, 2, 1])
    )
    a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert generator_fingerprint(a) == generator_fingerprint(b)
    torch.rand(1, generator=b)
    assert generator_fingerprint(a) != generator_fingerprint(b)
    big = torch.randn((1 << 20) + 5, generator=g)  # past the weighted words: the plain sum
    y = big.clone()
    y.view(torch.int32)[-1] += 1
    assert params_fingerprint(y) != params_fingerprint(big)


def test_a_round_table_splits_back() -> None:
    def trace(n: int, start: int) -> dict[str, torch.Tensor]:
        return {
            "epoch": torch.arange(n) // 2,
            "batch": torch.arange(n) + 10,
            "rng": torch.arange(n) + 20,
            "params": torch.arange(n) + 30,
            "start_rng": torch.tensor([start]),
        }

    traces = {4: trace(3, 7), 1: trace(5, 8), 9: trace(0, 9)}
    back = split_traces(combine_traces(traces))
    assert sorted(back) == [1, 4, 9]
    for cid, t in traces.items():
        assert all(back[cid][k].equal(v) for k, v in t.items())
    table = combine_traces(traces)
    del table["params"]
    with pytest.raises(ValueError, match="a step trace holds"):
        split_traces(table)


PLUGIN = """
import torch
import torch.nn.functional as F

from blazefl.algorithms import FedAvg, FedAvgWorker
from blazefl.core.step_trace import record_step


class OwnLoopWorker(FedAvgWorker):
    def train(self, task, payload, rng):
        self.flat.copy_(payload.model)
        indices = self.workload.partition.client(task.cid)
        data = self.workload.train
        for step in range(3):  # its own loop: three full-batch steps, no LocalSGD
            x = data.normalize(data.images[indices])
            loss = F.cross_entropy(self.model(x), data.labels[indices])
            self.model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in self.model.parameters():
                    p -= 0.05 * p.grad
            record_step(indices, rng.torch, self.flat, epoch=0)
        return type(self).uplink(task, self.flat, indices, float(loss.detach())), None

    @staticmethod
    def uplink(task, flat, indices, loss):
        from blazefl.algorithms import FedAvgUplink
        return FedAvgUplink(task.cid, flat.to("cpu", copy=True), int(indices.numel()), loss)


class OwnLoop(FedAvg):
    Worker = OwnLoopWorker
"""


def test_a_plugins_own_loop_is_traced_the_same_in_every_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ownloop.py").write_text(textwrap.dedent(PLUGIN))
    runs = {}
    for mode in ("sequential", "threads", "processes"):
        runs[mode] = tmp_path / mode
        args = ["run", "--out", str(runs[mode]), "-q", "--mode", mode]
        result = cli(*args, *sets("fl.algorithm=ownloop:OwnLoop"))
        assert result.exit_code == 0, result.output
    table = load_file(str(runs["sequential"] / "round-0001" / "trace.safetensors"))
    traces = split_traces(table)
    assert len(traces) == 3 and all(len(t["epoch"]) == 3 for t in traces.values())
    for mode in ("threads", "processes"):
        assert cli("diff", str(runs["sequential"]), str(runs[mode])).exit_code == 0
