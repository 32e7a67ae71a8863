"""Malformed manifests are refused with one line naming the field, before any use."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blazefl.stages.manifest_schema import (
    MANIFEST_FORMAT,
    NEWEST_FORMAT,
    ROUND_FIELDS,
    Field,
    ManifestError,
    NewerFormatError,
    config_digest,
    is_current_format,
    manifest_format,
    parse_manifest_json,
    round_format,
    validate_round_manifest,
    validate_store_manifest,
)

SHA = "ab" * 32
CONFIG = {"data.clients": 6, "data.root": None, "seed": 7, "train.augment": True, "train.lr": 0.05}


def _round(t: int = 2, clients: tuple[int, ...] = (1, 4)) -> dict[str, Any]:
    return {
        "clients": list(clients),
        "code": {"commit": None, "dirty": None, "version": "0.1.0"},
        "config": dict(CONFIG),
        "config_sha256": config_digest(CONFIG),
        "environment": {"machine": "x86_64", "threads_per_client": 1, "torch": "2.14.1"},
        "inputs": {"dataset/manifest.json": SHA, f"round-{t - 1:04d}/global.safetensors": SHA},
        "format": MANIFEST_FORMAT,
        "kind": "round" if t else "init",
        "outputs": {"global.safetensors": SHA, "rng.safetensors": SHA},
        "parent": SHA if t else None,
        "round": t,
        "sizes": {"global.safetensors": 10, "rng.safetensors": 20},
        "summary": {"train_loss": 0.5} if t else {},
        "uplinks": {f"{c:05d}": SHA for c in clients},
        "user_code": {"myfl/feddyn.py": SHA},
    }


def _store(kind: str) -> dict[str, Any]:
    m: dict[str, Any] = {
        "config": {"seed": 7},
        "files": {"zarr.json": SHA},
        "format": MANIFEST_FORMAT,
        "kind": kind,
        "sizes": {"zarr.json": 5},
        "user_code": {},
    }
    if kind == "partitions":
        m["inputs"] = {"dataset/manifest.json": SHA}
    else:
        m["data_files"] = {"cifar-10-batches-py/data_batch_1": SHA}
    return m


def _legacy(m: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The manifest as format 1 wrote it (no format, sizes, user_code, data_files)."""
    gone = {"format", "sizes", "user_code", "data_files", *drop}
    return {k: v for k, v in m.items() if k not in gone}


def test_format_1_manifests_stay_readable() -> None:
    for m in (_legacy(_round()), _legacy(_round(), drop=("code",)), _legacy(_round(0, ()))):
        assert validate_round_manifest(m, "m") is m
        assert manifest_format(m) == 1
    for kind in ("dataset", "partitions"):
        assert manifest_format(validate_store_manifest(_legacy(_store(kind)), "s")) == 1
    assert manifest_format(_round()) == MANIFEST_FORMAT


def test_format_1_still_checks_its_fields() -> None:
    _refused(validate_round_manifest, _legacy(_round(), drop=("outputs",)), "field outputs")
    m = _legacy(_round())
    m["sizes"] = {"global.safetensors": 1, "rng.safetensors": 2}  # a format-2 field alone
    _refused(validate_round_manifest, m, "unknown field 'sizes'")


def test_newer_format_is_named_not_called_corrupt() -> None:
    for m in ({**_round(), "format": NEWEST_FORMAT + 1}, {**_store("dataset"), "format": 9}):
        validate = validate_round_manifest if "round" in m else validate_store_manifest
        with pytest.raises(NewerFormatError) as info:
            validate(m, "round-0002/manifest.json")
        text = str(info.value)
        assert "newer blazefl" in text and "upgrade" in text and "corrupt" not in text


def test_client_environments_declare_format_4_and_only_they() -> None:
    """A round of clients run on mixed Ray nodes records them; it alone says format 4, so
    every other manifest keeps the bytes of format 3 and a reader older than the field says
    "newer" instead of "corrupt"."""
    where = {"00004": {"node": "Ray node 10.0.0.2 (id 0123abcd)", "cpu_isa": "AVX2"}}
    plain = _round()
    assert round_format(plain) == MANIFEST_FORMAT == 3
    mixed = {**_round(), "client_environments": where}
    assert round_format(mixed) == NEWEST_FORMAT == 4
    mixed["format"] = 4
    assert validate_round_manifest(mixed, "m") is mixed and is_current_format(mixed)
    assert is_current_format(plain) and not is_current_format(_legacy(_round()))
    _refused(
        validate_round_manifest,
        {**mixed, "format": 3},
        "field client_environments needs format 4, the manifest says 3",
    )
    other = {**mixed, "client_environments": {"00002": {"node": "n"}}}
    _refused(validate_round_manifest, other, "client_environments may name only clients")
    bad = {**mixed, "client_environments": {"00004": {"node": ["n"]}}}
    _refused(validate_round_manifest, bad, "field client_environments must be")


def test_sizes_must_list_exactly_the_outputs() -> None:
    _refused(validate_round_manifest, _with(sizes={"global.safetensors": 1}), "keys of sizes")
    _refused(
        validate_round_manifest,
        _with(sizes={"global.safetensors": -1, "rng.safetensors": 1}),
        "sizes",
    )
    m = _store("dataset")
    m["sizes"] = {}
    with pytest.raises(ManifestError, match="keys of sizes"):
        validate_store_manifest(m, "dataset/manifest.json")


def _refused(fn: Any, m: Any, *fragments: str, **kwargs: Any) -> None:
    with pytest.raises(ManifestError) as info:
        fn(m, "round-0002/manifest.json", **kwargs)
    message = str(info.value)
    assert message.startswith("round-0002/manifest.json: ") and "\n" not in message
    assert message.endswith("the manifest is corrupt or tampered; restore the run from its source")
    for fragment in fragments:
        assert fragment in message, message


def test_valid_manifests_pass() -> None:
    for m in (_round(0, ()), _round(1, (0,)), _round(2, (1, 4))):
        assert validate_round_manifest(m, "m", max_clients=6) is m
    for kind in ("dataset", "partitions"):
        validate_store_manifest(_store(kind), "store")


def _with(**changes: Any) -> dict[str, Any]:
    m = _round()
    for key, value in changes.items():
        if value is _DROP:
            del m[key]
        else:
            m[key] = value
    return m


_DROP = object()


@pytest.mark.parametrize(
    ("m", "fragment"),
    [
        (_with(outputs=["global.safetensors"]), "field outputs must be"),
        (_with(inputs=["dataset/manifest.json"]), "field inputs must be"),
        (_with(clients=5), "field clients must be a sorted list"),
        (_with(clients=[4, 1]), "field clients must be a sorted list"),
        (_with(clients=[1, 1]), "field clients must be a sorted list"),
        (_with(clients=[-1, 4]), "field clients"),
        (_with(clients=[1, True]), "field clients"),
        (_with(environment="x86"), "field environment must be"),
        (_with(environment={"x": [1]}), "field environment must be"),
        (_with(round=1e30), "field round must be an integer"),
        (_with(round="three"), "field round must be an integer"),
        (_with(round=True), "field round must be an integer"),
        (_with(round=2.0), "field round must be an integer"),
        (_with(round=-1), "field round must be an integer"),
        (_with(round=10**30), "field round must be an integer"),
        (_with(config=_DROP), "field config is missing"),
        (_with(config={"seed": {"nested": 1}}), "field config must be"),
        (_with(config={"seed": float("nan")}), "field config must be"),
        (_with(config={"seed": 8}), "config_sha256 does not match config"),
        (_with(config_sha256="XYZ"), "field config_sha256 must be a 64-hex"),
        (_with(config_sha256=SHA.upper()), "field config_sha256 must be a 64-hex"),
        (_with(parent=None), "round 0 must have kind 'init'"),
        (_with(parent=5), "field parent"),
        (_with(kind="init"), "round 0 must have kind 'init'"),
        (_with(kind="evil"), "field kind"),
        (_with(summary={"train_loss": "low"}), "field summary"),
        (_with(summary={"train_loss": float("inf")}), "field summary"),
        (_with(summary=[]), "field summary"),
        (_with(uplinks={"00001": SHA}), "keys of uplinks must be exactly the clients"),
        (_with(uplinks={"1": SHA, "4": SHA}), "field uplinks"),
        (_with(uplinks={"00001": SHA, "00004": "bad"}), "field uplinks"),
        (_with(outputs={"../../etc/passwd": SHA}), "field outputs"),
        (_with(inputs={"/dev/zero": SHA}), "field inputs"),
        (_with(outputs={"global.safetensors": SHA}), "outputs must include"),
        (_with(extra=1), "unknown field 'extra'"),
        ([1, 2], "must be a JSON object"),
        ("manifest", "must be a JSON object"),
        (None, "must be a JSON object"),
    ],
)
def test_malformed_round_manifests(m: Any, fragment: str) -> None:
    _refused(validate_round_manifest, m, fragment)


def test_round_zero_rules() -> None:
    m = _round(0, ())
    m["clients"], m["uplinks"] = [3], {"00003": SHA}
    _refused(validate_round_manifest, m, "round 0 must have no clients")


def test_clients_beyond_the_run_are_refused() -> None:
    m = _round(2, (1, 9999))
    assert validate_round_manifest(m, "m") is m  # no bound known: schema only
    _refused(validate_round_manifest, m, "clients must be below 6", max_clients=6)


def test_got_is_short_for_huge_values() -> None:
    with pytest.raises(ManifestError) as info:
        validate_round_manifest(_with(clients="x" * 100_000), "m")
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("kind", "change", "fragment"),
    [
        ("dataset", {"files": ["zarr.json"]}, "field files must be"),
        ("dataset", {"files": {}}, "field files must not be empty"),
        ("dataset", {"files": {"../x": SHA}}, "field files must be"),
        ("dataset", {"inputs": {}}, "unknown field 'inputs'"),
        ("partitions", {"inputs": None}, "field inputs must be"),
        ("partitions", {"config": "seed=7"}, "field config must be"),
        ("partitions", {"kind": "round"}, "field kind must be one of dataset, partitions"),
        ("partitions", {"kind": ["x"]}, "field kind must be one of"),
    ],
)
def test_malformed_store_manifests(kind: str, change: dict[str, Any], fragment: str) -> None:
    m = {**_store(kind), **change}
    _refused(validate_store_manifest, m, fragment)


def test_store_missing_field() -> None:
    m = _store("partitions")
    del m["inputs"]
    _refused(validate_store_manifest, m, "field inputs is missing")
    _refused(validate_store_manifest, 7, "field kind must be one of")


def test_new_field_is_one_table_line(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = copy.copy(ROUND_FIELDS)
    fields["code_version"] = Field("a version string", lambda v: isinstance(v, str))
    monkeypatch.setattr("blazefl.stages.manifest_schema.ROUND_FIELDS", fields)
    _refused(validate_round_manifest, _round(), "field code_version is missing")
    assert validate_round_manifest({**_round(), "code_version": "1.0"}, "m")


@pytest.mark.parametrize(
    "data",
    [b"[" * 100_000 + b"]" * 100_000, b"{", b"\xff\xfe", b'{"round": ' + b"9" * 5000 + b"}"],
    ids=["deep", "truncated", "binary", "huge-int"],
)
def test_parse_manifest_json_is_one_line(data: bytes) -> None:
    _refused(lambda d, where: parse_manifest_json(d, where), data, "not valid JSON")


def test_parse_manifest_json_bounds_size() -> None:
    with pytest.raises(ManifestError, match="larger than"):
        parse_manifest_json(b" " * (65 << 20), "m")
    assert parse_manifest_json(json.dumps(_round()).encode(), "m") == _round()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(ROUND_FIELDS) + ["files"]), _JSON, st.booleans())
def test_fuzz_any_field_value_is_valid_or_one_line(field: str, value: Any, store: bool) -> None:
    m: dict[str, Any] = _store("partitions") if store else _round()
    m[field] = value
    validate = validate_store_manifest if store else validate_round_manifest
    try:
        validate(m, "m")
    except ManifestError as exc:
        assert "\n" not in str(exc)
