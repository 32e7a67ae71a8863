"""Fuzz (hypothesis, fixed budget, derandomized): params files and every artifact file type
end in success or one ValueError line, never a traceback of another type, a hang or a large
allocation. Runs in a few seconds: artifacts are parsed, not trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blazefl.stages.artifacts import RunDir
from blazefl.stages.config import load_config
from blazefl.stages.manifest_schema import validate_round_manifest
from blazefl.stages.tensor_checks import check_zarr_array_meta
from tests.pipeline.integrity_helpers import cli, sets

FUZZ = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def _one_line(exc: BaseException) -> None:
    assert isinstance(exc, ValueError), repr(exc)
    assert "\n" not in str(exc)


@FUZZ
@given(st.text(max_size=300))
def test_params_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("p") / "params.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except Exception as exc:  # noqa: BLE001 - the assertion names the type
        _one_line(exc)


@FUZZ
@given(st.dictionaries(st.sampled_from(["seed", "data", "train", "fl", "x"]), json_values))
def test_params_trees(tmp_path_factory: pytest.TempPathFactory, tree: dict) -> None:
    import yaml

    path = tmp_path_factory.mktemp("p") / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    try:
        load_config(path)
    except Exception as exc:  # noqa: BLE001
        _one_line(exc)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "run"
    assert cli("run", "--out", str(out), "-q", *sets("fl.rounds=1")).exit_code == 0
    return out


@FUZZ
@given(
    st.sampled_from(["clients", "outputs", "inputs", "round", "config", "code", "kind"]),
    json_values,
)
def test_round_manifest_fields(tiny: Path, field: str, value: object) -> None:
    m = RunDir(tiny).manifest(1)
    try:
        validate_round_manifest({**m, field: value}, "m", 6)
    except Exception as exc:  # noqa: BLE001
        _one_line(exc)


@FUZZ
@given(st.binary(max_size=400))
def test_safetensors_bytes(
    tmp_path_factory: pytest.TempPathFactory, tiny: Path, blob: bytes
) -> None:
    from blazefl.stages.session import Session

    try:
        Session._tensors("round-0001/global.safetensors", blob)
    except Exception as exc:  # noqa: BLE001
        _one_line(exc)


@FUZZ
@given(json_values, st.lists(st.integers(min_value=-5, max_value=10**12), max_size=5))
def test_zarr_json(
    tmp_path_factory: pytest.TempPathFactory, tiny: Path, extra: object, shape: list[int]
) -> None:
    folder = tmp_path_factory.mktemp("z")
    meta = json.loads((tiny / "partitions" / "indices" / "zarr.json").read_text())
    meta["shape"] = shape
    meta["attributes"] = extra
    (folder / "zarr.json").write_text(json.dumps(meta))
    try:
        check_zarr_array_meta(folder / "zarr.json", 10**6, dtype="int64", ndim=1)
    except Exception as exc:  # noqa: BLE001
        _one_line(exc)


@settings(
    max_examples=8,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.binary(max_size=200))
def test_manifest_bytes_through_show(
    tmp_path_factory: pytest.TempPathFactory, tiny: Path, blob: bytes
) -> None:
    out = tmp_path_factory.mktemp("m") / "run"
    shutil.copytree(tiny, out)
    (out / "round-0001" / "manifest.json").write_bytes(blob)
    result = cli("show", str(out))
    assert result.exit_code == 2 and "Traceback" not in result.output
