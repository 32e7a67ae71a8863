"""`git bisect run blazefl verify RUN --rounds N --trust-code --code-from here` finds the commit
of a plugin repository that changed round N, because verify's exit codes are the ones git reads:
0 good, 1 bad, 125 "cannot be judged, skip it" (the code does not import, or it raises while
re-executing). The bash blocks of docs/auditing.md run here verbatim, in order, in a repository
of three commits whose second one scales the server's update: every command the page shows is
tested.

Each `blazefl` call is a subprocess (a fresh interpreter per commit, as under `git bisect run`:
a module imported once stays imported), run through a `blazefl` on PATH that is this
interpreter's CLI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from blazefl.pipeline.cli import EXIT_CANNOT_JUDGE, main

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "auditing.md"
#: The page's section on classes of difference: its commands are tested with that work, not
#: here (a run that differs in each class), so its blocks are not part of the bisect script.
CLASSES = "## When your re-execution of a published run differs"

#: The tested blocks of docs/auditing.md, in the order the page gives them.
DOC_BLOCKS = ["where", "publish", "find-round", "check-good", "bisect", "result"]

#: A few seconds per `blazefl run` or `verify` on 2 cores.
PARAMS = """\
seed: 7
data: {clients: 4, size: 200, test_size: 100}
model: {name: cnn_small}
fl: {algorithm: "myplug:Algo", rounds: 2, clients_per_round: 2}
train: {local_epochs: 1, batch_size: 32}
runtime: {mode: sequential}
"""

ORIGINAL = '''\
"""A researcher's algorithm: FedAvg with a server step of its own (fl.algorithm: myplug:Algo)."""

from blazefl.algorithms import FedAvg, FedAvgServerHandler


class Server(FedAvgServerHandler):
    """FedAvg's server step."""

    def global_update(self) -> None:
        super().global_update()


class Algo(FedAvg):
    """The algorithm the config names."""

    Server = Server
'''

#: The numerics change: the server applies 90 % of the clients' average update.
SCALED = ORIGINAL.replace(
    "        super().global_update()\n",
    "        previous = self.params.clone()\n"
    "        super().global_update()\n"
    "        self.params.copy_(previous + 0.9 * (self.params - previous))\n",
)

#: An unrelated change on top: a new function nobody calls.
UNRELATED = SCALED + '\n\ndef describe() -> str:\n    return "FedAvg, damped"\n'


def _server_raises(text: str) -> str:
    return text.replace(
        "        super().global_update()\n",
        '        raise RuntimeError("half-written server step")\n',
    )


#: Code at a commit that cannot re-execute the run: (name, myplug.py, what the error names).
BROKEN = [
    ("raises-on-import", ORIGINAL + 'raise RuntimeError("half-done refactor")\n',
     "importing myplug raised RuntimeError: half-done refactor"),
    ("missing-name", ORIGINAL.replace("class Algo(", "class Algorithm("),
     "myplug has no attribute 'Algo'"),
    ("syntax-error", ORIGINAL + "def describe(:\n", "myplug.py:17: cannot be parsed"),
    ("missing-module", "import myhelpers  # not committed\n" + ORIGINAL,
     "cannot import myplug (No module named 'myhelpers')"),
    ("server-raises", _server_raises(ORIGINAL),
     "round 1 cannot be re-executed with this code: RuntimeError: half-written server step "
     "(at myplug.py:10)"),
    ("client-raises", ORIGINAL + textwrap.dedent("""
        from blazefl.algorithms import FedAvgWorker


        class Worker(FedAvgWorker):
            def uplink_model(self, start, trained):
                raise ValueError("uplink of the wrong size")


        Algo.Worker = Worker
        """),
     "failed in round 1: ValueError: uplink of the wrong size"),
]  # fmt: skip


# -- helpers -------------------------------------------------------------------------------
def _env(home: Path) -> dict[str, str]:
    """A clean environment: `blazefl` on PATH is this interpreter's CLI, HOME is a fresh folder
    (no user git config: hooks, signing, templates), git has an identity, no bytecode cache."""
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "blazefl"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m blazefl.pipeline.cli "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("GIT_")}
    env.update(
        HOME=str(home),
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        GIT_AUTHOR_NAME="A Researcher",
        GIT_AUTHOR_EMAIL="researcher@example.org",
        GIT_COMMITTER_NAME="A Researcher",
        GIT_COMMITTER_EMAIL="researcher@example.org",
        GIT_CONFIG_NOSYSTEM="1",
        # a checkout within the second of an earlier one, of a file of the same size, would
        # otherwise import the earlier commit's cached bytecode
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _run(cwd: Path, env: dict[str, str], *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _git(repo: Path, env: dict[str, str], *args: str) -> str:
    proc = _run(repo, env, "git", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def _repository(repo: Path, env: dict[str, str], versions: list[tuple[str, str]]) -> list[str]:
    """A plugin repository with one commit per (myplug.py text, message); the commits' shas."""
    repo.mkdir(parents=True)
    _git(repo, env, "init", "-q", "-b", "main")
    (repo / "params.yaml").write_text(PARAMS)
    (repo / ".gitignore").write_text("__pycache__/\n")
    shas = []
    for text, message in versions:
        (repo / "myplug.py").write_text(text)
        _git(repo, env, "add", "-A")
        _git(repo, env, "commit", "-q", "-m", message)
        shas.append(_git(repo, env, "rev-parse", "HEAD"))
    return shas


def _one_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single `error:` line on stderr, with no traceback anywhere."""
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _doc_blocks() -> list[tuple[str | None, str]]:
    """(marker, text) of every ```bash block of docs/auditing.md outside the CLASSES section,
    in order; the marker is the `<!-- bisect-test: NAME -->` line right above the block (None
    when there is none)."""
    text = DOC.read_text()
    start = text.index(CLASSES)
    end = text.find("\n## ", start + len(CLASSES))
    text = text[:start] + (text[end:] if end >= 0 else "")
    found = re.finditer(r"(?:<!-- bisect-test: ([\w-]+) -->\n)?```bash\n(.*?)```", text, re.S)
    return [(m.group(1), m.group(2)) for m in found]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run made with ORIGINAL: the record every broken or changed version is judged by."""
    home = tmp_path_factory.mktemp("author")
    env = _env(home)
    (home / "myplug.py").write_text(ORIGINAL)
    (home / "params.yaml").write_text(PARAMS)
    proc = _run(home, env, "blazefl", "run", "--out", str(home / "published"), "-q")
    assert proc.returncode == 0, proc.stderr
    return home / "published"


# -- the page, run as written --------------------------------------------------------------
def test_every_bash_block_of_the_page_is_one_the_test_runs() -> None:
    blocks = _doc_blocks()
    # a new command on the page runs here too: mark its block and add it to DOC_BLOCKS
    assert [name for name, _ in blocks] == DOC_BLOCKS, "each ```bash block needs its marker"
    bisect = dict(blocks)["bisect"]
    assert (
        'git bisect run blazefl verify "$RUN" --rounds "$N" --trust-code --code-from here' in bisect
    )


def test_the_pages_commands_find_the_commit_that_scaled_the_update(tmp_path: Path) -> None:
    env = _env(tmp_path)  # HOME: the page's $HOME/runs/... lands in tmp_path
    repo = tmp_path / "myplug"
    good, scaled, unrelated = _repository(
        repo,
        env,
        [
            (ORIGINAL, "FedAvg as a plugin"),
            (SCALED, "Damp the server step (90 % of the average update)"),
            (UNRELATED, "describe(): a name for plots"),
        ],
    )
    _git(repo, env, "tag", "v1.0", good)  # the page's GOOD
    script = "\n".join(text for _, text in _doc_blocks())
    proc = _run(repo, env, "bash", "-c", script)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    run = tmp_path / "runs" / "myplug-v1.0"
    assert (run / "round-0002" / "manifest.json").is_file()  # step 2 made the run at v1.0
    assert "round 1: DIFFERS: global.safetensors" in out  # step 3: at HEAD (N=1 below)
    assert "round 1: all OK" in out  # step 4: the good commit re-executes round 1
    assert "user code differs: myplug.py (recorded in the run vs this folder)" in out
    assert f"{scaled} is the first bad commit" in out  # step 5
    assert "Damp the server step" in out and "myplug.py" in out  # step 6: git show --stat
    # the reset put the branch back as it was
    assert _git(repo, env, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert _git(repo, env, "rev-parse", "HEAD") == unrelated
    assert _git(repo, env, "status", "--porcelain") == ""


# -- exit 125: a commit that cannot be judged is skipped ------------------------------------
@pytest.mark.parametrize("name,text,expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_code_that_cannot_run_exits_125_with_one_line(
    published: Path, tmp_path: Path, name: str, text: str, expected: str
) -> None:
    env = _env(tmp_path)
    (tmp_path / "myplug.py").write_text(text)
    args = ["verify", str(published), "--rounds", "1", "--trust-code", "--code-from", "here"]
    proc = _run(tmp_path, env, "blazefl", *args)
    assert proc.returncode == EXIT_CANNOT_JUDGE == 125, proc.stdout + proc.stderr
    line = _one_error(proc)
    assert expected in line, line
    assert "tampered" not in line  # the code's failure is not blamed on the run


def test_bisect_skips_commits_that_cannot_run(published: Path, tmp_path: Path) -> None:
    """good, scaled (bad), import raises (skip), server raises (skip), scaled + unrelated (bad):
    git tests the middle, skips what exits 125, and still names the scaled commit."""
    env = _env(tmp_path)
    repo = tmp_path / "myplug"
    good, scaled, *_, head = _repository(
        repo,
        env,
        [
            (ORIGINAL, "FedAvg as a plugin"),
            (SCALED, "Damp the server step"),
            (SCALED + 'raise RuntimeError("half-done refactor")\n', "WIP: split the module"),
            (_server_raises(SCALED), "WIP: new server step"),
            (UNRELATED, "Finish the refactor"),
        ],
    )
    _git(repo, env, "bisect", "start", head, good)
    args = ["verify", str(published), "--rounds", "1", "--trust-code", "--code-from", "here"]
    proc = _run(repo, env, "git", "bisect", "run", "blazefl", *args)
    out = proc.stdout + proc.stderr
    log = _git(repo, env, "bisect", "log")
    _git(repo, env, "bisect", "reset")
    assert proc.returncode == 0, out
    assert f"{scaled} is the first bad commit" in out, out
    assert "# skip: [" in log, log  # at least one commit exited 125 and was skipped
    assert "Traceback" not in out


# -- exit 2 stays for the command itself; the codes are documented --------------------------
def test_mistakes_about_the_command_still_exit_2(published: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (
        ["verify", str(tmp_path / "no-such-run"), "--rounds", "1"],
        ["verify", str(published), "--rounds", "one"],
        ["verify", str(published), "--rounds", "9"],  # past the last complete round
        ["verify", str(published), "--rounds", "1", "--code-from", "elsewhere"],
        ["verify", str(published), "--rounds", "1"],  # names user code: no consent given
    ):
        result = runner.invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output


def test_exit_codes_are_listed_in_help_docstring_and_readme() -> None:
    help_text = CliRunner().invoke(main, ["verify", "--help"]).output
    for code in (0, 1, 2, EXIT_CANNOT_JUDGE):
        assert re.search(rf"^ +{code} +\w", help_text, re.M), help_text
    import blazefl.pipeline.cli as cli

    assert cli.__doc__ is not None and "125" in cli.__doc__
    readme = (ROOT / "README.md").read_text()
    assert "125" in readme and "docs/auditing.md" in readme
