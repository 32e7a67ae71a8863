"""Opening a run never runs its code: `show`, `diff`, `pack` and `unpack` read what a run's
config names (`fl.algorithm: evil:f`) as text, and never import or call it.

The run is a real tiny run whose manifests are rewritten (and their hash chain re-sealed) so
that every recorded config names functions of `evil.py`, a module in the working directory
whose import, and each of whose functions, writes a marker file. The working directory is where
import paths are looked up, so anything that resolved one would import it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result

from blazefl.pipeline.chain import chain_problems, store_problems
from blazefl.stages.artifacts import RunDir, sha256_file
from blazefl.stages.manifest_schema import config_digest
from tests.pipeline.rechain import manifest_paths, rechain, set_config

EVIL_CONFIG = {"fl.algorithm": "evil:f", "model.name": "evil:g", "data.dataset": "evil:h"}

EVIL_SOURCE = """\
from pathlib import Path

Path(__file__).with_name("imported").write_text("evil was imported")


def _called(*args, **kwargs):
    Path(__file__).with_name("called").write_text("evil was called")


f = g = h = _called
"""


@pytest.fixture
def evil_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The working directory, holding `evil.py`; `evil` is not imported when the test starts."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    (folder / "evil.py").write_text(EVIL_SOURCE)
    monkeypatch.chdir(folder)
    monkeypatch.delitem(sys.modules, "evil", raising=False)
    yield folder
    sys.modules.pop("evil", None)  # should it have been imported after all, do not leak it


@pytest.fixture
def evil_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run whose every recorded config names `evil` functions."""
    run = tmp_path / "evil-run"
    shutil.copytree(tiny_run, run)
    set_config(run, EVIL_CONFIG)
    return run


def assert_evil_untouched(evil_dir: Path) -> None:
    assert not (evil_dir / "imported").exists(), "a command imported the run's user code"
    assert not (evil_dir / "called").exists(), "a command called the run's user code"
    assert "evil" not in sys.modules


def test_the_rewritten_run_names_evil_and_its_chain_is_sealed(
    evil_run: Path, evil_dir: Path
) -> None:
    # the premise: every config the commands read names user code, and verify's chain checks
    # (hashes only; they resolve nothing) find the run consistent
    run = RunDir(evil_run)
    rounds = [rel for rel in manifest_paths(evil_run) if rel.startswith("round-")]
    assert len(rounds) == 4
    for t, rel in enumerate(rounds):
        m = json.loads((evil_run / rel).read_text())
        assert {k: m["config"][k] for k in EVIL_CONFIG} == EVIL_CONFIG
        assert m["config_sha256"] == config_digest(m["config"])
        assert chain_problems(run, t, m) == []
    assert run.store_manifest("dataset")["config"]["data.dataset"] == "evil:h"
    assert run.store_manifest("partitions")["config"]["fl.algorithm"] == "evil:f"
    assert store_problems(run, "dataset") == store_problems(run, "partitions") == []
    assert_evil_untouched(evil_dir)


def test_show_diff_pack_and_unpack_never_import_or_call_the_runs_code(
    evil_dir: Path,
    evil_run: Path,
    tiny_run: Path,
    tmp_path: Path,
    blazefl: Callable[..., Result],
) -> None:
    shown = blazefl("show", str(evil_run))
    assert shown.exit_code == 0, shown.output
    assert "rounds 0-3" in shown.output
    assert_evil_untouched(evil_dir)

    against_original = blazefl("diff", str(tiny_run), str(evil_run))
    assert against_original.exit_code == 1, against_original.output
    assert "'evil:f'" in against_original.output  # the config difference, read as text
    against_itself = blazefl("diff", str(evil_run), str(evil_run))
    assert against_itself.exit_code == 0, against_itself.output
    assert_evil_untouched(evil_dir)

    archive = tmp_path / "evil.tar.gz"
    packed = blazefl("pack", str(evil_run), str(archive))
    assert packed.exit_code == 0, packed.output
    unpacked_run = tmp_path / "unpacked"
    unpacked = blazefl("unpack", str(archive), str(unpacked_run))
    assert unpacked.exit_code == 0, unpacked.output
    assert blazefl("show", str(unpacked_run)).exit_code == 0
    assert blazefl("diff", str(evil_run), str(unpacked_run)).exit_code == 0
    assert_evil_untouched(evil_dir)


def test_show_in_its_own_process_does_not_import_the_runs_code(
    evil_dir: Path, evil_run: Path
) -> None:
    # `python -m` puts the working directory (holding evil.py) first on sys.path: an import
    # of `evil` anywhere in the command would find it
    proc = subprocess.run(
        [sys.executable, "-m", "blazefl.pipeline.cli", "show", str(evil_run)],
        cwd=evil_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rounds 0-3" in proc.stdout
    assert_evil_untouched(evil_dir)


def test_the_trap_fires_when_a_command_does_resolve_the_code(
    evil_dir: Path, tmp_path: Path, blazefl: Callable[..., Result]
) -> None:
    # the control: `run` resolves fl.algorithm, so it imports evil (and then refuses a plain
    # function as an algorithm, without calling it)
    result = blazefl("run", "--out", str(tmp_path / "out"), "--set", "fl.algorithm=evil:f")
    assert result.exit_code == 2, result.output
    assert (evil_dir / "imported").exists()
    assert not (evil_dir / "called").exists()


def test_rechain_without_an_edit_leaves_a_genuine_run_byte_identical(
    tiny_run: Path, tmp_path: Path, snapshot: Callable[[Path], dict[str, str]]
) -> None:
    # the helper re-derives exactly the hashes the writers recorded (canonical JSON, chain order)
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    hashes = rechain(run)
    assert snapshot(run) == snapshot(tiny_run)
    assert hashes == {rel: sha256_file(run / rel) for rel in manifest_paths(run)}
