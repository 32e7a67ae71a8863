"""Issue 8 section 3: a run directory from elsewhere is read as untrusted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from blazefl.stages.artifacts import canonical_json
from tests.pipeline.integrity_helpers import cli, one_line_error, sets


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("untrusted") / "run"
    assert cli("run", "--out", str(out), "-q", *sets()).exit_code == 0
    return out


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def _resume(out: Path):  # type: ignore[no-untyped-def]
    return cli("run", "--out", str(out), "-q", *sets("fl.rounds=3"))


def test_output_replaced_by_a_link_to_dev_zero_is_refused(run: Path) -> None:
    victim = run / "round-0002" / "global.safetensors"
    victim.unlink()
    victim.symlink_to("/dev/zero")
    assert "symlink" in one_line_error(_resume(run))


def test_output_replaced_by_a_fifo_does_not_hang(run: Path) -> None:
    victim = run / "round-0002" / "rng.safetensors"
    victim.unlink()
    os.mkfifo(victim)
    assert "not a regular file" in one_line_error(_resume(run))


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd"])
def test_manifest_naming_a_path_outside_the_run_is_refused(run: Path, name: str) -> None:
    path = run / "round-0002" / "manifest.json"
    m = json.loads(path.read_text())
    m["inputs"][name] = "0" * 64
    path.write_bytes(canonical_json(m))
    for args in (("verify", str(run)), ("show", str(run))):
        one_line_error(cli(*args))
    one_line_error(_resume(run))


def test_input_linked_to_a_system_file_is_not_hashed(run: Path) -> None:
    store = run / "dataset"
    (store / "zarr.json").unlink()
    (store / "zarr.json").symlink_to("/etc/hostname")
    result = cli("verify", str(run))
    assert result.exit_code in (1, 2) and "all OK" not in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("folder", ["metrics", "timings", "plots"])
def test_symlinked_output_folder_is_never_written_through(
    run: Path, tmp_path: Path, folder: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(run / folder)
    (run / folder).symlink_to(outside, target_is_directory=True)
    assert "symlink" in one_line_error(_resume(run))
    assert list(outside.iterdir()) == []


BAD_FIELDS = [
    ("outputs", ["global.safetensors"]),
    ("clients", 5),
    ("environment", "x86"),
    ("round", 1e30),
    ("round", "three"),
    ("config", None),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_malformed_manifest_field_is_one_line_everywhere(
    run: Path, finished: Path, field: str, value: object
) -> None:
    path = run / "round-0002" / "manifest.json"
    m = json.loads(path.read_text())
    if value is None:
        del m[field]
    else:
        m[field] = value
    path.write_bytes(canonical_json(m))
    for args in (("verify", str(run)), ("show", str(run)), ("diff", str(finished), str(run))):
        one_line_error(cli(*args))
    one_line_error(_resume(run))


def test_diff_reports_runs_that_differ_only_in_a_manifest(run: Path, finished: Path) -> None:
    path = run / "round-0002" / "manifest.json"
    m = json.loads(path.read_text())
    m["environment"]["numpy"] = "0.0.1"
    path.write_bytes(canonical_json(m))
    result = cli("diff", str(finished), str(run))
    assert result.exit_code == 1, result.output
    assert "manifest.json differs in: environment" in result.output
