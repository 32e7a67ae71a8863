"""DVC experiments on the generated pipeline, as a user drives them (issue 9): `dvc exp run
-S`, an edited params.yaml + `dvc repro`, the experiment queue, `exp show` / `exp diff` /
`metrics diff` / `plots diff` across experiments, switching algorithms, and publishing a run
through a DVC remote. Every test works on a copy of the session's reproduced repository."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from dvc_helpers import (
    DSFL,
    OUT,
    ROUND_STAGES,
    commit,
    copy_repo,
    needs_dvc,
    ran_stages,
    run,
    sets,
    sh,
    sh_json,
    status,
    tree_hashes,
    wait_for_queue,
)
from dvc_helpers import base_repo as _base_repo

from blazefl.pipeline.archive import pack_run
from blazefl.pipeline.run_check import check_run
from blazefl.stages.config import dump_yaml, load_config

Blazefl = Callable[..., Result]

#: The learning rate of the experiments compared with `blazefl run --set train.lr=...`.
LR = 0.02
#: Queued experiments: name -> train.lr.
QUEUED = {"lr-low": LR, "lr-high": 0.1}
RERUN_AFTER_LR = sorted([*ROUND_STAGES, "report"])
EXP_SHOW = ("dvc", "exp", "show", "--csv")


@pytest.fixture(scope="module")
def base_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _base_repo(tmp_path_factory)


@pytest.fixture(scope="module")
def lr_reference(
    base_repo: Path, tmp_path_factory: pytest.TempPathFactory, blazefl: Blazefl
) -> Path:
    """`blazefl run --set train.lr=LR` with the repository's params.yaml: what DVC must
    reproduce byte for byte."""
    out = tmp_path_factory.mktemp("reference") / "run"
    config = str(base_repo / "params.yaml")
    result = blazefl("run", "--config", config, "--set", f"train.lr={LR}", "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    return out


def _edit(repo: Path, changes: dict[str, object]) -> None:
    config = load_config(repo / "params.yaml")
    config.update(changes)
    (repo / "params.yaml").write_text(dump_yaml(config))


@needs_dvc
def test_exp_run_set_is_byte_identical_to_blazefl_run(
    base_repo: Path, lr_reference: Path, tmp_path: Path
) -> None:
    repo = copy_repo(base_repo, tmp_path / "repo")
    log = sh(repo, "dvc", "exp", "run", "-S", f"train.lr={LR}", "-n", "direct")
    assert ran_stages(log) == RERUN_AFTER_LR  # the stores are reused
    assert load_config(repo / "params.yaml")["train.lr"] == LR
    assert tree_hashes(repo / OUT) == tree_hashes(lr_reference)
    assert status(repo) == {}


@needs_dvc
def test_edited_params_and_repro_are_byte_identical_to_blazefl_run(
    base_repo: Path, lr_reference: Path, tmp_path: Path
) -> None:
    repo = copy_repo(base_repo, tmp_path / "repo")
    _edit(repo, {"train.lr": LR})
    assert ran_stages(sh(repo, "dvc", "repro")) == RERUN_AFTER_LR
    assert tree_hashes(repo / OUT) == tree_hashes(lr_reference)
    assert status(repo) == {}


@pytest.fixture(scope="module")
def queued(base_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two experiments queued with `dvc exp run --queue` and run by `dvc queue start`."""
    repo = copy_repo(base_repo, tmp_path_factory.mktemp("queue") / "repo")
    for name, lr in QUEUED.items():
        sh(repo, "dvc", "exp", "run", "--queue", "-S", f"train.lr={lr}", "-n", name)
    sh(repo, "dvc", "queue", "start", "-j", "2")
    try:
        wait_for_queue(repo)
    finally:
        run(repo, "dvc", "queue", "stop")  # workers stop by themselves once idle; be sure
    return repo


@needs_dvc
def test_queued_experiments_all_run(queued: Path) -> None:
    assert wait_for_queue(queued) == {name: "Success" for name in QUEUED}


@needs_dvc
def test_exp_show_and_exp_diff_list_the_experiments_with_metrics(
    queued: Path, lr_reference: Path
) -> None:
    rows = {r["Experiment"]: r for r in csv.DictReader(io.StringIO(sh(queued, *EXP_SHOW)))}
    assert set(QUEUED) <= set(rows)
    for name, lr in QUEUED.items():
        assert float(rows[name]["train.lr"]) == lr
        assert rows[name]["test_accuracy"] and rows[name]["test_loss"], rows[name]
    # The queued run of lr-low (in DVC's temporary workspace) made the reference's metrics.
    summary = json.loads((lr_reference / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "train_loss", "best_test_accuracy"):
        assert float(rows["lr-low"][key]) == summary[key], key
    diff = sh_json(queued, "dvc", "exp", "diff", "lr-low", "lr-high")
    assert diff["params"]["params.yaml"]["train.lr"] == {"old": LR, "new": 0.1, "diff": 0.1 - LR}
    assert "test_loss" in diff["metrics"][f"{OUT}/summary.json"]


@needs_dvc
def test_metrics_diff_and_plots_diff_across_experiments(queued: Path) -> None:
    metrics = sh_json(queued, "dvc", "metrics", "diff", "lr-low", "lr-high")
    assert {"test_loss", "train_loss"} <= set(metrics[f"{OUT}/summary.json"])
    plots = sh_json(queued, "dvc", "plots", "diff", "lr-low", "lr-high")
    assert not plots.get("errors"), plots["errors"]
    for name in ("accuracy", "loss"):
        points = plots["data"][name][0]["content"]["data"]["values"]
        assert {(p["rev"], p["round"]) for p in points} == {
            (rev, t) for rev in QUEUED for t in (1, 2)
        }


@needs_dvc
def test_switching_algorithm_regenerates_the_pipeline_and_reruns_partition(
    base_repo: Path, tmp_path: Path, blazefl: Blazefl, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = copy_repo(base_repo, tmp_path / "repo")
    params = repo / "params.yaml"
    fedavg_text = params.read_text()
    assert "dsfl" not in fedavg_text  # only the selected algorithm's section
    # DS-FL's keys are no params of a FedAvg pipeline: editing them reruns nothing.
    params.write_text(fedavg_text + "dsfl:\n  kd_lr: 0.5\n")
    assert status(repo) == {}
    # fl.algorithm is a param of partition (the partition depends on it) and of every round.
    params.write_text(fedavg_text.replace("algorithm: fedavg", "algorithm: dsfl"))
    stale = status(repo)
    assert "partition" in stale and "prepare" not in stale
    assert "fl.algorithm" in json.dumps(stale["partition"])
    # The documented switch: regenerate dvc.yaml and params.yaml with the new algorithm.
    params.write_text(fedavg_text + "dsfl:\n  kd_lr: 0.5\n")
    monkeypatch.chdir(repo)  # `blazefl dvc` in-process: one torch import less
    result = blazefl("dvc", "--config", "params.yaml", "--out", OUT, *sets(DSFL))
    assert result.exit_code == 0, result.output
    config = load_config(params)
    assert config["fl.algorithm"] == "dsfl" and config["dsfl.kd_lr"] == 0.5
    assert "dsfl:" in params.read_text()
    stale = status(repo)
    assert {"partition", *ROUND_STAGES} <= set(stale) and "prepare" not in stale
    assert ran_stages(sh(repo, "dvc", "repro")) == sorted(["partition", *ROUND_STAGES, "report"])
    assert status(repo) == {}
    manifest = json.loads((repo / OUT / "round-0002" / "manifest.json").read_text())
    assert manifest["config"]["fl.algorithm"] == "dsfl" and manifest["config"]["dsfl.kd_lr"] == 0.5
    assert "state/server.safetensors" in manifest["outputs"]
    # Now DS-FL's keys are params: open_size changes the partition, kd_lr only the rounds.
    _edit(repo, {"dsfl.kd_lr": 0.25})
    stale = status(repo)
    assert set(stale) == set(ROUND_STAGES)
    _edit(repo, {"dsfl.kd_lr": 0.5, "dsfl.open_size": 150})
    stale = status(repo)
    assert "partition" in stale and "dsfl.open_size" in json.dumps(stale["partition"])
    assert "prepare" not in stale


@needs_dvc
def test_publishing_through_a_dvc_remote_reproduces_in_a_clone(
    base_repo: Path, tmp_path: Path, blazefl: Blazefl
) -> None:
    repo = copy_repo(base_repo, tmp_path / "repo")
    sh(repo, "dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"))
    commit(repo, "publish: a DVC remote")
    sh(repo, "dvc", "push")
    clone = tmp_path / "clone"
    sh(repo, "git", "clone", "-q", str(repo), str(clone))
    sh(clone, "dvc", "pull")
    assert tree_hashes(clone / OUT) == tree_hashes(repo / OUT)
    verified = blazefl("verify", str(clone / OUT))
    assert verified.exit_code == 0, verified.output
    log = sh(clone, "dvc", "repro", "-s", "-f", "round_002")
    assert "Running stage 'round_002'" in log
    sh(clone, "git", "diff", "--exit-code", "dvc.lock")
    sh(clone, "git", "diff", "--exit-code")  # the cache: false metrics too
    # Both routes publish the same bytes: the pulled run packs into the author's archive.
    archives = [tmp_path / "author.tar", tmp_path / "reader.tar"]
    for where, archive in zip((repo, clone), archives, strict=True):
        assert pack_run(where / OUT, archive).digest == check_run(repo / OUT).digest
    assert archives[0].read_bytes() == archives[1].read_bytes()
