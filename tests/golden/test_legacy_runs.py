"""The legacy fixtures (`tests/golden/legacy/`, runs written by blazefl 0.1.0 commits, manifest
format 1) get correct one-line answers from today's code.

`show` and `diff` read them; `verify` checks their files and chain and then says, in one
`error:` line (exit 2), which version re-executes them and how to install it: a run of an older
format is not damaged, so the words "corrupt" and "tampered" never appear. A byte flipped in a
copy is found (exit 1, the file named). Every test works on a copy in tmp_path.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from blazefl.pipeline.cli import main
from tests.golden.make_golden import CURRENT, cli_env, digest_of

LEGACY = Path(__file__).resolve().parent / "legacy"
#: Fixture -> its digest (sha256 of round-0002/manifest.json), as legacy/README.md lists it.
DIGESTS = {
    "fedavg-6183653": "3e8c44b0bd185c3534d63da224d72fe1ffd900a2d45997b6471f6659ee5930e5",
    "fedavg-2d6de98": "e1c0c60a62df24df9ef92ba0ddae3e7248d9f5d2185094e54e74b35713676a47",
}
FIXTURES = sorted(DIGESTS)
ROUNDS = (0, 1, 2)


def copy_fixture(name: str, tmp_path: Path) -> Path:
    """A writable copy of a legacy fixture's run (the fixture itself is never touched)."""
    src = LEGACY / name / "run"
    return Path(shutil.copytree(src, tmp_path / name, copy_function=shutil.copyfile))


def cli(*args: str) -> Result:
    """show / diff in-process (a format-1 run names no user code to import)."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def verify(run: Path) -> subprocess.CompletedProcess[str]:
    """`blazefl verify RUN` in a subprocess: stderr is exactly what a user sees."""
    cmd = [sys.executable, "-m", "blazefl.pipeline.cli", "verify", str(run)]
    return subprocess.run(
        cmd, cwd=run.parent, capture_output=True, text=True, env=cli_env(), timeout=300
    )


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_is_unchanged(name: str) -> None:
    """The fixture files are the ones legacy/README.md describes (never regenerated)."""
    assert digest_of(LEGACY / name / "run") == DIGESTS[name]


@pytest.mark.parametrize("name", FIXTURES)
def test_show_prints_digest_and_format(name: str, tmp_path: Path) -> None:
    result = cli("show", str(copy_fixture(name, tmp_path)))
    assert result.exit_code == 0, result.output
    assert f"digest: {DIGESTS[name]}" in result.stdout
    assert "manifest format 1" in result.stdout


@pytest.mark.parametrize("name", FIXTURES)
def test_diff_with_itself_is_identical(name: str, tmp_path: Path) -> None:
    run = copy_fixture(name, tmp_path)
    result = cli("diff", str(run), str(run))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("identical"), result.output


@pytest.mark.parametrize("name", FIXTURES)
def test_verify_checks_files_and_names_the_version_that_re_executes(
    name: str, tmp_path: Path
) -> None:
    proc = verify(copy_fixture(name, tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for t in ROUNDS:
        assert f"round {t}: files and chain OK" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    # a run that recorded its version gets the pip line; the earliest runs recorded none, and
    # only the source of their time (a 0.1.0 from before 2026-12-01) reads them
    how = (
        "install the blazefl source" if name.endswith("6183653") else "pip install 'blazefl==0.1.0'"
    )
    assert "0.1.0" in lines[0] and how in lines[0] and "torch==2.14.1" in lines[0]
    for word in ("corrupt", "tampered", "Traceback"):
        assert word not in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", FIXTURES)
def test_verify_finds_a_flipped_byte(name: str, tmp_path: Path) -> None:
    run = copy_fixture(name, tmp_path)
    target = run / "round-0001" / "global.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor's last byte
    target.write_bytes(bytes(data))
    proc = verify(run)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "round 1: global.safetensors differs from its manifest" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", FIXTURES)
def test_diff_against_the_current_golden_fedavg(name: str, tmp_path: Path) -> None:
    """A format-1 run against a run of today's format: a difference (exit 1) that names the
    format among the differing manifest fields, or the config, and no traceback."""
    golden = CURRENT / "fedavg" / "run"
    if not golden.is_dir():
        pytest.fail(f"{golden} is missing: run `python -m tests.golden.make_golden`")
    current = Path(shutil.copytree(golden, tmp_path / "golden", copy_function=shutil.copyfile))
    result = cli("diff", str(copy_fixture(name, tmp_path)), str(current))
    assert result.exit_code == 1, result.output
    fields = {
        f.strip()
        for line in result.stdout.splitlines()
        if "manifest.json differs in:" in line
        for f in line.split("differs in:", 1)[1].split(",")
    }
    assert "format" in fields or "config differs" in result.stdout, result.output
