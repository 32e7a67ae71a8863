"""`blazefl dvc` and the generated pipeline under the real DVC, in a temporary git repository.

The reproduced repository is built once per session (`dvc_helpers.base_repo`, shared with
test_dvc_experiments.py); tests that change it work on a copy, so every test can run alone and
in any order.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import Result
from dvc_helpers import (
    DSFL,
    OUT,
    ROUND_STAGES,
    TINY,
    copy_repo,
    lock_stages,
    needs_dvc,
    ran_stages,
    sh,
    sh_json,
    status,
    tree_hashes,
)
from dvc_helpers import base_repo as _base_repo

from blazefl.pipeline.dvcgen import path_note, stage_name, write_dvc
from blazefl.stages.config import RunConfig, byte_keys, dump_yaml, load_config

NON_BYTE_KEYS = ("fl.rounds", "runtime.mode", "runtime.workers", "runtime.ipc", "runtime.track")


def _config(overrides: dict[str, object]) -> RunConfig:
    """The config `blazefl dvc --set ...` passes on (defaults plus `overrides`)."""
    return RunConfig.of(load_config(None, overrides))


@pytest.fixture(scope="module")
def base_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline generated, reproduced and committed (read only)."""
    return _base_repo(tmp_path_factory)


@pytest.fixture
def repo(base_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the reproduced repository, free to change."""
    return copy_repo(base_repo, tmp_path / "repo")


# -- the generator alone ------------------------------------------------------------------------


def test_same_config_writes_same_bytes(tmp_path: Path) -> None:
    config = _config(TINY)
    texts = []
    for name in ("a", "b"):
        d = tmp_path / name
        written = write_dvc(
            config, out=d / OUT, dvc_file=d / "dvc.yaml", params_file=d / "params.yaml"
        )
        assert written == [d / "params.yaml", d / "dvc.yaml"]
        texts.append([(d / "dvc.yaml").read_bytes(), (d / "params.yaml").read_bytes()])
    assert texts[0] == texts[1]


def test_params_yaml_round_trips_and_holds_the_full_config(tmp_path: Path) -> None:
    config = _config({**TINY, "train.lr": 0.0125, "data.root": None})
    write_dvc(
        config,
        out=tmp_path / OUT,
        dvc_file=tmp_path / "dvc.yaml",
        params_file=tmp_path / "params.yaml",
    )
    assert load_config(tmp_path / "params.yaml") == config
    assert (tmp_path / "params.yaml").read_text() == dump_yaml(config)


def test_stages_list_only_byte_keys_and_never_persist(tmp_path: Path) -> None:
    config = _config(TINY)
    write_dvc(
        config,
        out=tmp_path / OUT,
        dvc_file=tmp_path / "dvc.yaml",
        params_file=tmp_path / "params.yaml",
    )
    text = (tmp_path / "dvc.yaml").read_text()
    doc = yaml.safe_load(text)
    assert "persist" not in text
    assert list(doc["stages"]) == ["prepare", "partition", *ROUND_STAGES, "report"]
    round_keys = sorted(k for k in config if k not in NON_BYTE_KEYS)
    assert round_keys == byte_keys(config)
    assert not any(k.startswith("dsfl.") for k in round_keys)  # only the selected algorithm
    for name in ROUND_STAGES:
        assert doc["stages"][name]["params"] == round_keys
    for name, stage in doc["stages"].items():
        assert not set(stage.get("params", [])) & set(NON_BYTE_KEYS), name
        assert "--mode" not in stage["cmd"] and "--workers" not in stage["cmd"], name
        assert stage["cmd"].endswith(f"--config params.yaml --out {OUT}"), name
    assert doc["stages"]["round_002"]["cmd"].startswith("blazefl stage round --round 2 ")
    assert doc["stages"]["round_002"]["deps"] == [
        f"{OUT}/dataset",
        f"{OUT}/partitions",
        f"{OUT}/round-0001",
    ]
    assert doc["stages"]["round_002"]["outs"] == [
        f"{OUT}/round-0002",
        {f"{OUT}/metrics/round-0002.json": {"cache": False}},
    ]
    assert doc["stages"]["report"]["metrics"] == [{f"{OUT}/summary.json": {"cache": False}}]
    plots = {name: plot for entry in doc["plots"] for name, plot in entry.items()}
    data = f"{OUT}/plots/metrics.json"
    assert plots["accuracy"]["x"] == plots["loss"]["x"] == "round"
    assert plots["accuracy"]["y"] == {data: ["test_accuracy"]}
    assert plots["loss"]["y"] == {data: ["train_loss", "test_loss"]}


def test_partition_params_follow_the_selected_algorithm(tmp_path: Path) -> None:
    def params(config: dict[str, object]) -> dict[str, list[str]]:
        write_dvc(
            _config(config),
            out=tmp_path / OUT,
            dvc_file=tmp_path / "dvc.yaml",
            params_file=tmp_path / "params.yaml",
        )
        stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
        return {name: stage.get("params", []) for name, stage in stages.items()}

    fedavg = params(TINY)
    assert "fl.algorithm" in fedavg["partition"]
    assert not [k for keys in fedavg.values() for k in keys if k.startswith("dsfl.")]
    dsfl = params({**TINY, **DSFL})
    assert {"fl.algorithm", "dsfl.open_size"} <= set(dsfl["partition"])
    assert "dsfl.kd_lr" not in dsfl["partition"]  # the partition does not depend on it
    assert "dsfl.kd_lr" in dsfl["round_001"]
    assert "dsfl:" in (tmp_path / "params.yaml").read_text()


def test_paths_are_relative_to_dvc_yaml_and_params_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = _config({**TINY, "fl.rounds": 1})
    write_dvc(
        config, out="artifacts/x", dvc_file=Path("pipe/dvc.yaml"), params_file=Path("conf/exp.yaml")
    )
    assert load_config("conf/exp.yaml") == config
    doc = yaml.safe_load(Path("pipe/dvc.yaml").read_text())
    init = doc["stages"]["round_000"]
    assert init["cmd"] == "blazefl stage init --config ../conf/exp.yaml --out ../artifacts/x"
    assert init["deps"] == ["../artifacts/x/dataset", "../artifacts/x/partitions"]
    (entry,) = init["params"]
    assert list(entry) == ["../conf/exp.yaml"]


def test_stage_names_have_three_digits_and_widen_past_999() -> None:
    assert stage_name(0, 5) == "round_000"
    assert stage_name(42, 999) == "round_042"
    assert stage_name(42, 1000) == "round_0042"


def test_zero_rounds_pipeline_reports_from_init(tmp_path: Path) -> None:
    write_dvc(
        _config({**TINY, "fl.rounds": 0}),
        out=tmp_path / OUT,
        dvc_file=tmp_path / "dvc.yaml",
        params_file=tmp_path / "params.yaml",
    )
    doc = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    assert list(doc["stages"]) == ["prepare", "partition", "round_000", "report"]
    assert doc["stages"]["report"]["deps"] == [f"{OUT}/round-0000"]


def test_path_note_says_when_dvc_would_not_find_this_blazefl(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    here = Path(sys.executable).parent
    if not (here / "blazefl").exists():
        pytest.skip("no blazefl console script next to this interpreter")
    monkeypatch.setenv("PATH", f"{here}{os.pathsep}/usr/bin")
    assert path_note() is None
    monkeypatch.setenv("PATH", str(tmp_path))  # not activated: dvc repro could not run it
    note = path_note()
    assert note is not None and "not on PATH" in note and "activate" in note


# -- the pipeline under DVC -------------------------------------------------------------------


@needs_dvc
def test_dvc_stage_list_plots_and_metrics_work(base_repo: Path) -> None:
    listed = sh(base_repo, "dvc", "stage", "list", "--name-only").split()
    assert listed == ["prepare", "partition", *ROUND_STAGES, "report"]
    plots = sh_json(base_repo, "dvc", "plots", "show")
    assert not plots.get("errors"), plots.get("errors")
    fields = {"accuracy": ["test_accuracy"], "loss": ["test_loss", "train_loss"]}
    for name, drawn in fields.items():
        points = plots["data"][name][0]["content"]["data"]["values"]
        # one y field: no "field" key in the points; several: one point per field
        assert sorted({(p["round"], p.get("field", drawn[0])) for p in points}) == sorted(
            (t, f) for t in (1, 2) for f in drawn
        )
    metrics = sh_json(base_repo, "dvc", "metrics", "show")
    (workspace,) = metrics.values()  # keyed "" or "workspace", depending on the version
    summary = workspace["data"][f"{OUT}/summary.json"]["data"]
    assert summary["rounds"] == 2


@needs_dvc
def test_dvc_plots_show_writes_the_curves(repo: Path) -> None:
    log = sh(repo, "dvc", "plots", "show")
    page = repo / "dvc_plots" / "index.html"
    assert page.name in log and page.is_file()
    html = page.read_text()
    metrics = json.loads((repo / OUT / "plots" / "metrics.json").read_text())
    for field in ("test_accuracy", "test_loss", "train_loss"):
        assert field in html
        assert json.dumps(metrics[-1][field]) in html  # the data points are in the page
    assert sh(repo, "git", "status", "--porcelain") == ""  # dvc_plots/ is git-ignored


@needs_dvc
def test_dvc_repro_is_byte_identical_to_blazefl_run(
    base_repo: Path, tmp_path: Path, blazefl: Callable[..., Result]
) -> None:
    other = tmp_path / "run"
    result = blazefl("run", "--config", str(base_repo / "params.yaml"), "--out", str(other), "-q")
    assert result.exit_code == 0, result.output
    via_dvc, via_run = tree_hashes(base_repo / OUT), tree_hashes(other)
    assert any(k.startswith("round-0002/") for k in via_dvc)
    assert via_dvc == via_run


@needs_dvc
def test_forced_round_reproduces_dvc_lock(repo: Path) -> None:
    log = sh(repo, "dvc", "repro", "-s", "-f", "round_002")
    assert "Running stage 'round_002'" in log
    sh(repo, "git", "diff", "--exit-code", "dvc.lock")
    sh(repo, "git", "diff", "--exit-code")  # the cache: false metrics too


@needs_dvc
def test_changing_lr_makes_every_round_stale_but_not_data(repo: Path) -> None:
    assert status(repo) == {}
    config = load_config(repo / "params.yaml")
    config["train.lr"] = 0.1
    (repo / "params.yaml").write_text(dump_yaml(config))
    stale = status(repo)
    assert sorted(stale) == ROUND_STAGES
    for name in ROUND_STAGES:
        assert "train.lr" in json.dumps(stale[name])


@needs_dvc
def test_extending_rounds_runs_only_the_new_round(
    repo: Path, blazefl: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = lock_stages(repo)
    old_files = sorted(p for t in (1, 2) for p in (repo / OUT / f"round-{t:04d}").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in old_files}
    monkeypatch.chdir(repo)
    result = blazefl("dvc", "--config", "params.yaml", "--out", OUT, "--set", "fl.rounds=3")
    assert result.exit_code == 0, result.output
    assert load_config(repo / "params.yaml")["fl.rounds"] == 3
    # report is stale too: its deps gained metrics/round-0003.json.
    assert sorted(status(repo)) == ["report", "round_003"]
    assert ran_stages(sh(repo, "dvc", "repro")) == ["report", "round_003"]
    after = lock_stages(repo)
    for name in ["prepare", "partition", *ROUND_STAGES]:
        assert after[name] == before[name], name
    assert {p: p.stat().st_mtime_ns for p in old_files} == mtimes
    assert json.loads((repo / OUT / "summary.json").read_text())["rounds"] == 3
