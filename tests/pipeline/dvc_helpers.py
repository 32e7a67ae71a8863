"""Helpers of the tests that drive the generated pipeline with the real DVC and git.

One reproduced repository (`base_repo`) is built once per test session and shared by every
DVC test module; a test that changes anything works on a copy (`copy_repo`), so each test can
run alone and in any order. The tiny config has 2 rounds: a `blazefl stage` process costs a
few seconds (mostly importing torch), and the DVC tests start a few dozen of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

F = TypeVar("F", bound=Callable[..., Any])

#: The folder of this interpreter's console scripts (`blazefl`, `dvc`): on PATH for DVC, as
#: it is for a user who activated the environment (the README says so once).
BIN = Path(sys.executable).parent
TINY: dict[str, object] = {
    "data.size": 600,
    "data.test_size": 200,
    "data.clients": 6,
    "fl.clients_per_round": 3,
    "fl.rounds": 2,
    "train.local_epochs": 1,
    "train.batch_size": 32,
    "runtime.mode": "sequential",
}
#: Switching the tiny experiment to DS-FL (its open set is carved out of the 600 samples).
DSFL: dict[str, object] = {
    "fl.algorithm": "dsfl",
    "dsfl.open_size": 200,
    "dsfl.public_size_per_round": 100,
}
OUT = "artifacts/exp"
ROUND_STAGES = ["round_000", "round_001", "round_002"]
#: The project's .gitignore rules for run directories and DVC's plots page: DVC tracks the
#: cached outputs; the small cache:false files stay visible to git (`dvc exp show`, `dvc
#: metrics diff`); timings, the PNG and the run lock are ignored.
GITIGNORE = """\
/artifacts/*/*
!/artifacts/*/metrics/
!/artifacts/*/summary.json
!/artifacts/*/plots/
/artifacts/*/plots/*.png
/dvc_plots/
"""


def tool(name: str) -> str | None:
    here = BIN / name
    return str(here) if here.exists() else shutil.which(name)


_needs_dvc = pytest.mark.skipif(
    not (tool("dvc") and tool("git") and tool("blazefl")),
    reason="needs dvc, git and the blazefl console script (pip install -e .[dev,dvc])",
)


def needs_dvc(test: F) -> F:
    """An end-to-end test under the real DVC: skipped without it; slow (one `blazefl stage`
    process per stage run)."""
    return pytest.mark.slow(_needs_dvc(test))


def sets(values: dict[str, object]) -> list[str]:
    """`--set KEY=VALUE` arguments."""
    args = []
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


def env(site_cache: Path) -> dict[str, str]:
    out = dict(os.environ)
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"  # dvc.yaml calls `blazefl`
    out["DVC_NO_ANALYTICS"] = "1"
    out["DVC_SITE_CACHE_DIR"] = str(site_cache)
    out.pop("VIRTUAL_ENV", None)
    return out


def run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a command in `repo` (never raises on a non-zero exit)."""
    return subprocess.run(
        [tool(args[0]) or args[0], *args[1:]],
        cwd=repo,
        env=env(repo.parent / "dvc-site-cache"),
        capture_output=True,
        text=True,
    )


def sh(repo: Path, *args: str) -> str:
    """Run a command in `repo`; fail the test with its output if it fails."""
    proc = run(repo, *args)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def sh_json(repo: Path, *args: str) -> Any:
    """Run a dvc command with `--json`; its JSON output (the last line that parses)."""
    proc = run(repo, *args, "--json")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return json.loads(proc.stdout.strip().splitlines()[-1])


def ran_stages(log: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` log says it ran, sorted."""
    return sorted(line.split("'")[1] for line in log.splitlines() if line.startswith("Running"))


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every artifact file by relative path; timings/, the PNG, the lock file and
    DVC's .gitignore excluded."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if (
            path.is_file()
            and not rel.startswith("timings/")
            and not rel.endswith(".png")
            and not path.name.startswith(".")
        ):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def lock_stages(repo: Path) -> dict[str, Any]:
    stages: dict[str, Any] = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return stages


def status(repo: Path) -> dict[str, Any]:
    """`dvc status --json`: stale stage -> what changed ({} when up to date)."""
    out: dict[str, Any] = sh_json(repo, "dvc", "status")
    return out


def init_repo(repo: Path) -> None:
    """git + DVC repository in `repo` (created), with the project's ignore rules."""
    repo.mkdir(parents=True)
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "test@example.com")
    sh(repo, "git", "config", "user.name", "test")
    sh(repo, "git", "config", "commit.gpgsign", "false")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "config", "core.analytics", "false")
    (repo / ".gitignore").write_text(GITIGNORE)


def commit(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", message)


_BASE: dict[str, Path] = {}


def base_repo(factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline generated, reproduced and committed; built once per session (read
    only: use `copy_repo` to change anything)."""
    if "repo" not in _BASE:
        repo = factory.mktemp("dvc") / "repo"
        init_repo(repo)
        sh(repo, "blazefl", "dvc", "--config", "params.yaml", "--out", OUT, *sets(TINY))
        sh(repo, "dvc", "repro")
        commit(repo, "reproduce the tiny pipeline")
        _BASE["repo"] = repo
    return _BASE["repo"]


def copy_repo(base: Path, dest: Path) -> Path:
    """A private copy of a repository (its DVC cache too), free to change."""
    shutil.copytree(base, dest, symlinks=True)
    return dest


def wait_for_queue(repo: Path, timeout: float = 900.0) -> dict[str, str]:
    """Poll `dvc queue status` until no experiment is queued or running.

    Returns:
        Experiment name -> final status ("Success", "Failed", ...).
    """
    deadline = time.monotonic() + timeout
    while True:
        text = sh(repo, "dvc", "queue", "status")
        # Rows: "TASK  NAME  CREATED(with a space, e.g. 04:39 PM)  STATUS"; no --json.
        rows = [line.split() for line in text.splitlines()[1:]]
        found = {r[1]: r[-1] for r in rows if len(r) >= 4 and not line_is_worker(r)}
        if not any(s in ("Queued", "Running") for s in found.values()):
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"the DVC queue did not finish in {timeout:.0f} s:\n{text}")
        time.sleep(2)


def line_is_worker(fields: list[str]) -> bool:
    return fields[0] == "Worker"
