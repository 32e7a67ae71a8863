"""Per-client settings: a server's `client_settings(clients)` (a function of the client id and
the server's own generator) reaches each client as `ClientTask.settings` in every execution
mode, changes what the built-in local loop does (`local_epochs`, `max_steps`), is recorded in
the round's manifest, and re-executes under `verify`; a bad return value is one line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from blazefl.algorithms.fedavg import local_work
from blazefl.core.loop import SamplingError, checked_settings
from tests.pipeline.integrity_helpers import cli, one_line_error, sets
from tests.pipeline.rechain import rechain

PLUGIN = """
import torch

from blazefl.algorithms import FedAvg, FedAvgServerHandler


class Server(FedAvgServerHandler):
    def client_settings(self, clients):
        # FedNova-style heterogeneous work: 1 to 3 local epochs per client, drawn from the
        # server's own generator (snapshotted with every round)
        epochs = torch.randint(1, 4, (len(clients),), generator=self.generator).tolist()
        return RETURN


class Hetero(FedAvg):
    Server = Server
"""


def _plugin(folder: Path, module: str, returned: str) -> str:
    source = textwrap.dedent(PLUGIN).replace("RETURN", returned)
    (folder / f"{module}.py").write_text(source)
    return f"fl.algorithm={module}:Hetero"


def _manifest(run: Path, t: int) -> dict[str, object]:
    return json.loads((run / f"round-{t:04d}" / "manifest.json").read_text())  # type: ignore[no-any-return]


def test_settings_reach_every_mode_are_recorded_and_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    algo = _plugin(
        tmp_path, "hetero_ok", '{c: {"local_epochs": e} for c, e in zip(clients, epochs)}'
    )
    runs = {}
    for mode in ("sequential", "threads", "processes"):
        runs[mode] = tmp_path / mode
        result = cli("run", "--out", str(runs[mode]), "-q", "--mode", mode, *sets(algo))
        assert result.exit_code == 0, result.output
    m = _manifest(runs["sequential"], 1)
    settings = m["client_settings"]
    assert isinstance(settings, dict) and sorted(settings) == sorted(m["uplinks"])  # type: ignore[arg-type]
    epochs = {s["local_epochs"] for s in settings.values()}
    assert epochs <= {1, 2, 3} and len(epochs) > 1, settings  # drawn, not constant
    for mode in ("threads", "processes"):
        assert cli("diff", str(runs["sequential"]), str(runs[mode])).exit_code == 0
    assert cli("verify", str(runs["processes"]), "--trust-code").exit_code == 0

    # a record whose settings were changed (and the chain re-sealed) is caught by re-execution
    first = sorted(settings)[0]

    def tamper(rel: str, manifest: dict[str, Any]) -> None:
        if rel == "round-0001/manifest.json":
            manifest["client_settings"][first]["local_epochs"] = 9

    rechain(runs["threads"], tamper)
    result = cli("verify", str(runs["threads"]), "--trust-code")
    assert result.exit_code == 1, result.output
    assert f"per-client settings of clients {int(first)}" in result.output

    # the settings change the work: the same draws with every client at one epoch differ
    flat = _plugin(tmp_path, "hetero_one", "{c: {'local_epochs': 1} for c in clients}")
    one = tmp_path / "one"
    assert cli("run", "--out", str(one), "-q", *sets(flat)).exit_code == 0
    differs = _manifest(one, 1)["uplinks"] != m["uplinks"]
    assert differs, "per-client epochs did not reach the clients"


def test_a_run_without_settings_records_none(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("run", "--out", str(run), "-q", *sets()).exit_code == 0
    assert "client_settings" not in _manifest(run, 1)


@pytest.mark.parametrize(
    ("returned", "shown"),
    [
        ("[1, 2]", "must return a dict"),
        ("{99: {'local_epochs': 2}}", "not a client sampled this round"),
        ("{clients[0]: {'local_epochs': float('nan')}}", "a setting is an identifier"),
        ("{clients[0]: {'not a name': 1}}", "a setting is an identifier"),
        ("{clients[0]: [1]}", "must be a dict of settings"),
    ],
)
def test_bad_settings_are_one_line(
    returned: str, shown: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    algo = _plugin(tmp_path, f"hetero_bad_{abs(hash(returned)) % 10**8}", returned)
    line = one_line_error(cli("run", "--out", str(tmp_path / "run"), "-q", *sets(algo)))
    assert "client_settings()" in line and shown in line, line


def test_checked_settings_and_local_work() -> None:
    assert checked_settings({}, [1, 2]) == {}
    assert checked_settings({2: {"lr": 0.1, "tag": "slow", "on": True}}, [1, 2]) == {
        2: {"lr": 0.1, "tag": "slow", "on": True}
    }
    assert checked_settings({1: {}}, [1]) == {}  # an empty dict records nothing
    with pytest.raises(SamplingError):
        checked_settings({True: {"a": 1}}, [1])
    assert local_work({"local_epochs": 3, "max_steps": 5, "mu": 0.1}) == {
        "epochs": 3,
        "max_steps": 5,
    }
    with pytest.raises(ValueError, match="local_epochs must be an integer >= 1"):
        local_work({"local_epochs": 0})
