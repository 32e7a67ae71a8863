"""`blazefl pack` never follows a symlinked folder or a link out of the run (it would publish
bytes from elsewhere), except DVC's symlink cache: a file of a store or round linking to a
regular file in DVC's content-addressed cache (or inside the run) is packed as its bytes.
(`pipeline.run_check` holds the rule; `tests/pipeline/test_one_check.py` shows verify and unpack
agree with pack.)"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

Blazefl = Callable[..., Result]


def _copy(tiny_run: Path, where: Path) -> Path:
    run = where / "run"
    subprocess.run(["cp", "-a", str(tiny_run), str(run)], check=True)
    return run


def _link_folder(run: Path, rel: str, outside: Path) -> None:
    """Move `run/rel` outside the run and leave a symlink to it."""
    target = outside / rel.replace("/", "_")
    shutil.move(run / rel, target)
    (run / rel).symlink_to(target, target_is_directory=True)


def _link_file(run: Path, rel: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / rel, target)
    (run / rel).unlink()
    (run / rel).symlink_to(target)


def _dangling(run: Path, outside: Path) -> None:
    _link_file(run, "round-0001/rng.safetensors", outside / "gone" / "rng")
    shutil.rmtree(outside / "gone")


#: damage -> what the one error line says ("*" stands for the run's path)
CASES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "round-folder": (lambda r, o: _link_folder(r, "round-0003", o), "round-0003 is a symlink"),
    "first-round-folder": (
        lambda r, o: _link_folder(r, "round-0000", o),
        "round-0000 is a symlink",
    ),
    "dataset-folder": (lambda r, o: _link_folder(r, "dataset", o), "dataset is a symlink"),
    "metrics-folder": (lambda r, o: _link_folder(r, "metrics", o), "metrics is a symlink"),
    "plots-folder": (lambda r, o: _link_folder(r, "plots", o), "plots is a symlink"),
    "sub-folder": (lambda r, o: _link_folder(r, "round-0002/index", o), "round-0002/index is a"),
    "metrics-file": (
        lambda r, o: _link_file(r, "metrics/round-0001.json", o / "m.json"),
        "metrics/round-0001.json is a symlink",
    ),
    "summary": (
        lambda r, o: _link_file(r, "summary.json", o / "s.json"),
        "summary.json is a symlink",
    ),
    "plot-data": (
        lambda r, o: _link_file(r, "plots/metrics.json", o / "p.json"),
        "plots/metrics.json is a symlink",
    ),
    "round-file-outside": (
        lambda r, o: _link_file(r, "round-0001/global.safetensors", o / "global.safetensors"),
        "round 1: global.safetensors is a symlink that leaves the run",
    ),
    "manifest-outside": (
        lambda r, o: _link_file(r, "round-0003/manifest.json", o / "manifest.json"),
        "round-0003/manifest.json in *: is a symlink that leaves the run",
    ),
    "dangling": (_dangling, "round 1: rng.safetensors is a symlink"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pack_refuses_links_in_one_line_and_writes_nothing(
    case: str, tiny_run: Path, blazefl: Blazefl, tmp_path: Path
) -> None:
    make, expected = CASES[case]
    run = _copy(tiny_run, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    make(run, outside)
    out = tmp_path / "published"
    out.mkdir()
    result = blazefl("pack", str(run), str(out / "run.tar.gz"))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert expected.replace("*", str(run)) in lines[0], lines[0]
    assert list(out.iterdir()) == []  # no archive, no temporary


def _md5_cache_path(cache: Path, data: bytes) -> Path:
    md5 = hashlib.md5(data).hexdigest()  # noqa: S324 (DVC's content address)
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def test_dvc_cache_links_and_links_inside_the_run_pack_the_same_bytes(
    tiny_run: Path, blazefl: Blazefl, tmp_path: Path
) -> None:
    reference = tmp_path / "reference.tar.gz"
    assert blazefl("pack", str(tiny_run), str(reference)).exit_code == 0
    run = _copy(tiny_run, tmp_path)
    cache = tmp_path / "repo" / ".dvc" / "cache"
    linked = 0
    for top in ("dataset", "round-0000", "round-0002"):
        for path in sorted((run / top).rglob("*")):
            if path.is_file() and not path.is_symlink():
                target = _md5_cache_path(cache, path.read_bytes())
                _link_file(run, path.relative_to(run).as_posix(), target)
                linked += 1
    assert linked > 10
    # a link to another file inside the run resolving to the same bytes is fine too
    rel = "round-0003/global.safetensors"
    twin = run / "twin-global.safetensors"  # outside the layout: not packed itself
    shutil.copy(run / rel, twin)
    (run / rel).unlink()
    (run / rel).symlink_to(os.path.relpath(twin, (run / rel).parent))
    archive = tmp_path / "linked.tar.gz"
    result = blazefl("pack", str(run), str(archive))
    assert result.exit_code == 0, result.output
    assert archive.read_bytes() == reference.read_bytes()
