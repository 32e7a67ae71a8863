"""Client sampling is an extension point: a server that overrides `sample_clients` (drawing
only from `self.generator`, the server's stream that every round snapshots) gets its sample
recorded in the manifests, identical in every mode, verified and resumed like the built-in
one; a sample that is unsorted, repeats a client or leaves the run is one line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from blazefl.core.loop import SamplingError, checked_sample
from tests.pipeline.integrity_helpers import cli, one_line_error, sets

PLUGIN = """
import torch

from blazefl.algorithms.fedavg import FedAvg, FedAvgServerHandler


class Server(FedAvgServerHandler):
    def sample_clients(self):
        # power of choice, simplified: draw 2k candidates from the server's own generator and
        # keep the k with the smallest ids (a stand-in for "largest local loss")
        d = min(2 * self.clients_per_round, self.num_clients)
        candidates = torch.randperm(self.num_clients, generator=self.generator)[:d]
        return SORT(candidates.tolist())[: self.clients_per_round]


class Choice(FedAvg):
    name = "choice"

    def server(self, exp, generator):
        return Server(exp.initial_model(), **exp.server_kwargs(generator))
"""


def _plugin(folder: Path, module: str, sort: str) -> str:
    (folder / f"{module}.py").write_text(textwrap.dedent(PLUGIN).replace("SORT", sort))
    return f"fl.algorithm={module}:Choice"


def _clients(run: Path, t: int) -> list[int]:
    return json.loads((run / f"round-{t:04d}" / "manifest.json").read_text())["clients"]


def test_an_overridden_sample_is_recorded_and_identical_in_every_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    algo = _plugin(tmp_path, "choice_ok", "sorted")
    runs = {}
    for mode in ("sequential", "threads"):
        runs[mode] = tmp_path / mode
        result = cli("run", "--out", str(runs[mode]), "-q", "--mode", mode, *sets(algo))
        assert result.exit_code == 0, result.output
    for t in (1, 2):
        clients = _clients(runs["sequential"], t)
        assert len(clients) == 3 and clients == sorted(clients)
    assert cli("diff", str(runs["sequential"]), str(runs["threads"])).exit_code == 0
    assert cli("verify", str(runs["threads"]), "--trust-code").exit_code == 0


def test_an_unsorted_sample_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    algo = _plugin(tmp_path, "choice_bad", "(lambda ids: sorted(ids, reverse=True))")
    line = one_line_error(cli("run", "--out", str(tmp_path / "run"), "-q", *sets(algo)))
    assert "sample_clients() returned [" in line and "sorted, distinct int client ids" in line


@pytest.mark.parametrize("sample", [[], [2, 1], [1, 1], [-1, 2], [3, 6], [1.0], (True,), "12"])
def test_checked_sample_refuses(sample: object) -> None:
    with pytest.raises(SamplingError, match=r"in \[0, 6\)"):
        checked_sample(sample, 6)
    assert checked_sample([0, 2, 5], 6) == [0, 2, 5]
