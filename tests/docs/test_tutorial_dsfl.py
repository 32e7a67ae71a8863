"""Every code block of docs/tutorial-dsfl.md runs: the ```python blocks in order in one
namespace, then the ```yaml block is saved as the config and every `blazefl` line of the
```bash blocks runs through the CLI.

The tutorial tells readers to put its code in `tutorial_dsfl.py`; here the namespace the blocks
run in is that module (registered in `sys.modules` under the name), so the import path
`tutorial_dsfl:TutorialDSFL` in its config resolves to the classes the blocks define.
"""

from __future__ import annotations
import __future__

import os
import re
import shlex
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from blazefl.pipeline.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "tutorial-dsfl.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)
MODULE = "tutorial_dsfl"


def blocks(language: str) -> list[str]:
    return [
        body for lang, body in BLOCK.findall(DOC.read_text(encoding="utf-8")) if lang == language
    ]


@pytest.fixture(scope="module")
def tutorial_module() -> Iterator[types.ModuleType]:
    """The module `tutorial_dsfl` with every python block of the tutorial run in it."""
    module = types.ModuleType(MODULE)
    sys.modules[MODULE] = module
    # one file in the reader's hands: the first block's `from __future__ import annotations`
    # holds for all of them
    flags = __future__.annotations.compiler_flag
    try:
        for number, block in enumerate(blocks("python"), 1):
            code = compile(block, f"{DOC.name}[python block {number}]", "exec", flags=flags)
            exec(code, module.__dict__)  # noqa: S102 - the tutorial's own code
        yield module
    finally:
        del sys.modules[MODULE]


def test_every_code_block_is_a_kind_this_test_runs() -> None:
    kinds = [lang for lang, _ in BLOCK.findall(DOC.read_text(encoding="utf-8"))]
    assert set(kinds) == {"python", "yaml", "bash"}, kinds
    assert kinds.count("python") >= 7 and kinds.count("yaml") == 1


def test_python_blocks_build_dsfl_equal_to_the_builtin(tutorial_module: types.ModuleType) -> None:
    ns = tutorial_module.__dict__
    for name in ("TutorialDSFL", "TutorialDSFLServer", "TutorialDSFLWorkload"):
        assert getattr(ns[name], "__module__", None) == MODULE, name
    # the tutorial's own assertions ran; check their subject is really ours
    assert type(ns["ours"]).__name__ == "TutorialDSFLServer"
    assert type(ns["builtin"]).__name__ == "DSFLServerHandler"
    assert len(ns["our_rounds"]) == 2


def test_bash_commands_run_through_the_pipeline(
    tutorial_module: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (config,) = blocks("yaml")
    Path("tutorial.yaml").write_text(config, encoding="utf-8")
    lines = [line.split("#")[0].strip() for block in blocks("bash") for line in block.splitlines()]
    commands = [shlex.split(line) for line in lines if line]
    assert commands and all(cmd[0] == "blazefl" for cmd in commands), commands
    for cmd in commands:
        result = CliRunner().invoke(main, cmd[1:], catch_exceptions=False)
        assert result.exit_code == 0, (cmd, result.output, os.getcwd())
        if cmd[1] == "verify":
            assert "all OK" in result.output, result.output
    run = tmp_path / "artifacts" / "tutorial"
    assert (run / "round-0002" / "state" / "server.safetensors").is_file()
    assert (run / "round-0002" / "clients.safetensors").is_file()  # the sampled clients' states
    dvc = (tmp_path / "dvc.yaml").read_text()
    assert "tutorial_dsfl.era_temperature" in dvc and "dsfl.kd_lr" not in dvc.replace(
        "tutorial_dsfl.kd_lr", ""
    )
