"""Issue 8 section 2: bad input ends with exit 2 and one line, before any large allocation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from blazefl.stages.artifacts import canonical_json, sha256_file
from tests.pipeline.client_data import edit_clients, sampled
from tests.pipeline.integrity_helpers import cli, one_line_error, reseal_round, reseal_store, sets


@pytest.mark.parametrize(
    "override",
    [
        "data.size=1000000000",
        "data.test_size=1000000000",
        "runtime.threads_per_client=100000",
        "seed=18446744073709551616",
    ],
)
def test_out_of_range_settings_are_one_line(override: str, tmp_path: Path) -> None:
    one_line_error(cli("run", "--out", str(tmp_path / "run"), *sets(override)))
    assert not (tmp_path / "run").exists()


def test_billion_laughs_and_deep_nesting_are_one_line(tmp_path: Path) -> None:
    laughs = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    for i in range(1, 10):
        laughs += f"{chr(97 + i)}: &{chr(97 + i)} [*{chr(96 + i)},*{chr(96 + i)},*{chr(96 + i)}]\n"
    bombs = {
        "laughs.yaml": laughs,
        "lr.yaml": "train:\n  lr: &x [1, 2]\n  momentum: *x\n",
        "deep.yaml": "[" * 50_000 + "]" * 50_000,
    }
    for name, text in bombs.items():
        (tmp_path / name).write_text(text)
        one_line_error(cli("run", str(tmp_path / name), "--out", str(tmp_path / "run")))


def test_directory_as_config_file_at_out_and_zero_workers_are_one_line(tmp_path: Path) -> None:
    one_line_error(cli("run", "--config", str(tmp_path), "--out", str(tmp_path / "r")))
    (tmp_path / "file").write_text("x")
    one_line_error(cli("run", "--out", str(tmp_path / "file"), *sets()))
    one_line_error(cli("run", "--workers", "0", "--out", str(tmp_path / "r"), *sets()))


def test_out_with_unrelated_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    line = one_line_error(cli("run", "--out", str(tmp_path), *sets()))
    assert "not a blazefl run directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_verify_huge_round_range_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli("run", "--out", str(out), "-q", *sets("fl.rounds=1")).exit_code == 0
    assert "not complete" in one_line_error(cli("verify", str(out), "--rounds", "0-999999999"))


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    for stage in ("prepare", "partition"):
        assert cli("stage", stage, "--out", str(out), *sets()).exit_code == 0
    return out


def _tamper_partition(src: Path, tmp_path: Path, name: str, fn) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    shutil.copytree(src, out)
    group = zarr.open_group(str(out / "partitions"), mode="r+")
    group[name][...] = fn(np.asarray(group[name][...]))
    reseal_store(out / "partitions")
    return out


def _negative(a: np.ndarray) -> np.ndarray:
    a[0] = -5
    return a


def _decreasing(a: np.ndarray) -> np.ndarray:
    a[2], a[3] = a[3], a[2]
    return a


@pytest.mark.parametrize(
    ("name", "fn", "says"),
    [("indices", _negative, "outside"), ("offsets", _decreasing, "decrease")],
)
def test_tampered_partition_arrays_are_refused(partitioned, tmp_path, name, fn, says) -> None:  # type: ignore[no-untyped-def]
    out = _tamper_partition(partitioned, tmp_path, name, fn)
    assert says in one_line_error(cli("stage", "init", "--out", str(out), *sets()))


def test_zarr_json_declaring_a_huge_shape_is_refused(partitioned: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(partitioned, out)
    meta_path = out / "dataset" / "train_images" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"] = [10**9, *meta["shape"][1:]]
    meta_path.write_text(json.dumps(meta))
    reseal_store(out / "dataset")
    one_line_error(cli("stage", "partition", "--out", str(out), *sets()))
    meta["shape"] = [5_000_000, *meta["shape"][1:]]  # under the element bound, not on disk
    meta_path.write_text(json.dumps(meta))
    reseal_store(out / "dataset")
    parts = out / "partitions" / "manifest.json"  # the adversary re-seals the chain too
    m = json.loads(parts.read_text())
    m["inputs"]["dataset/manifest.json"] = sha256_file(out / "dataset" / "manifest.json")
    parts.write_bytes(canonical_json(m))
    assert "tampered" in one_line_error(cli("stage", "init", "--out", str(out), *sets()))


DSFL = ("fl.algorithm=dsfl", "dsfl.open_size=100", "dsfl.public_size_per_round=50")


@pytest.fixture(scope="module")
def dsfl_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dsfl") / "run"
    assert cli("run", "--out", str(out), "-q", *sets(*DSFL)).exit_code == 0
    return out


def test_dsfl_client_state_of_the_wrong_shape_is_refused(dsfl_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(dsfl_run, out)
    last = out / "round-0002"
    first = f"{sampled(last)[0]:05d}/state/"  # one client's state shorter than the others'
    edit_clients(
        last, lambda ts: {k: v[:-3].clone() if k.startswith(first) else v for k, v in ts.items()}
    )
    reseal_round(last)
    line = one_line_error(cli("run", "--out", str(out), "-q", *sets(*DSFL, "fl.rounds=3")))
    assert "shape" in line


def test_dsfl_state_of_a_client_outside_the_run_is_refused(dsfl_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(dsfl_run, out)
    last = out / "round-0002"
    some = f"{sampled(last)[0]:05d}/"  # a copy of a client's data, as client 9999's
    edit_clients(
        last,
        lambda ts: {
            **ts,
            **{f"09999/{k[6:]}": v.clone() for k, v in ts.items() if k.startswith(some)},
        },
    )
    reseal_round(last)
    line = one_line_error(cli("run", "--out", str(out), "-q", *sets(*DSFL, "fl.rounds=3")))
    assert "client 9999 is not a client of this run" in line
