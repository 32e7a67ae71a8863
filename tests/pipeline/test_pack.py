"""`blazefl pack` / `blazefl unpack`: deterministic archives, a checked round trip, and
tampered archives refused with one line and nothing usable left behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from blazefl.pipeline.archive import ROOT, pack_run, unpack_run
from blazefl.pipeline.archive_limits import manifests_first
from blazefl.pipeline.run_check import ArchiveError, RunCheckError, check_run

Blazefl = Callable[..., Result]


@pytest.fixture(scope="module")
def packed(tiny_run: Path, blazefl: Blazefl, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run packed as .tar (uncompressed: easy to tamper with below)."""
    archive = tmp_path_factory.mktemp("pack") / "run.tar"
    result = blazefl("pack", str(tiny_run), str(archive))
    assert result.exit_code == 0, result.output
    return archive


def _digest(run: Path) -> str:
    last = max(p for p in run.glob("round-*"))
    return hashlib.sha256((last / "manifest.json").read_bytes()).hexdigest()


def _printed_digest(result: Result) -> str:
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("digest: ")]
    return line.removeprefix("digest: ")


def test_same_run_gives_the_same_archive_bytes(
    tiny_run: Path, blazefl: Blazefl, tmp_path: Path
) -> None:
    # A copy with other mtimes, another name and a stray lock file and timings packs the same.
    copy = tmp_path / "elsewhere" / "other-name"
    shutil.copytree(tiny_run, copy, copy_function=shutil.copy)
    for path in copy.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    (copy / ".blazefl.lock").write_text("123\n")
    (copy / "timings" / "round-0001.json").write_text('{"round_seconds": 99}\n')
    blobs = []
    for i, (run, name) in enumerate(
        [(tiny_run, "a.tar.gz"), (tiny_run, "b.tgz"), (copy, "c.tar.gz")]
    ):
        result = blazefl("pack", str(run), str(tmp_path / name))
        assert result.exit_code == 0, result.output
        assert _printed_digest(result) == _digest(tiny_run), i
        blobs.append((tmp_path / name).read_bytes())
    assert blobs[0] == blobs[1] == blobs[2]
    assert blobs[0][:2] == b"\x1f\x8b"
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    rels = [n.removeprefix(f"{ROOT}/") for n in names]
    assert rels == manifests_first(rels) and all(n.startswith(f"{ROOT}/") for n in names)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)
    }
    assert all(m.isreg() and not m.pax_headers for m in members)
    assert f"{ROOT}/round-0003/global.safetensors" in names
    assert f"{ROOT}/summary.json" in names and f"{ROOT}/metrics/round-0001.json" in names
    assert not [n for n in names if "timings" in n or n.endswith((".png", ".lock"))]


def test_pack_unpack_verify_round_trip(
    tiny_run: Path, packed: Path, blazefl: Blazefl, tmp_path: Path, snapshot: Callable[..., dict]
) -> None:
    dest = tmp_path / "downloaded"
    dest.mkdir()  # an empty folder is fine
    result = blazefl("unpack", str(packed), str(dest))
    assert result.exit_code == 0, result.output
    digest = _printed_digest(result)
    assert digest == _digest(tiny_run) == _digest(dest)
    original = {k: v for k, v in snapshot(tiny_run).items() if not k.startswith("timings")}
    original = {k: v for k, v in original.items() if not k.endswith((".png", ".lock"))}
    assert snapshot(dest) == original
    assert [p.name for p in tmp_path.iterdir()] == ["downloaded"]  # no temporary left
    shown = blazefl("show", str(dest))
    assert shown.exit_code == 0, shown.output
    assert digest in shown.output
    verified = blazefl("verify", str(dest))
    assert verified.exit_code == 0, verified.output


# -- tampered archives ------------------------------------------------------------------------
def _rewrite(src: Path, dst: Path, change: Callable[[tarfile.TarInfo, bytes], bytes]) -> None:
    """Copy an archive member by member, letting `change` alter each member's data."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as tout:
        for member in tin.getmembers():
            f = tin.extractfile(member)
            data = change(member, f.read() if f else b"")
            member.size = len(data)
            tout.addfile(member, io.BytesIO(data))


def _append(src: Path, dst: Path, extra: tarfile.TarInfo, data: bytes = b"") -> None:
    _rewrite(src, dst, lambda m, d: d)
    with tarfile.open(dst, "a", format=tarfile.GNU_FORMAT) as tar:
        extra.size = len(data) if extra.isreg() else 0
        tar.addfile(extra, io.BytesIO(data) if extra.isreg() else None)


def _flip_byte(src: Path, dst: Path) -> None:
    def flip(member: tarfile.TarInfo, data: bytes) -> bytes:
        if member.name == f"{ROOT}/round-0002/global.safetensors":
            return data[:-7] + bytes([data[-7] ^ 1]) + data[-6:]
        return data

    _rewrite(src, dst, flip)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _huge(src: Path, dst: Path) -> None:
    """A member header that declares 1 TiB, and no data after it."""
    _rewrite(src, dst, lambda m, d: d)
    info = _member(f"{ROOT}/round-0001/extra.safetensors")
    info.size = 1 << 40
    with open(dst, "r+b") as f:  # replace the end-of-archive blocks with the huge header
        data = f.read().rstrip(b"\0")
        pad = -len(data) % 512
        f.seek(0)
        f.truncate()
        f.write(data + b"\0" * pad + info.tobuf(tarfile.GNU_FORMAT) + b"x" * 1024)


def _garbage(dst: Path) -> None:
    dst.write_bytes(b"\x1f\x8b" + os.urandom(2000))


TAMPERED: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "flipped-byte": (
        _flip_byte,
        "round 2: global.safetensors differs from its manifest (modified on disk)",
    ),
    "dot-dot": (lambda s, d: _append(s, d, _member("../evil"), b"x"), "'../evil'"),
    "nested-dot-dot": (lambda s, d: _append(s, d, _member("run/../../evil"), b"x"), "'run/../"),
    "absolute": (lambda s, d: _append(s, d, _member("/tmp/evil"), b"x"), "'/tmp/evil'"),
    "symlink": (
        lambda s, d: _append(s, d, _member("run/round-0001/x", tarfile.SYMTYPE, "/etc/passwd")),
        "is a link",
    ),
    "hard-link": (
        lambda s, d: _append(s, d, _member("run/metrics/round-0009.json", tarfile.LNKTYPE, "a")),
        "is a link",
    ),
    "device": (
        lambda s, d: _append(s, d, _member("run/round-0001/dev", tarfile.CHRTYPE)),
        "not a regular file",
    ),
    "huge-size": (_huge, "declares 1099511627776 bytes"),
    "unlisted-file": (
        lambda s, d: _append(s, d, _member("run/round-0001/extra.bin"), b"extra"),
        "round-0001/extra.bin is not listed",
    ),
    "outside-layout": (
        lambda s, d: _append(s, d, _member("run/notes/readme.txt"), b"hi"),
        "not part of a run",
    ),
    "garbage": (lambda s, d: _garbage(d), "cannot be read"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_archive_is_refused_with_nothing_left(
    case: str, packed: Path, blazefl: Blazefl, tmp_path: Path
) -> None:
    make, expected = TAMPERED[case]
    bad = tmp_path / "bad.tar"
    make(packed, bad)
    where = tmp_path / "out"
    where.mkdir()
    dest = where / "run"
    result = blazefl("unpack", str(bad), str(dest))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "nothing was unpacked" in lines[0]
    assert list(where.iterdir()) == []  # no DIR, no temporary sibling
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar", "out"]  # no ../evil


def test_unpack_refuses_a_non_empty_folder_and_a_gzip_bomb(packed: Path, tmp_path: Path) -> None:
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine\n")
    with pytest.raises(ArchiveError, match="not empty"):
        unpack_run(packed, dest)
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]
    # Bounds on the total size and member count apply to what the headers declare.
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip.compress(packed.read_bytes(), mtime=0))
    for limits in ({"max_total_bytes": 1000}, {"max_members": 3}):
        with pytest.raises(ArchiveError, match="more than"):
            unpack_run(bomb, tmp_path / "new", **limits)  # type: ignore[arg-type]
        assert not (tmp_path / "new").exists()
    assert unpack_run(bomb, tmp_path / "new").last_round == 3


def test_pack_refuses_a_run_that_does_not_match_its_manifests(
    tiny_run: Path, blazefl: Blazefl, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    path = run / "round-0001" / "rng.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    result = blazefl("pack", str(run), str(tmp_path / "run.tar.gz"))
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "round 1: rng.safetensors differs from its manifest" in result.output
    assert not list(tmp_path.glob("*.tar.gz")) and not list(tmp_path.glob(".*partial"))
    with pytest.raises(RunCheckError, match="differs from its manifest"):
        check_run(run)
    with pytest.raises(ArchiveError, match="must end in"):
        pack_run(tiny_run, tmp_path / "run.zip")
