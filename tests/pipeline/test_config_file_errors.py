"""`blazefl run` with a config that is not a params file, repeats keys or holds a base-60
number: one `error:` line naming the file (never its content), exit code 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SECRET = "hunter2-do-not-print"


def _blazefl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it (stderr kept apart from stdout)."""
    code = "from blazefl.pipeline.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "content",
    [
        f"root:{SECRET}:20228:0:99999:7:::\ndaemon:*:20228:0:99999:7:::\n",  # like /etc/shadow
        f"{SECRET} is the first line\n  - and: [not yaml\n",
        f"token: !{SECRET} x\n",
        f"x: !!int {SECRET}\n",
        f"seed: \x01{SECRET}\n",
        f"'{SECRET}': 1\n",
    ],
    ids=["shadow", "prose", "tag", "int", "control", "quoted-key"],
)
def test_non_params_file_is_named_never_echoed(tmp_path: Path, content: str) -> None:
    cfg = tmp_path / "secrets"
    cfg.write_text(content)
    out = tmp_path / "run"
    line = _one_line_error(_blazefl("run", "--config", str(cfg), "--out", str(out), cwd=tmp_path))
    assert str(cfg) in line
    rest = line.replace(str(cfg), "")
    for fragment in (SECRET, "hunter2", "root", "20228", "daemon", "first line"):
        assert fragment not in rest, line
    assert not out.exists()


def test_binary_config_is_named_never_echoed(tmp_path: Path) -> None:
    cfg = tmp_path / "blob"
    cfg.write_bytes(b"\x7fELF\x02\x01" + SECRET.encode() + bytes(range(256)))
    line = _one_line_error(_blazefl("run", "--config", str(cfg), cwd=tmp_path))
    assert str(cfg) in line and SECRET not in line and "ELF" not in line


def test_duplicate_keys_in_a_section_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "params.yaml"
    cfg.write_text("data:\n  size: 600\n  clients: 6\n  size: 900\n")
    out = tmp_path / "run"
    result = _blazefl("run", "--config", str(cfg), "--out", str(out), cwd=tmp_path)
    _one_line_error(result, str(cfg), "line 4", "data.size", "first on line 2", "keep one")
    assert not out.exists()


def test_base_60_test_size_is_refused_in_file_and_set(tmp_path: Path) -> None:
    cfg = tmp_path / "params.yaml"
    cfg.write_text("data:\n  test_size: 1:30\n")
    out = tmp_path / "run"
    result = _blazefl("run", "--config", str(cfg), "--out", str(out), cwd=tmp_path)
    _one_line_error(result, str(cfg), "line 2", "base 60", "quote it or write a plain number")
    result = _blazefl("run", "--set", "data.test_size=1:30", "--out", str(out), cwd=tmp_path)
    _one_line_error(result, "--set data.test_size", "base 60", "plain number")
    assert not out.exists()
