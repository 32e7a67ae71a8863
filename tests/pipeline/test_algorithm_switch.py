"""Switching algorithms treats a plugin's config section exactly like a built-in's: a section
left in params.yaml by an algorithm that is no longer selected is ignored with one warning
line (not hashed, not a DVC param), whether a built-in or a plugin left it; `blazefl dvc`
rewrites the file without it. An unknown section typed with `--set` stays an error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from blazefl.pipeline.cli import main

PLUGIN = """
from dataclasses import dataclass

from blazefl.algorithms.fedavg import FedAvg
from blazefl.hparams import param


@dataclass(frozen=True)
class {Name}HParams:
    alpha: float = param(0.1, low=0.0, high=10.0, doc="the algorithm's own knob")


class {Name}(FedAvg):
    name = "{section}"
    HParams = {Name}HParams
"""
TINY = [
    "data.size=200",
    "data.test_size=50",
    "data.clients=4",
    "fl.clients_per_round=2",
    "fl.rounds=1",
]


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _sets(*items: str) -> list[str]:
    return [a for item in (*TINY, *items) for a in ("--set", item)]


def _sections(path: Path) -> set[str]:
    return set(yaml.safe_load(path.read_text()))


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "swfl").mkdir()
    (tmp_path / "swfl" / "__init__.py").write_text("")
    for module, name, section in (("dyn", "SwDyn", "swdyn"), ("nova", "SwNova", "swnova")):
        text = textwrap.dedent(PLUGIN).format(Name=name, section=section)
        (tmp_path / "swfl" / f"{module}.py").write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_switching_between_plugins_and_back_to_a_builtin(plugins: Path) -> None:
    params = plugins / "params.yaml"
    result = _cli("dvc", *_sets("fl.algorithm=swfl.dyn:SwDyn", "swdyn.alpha=0.5"))
    assert result.exit_code == 0, result.output
    assert "swdyn" in _sections(params)
    result = _cli("dvc", *_sets("fl.algorithm=swfl.nova:SwNova"))
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.output.splitlines() if line.startswith("warning:"))
    assert "swdyn not used with fl.algorithm=swfl.nova:SwNova: ignored" in warning
    assert "swnova" in _sections(params) and "swdyn" not in _sections(params)
    dvc = yaml.safe_load((plugins / "dvc.yaml").read_text())
    assert not any("swdyn" in str(stage.get("params")) for stage in dvc["stages"].values())
    result = _cli("dvc", *_sets("fl.algorithm=fedavg"))
    assert result.exit_code == 0, result.output
    assert "swnova" not in _sections(params)


def test_a_leftover_section_changes_neither_the_run_nor_its_hash(plugins: Path) -> None:
    clean = plugins / "clean.yaml"
    clean.write_text("fl:\n  algorithm: fedavg\n")
    leftover = plugins / "leftover.yaml"
    leftover.write_text("fl:\n  algorithm: fedavg\nswdyn:\n  alpha: 3.0\nfedprox:\n  mu: 0.5\n")
    a = _cli("run", "--config", str(clean), "--out", "a", "-q", *_sets())
    b = _cli("run", "--config", str(leftover), "--out", "b", "-q", *_sets())
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    assert "sections fedprox, swdyn not used with fl.algorithm=fedavg" in b.output
    assert (plugins / "a" / "round-0001" / "manifest.json").read_bytes() == (
        plugins / "b" / "round-0001" / "manifest.json"
    ).read_bytes()


def test_a_builtin_leftover_is_still_validated_and_set_typos_stay_errors(plugins: Path) -> None:
    bad = plugins / "bad.yaml"
    bad.write_text("fedprox:\n  mu: -1\n")
    result = _cli("run", "--config", str(bad), "--out", "c", "-q", *_sets())
    assert result.exit_code == 2 and "fedprox.mu" in result.output
    result = _cli("run", "--out", "d", "-q", *_sets("trian.lr=0.1"))
    assert result.exit_code == 2 and "unknown config section 'trian'" in result.output


def test_a_set_key_of_an_algorithm_not_selected_warns_and_changes_nothing(plugins: Path) -> None:
    """`--set fedprox.mu=0.1` with FedAvg selected used to run plain FedAvg without a word."""
    clean = plugins / "clean.yaml"
    clean.write_text("fl:\n  algorithm: fedavg\n")
    a = _cli("run", "--config", str(clean), "--out", "a", "-q", *_sets())
    b = _cli("run", "--config", str(clean), "--out", "b", "-q", *_sets("fedprox.mu=0.1"))
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    warnings = [line for line in b.output.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: --set fedprox.mu: fedprox is not the selected algorithm (fl.algorithm=fedavg), "
        "so the value is ignored; add --set fl.algorithm=fedprox to use it"
    ]
    assert (plugins / "a" / "round-0001" / "manifest.json").read_bytes() == (
        plugins / "b" / "round-0001" / "manifest.json"
    ).read_bytes()
    bad = _cli("run", "--config", str(clean), "--out", "c", "-q", *_sets("fedprox.mu=-1"))
    assert bad.exit_code == 2 and "fedprox.mu" in bad.output  # still validated
