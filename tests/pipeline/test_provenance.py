"""Issue 8 section 1: stores and rounds match the config a run claims, or the command refuses.

Each test is one case of the issue, on the small config, each in a fresh `--out`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from blazefl.stages.artifacts import RunDir
from tests.pipeline.integrity_helpers import cli, one_line_error, reseal_store, sets


def _manifest(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-round run of the small config (copy before changing it)."""
    out = tmp_path_factory.mktemp("prov") / "run"
    result = cli("run", "--out", str(out), "-q", *sets())
    assert result.exit_code == 0, result.output
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def _verify_fails(out: Path) -> str:
    result = cli("verify", str(out))
    assert result.exit_code == 1, result.output
    assert "all OK" not in result.output
    return result.output


def test_run_over_a_smaller_prepared_store_rebuilds_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli("stage", "prepare", "--out", str(out), *sets()).exit_code == 0
    result = cli("run", "--out", str(out), "-q", *sets("data.size=800"))
    assert result.exit_code == 0, result.output
    assert _manifest(out / "dataset/manifest.json")["config"]["data.size"] == 800
    assert zarr.open_group(str(out / "dataset"), mode="r")["train_labels"].shape == (800,)
    assert cli("verify", str(out)).exit_code == 0


def test_run_over_stores_of_another_seed_rebuilds_them(tmp_path: Path) -> None:
    out = tmp_path / "run"
    for stage in ("prepare", "partition"):
        assert cli("stage", stage, "--out", str(out), *sets("seed=8")).exit_code == 0
    result = cli("run", "--out", str(out), "-q", *sets())
    assert result.exit_code == 0, result.output
    assert _manifest(out / "dataset/manifest.json")["config"]["seed"] == 7
    assert _manifest(out / "partitions/manifest.json")["config"]["seed"] == 7
    assert cli("verify", str(out)).exit_code == 0


def test_run_over_a_partition_of_another_alpha_rebuilds_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    for stage in ("prepare", "partition"):
        assert cli("stage", stage, "--out", str(out), *sets("data.alpha=1.0")).exit_code == 0
    result = cli("run", "--out", str(out), "-q", *sets("data.alpha=0.1"))
    assert result.exit_code == 0, result.output
    assert _manifest(out / "partitions/manifest.json")["config"]["data.alpha"] == 0.1
    assert cli("verify", str(out)).exit_code == 0


def test_repartition_over_finished_run_is_refused(finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path)
    line = one_line_error(cli("stage", "partition", "--out", str(out), *sets("data.alpha=0.1")))
    assert "rm -r" in line and "stale" in line


def test_repartition_under_dvc_then_resume_and_verify_refuse(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _copy(finished, tmp_path)
    monkeypatch.setenv("DVC_STAGE", "partition")  # DVC replaces later stages itself
    assert cli("stage", "partition", "--out", str(out), *sets("data.alpha=0.1")).exit_code == 0
    monkeypatch.delenv("DVC_STAGE")
    line = one_line_error(cli("run", "--out", str(out), "-q", *sets("fl.rounds=3")))
    assert "data.alpha" in line and "blazefl stage partition" in line
    assert not (out / "round-0003").exists()
    assert "partitions" in _verify_fails(out)
    # the round stage, as DVC runs it, refuses a parent made from other stores too
    line = one_line_error(cli("stage", "round", "--round", "3", "--out", str(out), *sets()))
    assert "partitions" in line


def test_reprepare_under_dvc_then_resume_and_verify_refuse(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _copy(finished, tmp_path)
    assert "rm -r" in one_line_error(cli("stage", "prepare", "--out", str(out), *sets("seed=8")))
    monkeypatch.setenv("DVC_STAGE", "prepare")
    assert cli("stage", "prepare", "--out", str(out), *sets("seed=8")).exit_code == 0
    monkeypatch.delenv("DVC_STAGE")
    line = one_line_error(cli("run", "--out", str(out), "-q", *sets("fl.rounds=3")))
    assert "seed" in line and "blazefl stage prepare" in line
    assert "dataset" in _verify_fails(out)


def test_partition_of_another_algorithm_is_rebuilt_for_dsfl(tmp_path: Path) -> None:
    out = tmp_path / "run"
    for stage in ("prepare", "partition"):
        assert cli("stage", stage, "--out", str(out), *sets()).exit_code == 0
    dsfl = sets(
        "fl.algorithm=dsfl", "dsfl.open_size=100", "dsfl.public_size_per_round=50", "fl.rounds=1"
    )
    result = cli("run", "--out", str(out), "-q", *dsfl)
    assert result.exit_code == 0, result.output
    recorded = _manifest(out / "partitions/manifest.json")["config"]
    assert recorded["fl.algorithm"] == "dsfl" and recorded["dsfl.open_size"] == 100


def test_swapped_client_ranges_with_resealed_manifest_are_refused(
    finished: Path, tmp_path: Path
) -> None:
    out = _copy(finished, tmp_path)
    group = zarr.open_group(str(out / "partitions"), mode="r+")
    idx, off = np.asarray(group["indices"][...]), np.asarray(group["offsets"][...])
    a, b = idx[off[0] : off[1]].copy(), idx[off[1] : off[2]].copy()
    swapped = np.concatenate([b, a, idx[off[2] :]])
    group["indices"][...] = swapped
    sizes = np.diff(off)
    sizes[[0, 1]] = sizes[[1, 0]]
    group["offsets"][...] = np.concatenate([[0], np.cumsum(sizes)])
    reseal_store(out / "partitions")
    line = one_line_error(cli("run", "--out", str(out), "-q", *sets("fl.rounds=3")))
    assert "partitions" in line
    assert "partitions" in _verify_fails(out)


def test_verify_rechecks_partition_against_its_config(finished: Path, tmp_path: Path) -> None:
    """Even with the round manifests re-sealed too, a partition that is not the one its
    config makes fails verify (it is re-computed from the stored labels)."""
    out = _copy(finished, tmp_path)
    group = zarr.open_group(str(out / "partitions"), mode="r+")
    idx = np.asarray(group["indices"][...])
    group["indices"][...] = idx[::-1].copy()
    reseal_store(out / "partitions")
    assert "re-computed" in _verify_fails(out)


def test_run_digest_names_the_whole_chain(finished: Path) -> None:
    run = RunDir(finished)
    m0 = run.manifest(0)
    assert set(m0["inputs"]) == {"dataset/manifest.json", "partitions/manifest.json"}
    parts = run.store_manifest("partitions")
    assert parts["inputs"]["dataset/manifest.json"] == m0["inputs"]["dataset/manifest.json"]
    result = cli("show", str(finished))
    assert result.exit_code == 0
    digest = run.manifest_sha256(run.round_dir(2) / "manifest.json")
    assert f"digest: {digest}" in result.output
    assert run.manifest(2)["code"]["version"]
