"""The experiment config (params.yaml): schema, validation and canonical hashing.

The schema is derived, never written down twice: its sections are the library's settings
dataclasses (`DataConfig` -> `data.*`, `TrainHParams` -> `train.*`, ...) plus the selected
algorithm's own `HParams` under the algorithm's name (`fedprox.mu`). Every key has a default,
so an empty file runs the default experiment; `--set train.lr=0.05` overrides one key.

Only byte-relevant keys enter the config hash: fields declared with `affects_bytes=False`
(round count, execution mode, workers, IPC) are left out, and so are the sections of
algorithms that are not selected, so adding an algorithm changes no existing run's hash.

A config is parsed as a flat dict of dotted keys (`{"train.lr": 0.05, ...}`): the form the
manifests record and DVC lists as params. Below the command line it travels as one
`RunConfig`: the typed `ExperimentSpec` every stage reads its values from (`config.spec.data.
clients`), which also serves, as a read-only mapping, the flat form that manifests, hashes
and params.yaml record.

The lists of keys each store depends on live here too, next to the schema they name:
`DATA_KEYS` (the dataset store), `partition_keys` (the partitions store), `CODE_KEYS` (which
stages run the user code a key names). The stages that write and check the stores, and the
DVC generator that lists them as params, all read them from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from blazefl.algorithms import ALGORITHMS
from blazefl.hparams import FieldSpec, HParamError
from blazefl.spec import SECTIONS, ExperimentSpec, FLConfig, algorithm_of
from blazefl.spec import schema as spec_schema
from blazefl.stages.manifest_schema import config_digest
from blazefl.stages.safe_yaml import CONFIG_KEY, YAMLInputError, load_yaml, load_yaml_file

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
    "RunConfig",
    "flatten",
    "dump_yaml",
    "default_config",
    "schema_table",
    "DATA_KEYS",
    "PARTITION_KEYS",
    "partition_keys",
    "CODE_KEYS",
]

#: Keys the dataset store depends on (recorded in its manifest, its DVC params).
DATA_KEYS = ("seed", "data.dataset", "data.root", "data.size", "data.test_size")
#: Keys every partition depends on; the selected algorithm adds `fl.algorithm` and the keys of
#: its public set (`Algorithm.partition_keys`), see `partition_keys`.
PARTITION_KEYS = (
    "seed",
    "data.clients",
    "data.partition",
    "data.alpha",
    "data.shards_per_client",
)
#: Which stages run the user code a config key names: key -> stage kinds.
CODE_KEYS: dict[str, tuple[str, ...]] = {
    "data.dataset": ("prepare",),
    "data.partition": ("partition",),
    "model.name": ("init", "round"),
    "fl.algorithm": ("partition", "init", "round"),
}


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


def schema(algorithm: str = "fedavg") -> dict[str, FieldSpec]:
    """Every config key of an experiment with `algorithm`, in params.yaml order."""
    try:
        return spec_schema(algorithm)
    except HParamError as exc:
        raise ConfigError(str(exc)) from None


def to_spec(config: Mapping[str, Any]) -> ExperimentSpec:
    """Build and validate the library's `ExperimentSpec` from a flat config.

    Raises:
        ConfigError: unknown key or section, wrong type or value, cross-field conflict.
    """
    try:
        return ExperimentSpec.from_flat(config)
    except HParamError as exc:
        raise ConfigError(str(exc)) from None


def partition_keys(spec: ExperimentSpec) -> list[str]:
    """The config keys the partitions store of `spec` depends on, sorted."""
    algo = spec.algorithm
    extra = [f"{algo.name}.{k}" for k in algo.partition_keys]
    return sorted({*PARTITION_KEYS, "fl.algorithm", *extra})


class RunConfig(Mapping[str, Any]):
    """A validated config as stages and the pipeline take it: `spec`, the typed settings code
    reads (`config.spec.fl.rounds`), and, as a read-only mapping of dotted keys, their flat
    serialized form (`spec.to_flat()`: what `byte_config`, the manifests and params.yaml
    record). One value, so the two can never disagree.

    Example:
        >>> config = RunConfig.of(load_config("params.yaml"))
        >>> config.spec.data.clients, config["data.clients"]
        (20, 20)
    """

    def __init__(self, spec: ExperimentSpec) -> None:
        self.spec = spec
        self._flat = spec.to_flat()

    @classmethod
    def of(cls, flat: Mapping[str, Any]) -> RunConfig:
        """Validate a flat config (`load_config`'s) into a `RunConfig`.

        Raises:
            ConfigError: as `to_spec`.
        """
        return cls(to_spec(flat))

    def __getitem__(self, key: str) -> Any:
        return self._flat[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._flat)

    def __len__(self) -> int:
        return len(self._flat)

    def __repr__(self) -> str:
        return f"RunConfig({self._flat!r})"


def default_config(algorithm: str = "fedavg") -> dict[str, Any]:
    """The flat config of the default experiment (with `algorithm` selected)."""
    return load_config(None, {"fl.algorithm": algorithm})


def byte_keys(config: Mapping[str, Any]) -> list[str]:
    """The keys of a flat config that change artifact bytes, sorted."""
    specs = schema(config["fl.algorithm"])
    return sorted(k for k in config if specs[k].affects_bytes)


def byte_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The byte-relevant part of a config (what manifests record and the hash covers)."""
    return {k: config[k] for k in byte_keys(config)}


def config_sha256(config: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the byte-relevant config (the one digest function,
    `manifest_schema.config_digest`, so writers and manifest checks cannot drift apart)."""
    return config_digest(byte_config(config))


def parse_set(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Parse `--set KEY=VALUE` items; VALUE is read as YAML (numbers, true/false, null).

    Raises:
        ConfigError: on an item without '=' or a value that is not valid YAML.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.lr=0.05), got {item!r}")
        if len(raw) > 4096:
            raise ConfigError(f"--set {key}: value is longer than 4096 characters")
        try:
            value = load_yaml(raw, f"--set {key}") if raw.strip() else None
        except YAMLInputError as exc:
            raise ConfigError(str(exc)) from None
        if isinstance(value, dict | list):
            raise ConfigError(f"--set {key}: expects a single value, got {raw!r}")
        out[key.strip()] = value
    return out


def _read_tree(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        if str(path) == "params.yaml":  # the default file may be absent: all defaults
            return {}
        raise ConfigError(f"config file {p} does not exist: pass an existing --config")
    if p.is_dir():
        raise ConfigError(f"config {p} is a directory: pass a params YAML file as --config")
    try:
        # key_pattern: a file that is not a params file (/etc/shadow's `root:*:...:` is a
        # YAML key) is refused before its keys could be quoted in an unknown-key error
        tree = load_yaml_file(p, key_pattern=CONFIG_KEY) or {}
    except YAMLInputError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{p} must hold a mapping of config keys, got {type(tree).__name__}")
    return tree


def _section(key: str) -> str:
    return key.partition(".")[0]


def _algorithm_section(algorithm: Any) -> str:
    try:
        return algorithm_of(algorithm).name
    except HParamError as exc:
        raise ConfigError(str(exc)) from None


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Read params.yaml (missing default file or empty file: all defaults), apply overrides,
    validate.

    A params file may keep the section of an algorithm that is not selected (a built-in's, or
    a plugin's left by `blazefl dvc` before a switch): it is ignored (neither hashed nor a DVC
    param) with a warning, a built-in's still validated. A `--set` key of a built-in
    algorithm that is not selected is validated and ignored with a warning; an unknown section
    given by `--set` is an error: it was typed just now.

    Args:
        path: the YAML file; None means defaults only.
        overrides: dotted keys to override (from `--set`).
        warn: where a one-line warning about unused sections goes (default: nowhere).

    Returns:
        The full flat config: every key of the schema for the selected algorithm.

    Raises:
        ConfigError: unreadable YAML, unknown key, wrong type or bad value.
    """
    from_file = flatten(_read_tree(path)) if path is not None else {}
    overrides = overrides or {}
    algorithm = overrides.get("fl.algorithm", from_file.get("fl.algorithm", FLConfig.algorithm))
    used = {"seed", *SECTIONS, _algorithm_section(algorithm)}
    unused = sorted({_section(k) for k in from_file} - used)
    if unused and warn is not None:
        warn(
            f"{path}: section{'s' if len(unused) > 1 else ''} {', '.join(unused)} not used "
            f"with fl.algorithm={algorithm}: ignored (not hashed, not a DVC param); "
            "`blazefl dvc` rewrites the file without it"
        )
    builtins = {_algorithm_section(name) for name in ALGORITHMS}
    idle = sorted(k for k in overrides if _section(k) in builtins - used)
    if idle and warn is not None:  # typed just now for an algorithm that will not run
        section = _section(idle[0])
        warn(
            f"--set {idle[0]}: {section} is not the selected algorithm (fl.algorithm="
            f"{algorithm}), so the value is ignored; add --set fl.algorithm={section} to use it"
        )
    flat = {k: v for k, v in from_file.items() if _section(k) in used | builtins}
    flat.update(overrides)
    return to_spec(flat).to_flat()


def dump_yaml(config: Mapping[str, Any]) -> str:
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


def _shown(value: Any) -> str:
    return (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


def schema_table(algorithm: str = "fedavg") -> str:
    """The config keys of an experiment with `algorithm` as a markdown table (key, default,
    allowed values, whether it changes result bytes, meaning): what `blazefl schema` prints."""
    rows = ["| key | default | allowed | bytes | meaning |", "|---|---|---|---|---|"]
    for key, spec in schema(algorithm).items():
        if spec.choices is not None:
            allowed = getattr(spec.choices(), "choices_text", None)
            text = allowed() if callable(allowed) else ", ".join(spec.choices())
        elif spec.type is bool:
            text = "true, false"
        elif spec.type in (int, float):
            low = "" if spec.low is None else f"{'>' if spec.low_open else '>='} {spec.low}"
            below = "<" if spec.high_open else "<="
            high = "" if spec.high is None else f"{below} {spec.type(spec.high):,}"
            text = ", ".join(p for p in (low, high) if p) or "any"
        else:
            text = "a path" if key == "data.root" else "text"
        if spec.optional:
            text += ", or null"
        bytes_ = "yes" if spec.affects_bytes else "no"
        rows.append(f"| `{key}` | `{_shown(spec.default)}` | {text} | {bytes_} | {spec.doc} |")
    return "\n".join(rows) + "\n"
