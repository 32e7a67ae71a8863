"""Schema validation of manifests, before any field of them is used.

A manifest read from disk may be corrupt or tampered (`outputs` as a list, `clients: 5`,
`round: 1e30`, a missing `config`). Every reader validates it here first, so later code can
index it without guarding each access, and a bad manifest ends with one line instead of an
AttributeError or KeyError traceback, or worse, being accepted.

The schema is a table per manifest kind: field name -> `Field(must_be, ok)`, plus cross-field
rules. A new field (e.g. a code version) is one line in the table.
"""

from __future__ import annotations

import hashlib
import json
import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blazefl.stages.untrusted import is_safe_relpath

__all__ = [
    "ManifestError",
    "NewerFormatError",
    "Field",
    "CURRENT_FORMATS",
    "MANIFEST_FORMAT",
    "NEWEST_FORMAT",
    "is_current_format",
    "manifest_format",
    "round_format",
    "MAX_MANIFEST_BYTES",
    "MAX_ROUND",
    "MAX_CLIENTS",
    "parse_manifest_json",
    "validate_round_manifest",
    "validate_store_manifest",
]

#: Largest manifest file read (100,000 clients' hashes fit with room to spare).
MAX_MANIFEST_BYTES = 64 << 20
#: Highest round number a manifest may record.
MAX_ROUND = 1_000_000
#: Most clients a manifest may name (client ids are below this).
MAX_CLIENTS = 1_000_000
_MAX_ENTRIES = 4 * MAX_CLIENTS  # files / inputs / uplinks entries of one manifest
_MAX_STR = 4096
_FIX = "the manifest is corrupt or tampered; restore the run from its source"
_HEX = frozenset("0123456789abcdef")
_SHOW = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHOW.maxstring = _SHOW.maxother = 40
_SHOW.maxlist = _SHOW.maxdict = 4
_SHOW.maxlevel = 2


#: The manifest format this package writes, recorded as `format` in every round and store
#: manifest. Every earlier format stays readable (schema, hashes, chain); only the current one
#: is re-executed. History:
#:   1  blazefl 0.1.0: no `format` field (its earliest runs have no `code` field either).
#:   2  blazefl 0.2.0: `format`; `sizes` (bytes of every listed file); `user_code` (the user's
#:      modules a stage executes: path -> sha256); the dataset store's `data_files` (every
#:      file under data.root); `environment` names oneDNN/MKL versions, the CPU model and the
#:      bit-relevant environment variables.
#:   3  blazefl 0.3.0: rounds hold `trace.safetensors`, the step trace of every sampled client
#:      (`blazefl.core.step_trace`); rounds may record `client_settings`. Per-client data: one
#:      `clients.safetensors` per round with the sampled clients' RNG streams and state, and a
#:      chunked client index (`index/chunk-NNNN.safetensors`: the round holding each client's
#:      latest data) instead of `rng/client-NNNNN` and `state/client-NNNNN` files for every
#:      client; round 0 stores no client's streams (`blazefl.stages.snapshot`).
#:   4  blazefl 0.4.0: a round manifest may record `client_environments` (the clients that ran
#:      on Ray nodes whose environment differs from the driver's, allowed with
#:      --ray-allow-mixed-env). Only such a manifest declares format 4 (`round_format`):
#:      every other one keeps format 3 and its bytes, and a reader too old for the field says
#:      "written by a newer blazefl" instead of calling it corrupt.
MANIFEST_FORMAT = 3
#: The newest format this package reads (and writes, where a manifest needs its fields).
NEWEST_FORMAT = 4
#: The formats this package re-executes: those written with the current round files.
CURRENT_FORMATS = range(MANIFEST_FORMAT, NEWEST_FORMAT + 1)
#: Fields a format-1 manifest may lack (it is read, never re-executed).
_LEGACY_OPTIONAL = frozenset({"code"})


class ManifestError(ValueError):
    """A manifest that does not match its schema; the message names the field."""


class NewerFormatError(ManifestError):
    """A manifest written by a newer blazefl than this one (its format is unknown here)."""


@dataclass(frozen=True)
class Field:
    """One manifest field: what it must be (for the error message) and its check."""

    must_be: str
    ok: Callable[[Any], bool]


# -- value checks (each looks one level deep, so a deeply nested value cannot recurse) ------
def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_hex64(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and _HEX.issuperset(v)


def _is_scalar(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    return v is None or isinstance(v, bool | int) or (isinstance(v, str) and len(v) <= _MAX_STR)


def _is_name(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= _MAX_STR


def _mapping(key_ok: Callable[[Any], bool], value_ok: Callable[[Any], bool]) -> Any:
    def ok(v: Any) -> bool:
        return (
            isinstance(v, dict)
            and len(v) <= _MAX_ENTRIES
            and all(key_ok(k) and value_ok(x) for k, x in v.items())
        )

    return ok


def _client_ids(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) <= MAX_CLIENTS
        and all(_is_int(c, 0, MAX_CLIENTS - 1) for c in v)
        and all(a < b for a, b in zip(v, v[1:], strict=False))
    )


def _is_loss(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isfinite(v))


_HASHES = "an object of relative paths inside the run -> 64-hex sha256"
_CONFIG = Field("an object of config keys -> scalars", _mapping(_is_name, _is_scalar))
_FILES = Field(_HASHES, _mapping(is_safe_relpath, _is_hex64))
_SHA = Field("a 64-hex sha256", _is_hex64)


def _sizes(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and len(v) <= _MAX_ENTRIES
        and all(is_safe_relpath(k) and _is_int(x, 0, 1 << 50) for k, x in v.items())
    )


_SIZES = Field("an object of relative paths -> sizes in bytes", _sizes)
#: Formats that share the current fields (3 changed round files, not fields; 4 added one).
FIELD_FORMATS = range(2, NEWEST_FORMAT + 1)
_FORMAT = Field(
    f"an integer in [{FIELD_FORMATS[0]}, {NEWEST_FORMAT}]",
    lambda v: isinstance(v, int) and not isinstance(v, bool) and v in FIELD_FORMATS,
)
_CODE = Field("an object of relative source paths -> 64-hex sha256", _FILES.ok)


def _kind(name: str) -> Field:
    return Field(repr(name), lambda v: v == name)


#: Round manifests of format 1 (kind "init" for round 0, "round" after it).
LEGACY_ROUND_FIELDS: dict[str, Field] = {
    "clients": Field("a sorted list of distinct client ids", _client_ids),
    "config": _CONFIG,
    "config_sha256": _SHA,
    "code": Field(
        "an object of names -> scalars (version, commit, dirty)", _mapping(_is_name, _is_scalar)
    ),
    "environment": Field("an object of names -> scalars", _mapping(_is_name, _is_scalar)),
    "inputs": _FILES,
    "kind": Field("'init' or 'round'", lambda v: v in ("init", "round")),
    "outputs": _FILES,
    "parent": Field("a 64-hex sha256 or null", lambda v: v is None or _is_hex64(v)),
    "round": Field(f"an integer in [0, {MAX_ROUND}]", lambda v: _is_int(v, 0, MAX_ROUND)),
    "summary": Field("an object of names -> finite numbers or null", _mapping(_is_name, _is_loss)),
    "uplinks": Field(
        "an object of 5-digit client ids -> 64-hex sha256",
        _mapping(lambda k: isinstance(k, str) and len(k) >= 5 and k.isdecimal(), _is_hex64),
    ),
}


def _client_settings(v: Any) -> bool:
    """{5-digit client id: {identifier: JSON scalar}} (`BaseServerHandler.client_settings`)."""
    return isinstance(v, dict) and all(
        isinstance(k, str) and len(k) >= 5 and k.isdecimal() and _mapping(_is_name, _is_scalar)(x)
        for k, x in v.items()
    )


_PER_CLIENT = "an object of 5-digit client ids -> objects of names -> scalars"
#: Round manifests of the current format.
ROUND_FIELDS: dict[str, Field] = {
    **LEGACY_ROUND_FIELDS,
    "format": _FORMAT,
    "sizes": _SIZES,
    "user_code": _CODE,
    "client_settings": Field(_PER_CLIENT, _client_settings),
    "client_environments": Field(_PER_CLIENT, _client_settings),
}
#: Fields a round manifest of the current format may leave out (none given: none written, so
#: a run without per-client settings has the bytes it had before they existed).
_ROUND_OPTIONAL = frozenset({"client_settings", "client_environments"})
#: Round fields that only a manifest of format 4 or later may hold.
_FORMAT_4_FIELDS = frozenset({"client_environments"})


def round_format(m: dict[str, Any]) -> int:
    """The format a round manifest written now declares: the oldest that has its fields.

    Example:
        >>> round_format({"round": 1}), round_format({"client_environments": {}})
        (3, 4)
    """
    return NEWEST_FORMAT if _FORMAT_4_FIELDS & m.keys() else MANIFEST_FORMAT


def is_current_format(m: dict[str, Any]) -> bool:
    """Whether this package re-executes a (schema-checked) manifest: format 3 or 4."""
    return manifest_format(m) in CURRENT_FORMATS


#: Store manifests of format 1, by kind.
LEGACY_STORE_FIELDS: dict[str, dict[str, Field]] = {
    "dataset": {"config": _CONFIG, "files": _FILES, "kind": _kind("dataset")},
    "partitions": {
        "config": _CONFIG,
        "files": _FILES,
        "inputs": _FILES,
        "kind": _kind("partitions"),
    },
}
_NEW_STORE_FIELDS = {"format": _FORMAT, "sizes": _SIZES, "user_code": _CODE}
#: Store manifests of the current format, by kind.
STORE_FIELDS: dict[str, dict[str, Field]] = {
    "dataset": {
        **LEGACY_STORE_FIELDS["dataset"],
        **_NEW_STORE_FIELDS,
        "data_files": Field("an object of paths under data.root -> 64-hex sha256", _FILES.ok),
    },
    "partitions": {**LEGACY_STORE_FIELDS["partitions"], **_NEW_STORE_FIELDS},
}

Rule = Callable[[dict[str, Any], int | None], str | None]


def config_digest(config: dict[str, Any]) -> str:
    """SHA-256 of a recorded config as the writers compute `config_sha256` (canonical JSON)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# -- cross-field rules of round manifests: each returns what is wrong, or None --------------
def _rule_first_round(m: dict[str, Any], _: int | None) -> str | None:
    first = m["round"] == 0
    if (m["kind"] == "init") != first or (m["parent"] is None) != first:
        return (
            "round 0 must have kind 'init' and parent null, later rounds kind 'round' and a parent"
        )
    if first and (m["clients"] or m["uplinks"]):
        return "round 0 must have no clients and no uplinks"
    return None


def _rule_uplinks(m: dict[str, Any], _: int | None) -> str | None:
    if sorted(m["uplinks"]) != [f"{c:05d}" for c in m["clients"]]:
        return "the keys of uplinks must be exactly the clients (5-digit ids)"
    return None


def _rule_clients_below(m: dict[str, Any], max_clients: int | None) -> str | None:
    if max_clients is not None and m["clients"] and m["clients"][-1] >= max_clients:
        return f"clients must be below {max_clients} (data.clients), got {m['clients'][-1]}"
    return None


def _rule_snapshot(m: dict[str, Any], _: int | None) -> str | None:
    if not {"global.safetensors", "rng.safetensors"} <= m["outputs"].keys():
        return "outputs must include global.safetensors and rng.safetensors"
    return None


def _rule_config_sha(m: dict[str, Any], _: int | None) -> str | None:
    if config_digest(m["config"]) != m["config_sha256"]:
        return "config_sha256 does not match config"
    return None


def _rule_client_settings(m: dict[str, Any], _: int | None) -> str | None:
    for name in ("client_settings", "client_environments"):
        if not set(m.get(name, {})) <= set(m["uplinks"]):
            return f"{name} may name only clients of the round"
    return None


def _rule_format_fields(m: dict[str, Any], _: int | None) -> str | None:
    newer = sorted(_FORMAT_4_FIELDS & m.keys())
    if newer and manifest_format(m) < NEWEST_FORMAT:
        return f"field {newer[0]} needs format {NEWEST_FORMAT}, the manifest says {m['format']}"
    return None


def _rule_sizes(m: dict[str, Any], _: int | None) -> str | None:
    if "sizes" in m and m["sizes"].keys() != m["outputs"].keys():
        return "the keys of sizes must be exactly those of outputs"
    return None


ROUND_RULES: tuple[Rule, ...] = (
    _rule_first_round,
    _rule_uplinks,
    _rule_clients_below,
    _rule_snapshot,
    _rule_config_sha,
    _rule_sizes,
    _rule_client_settings,
    _rule_format_fields,
)


def manifest_format(m: dict[str, Any]) -> int:
    """The format of a schema-checked manifest (1 for manifests from before `format`)."""
    fmt = m.get("format", 1)
    return fmt if isinstance(fmt, int) else 1


def _format_of(m: Any, where: str) -> int:
    """The declared format: a newer one is refused as such, never called corrupt."""
    if not isinstance(m, dict):
        raise ManifestError(f"{where}: must be a JSON object, got {_show(m)}: {_FIX}")
    if "format" not in m:
        return 1
    fmt = m["format"]
    if isinstance(fmt, int) and not isinstance(fmt, bool) and NEWEST_FORMAT < fmt < 1000:
        raise NewerFormatError(
            f"{where} has manifest format {fmt}, written by a newer blazefl (this one reads "
            f"formats 1-{NEWEST_FORMAT}): upgrade blazefl (pip install -U blazefl) to read it"
        )
    return MANIFEST_FORMAT  # anything else is checked as the current format's field


def _check(
    m: Any, where: str, fields: dict[str, Field], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise ManifestError(f"{where}: must be a JSON object, got {_show(m)}: {_FIX}")
    missing = sorted(set(fields) - set(m) - optional)
    if missing:
        raise ManifestError(f"{where}: field {missing[0]} is missing: {_FIX}")
    unknown = sorted(str(k) for k in set(m) - set(fields))
    if unknown:
        raise ManifestError(f"{where}: unknown field {unknown[0][:40]!r}: {_FIX}")
    for name, field in fields.items():
        if name in m and not field.ok(m[name]):
            raise ManifestError(
                f"{where}: field {name} must be {field.must_be}, got {_show(m[name])}: {_FIX}"
            )
    return m


def _show(value: Any) -> str:
    return f"{' '.join(_SHOW.repr(value).split())} ({type(value).__name__})"


def validate_round_manifest(m: Any, where: str, max_clients: int | None = None) -> dict[str, Any]:
    """Check a round (or round-0 init) manifest against its schema.

    Args:
        m: the manifest as parsed from JSON.
        where: what to call it in errors, e.g. "round-0003/manifest.json".
        max_clients: data.clients of the run, if known: client ids must be below it.

    Returns:
        `m`, now known to match the schema.

    Raises:
        ManifestError: one line naming the first wrong field.

    Example:
        >>> validate_round_manifest(json.loads(path.read_bytes()), "round-0003/manifest.json")
    """
    if _format_of(m, where) == 1:
        _check(m, where, LEGACY_ROUND_FIELDS, _LEGACY_OPTIONAL)
    else:
        _check(m, where, ROUND_FIELDS, _ROUND_OPTIONAL)
    for rule in ROUND_RULES:
        problem = rule(m, max_clients)
        if problem:
            raise ManifestError(f"{where}: {problem}: {_FIX}")
    return m


def validate_store_manifest(m: Any, where: str) -> dict[str, Any]:
    """Check a store manifest (dataset or partitions) against the schema of its kind.

    Args:
        m: the manifest as parsed from JSON.
        where: what to call it in errors, e.g. "dataset/manifest.json".

    Returns:
        `m`, now known to match the schema.

    Raises:
        ManifestError: one line naming the first wrong field.

    Example:
        >>> validate_store_manifest(manifest, "partitions/manifest.json")["kind"]
        'partitions'
    """
    kind = m.get("kind") if isinstance(m, dict) else None
    if not isinstance(kind, str) or kind not in STORE_FIELDS:
        raise ManifestError(
            f"{where}: field kind must be one of {', '.join(STORE_FIELDS)}, got "
            f"{_show(kind)}: {_FIX}"
        )
    legacy = _format_of(m, where) == 1
    _check(m, where, (LEGACY_STORE_FIELDS if legacy else STORE_FIELDS)[kind])
    if not m["files"]:
        raise ManifestError(f"{where}: field files must not be empty: {_FIX}")
    if not legacy and m["sizes"].keys() != m["files"].keys():
        raise ManifestError(f"{where}: the keys of sizes must be exactly those of files: {_FIX}")
    return m


def parse_manifest_json(data: bytes, where: str) -> Any:
    """Parse manifest bytes as JSON, with size and nesting failures as one-line errors.

    `json.loads` raises RecursionError on deeply nested arrays and ValueError on integers of
    thousands of digits; both become `ManifestError` here.

    Example:
        >>> parse_manifest_json(b'{"kind": "dataset"}', "dataset/manifest.json")
        {'kind': 'dataset'}
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where}: larger than {MAX_MANIFEST_BYTES} bytes: {_FIX}")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError are both
        problem = " ".join(str(exc).split())[:80]
        raise ManifestError(f"{where}: not valid JSON ({problem}): {_FIX}") from None
