"""A run records every input that can change a byte: the user's code (the whole closure of
modules imported from the user's folder, with a copy in the run) and the data files under
data.root. Resuming over changed code or data is refused; verify names the file; verify
imports a run's user code only after consent, and re-executes with the run's own copy.

The CLI runs in subprocesses: user modules imported in-process would stay cached across
edits and leak into other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ALGO = """
from blazefl.algorithms.fedavg import FedAvg
from recfl.common import MARK


class RecAvg(FedAvg):
    name = "recavg"
    note = MARK
"""
NET = """
from torch import nn
from recnet.width import WIDTH


def mlp(*, num_classes, in_channels, image_size, dropout):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * image_size * image_size, WIDTH), nn.ReLU(),
        nn.Linear(WIDTH, num_classes),
    )
"""
LOADER = """
from pathlib import Path

import numpy as np
import torch

from blazefl.data import ImageDataset


def load(*, root, size, seed, train, **_):
    data = np.load(Path(root) / ("train.npz" if train else "test.npz"))
    return ImageDataset(
        images=torch.from_numpy(data["x"]), labels=torch.from_numpy(data["y"]), num_classes=4,
        mean=(0.5,), std=(0.25,), crop_padding=0, hflip=False,
    )
"""
SETS = {
    "fl.algorithm": "recfl.algo:RecAvg",
    "model.name": "recnet.net:mlp",
    "data.dataset": "recdata.load:load",
    "data.root": "data",
    "data.clients": "4",
    "fl.clients_per_round": "2",
    "fl.rounds": "2",
    "train.local_epochs": "1",
    "train.batch_size": "8",
    "train.augment": "false",
    "runtime.mode": "sequential",
}


def _write_data(root: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(exist_ok=True)
    for name, n in (("train.npz", 48), ("test.npz", 16)):
        x = rng.integers(0, 256, (n, 1, 6, 6), dtype=np.uint8)
        np.savez(root / name, x=x, y=np.arange(n, dtype=np.int64) % 4)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A researcher's folder: a plugin algorithm importing a helper, a model factory importing
    a helper, a dataset loader reading data/*.npz."""
    files = {
        "recfl/__init__.py": "import pathlib\npathlib.Path('imported.marker').touch()\n",
        "recfl/common.py": "MARK = 1\n",
        "recfl/algo.py": ALGO,
        "recnet/__init__.py": "",
        "recnet/width.py": "WIDTH = 16\n",
        "recnet/net.py": NET,
        "recdata/__init__.py": "",
        "recdata/load.py": LOADER,
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    _write_data(tmp_path / "data", 0)
    return tmp_path


def blazefl(cwd: Path, *args: str, **sets: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "blazefl.pipeline.cli", *args]
    for key, value in {**SETS, **sets}.items() if args[0] == "run" else ():
        cmd += ["--set", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def _one_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture
def made(project: Path) -> Path:
    proc = blazefl(project, "run", "--out", "run", "-q")
    assert proc.returncode == 0, proc.stderr
    return project


def _manifest(run: Path, rel: str) -> dict:
    return json.loads((run / rel).read_text())


def test_manifests_record_the_user_code_closure_and_the_data_files(made: Path) -> None:
    run = made / "run"
    closure = {
        "recdata/__init__.py",
        "recdata/load.py",
        "recfl/__init__.py",
        "recfl/algo.py",
        "recfl/common.py",
        "recnet/__init__.py",
        "recnet/net.py",
        "recnet/width.py",
    }
    for t in (0, 1, 2):
        assert set(_manifest(run, f"round-{t:04d}/manifest.json")["user_code"]) == closure
    m0 = _manifest(run, "round-0000/manifest.json")
    for rel, sha in m0["user_code"].items():  # the run carries a copy of each, by content
        assert (run / "round-0000" / "code" / f"{sha}.py").read_bytes() == (made / rel).read_bytes()
    dataset = _manifest(run, "dataset/manifest.json")
    assert set(dataset["user_code"]) == {"recdata/__init__.py", "recdata/load.py"}
    assert set(dataset["data_files"]) == {"train.npz", "test.npz"}
    assert set(_manifest(run, "partitions/manifest.json")["user_code"]) == {
        "recfl/__init__.py",
        "recfl/algo.py",
        "recfl/common.py",
    }


def test_resume_after_an_edit_of_an_imported_helper_is_refused(made: Path) -> None:
    (made / "recfl" / "common.py").write_text("MARK = 2\n")
    line = _one_error(blazefl(made, "run", "--out", "run", "-q", **{"fl.rounds": "3"}))
    assert "recfl/common.py" in line and "other user code" in line and "--out" in line
    assert not (made / "run" / "round-0003").exists()


def test_resume_after_a_data_file_was_regenerated_is_refused(made: Path) -> None:
    _write_data(made / "data", 1)
    line = _one_error(blazefl(made, "run", "--out", "run", "-q", **{"fl.rounds": "3"}))
    assert "test.npz" in line and "train.npz" in line and "data.root" in line


def test_verify_names_a_regenerated_data_file(made: Path) -> None:
    _write_data(made / "data", 1)
    proc = blazefl(made, "verify", "run", "--trust-code")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "data differs under data.root data: test.npz, train.npz" in proc.stdout


def test_verify_asks_consent_before_importing_user_code(made: Path) -> None:
    (made / "imported.marker").unlink()
    line = _one_error(blazefl(made, "verify", "run"))
    assert "fl.algorithm=recfl.algo:RecAvg" in line and "--trust-code" in line
    sha = _manifest(made / "run", "round-0000/manifest.json")["user_code"]["recfl/common.py"]
    assert f"recfl/common.py {sha[:12]}" in line
    assert not (made / "imported.marker").exists()
    for verb in (["show", "run"], ["diff", "run", "run"]):
        assert blazefl(made, *verb).returncode == 0
    assert not (made / "imported.marker").exists()


def test_a_reader_without_the_authors_folder_verifies_with_the_runs_copy(
    made: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    reader = tmp_path_factory.mktemp("reader")
    packed = blazefl(made, "pack", "run", str(reader / "run.tar.gz"))
    assert packed.returncode == 0, packed.stderr  # the archive carries round-0000/code/
    assert blazefl(reader, "unpack", "run.tar.gz", "downloaded").returncode == 0
    proc = blazefl(reader, "verify", "downloaded", "--trust-code")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "re-executing with the run's own copy of its user code" in proc.stdout
    assert "all OK" in proc.stdout


def test_verify_says_which_user_code_differs_before_comparing(made: Path) -> None:
    (made / "recnet" / "width.py").write_text("WIDTH = 8\n")
    proc = blazefl(made, "verify", "run", "--trust-code")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the run's own copy re-executes it
    lines = proc.stdout.splitlines()
    differs = lines.index("user code differs: recnet/width.py (recorded in the run vs this folder)")
    assert differs < next(i for i, line in enumerate(lines) if line.startswith("verifying"))
    here = blazefl(made, "verify", "run", "--trust-code", "--code-from", "here")
    assert here.returncode == 1 and "DIFFERS" in here.stdout  # this folder's code: other bytes


def test_dvc_prepare_depends_on_data_root(project: Path) -> None:
    proc = blazefl(project, "dvc", *[a for k, v in SETS.items() for a in ("--set", f"{k}={v}")])
    assert proc.returncode == 0, proc.stderr
    import yaml

    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert "data" in stages["prepare"]["deps"]
    assert {"recdata/load.py", "recdata/__init__.py"} <= set(stages["prepare"]["deps"])
