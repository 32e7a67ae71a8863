"""Every numeric key an algorithm's `summary()` returns reaches the artifacts: the metrics
files, the manifests' summary (chained), summary.json (DVC metrics), the plot data and
`blazefl show`; `stage evaluate` and `verify` reproduce them. A key that is not a finite
number is one line naming it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.pipeline.integrity_helpers import cli, one_line_error, sets

PLUGIN = """
from blazefl.algorithms.fedavg import FedAvg, FedAvgServerHandler


class Server(FedAvgServerHandler):
    def summary(self):
        out = super().summary()
        out["tau_eff"] = 2 * self.round  # an int: recorded as a float
        out["spread"] = VALUE
        return out


class Metered(FedAvg):
    name = "metered"

    def server(self, exp, generator):
        return Server(exp.initial_model(), **exp.server_kwargs(generator))
"""


def _plugin(folder: Path, module: str, value: str) -> str:
    (folder / f"{module}.py").write_text(textwrap.dedent(PLUGIN).replace("VALUE", value))
    return f"fl.algorithm={module}:Metered"


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_an_algorithms_metrics_reach_every_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    algo = _plugin(tmp_path, "metered_ok", "0.25")
    run = tmp_path / "run"
    assert cli("run", "--out", str(run), "-q", *sets(algo)).exit_code == 0
    for t in (1, 2):
        m = _json(run / f"round-{t:04d}" / "manifest.json")
        assert m["summary"]["tau_eff"] == 2.0 * t and m["summary"]["spread"] == 0.25
        metrics = _json(run / "metrics" / f"round-{t:04d}.json")
        assert metrics["tau_eff"] == 2.0 * t and metrics["spread"] == 0.25
    summary = _json(run / "summary.json")
    assert summary["tau_eff"] == 4.0 and summary["spread"] == 0.25 and summary["rounds"] == 2
    assert [p["tau_eff"] for p in json.loads((run / "plots" / "metrics.json").read_text())] == [
        2.0,
        4.0,
    ]
    shown = cli("show", str(run)).output.splitlines()
    header = next(line for line in shown if line.lstrip().startswith("round"))
    assert header.split()[-2:] == ["spread", "tau_eff"]
    assert shown[shown.index(header) + 2].split()[-2:] == ["0.2500", "2.0000"]
    # the evaluate stage rebuilds the metrics file from the manifest and the global model
    before = (run / "metrics" / "round-0002.json").read_bytes()
    (run / "metrics" / "round-0002.json").unlink()
    assert cli("stage", "evaluate", "--round", "2", "--out", str(run), *sets(algo)).exit_code == 0
    assert (run / "metrics" / "round-0002.json").read_bytes() == before
    verified = cli("verify", str(run), "--trust-code")
    assert verified.exit_code == 0, verified.output


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("float('nan')", "is nan, not a finite number"), ("'high'", "is a str, not a number")],
)
def test_a_metric_that_is_not_a_finite_number_is_one_line(
    value: str, fragment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    module = "metered_nan" if "nan" in value else "metered_str"
    algo = _plugin(tmp_path, module, value)
    line = one_line_error(cli("run", "--out", str(tmp_path / "run"), "-q", *sets(algo)))
    assert "'spread'" in line and fragment in line
