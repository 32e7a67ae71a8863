"""LEAF's FEMNIST (built-in CNN) and Shakespeare (char_lstm) through the pipeline on tiny files
in LEAF's format, with `data.partition: natural`: the same bytes in every execution mode,
`verify` OK, the store holds each sample's user and client i exactly user i's samples,
resume after round 1, other partitioners, DVC (`blazefl dvc` + `dvc repro`), and the README's
"Federated datasets" commands run as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dvc_helpers import OUT, commit, init_repo, needs_dvc, sets, sh

from blazefl.data import sample_users
from blazefl.data.leaf import load_femnist, load_shakespeare
from blazefl.stages.artifacts import RunDir
from blazefl.stages.stores import load_dataset_store, load_partition, load_users
from tests.data.leaf_files import write_femnist, write_shakespeare
from tests.pipeline.integrity_helpers import cli, one_line_error

README = Path(__file__).resolve().parents[2] / "README.md"
BIN = Path(sys.executable).parent

COMMON = {
    "data.partition": "natural",
    "data.clients": 3,
    "fl.clients_per_round": 2,
    "fl.rounds": 2,
    "train.local_epochs": 1,
    "train.batch_size": 8,
}
KINDS = {
    "femnist": {"data.dataset": "femnist", "data.root": "data/femnist", "model.name": "cnn"},
    "shakespeare": {
        "data.dataset": "shakespeare",
        "data.root": "data/shakespeare",
        "model.name": "char_lstm",
    },
}


def args(kind: str, **extra: object) -> list[str]:
    return sets({**COMMON, **KINDS[kind], **extra})


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_femnist(tmp_path / "data" / "femnist")
    write_shakespeare(tmp_path / "data" / "shakespeare")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_mode_gives_the_same_bytes_and_verifies(kind: str, project: Path) -> None:
    runs = {}
    for mode in ("sequential", "threads", "processes"):
        runs[mode] = project / mode
        result = cli("run", "--out", str(runs[mode]), "-q", "--mode", mode, "--workers", "2",
                     *args(kind))  # fmt: skip
        assert result.exit_code == 0, result.output
    for mode in ("threads", "processes"):
        result = cli("diff", str(runs["sequential"]), str(runs[mode]))
        assert result.exit_code == 0, result.output
    result = cli("verify", str(runs["threads"]))
    assert result.exit_code == 0 and "FAILED" not in result.output, result.output
    # the store: the loader's samples and users; client i holds exactly user i's samples
    run = RunDir(runs["sequential"])
    loader = load_femnist if kind == "femnist" else load_shakespeare
    fresh = loader(project / "data" / kind, train=True)
    users = sample_users(fresh)
    assert users is not None
    train, _ = load_dataset_store(run)
    assert np.array_equal(train.images.numpy(), fresh.images.numpy())
    assert type(train) is type(fresh)  # shakespeare: a FeatureDataset of int64, no image
    codes = load_users(run)
    assert codes is not None and np.array_equal(codes, users.codes)
    attrs = json.loads((run.dataset / "zarr.json").read_text())["attributes"]
    assert attrs["users"] == list(users.names)
    part = load_partition(run, 3, len(train))
    for cid in range(3):
        held = part.indices[int(part.offsets[cid]) : int(part.offsets[cid + 1])].numpy()
        assert held.tolist() == np.flatnonzero(users.codes == cid).tolist()
    manifest = json.loads((run.dataset / "manifest.json").read_text())
    assert sorted(manifest["data_files"]) == sorted(
        p.relative_to(project / "data" / kind).as_posix()
        for p in (project / "data" / kind).rglob("*.json")
    )


def test_resume_after_round_one_gives_the_same_bytes(project: Path) -> None:
    full, part = project / "full", project / "part"
    assert cli("run", "--out", str(full), "-q", *args("shakespeare")).exit_code == 0
    first = cli("run", "--out", str(part), "-q", *args("shakespeare", **{"fl.rounds": 1}))
    assert first.exit_code == 0, first.output
    assert not (part / "round-0002").exists()
    again = cli("run", "--out", str(part), "-q", *args("shakespeare"))
    assert again.exit_code == 0, again.output
    result = cli("diff", str(full), str(part))
    assert result.exit_code == 0, result.output


def test_other_partitioners_and_wrong_counts(project: Path) -> None:
    extra = {"data.partition": "dirichlet", "data.clients": 4, "fl.rounds": 1}
    result = cli("run", "--out", str(project / "dir"), "-q", *args("femnist", **extra))
    assert result.exit_code == 0, result.output
    assert load_users(RunDir(project / "dir")) is not None  # stored whatever the partition
    line = one_line_error(
        cli("run", "--out", str(project / "bad"), "-q", *args("femnist", **{"data.clients": 4}))
    )
    assert "each of the 3 users its own client: set data.clients: 3" in line, line
    synthetic = {"data.dataset": "synthetic", "data.root": "null", "data.size": 60}
    line = one_line_error(cli("run", "--out", str(project / "syn"), "-q",
                              *args("femnist", **synthetic)))  # fmt: skip
    assert "natural needs a dataset that records which user" in line, line
    line = one_line_error(cli("run", "--out", str(project / "lstm"), "-q",
                              *args("femnist", **{"model.name": "char_lstm"})))  # fmt: skip
    assert "char_lstm' takes int64 character ids" in line, line
    line = one_line_error(cli("run", "--out", str(project / "none"), "-q",
                              *args("femnist", **{"data.root": "data"})))  # fmt: skip
    assert "has no LEAF train files" in line and "preprocess.sh" in line, line


@needs_dvc
def test_dvc_repro_reproduces_the_natural_partition(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo)
    write_shakespeare(repo / "data" / "shakespeare")
    sh(repo, "blazefl", "dvc", "--config", "params.yaml", "--out", OUT,
       *args("shakespeare", **{"runtime.mode": "sequential"}))  # fmt: skip
    dvc_yaml = (repo / "dvc.yaml").read_text()
    assert "data/shakespeare" in dvc_yaml  # data.root is a dependency of prepare
    sh(repo, "dvc", "repro")
    commit(repo, "reproduce shakespeare")
    run = RunDir(repo / OUT)
    users = load_users(run)
    assert users is not None and sorted(set(users.tolist())) == [0, 1, 2]
    assert sh(repo, "dvc", "status").strip().endswith("Data and pipelines are up to date.")
    result = cli("verify", str(repo / OUT))
    assert result.exit_code == 0, result.output


def _readme_commands() -> str:
    """The bash block of the README's "Federated datasets" section."""
    text = README.read_text()
    section = text.split("### Federated datasets", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section has one bash block of commands"
    return blocks[0]


def test_the_readme_commands_run_as_written(tmp_path: Path) -> None:
    write_femnist(tmp_path / "data" / "femnist")
    write_shakespeare(tmp_path / "data" / "shakespeare")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    bash = shutil.which("bash")
    assert bash
    proc = subprocess.run(
        [bash, "-euo", "pipefail", "-c", _readme_commands()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for kind in ("femnist", "shakespeare"):
        assert (tmp_path / "runs" / kind / "summary.json").is_file()
    assert "FAILED" not in proc.stdout
