"""A file damaged in place is damaged in every round that holds it as a hard link: `verify`
names all of those rounds on the problem line, and each of them fails."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from blazefl.pipeline.run_check import _round_span as spans


def _most_shared(run: Path, t: int) -> Path:
    """Round t's index chunk shared (hard-linked) with the most other rounds."""
    files = sorted((run / f"round-{t:04d}" / "index").iterdir())
    best = max(files, key=lambda p: p.stat().st_nlink)
    assert best.stat().st_nlink > 1, "no shared index chunk in this round"
    return best


def _sharing_rounds(run: Path, path: Path) -> list[int]:
    ino = path.stat().st_ino
    rel = path.relative_to(path.parents[1])
    return sorted(
        int(d.name.split("-")[1])
        for d in run.glob("round-*")
        if (d / rel).exists() and (d / rel).stat().st_ino == ino
    )


def _round_span(rounds: list[int]) -> str:
    lo, hi = rounds[0], rounds[-1]
    assert rounds == list(range(lo, hi + 1))  # an unchanged chunk is shared by a run of rounds
    return f"round-{lo:04d}" if lo == hi else f"round-{lo:04d}..{hi:04d}"


def test_damage_in_a_shared_file_names_every_round(
    chunked_run: Path, blazefl: Callable[..., Result], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    subprocess.run(["cp", "-a", str(chunked_run), str(run)], check=True)  # keeps the hard links
    last = max(int(d.name.split("-")[1]) for d in run.glob("round-*"))
    path = _most_shared(run, last)
    sharing = _sharing_rounds(run, path)
    others = [t for t in sharing if t != last]
    assert others, sharing
    with open(path, "r+b") as f:  # one in-place write (root ignores the read-only mode)
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 1]))

    result = blazefl("verify", str(run), "--mode", "sequential")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    name = f"index/{path.name}"
    for t in sharing:
        rest = [u for u in sharing if u != t]
        copies = "copy, which fails" if len(rest) == 1 else "copies, which fail"
        expected = (
            f"round {t}: {name} differs from its manifest (modified on disk); it is the same "
            f"file (hard link) as {spans(rest)}'s {copies} too"
        )
        assert expected in lines, result.output
        assert f"round {t}: OK" not in lines
    assert lines[-1].startswith("FAILED") and _fmt(sharing) in lines[-1]

    # verifying the last round alone still names the earlier rounds that share the damage
    result = blazefl("verify", str(run), "--rounds", str(last), "--mode", "sequential")
    assert result.exit_code == 1
    assert f"as {_round_span(others)}'s" in result.output


def test_damage_in_a_cp_al_copy_names_the_outside_links(
    tiny_run: Path, blazefl: Callable[..., Result], tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    subprocess.run(["cp", "-a", str(tiny_run), str(a)], check=True)
    subprocess.run(["cp", "-al", str(a), str(b)], check=True)  # b shares every inode with a
    target = a / "round-0000" / "global.safetensors"
    assert target.stat().st_nlink == 2
    data = bytearray(target.read_bytes())
    data[-5] ^= 1
    with open(target, "r+b") as f:
        f.write(bytes(data))
    result = blazefl("verify", str(a), "--rounds", "0", "--mode", "sequential")
    assert result.exit_code == 1
    assert (
        "round 0: global.safetensors differs from its manifest (modified on disk); it is "
        "hard-linked 1 more time(s) outside this run's rounds"
    ) in result.output.splitlines()


def _fmt(rounds: list[int]) -> str:
    lo, hi = rounds[0], rounds[-1]
    return str(lo) if lo == hi else f"{lo}-{hi}"


def test_round_spans_read_as_ranges() -> None:
    assert spans([1, 2, 3, 5]) == "round-0001..0003, round-0005"
    assert spans([4]) == "round-0004"
