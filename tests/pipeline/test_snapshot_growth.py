"""Rounds write what they changed: the sampled clients' data in one clients file and the
index chunks naming them, every other chunk a hard link to the previous round's; the bytes and
files a round adds do not grow with the number of clients, while every round directory still
loads, verifies and re-executes from its own manifest (and the chain it names)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from blazefl.stages.artifacts import sha256_file
from tests.pipeline.client_data import clients_in, index_of, latest_data
from tests.pipeline.integrity_helpers import one_line_error
from tests.pipeline.rechain import rechain

SETS = {
    "data.size": 800,
    "data.test_size": 100,
    "data.clients": 40,
    "data.partition": "iid",
    "fl.clients_per_round": 3,
    "fl.rounds": 3,
    "train.local_epochs": 1,
    "train.batch_size": 32,
}
DSFL = {"fl.algorithm": "dsfl", "dsfl.open_size": 200, "dsfl.public_size_per_round": 50}


def _args(sets: dict[str, object]) -> list[str]:
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


def _new_files(run: Path, t: int) -> dict[str, int]:
    """Round t's files whose inode round t-1 does not already hold: {name: size}."""
    before = {p.stat().st_ino for p in (run / f"round-{t - 1:04d}").rglob("*") if p.is_file()}
    here = run / f"round-{t:04d}"
    return {
        p.relative_to(here).as_posix(): p.stat().st_size
        for p in here.rglob("*")
        if p.is_file() and p.stat().st_ino not in before
    }


@pytest.fixture(scope="module", params=["fedavg", "dsfl"])
def grown(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    blazefl: Callable[..., Result],
) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param) / "run"
    sets = {**SETS, **(DSFL if request.param == "dsfl" else {})}
    result = blazefl("run", "--out", str(out), "--mode", "sequential", "-q", *_args(sets))
    assert result.exit_code == 0, result.output
    return request.param, out


def test_a_round_writes_one_clients_file_for_the_sampled_clients(grown: tuple[str, Path]) -> None:
    algorithm, run = grown
    assert not (run / "round-0000" / "clients.safetensors").exists()  # round 0: none stored
    assert not (run / "round-0000" / "rng").exists()
    for t in (1, 2, 3):
        round_dir = run / f"round-{t:04d}"
        manifest = json.loads((round_dir / "manifest.json").read_text())
        held = clients_in(round_dir)
        assert sorted(held) == manifest["clients"]
        for tensors in held.values():
            kinds = {name.split("/")[0] for name in tensors}
            assert kinds == ({"rng", "state"} if algorithm == "dsfl" else {"rng"})
        assert (index_of(round_dir)[manifest["clients"]] == t).all()
        new = _new_files(run, t)
        assert "clients.safetensors" in new and not any(n.startswith("rng/") for n in new)


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory, blazefl: Callable[..., Result]) -> Path:
    """20,000 clients, 5 sampled per round: 20 index chunks."""
    out = tmp_path_factory.mktemp("wide") / "run"
    sets = {**SETS, "data.size": 20_000, "data.clients": 20_000, "fl.clients_per_round": 5}
    sets.update({"fl.rounds": 2, "model.name": "cnn_small"})
    result = blazefl("run", "--out", str(out), "-q", *_args(sets))
    assert result.exit_code == 0, result.output
    return out


def test_what_a_round_writes_does_not_grow_with_the_clients(
    grown: tuple[str, Path], wide: Path
) -> None:
    algorithm, small = grown
    if algorithm != "fedavg":
        pytest.skip("one algorithm is enough to compare 40 with 20,000 clients")
    for run in (small, wide):
        new = _new_files(run, 2)
        manifest = json.loads((run / "round-0002" / "manifest.json").read_text())
        changed = {n for n in new if n.startswith("index/")}
        assert len(changed) <= len(manifest["clients"])  # only chunks naming a sampled client
        fixed = {"global.safetensors", "rng.safetensors", "clients.safetensors"}
        assert set(new) - changed == fixed | {"trace.safetensors", "manifest.json"}
    # 20,000 clients: 20 chunks listed, the manifest stays small, unchanged chunks are links
    manifest = json.loads((wide / "round-0002" / "manifest.json").read_text())
    assert len([n for n in manifest["outputs"] if n.startswith("index/")]) == 20
    assert (wide / "round-0002" / "manifest.json").stat().st_size < 12_000
    per_client = _new_files(wide, 2)["clients.safetensors"]
    assert per_client < 5 * 9_000  # 5 clients' RNG streams (7.9 kB each), not 20,000


def test_bytes_per_round_are_the_sampled_clients_and_the_chunks_naming_them(
    grown: tuple[str, Path],
) -> None:
    _, run = grown
    round_dir = run / "round-0002"
    manifest = json.loads((round_dir / "manifest.json").read_text())
    expected = sum((round_dir / n).stat().st_size for n in manifest["outputs"])
    expected += (round_dir / "manifest.json").stat().st_size
    assert sum(_new_files(run, 2).values()) == expected  # 40 clients: one chunk, changed


def test_a_grown_run_verifies_and_resumes_to_the_same_bytes(
    grown: tuple[str, Path],
    tmp_path: Path,
    blazefl: Callable[..., Result],
    snapshot: Callable[[Path], dict[str, str]],
) -> None:
    algorithm, run = grown
    assert blazefl("verify", str(run), "--mode", "sequential").exit_code == 0
    sets = {**SETS, **(DSFL if algorithm == "dsfl" else {})}
    part = tmp_path / "run"
    first = blazefl("run", "--out", str(part), "-q", *_args({**sets, "fl.rounds": 1}))
    assert first.exit_code == 0, first.output
    rest = blazefl("run", "--out", str(part), "-q", "--mode", "threads", *_args(sets))
    assert rest.exit_code == 0, rest.output

    def files(root: Path) -> dict[str, str]:
        return {k: v for k, v in snapshot(root).items() if not k.startswith("timings")}

    assert files(part) == files(run)


# -- sparse sampling: each client's data found in the right earlier round -----------------------
SPARSE = {**SETS, "data.clients": 30, "fl.clients_per_round": 2, "fl.rounds": 8}


@pytest.fixture(scope="module")
def sparse(tmp_path_factory: pytest.TempPathFactory, blazefl: Callable[..., Result]) -> Path:
    out = tmp_path_factory.mktemp("sparse") / "run"
    result = blazefl("run", "--out", str(out), "-q", *_args(SPARSE))
    assert result.exit_code == 0, result.output
    return out


def test_sparse_sampling_finds_each_client_in_its_last_round(sparse: Path) -> None:
    last_seen: dict[int, int] = {}
    for t in range(1, SPARSE["fl.rounds"] + 1):  # type: ignore[operator]
        manifest = json.loads((sparse / f"round-{t:04d}" / "manifest.json").read_text())
        last_seen.update(dict.fromkeys(manifest["clients"], t))
        latest = latest_data(sparse, t)
        assert {c: r for c, (r, _) in latest.items()} == last_seen
    assert len(set(last_seen.values())) > 2  # the last index names several earlier rounds


def test_sparse_run_resumes_and_reexecutes_stage_by_stage(
    sparse: Path,
    tmp_path: Path,
    blazefl: Callable[..., Result],
    snapshot: Callable[[Path], dict[str, str]],
) -> None:
    result = blazefl("verify", str(sparse), "--mode", "threads", "--workers", "2")
    assert result.exit_code == 0, result.output
    copy = tmp_path / "run"
    shutil.copytree(sparse, copy)
    for t in range(5, SPARSE["fl.rounds"] + 1):  # type: ignore[operator]
        shutil.rmtree(copy / f"round-{t:04d}")
    for t in range(5, SPARSE["fl.rounds"] + 1):  # type: ignore[operator]
        result = blazefl("stage", "round", "--round", str(t), "--out", str(copy), *_args(SPARSE))
        assert result.exit_code == 0, result.output
    for t in range(SPARSE["fl.rounds"] + 1):  # type: ignore[operator]
        name = f"round-{t:04d}"
        assert snapshot(copy / name) == snapshot(sparse / name), name


def _seal_chunk(run: Path, t: int, edit: Callable[[list[int]], None]) -> None:
    """Edit round t's index chunk 0 and re-seal its manifest and the chain after it, as an
    adversary would: only the index contradicts the clients files."""
    import torch
    from safetensors.torch import load_file, save_file

    path = run / f"round-{t:04d}" / "index" / "chunk-0000.safetensors"
    values = load_file(path)["round"].tolist()
    edit(values)
    path.unlink()  # a hard link shared with other rounds: replace, never write in place
    save_file({"round": torch.tensor(values, dtype=torch.int32)}, path)

    def reseal(rel: str, m: dict[str, object]) -> None:
        if rel == f"round-{t:04d}/manifest.json":
            outputs, sizes = m["outputs"], m["sizes"]
            assert isinstance(outputs, dict) and isinstance(sizes, dict)
            outputs["index/chunk-0000.safetensors"] = sha256_file(path)
            sizes["index/chunk-0000.safetensors"] = path.stat().st_size

    rechain(run, reseal)


def test_an_index_naming_a_round_without_the_client_is_tampered(
    sparse: Path, tmp_path: Path, blazefl: Callable[..., Result]
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(sparse, copy)
    last = SPARSE["fl.rounds"]
    index = index_of(copy / f"round-{last:04d}").tolist()
    cid = next(c for c, r in enumerate(index) if 1 < r < last)  # stored in an earlier round
    other = next(
        r for r in range(1, last) if cid not in clients_in(copy / f"round-{r:04d}")
    )  # a round that does not hold it

    def edit(values: list[int]) -> None:
        values[cid] = other

    _seal_chunk(copy, last, edit)
    sets = _args({**SPARSE, "fl.rounds": last + 1})  # type: ignore[operator]
    line = one_line_error(blazefl("run", "--out", str(copy), "-q", *sets))
    assert f"index names round {other} for client {cid}" in line and "tampered" in line


def test_an_index_naming_a_later_round_is_tampered(
    sparse: Path, tmp_path: Path, blazefl: Callable[..., Result]
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(sparse, copy)

    def edit(values: list[int]) -> None:
        values[0] = 7

    _seal_chunk(copy, 3, edit)
    shutil.rmtree(copy / "round-0004")
    line = one_line_error(
        blazefl("stage", "round", "--round", "4", "--out", str(copy), *_args(SPARSE))
    )
    assert "client 0 is said to be in round 7, not one of rounds 0-3" in line


def test_a_flipped_byte_in_an_earlier_clients_file_is_named(
    sparse: Path, tmp_path: Path, blazefl: Callable[..., Result]
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(sparse, copy)
    path = copy / "round-0002" / "clients.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    last = SPARSE["fl.rounds"]
    uses_round_2 = (index_of(copy / f"round-{last:04d}") == 2).any()
    sets = _args({**SPARSE, "fl.rounds": last + 1})  # type: ignore[operator]
    if uses_round_2:  # resuming reads round 2's clients file through the chain
        line = one_line_error(blazefl("run", "--out", str(copy), "-q", *sets))
        assert line.startswith(
            "error: round-0002/clients.safetensors does not match the hash in its manifest"
        )
    result = blazefl("verify", str(copy), "--rounds", "2-3", "--mode", "sequential")
    assert result.exit_code == 1
    assert "round 2: clients.safetensors differs from its manifest" in result.output
    assert "round 3: cannot re-execute: round-0002/clients.safetensors does not match" in (
        result.output
    )
