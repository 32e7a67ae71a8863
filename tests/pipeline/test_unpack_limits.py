"""`unpack` is bounded by the manifests the archive carries first: sizes checked before any
byte is written, the recorded total against the free space, hashes while streaming; a gzip
bomb is refused at once; a killed unpack's temporary folder is removed by the next one."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from blazefl.pipeline import archive as archive_module
from blazefl.pipeline.archive import ROOT, unpack_run
from blazefl.pipeline.archive_limits import manifests_first, unpack_prefix
from blazefl.pipeline.run_check import ArchiveError, check_run

Blazefl = Callable[..., Result]
GIB = 1 << 30


@pytest.fixture(scope="module")
def packed(tiny_run: Path, blazefl: Blazefl, tmp_path_factory: pytest.TempPathFactory) -> Path:
    archive = tmp_path_factory.mktemp("limits") / "run.tar"
    result = blazefl("pack", str(tiny_run), str(archive))
    assert result.exit_code == 0, result.output
    return archive


def _members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(archive) as tar:
        out = []
        for m in tar.getmembers():
            f = tar.extractfile(m)
            out.append((m, f.read() if f else b""))
        return out


def _tar(members: list[tuple[tarfile.TarInfo, bytes]], end: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return raw if end else raw.rstrip(b"\0") + b"\0" * (-len(raw.rstrip(b"\0")) % 512)


def _leftovers(folder: Path, *keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_pack_writes_every_manifest_first(packed: Path) -> None:
    names = [m.name.removeprefix(f"{ROOT}/") for m, _ in _members(packed)]
    manifests = [n for n in names if n.endswith("/manifest.json")]
    assert names[: len(manifests)] == [
        "dataset/manifest.json",
        "partitions/manifest.json",
        *[f"round-{t:04d}/manifest.json" for t in range(len(manifests) - 2)],
    ]
    rest = names[len(manifests) :]
    assert rest == sorted(rest) and names == manifests_first(names)


def _bomb(packed: Path, path: Path, chunk_rel: str, size: int) -> None:
    """A gzip'd archive: the real manifests, then a member at `chunk_rel` whose header claims
    `size` bytes of zeros. The zeros are one compressed MiB repeated (each piece is a
    self-contained deflate segment after a full flush), so building it takes milliseconds."""
    manifests = [(m, d) for m, d in _members(packed) if m.name.endswith("/manifest.json")]
    bomb = tarfile.TarInfo(f"{ROOT}/{chunk_rel}")
    bomb.size = size
    prefix = _tar(manifests, end=False) + bomb.tobuf(tarfile.GNU_FORMAT)
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH)
    piece = zlib.compressobj(9, zlib.DEFLATED, -15)
    mib = piece.compress(bytes(1 << 20)) + piece.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    end = tail.compress(bytes(1024)) + tail.flush(zlib.Z_FINISH)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    with open(path, "wb") as f:  # crc/size trailer left 0: a correct unpack never gets there
        f.write(header + body)
        for _ in range(size >> 20):
            f.write(mib)
        f.write(end + bytes(8))


def test_gzip_bomb_at_a_dataset_chunk_is_refused_at_once(packed: Path, tmp_path: Path) -> None:
    dataset_rel = f"{ROOT}/dataset/manifest.json"
    manifest = json.loads(next(d for m, d in _members(packed) if m.name == dataset_rel))
    chunk = next(k for k in sorted(manifest["files"]) if k.startswith("train_images/c/"))
    bomb = tmp_path / "bomb.tar.gz"
    _bomb(packed, bomb, f"dataset/{chunk}", 2 * GIB)
    assert bomb.stat().st_size < 10 << 20
    start = time.perf_counter()
    with pytest.raises(ArchiveError) as info:
        unpack_run(bomb, tmp_path / "out")
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert "\n" not in message and f"dataset/{chunk} declares {2 * GIB} bytes" in message
    assert f"records {manifest['sizes'][chunk]}" in message and "nothing was unpacked" in message
    assert _leftovers(tmp_path) == ["bomb.tar.gz"]


def _rewritten(packed: Path, path: Path, change: Callable[[str, bytes], bytes]) -> None:
    members = [(m, change(m.name.removeprefix(f"{ROOT}/"), d)) for m, d in _members(packed)]
    path.write_bytes(_tar(members))


def _spy_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    written: list[str] = []
    real = archive_module._write_member

    def spy(tmp: Path, rel: str, *args: Any) -> Any:
        written.append(rel)
        return real(tmp, rel, *args)

    monkeypatch.setattr(archive_module, "_write_member", spy)
    return written


def test_member_size_other_than_recorded_is_refused_before_writing(
    packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = "round-0002/global.safetensors"
    bad = tmp_path / "bad.tar"
    _rewritten(packed, bad, lambda rel, d: d + b"\0" if rel == target else d)
    written = _spy_writes(monkeypatch)
    with pytest.raises(ArchiveError, match=f"{target} declares .* in its tar header, but"):
        unpack_run(bad, tmp_path / "out")
    assert target not in written
    assert _leftovers(tmp_path) == ["bad.tar"]


def test_recorded_total_is_checked_against_free_space_first(
    packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = sum(m.size for m, _ in _members(packed))
    usage = archive_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        archive_module.shutil, "disk_usage", lambda p: usage._replace(free=total // 2)
    )
    written = _spy_writes(monkeypatch)
    with pytest.raises(ArchiveError, match="the files the manifests list need more than"):
        unpack_run(packed, tmp_path / "out")
    assert all(rel.endswith("/manifest.json") for rel in written)  # no data byte written
    assert _leftovers(tmp_path) == []


def test_manifest_after_the_data_is_refused(packed: Path, tmp_path: Path) -> None:
    members = _members(packed)
    late = next(i for i, (m, _) in enumerate(members) if m.name.endswith("0003/manifest.json"))
    members.append(members.pop(late))
    bad = tmp_path / "late.tar"
    bad.write_bytes(_tar(members))
    with pytest.raises(ArchiveError, match="is not listed in any manifest"):
        unpack_run(bad, tmp_path / "out")
    assert _leftovers(tmp_path) == ["late.tar"]


def test_archive_of_an_earlier_version_still_unpacks(
    packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Manifests sorted among the files (pack before this change): today's checks, members
    stopped at their header size, the running total checked against the free space."""
    members = sorted(_members(packed), key=lambda md: md[0].name)
    legacy = tmp_path / "legacy.tar"
    legacy.write_bytes(_tar(members))
    contents = unpack_run(legacy, tmp_path / "out")
    assert contents == check_run(tmp_path / "out")
    usage = archive_module.shutil.disk_usage(tmp_path)
    first_size = members[0][0].size
    monkeypatch.setattr(
        archive_module.shutil, "disk_usage", lambda p: usage._replace(free=first_size - 1)
    )
    written = _spy_writes(monkeypatch)
    with pytest.raises(ArchiveError, match="need more than"):
        unpack_run(legacy, tmp_path / "again")
    assert written == [] and _leftovers(tmp_path, "legacy.tar", "out") == []


def test_round_trip_files_are_read_only_and_match(packed: Path, tmp_path: Path) -> None:
    contents = unpack_run(packed, tmp_path / "out")
    assert contents == check_run(tmp_path / "out")
    modes = {(tmp_path / "out" / rel).stat().st_mode & 0o777 for rel in contents.files}
    assert modes == {0o444}


_SLOW_CHILD = """
import os, sys, time
from pathlib import Path
real = os.fsync
def slow(fd):  # a slow disk: the unpack is still running when it is killed
    time.sleep(0.05)
    real(fd)
os.fsync = slow
from blazefl.pipeline.archive import unpack_run
unpack_run(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def _start_slow_unpack(archive: Path, dest: Path) -> tuple[subprocess.Popen[bytes], Path]:
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CHILD, str(archive), str(dest)])
    deadline = time.monotonic() + 60
    while True:  # wait until a few members are written
        tmps = [p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.unpack-")]
        if tmps and len(list(tmps[0].rglob("*"))) > 3:
            return proc, tmps[0]
        assert proc.poll() is None, "the unpack ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_sigterm_leaves_nothing(packed: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    proc, tmp = _start_slow_unpack(packed, dest)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert _leftovers(tmp_path) == []


def test_sigkilled_unpack_is_cleaned_by_the_next_one(packed: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    proc, tmp = _start_slow_unpack(packed, dest)
    proc.kill()
    proc.wait(timeout=60)
    assert tmp.exists() and f".unpack-{proc.pid}-" in tmp.name  # SIGKILL cannot be caught
    live = tmp_path / f"{unpack_prefix(tmp_path / 'other')}abcdefgh"  # this live process's
    live.mkdir()
    unrelated = tmp_path / ".notes.unpack-zzz"
    unrelated.mkdir()
    assert unpack_run(packed, dest).last_round >= 1
    assert _leftovers(tmp_path) == sorted([".notes.unpack-zzz", live.name, "out"])
    assert os.path.isdir(dest / "round-0000")
