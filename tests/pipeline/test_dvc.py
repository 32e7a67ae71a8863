"""`blazefl dvc` and the generated pipeline under the real DVC, in a temporary git repository.

One module-scoped repository runs `dvc repro` once (about 20-30 s for the tiny config on 2
cores); tests that change it work on a copy, so every test can run alone and in any order.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from blazefl.pipeline.dvcgen import stage_name, write_dvc
from blazefl.stages.config import byte_keys, dump_yaml, load_config

NON_BYTE_KEYS = ("fl.rounds", "runtime.mode", "runtime.workers", "runtime.ipc")

F = TypeVar("F", bound=Callable[..., Any])

BIN = Path(sys.executable).parent
TINY = {
    "data.size": 600,
    "data.test_size": 200,
    "data.clients": 6,
    "fl.clients_per_round": 3,
    "fl.rounds": 3,
    "train.local_epochs": 1,
    "train.batch_size": 32,
    "runtime.mode": "sequential",
}
OUT = "artifacts/exp"
ROUND_STAGES = ["round_000", "round_001", "round_002", "round_003"]


def _tool(name: str) -> str | None:
    here = BIN / name
    return str(here) if here.exists() else shutil.which(name)


_needs_dvc = pytest.mark.skipif(
    not (_tool("dvc") and _tool("git") and _tool("blazefl")),
    reason="needs dvc, git and the blazefl console script (pip install -e .[dev,dvc])",
)


def needs_dvc(test: F) -> F:
    """An end-to-end test under the real DVC: skipped without it; slow (about a minute in all,
    mostly one `blazefl stage` process per stage)."""
    return pytest.mark.slow(_needs_dvc(test))


def _sets(values: dict[str, object]) -> list[str]:
    args = []
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


def _env(site_cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # dvc.yaml calls `blazefl`
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_SITE_CACHE_DIR"] = str(site_cache)
    return env


def sh(repo: Path, *args: str) -> str:
    """Run a command in `repo`; fail the test with its output if it fails."""
    tool = _tool(args[0]) or args[0]
    proc = subprocess.run(
        [tool, *args[1:]],
        cwd=repo,
        env=_env(repo.parent / "dvc-site-cache"),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every artifact file by relative path; timings/, the PNG and git files excluded."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if (
            path.is_file()
            and not rel.startswith("timings/")
            and not rel.endswith(".png")
            and path.name != ".gitignore"
        ):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def lock_stages(repo: Path) -> dict[str, object]:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def status(repo: Path) -> dict[str, object]:
    return json.loads(sh(repo, "dvc", "status", "--json").strip().splitlines()[-1])


@pytest.fixture(scope="module")
def base_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repository with the tiny pipeline generated, reproduced and committed."""
    repo = tmp_path_factory.mktemp("dvc") / "repo"
    repo.mkdir()
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "test@example.com")
    sh(repo, "git", "config", "user.name", "test")
    sh(repo, "git", "config", "commit.gpgsign", "false")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "config", "core.analytics", "false")
    (repo / ".gitignore").write_text(f"/{OUT}/timings/\n/{OUT}/plots/*.png\n")
    sh(repo, "blazefl", "dvc", "--config", "params.yaml", "--out", OUT, *_sets(TINY))
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "reproduce the tiny pipeline")
    return repo


@pytest.fixture
def repo(base_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the reproduced repository, free to change."""
    copy = tmp_path / "repo"
    shutil.copytree(base_repo, copy, symlinks=True)
    return copy


# -- the generator alone ------------------------------------------------------------------------


def test_same_config_writes_same_bytes(tmp_path: Path) -> None:
    config = load_config(None, TINY)
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
    config = load_config(None, {**TINY, "train.lr": 0.0125, "data.root": None})
    write_dvc(
        config,
        out=tmp_path / OUT,
        dvc_file=tmp_path / "dvc.yaml",
        params_file=tmp_path / "params.yaml",
    )
    assert load_config(tmp_path / "params.yaml") == config
    assert (tmp_path / "params.yaml").read_text() == dump_yaml(config)


def test_stages_list_only_byte_keys_and_never_persist(tmp_path: Path) -> None:
    config = load_config(None, TINY)
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
    (plot,) = doc["plots"]
    assert plot["metrics"]["x"] == "round"


def test_paths_are_relative_to_dvc_yaml_and_params_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, {**TINY, "fl.rounds": 1})
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
        load_config(None, {**TINY, "fl.rounds": 0}),
        out=tmp_path / OUT,
        dvc_file=tmp_path / "dvc.yaml",
        params_file=tmp_path / "params.yaml",
    )
    doc = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    assert list(doc["stages"]) == ["prepare", "partition", "round_000", "report"]
    assert doc["stages"]["report"]["deps"] == [f"{OUT}/round-0000"]


# -- the pipeline under DVC -------------------------------------------------------------------


@needs_dvc
def test_dvc_stage_list_plots_and_metrics_work(base_repo: Path) -> None:
    listed = sh(base_repo, "dvc", "stage", "list", "--name-only").split()
    assert listed == ["prepare", "partition", *ROUND_STAGES, "report"]
    plots = json.loads(sh(base_repo, "dvc", "plots", "show", "--json"))
    assert not plots.get("errors"), plots.get("errors")
    points = plots["data"]["metrics"][0]["content"]["data"]["values"]
    assert sorted({(p["round"], p["field"]) for p in points}) == sorted(
        (t, f) for t in (1, 2, 3) for f in ("test_accuracy", "test_loss", "train_loss")
    )
    metrics = json.loads(sh(base_repo, "dvc", "metrics", "show", "--json"))
    (workspace,) = metrics.values()  # keyed "" or "workspace", depending on the version
    summary = workspace["data"][f"{OUT}/summary.json"]["data"]
    assert summary["rounds"] == 3


@needs_dvc
def test_dvc_repro_is_byte_identical_to_blazefl_run(base_repo: Path, tmp_path: Path) -> None:
    other = tmp_path / "run"
    sh(base_repo, "blazefl", "run", "--config", "params.yaml", "--out", str(other), "-q")
    via_dvc, via_run = tree_hashes(base_repo / OUT), tree_hashes(other)
    assert any(k.startswith("round-0003/") for k in via_dvc)
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
def test_extending_rounds_runs_only_the_new_round(repo: Path) -> None:
    before = lock_stages(repo)
    old_files = sorted(p for t in (1, 2, 3) for p in (repo / OUT / f"round-{t:04d}").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in old_files}
    sh(repo, "blazefl", "dvc", "--config", "params.yaml", "--out", OUT, "--set", "fl.rounds=4")
    assert load_config(repo / "params.yaml")["fl.rounds"] == 4
    # report is stale too: its deps gained metrics/round-0004.json.
    assert sorted(status(repo)) == ["report", "round_004"]
    log = sh(repo, "dvc", "repro")
    ran = sorted(line.split("'")[1] for line in log.splitlines() if line.startswith("Running"))
    assert ran == ["report", "round_004"]
    after = lock_stages(repo)
    for name in ["prepare", "partition", *ROUND_STAGES]:
        assert after[name] == before[name], name
    assert {p: p.stat().st_mtime_ns for p in old_files} == mtimes
    assert json.loads((repo / OUT / "summary.json").read_text())["rounds"] == 4
