"""`verify`, `pack` and `unpack` check a run with one check (`pipeline.run_check`): on the same
damaged run they give the same verdict, in the same words.

`unpack` reads an archive, which cannot hold a symlink: a link (to a file or a folder) is
refused as a member before any run check, so there only the verdict is the same.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from blazefl.pipeline.archive_limits import manifests_first

Blazefl = Callable[..., Result]
GLOBAL3 = "round-0003/global.safetensors"


def _flip(run: Path, outside: Path) -> None:
    path = run / GLOBAL3
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])


def _link_file(run: Path, rel: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / rel, target)
    (run / rel).unlink()
    (run / rel).symlink_to(target)


def _link_out(run: Path, outside: Path) -> None:
    _link_file(run, GLOBAL3, outside / "global.safetensors")


def _link_store(run: Path, outside: Path) -> None:
    shutil.move(run / "dataset", outside / "dataset")
    (run / "dataset").symlink_to(outside / "dataset", target_is_directory=True)


def _dvc_cache(run: Path, outside: Path) -> None:
    """Round 2's and round 3's global model as DVC's `symlink` cache type checks them out
    (round 3's re-execution reads round 2's through the link)."""
    for rel in ("round-0002/global.safetensors", GLOBAL3):
        md5 = hashlib.md5((run / rel).read_bytes()).hexdigest()  # noqa: S324 (DVC's address)
        _link_file(run, rel, outside / ".dvc/cache/files/md5" / md5[:2] / md5[2:])


#: damage -> (how, the problem line all three verbs print; None: the run is fine)
CASES: dict[str, tuple[Callable[[Path, Path], None], str | None]] = {
    "missing-file": (
        lambda run, _: (run / GLOBAL3).unlink(),
        "round 3: global.safetensors is missing (listed in its manifest)",
    ),
    "changed-byte": (
        _flip,
        "round 3: global.safetensors differs from its manifest (modified on disk)",
    ),
    "symlink-out-of-the-run": (
        _link_out,
        "round 3: global.safetensors is a symlink that leaves the run and is not a DVC cache "
        "file (or ends at no regular file): replace the link with a copy of what it points to "
        "(cp -L)",
    ),
    "symlinked-store-folder": (
        _link_store,
        "error: dataset is a symlink to a folder, which blazefl does not follow (it would read "
        "bytes from outside the run): replace the link with a copy of what it points to "
        "(cp -rL)",
    ),
    "dvc-symlink-cache-file": (_dvc_cache, None),
}


def _archive_as_is(run: Path, archive: Path) -> None:
    """A tar of the run's files as they are (links as links), in pack's order, without the
    check pack runs first: what a damaged run's archive would hold."""
    entries: dict[str, Path] = {}
    for dirpath, dirs, names in os.walk(run):
        for name in [*names, *(d for d in dirs if Path(dirpath, d).is_symlink())]:
            path = Path(dirpath) / name
            rel = path.relative_to(run).as_posix()
            if not rel.startswith(("timings/", ".")) and not rel.endswith((".png", ".lock")):
                entries[rel] = path
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tar:
        for rel in manifests_first(list(entries)):
            path, info = entries[rel], tarfile.TarInfo(f"run/{rel}")
            if path.is_symlink():
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
            else:
                info.size = path.stat().st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)


def _error_line(result: Result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_verify_pack_and_unpack_agree_on_a_damaged_run(
    case: str, tiny_run: Path, blazefl: Blazefl, tmp_path: Path
) -> None:
    damage, line = CASES[case]
    run = tmp_path / "run"
    subprocess.run(["cp", "-a", str(tiny_run), str(run)], check=True)  # keeps hard links
    outside = tmp_path / "outside"
    outside.mkdir()
    damage(run, outside)

    verified = blazefl("verify", str(run), "--rounds", "3")
    packed = blazefl("pack", str(run), str(tmp_path / "run.tar"))
    if line is None:  # the run is fine: every verb says so, and the reader gets its bytes
        assert verified.exit_code == 0, verified.output
        assert packed.exit_code == 0, packed.output
        unpacked = blazefl("unpack", str(tmp_path / "run.tar"), str(tmp_path / "unpacked"))
        assert unpacked.exit_code == 0, unpacked.output
        assert blazefl("verify", str(tmp_path / "unpacked"), "--rounds", "3").exit_code == 0
        return

    if line.startswith("error: "):  # refused as a whole, by every verb, in one line
        assert _error_line(verified) == line
    else:  # a problem line among verify's report
        assert verified.exit_code == 1, verified.output
        assert line in verified.output.splitlines(), verified.output
        assert verified.output.strip().splitlines()[-1].startswith("FAILED")
    assert line.removeprefix("error: ") in _error_line(packed)
    assert not (tmp_path / "run.tar").exists()

    _archive_as_is(run, tmp_path / "as-is.tar")
    unpacked = blazefl("unpack", str(tmp_path / "as-is.tar"), str(tmp_path / "unpacked"))
    refused = _error_line(unpacked)
    assert "nothing was unpacked" in refused and not (tmp_path / "unpacked").exists()
    if "symlink" in case:  # an archive holds no links: refused as a member
        assert "is a link (links are refused)" in refused, refused
    else:
        assert line in refused, refused
