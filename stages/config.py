"""The experiment config (params.yaml): schema, validation and canonical hashing.

The schema is derived, never written down twice: its sections are the library's settings
dataclasses (`DataConfig` -> `data.*`, `TrainHParams` -> `train.*`, ...) plus the selected
algorithm's own `HParams` under the algorithm's name (`fedprox.mu`). Every key has a default,
so an empty file runs the default experiment; `--set train.lr=0.05` overrides one key.

Only byte-relevant keys enter the config hash: fields declared with `affects_bytes=False`
(round count, execution mode, workers, IPC) are left out, and so are the sections of
algorithms that are not selected, so adding an algorithm changes no existing run's hash.

A config travels as a flat dict of dotted keys (`{"train.lr": 0.05, ...}`): the form the
manifests record and DVC lists as params.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from blazefl.algorithms import ALGORITHMS, RESERVED_SECTIONS, Algorithm
from blazefl.hparams import FieldSpec, HParamError, field_specs, from_mapping
from blazefl.registry import RegistryError
from blazefl.spec import DataConfig, ExperimentSpec, FLConfig, ModelConfig, RuntimeConfig
from blazefl.algorithms.common import TrainHParams

__all__ = [
    "ConfigError",
    "SECTIONS",
    "schema",
    "load_config",
    "parse_set",
    "byte_config",
    "byte_keys",
    "config_sha256",
    "to_spec",
    "flatten",
    "dump_yaml",
    "default_config",
]

#: The experiment's own sections, in params.yaml order (the algorithm's section follows).
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "fl": FLConfig,
    "train": TrainHParams,
    "runtime": RuntimeConfig,
}
assert tuple(SECTIONS) == RESERVED_SECTIONS[1:]

_SEED = next(s for s in field_specs(ExperimentSpec) if s.name == "seed")


class ConfigError(ValueError):
    """A user mistake in the config or its overrides; the message says how to fix it."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _algorithm(name: Any) -> Algorithm:
    if not isinstance(name, str):
        raise ConfigError(f"fl.algorithm must be a string, got {name!r}")
    try:
        return ALGORITHMS.get(name)
    except RegistryError as exc:
        raise ConfigError(f"fl.algorithm: {exc}") from None


def schema(algorithm: str = "fedavg") -> dict[str, FieldSpec]:
    """Every config key of an experiment with `algorithm`, in params.yaml order.

    Returns:
        {"seed": spec, "data.dataset": spec, ..., "<algorithm>.<key>": spec}.
    """
    out = {"seed": _SEED}
    sections = {**SECTIONS, _algorithm(algorithm).name: _algorithm(algorithm).HParams}
    for section, cls in sections.items():
        out.update({f"{section}.{s.name}": s for s in field_specs(cls)})
    return out


def default_config(algorithm: str = "fedavg") -> dict[str, Any]:
    """The flat config of the default experiment (with `algorithm` selected)."""
    return load_config(None, {"fl.algorithm": algorithm})


def _section_values(flat: dict[str, Any], algo: Algorithm) -> dict[str, dict[str, Any]]:
    """Group dotted keys by section; refuse unknown sections and malformed keys.

    Sections of built-in algorithms that are not selected are validated (a typo is caught)
    and then ignored: they neither change the run nor its hash.
    """
    builtins = {a.name: a for a in map(ALGORITHMS.get, ALGORITHMS)}
    groups: dict[str, dict[str, Any]] = {s: {} for s in (*SECTIONS, algo.name)}
    others: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if key == "seed":
            continue
        section, dot, leaf = key.partition(".")
        if not dot or not leaf or "." in leaf:
            raise ConfigError(f"unknown config key {key!r}: keys look like train.lr or seed")
        if section in groups:
            groups[section][leaf] = value
        elif section in builtins:
            others.setdefault(section, {})[leaf] = value
        else:
            raise ConfigError(
                f"unknown config section {section!r} (key {key}); sections: "
                f"seed, {', '.join(groups)}"
            )
    for section, values in others.items():
        _build(builtins[section].HParams, values, section)
    return groups


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    try:
        return from_mapping(cls, values, section)
    except HParamError as exc:
        raise ConfigError(f"config key {exc}") from None


def to_spec(config: dict[str, Any]) -> ExperimentSpec:
    """Build and validate the library's `ExperimentSpec` from a flat config.

    Raises:
        ConfigError: unknown key or section, wrong type or value, cross-field conflict.
    """
    algo = _algorithm(config.get("fl.algorithm", "fedavg"))
    groups = _section_values(config, algo)
    built = {s: _build(cls, groups[s], s) for s, cls in SECTIONS.items()}
    hparams = _build(algo.HParams, groups[algo.name], algo.name)
    seed = config.get("seed", _SEED.default)
    try:
        seed = _SEED.check(seed, "seed")
        return ExperimentSpec(seed=seed, hparams=hparams, **built)
    except HParamError as exc:
        raise ConfigError(f"config key {exc}") from None


def _flat_spec(spec: ExperimentSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"seed": spec.seed}
    sections = {s: getattr(spec, s) for s in SECTIONS}
    sections[spec.algorithm.name] = spec.hparams
    for section, obj in sections.items():
        assert is_dataclass(obj)
        out.update({f"{section}.{f.name}": getattr(obj, f.name) for f in fields(obj)})
    return out


def byte_keys(config: dict[str, Any]) -> list[str]:
    """The keys of `config` that change artifact bytes, sorted."""
    specs = schema(config["fl.algorithm"])
    return sorted(k for k in config if specs[k].affects_bytes)


def byte_config(config: dict[str, Any]) -> dict[str, Any]:
    """The byte-relevant part of a config (what manifests record and the hash covers)."""
    return {k: config[k] for k in byte_keys(config)}


def config_sha256(config: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the byte-relevant config."""
    blob = json.dumps(byte_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def parse_set(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Parse `--set KEY=VALUE` items; VALUE is read as YAML (numbers, true/false, null).

    Raises:
        ConfigError: on an item without '=' or a value that is not valid YAML.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.lr=0.05), got {item!r}")
        if len(raw) > 4096:
            raise ConfigError(f"--set {key}: value is longer than 4096 characters")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML") from None
        if isinstance(value, dict | list):
            raise ConfigError(f"--set {key}: expects a single value, got {raw!r}")
        out[key.strip()] = value
    return out


def _read_tree(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.exists():
        if str(path) == "params.yaml":  # the default file may be absent: all defaults
            return {}
        raise ConfigError(f"config file {p} does not exist: pass an existing --config")
    if not p.is_file():
        raise ConfigError(f"config {p} is not a file: pass a params YAML file as --config")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{p} is not valid YAML{where}: fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {p}: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{p} must hold a mapping of config keys, got {type(tree).__name__}")
    return tree


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Read params.yaml (missing default file or empty file: all defaults), apply overrides,
    validate.

    Args:
        path: the YAML file; None means defaults only.
        overrides: dotted keys to override (from `--set`).

    Returns:
        The full flat config: every key of the schema for the selected algorithm.

    Raises:
        ConfigError: unreadable YAML, unknown key, wrong type or bad value.
    """
    flat = flatten(_read_tree(path)) if path is not None else {}
    flat.update(overrides or {})
    return _flat_spec(to_spec(flat))


def dump_yaml(config: dict[str, Any]) -> str:
    """The config as nested YAML (params.yaml), keys in schema order."""
    import yaml

    tree: dict[str, Any] = {}
    for dotted in schema(config["fl.algorithm"]):
        node = tree
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = config[dotted]
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=False)
