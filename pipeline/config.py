"""The experiment config (params.yaml): schema, defaults, validation, canonical hashing.

Every key has a default, so an empty file runs the default experiment. Keys are dotted
(`train.lr`); `--set train.lr=0.05` overrides one. Keys under `runtime` other than
`threads_per_client` and the round count `fl.rounds` never change result bytes: they are left
out of the config hash, so extending a run or switching execution mode keeps its artifacts.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "DEFAULTS",
    "NON_BYTE_KEYS",
    "load_config",
    "parse_set",
    "byte_config",
    "config_sha256",
    "to_spec",
    "flatten",
    "unflatten",
    "dump_yaml",
]


class ConfigError(ValueError):
    """A user mistake in the config or its overrides; the message says how to fix it."""


DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {
        "dataset": "synthetic",
        "root": None,
        "size": 10000,
        "test_size": 2000,
        "clients": 20,
        "partition": "dirichlet",
        "alpha": 1.0,
        "shards_per_client": 2,
    },
    "model": {"name": "cnn", "dropout": 0.0},
    "fl": {"algorithm": "fedavg", "rounds": 10, "clients_per_round": 10},
    "train": {
        "local_epochs": 2,
        "batch_size": 50,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "augment": True,
    },
    "dsfl": {
        "open_size": 2000,
        "public_per_round": 500,
        "kd_epochs": 2,
        "kd_batch_size": 50,
        "kd_lr": 0.1,
        "era_temperature": 0.1,
    },
    "runtime": {"mode": "threads", "workers": 2, "ipc": "shared_memory", "threads_per_client": 1},
}

#: Keys that may be None, and the type their value has otherwise.
_OPTIONAL: dict[str, type] = {"data.root": str, "fl.clients_per_round": int}

#: Keys that never change the bytes of artifacts.
NON_BYTE_KEYS = ("fl.rounds", "runtime.mode", "runtime.workers", "runtime.ipc")

_CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("synthetic", "cifar10", "mnist", "fashion_mnist"),
    "data.partition": ("iid", "dirichlet", "shards", "quantity"),
    "model.name": ("cnn", "resnet18"),
    "fl.algorithm": ("fedavg", "dsfl"),
    "runtime.mode": ("sequential", "threads", "processes"),
    "runtime.ipc": ("shared_memory", "storage"),
}

_POSITIVE = (
    "data.size",
    "data.test_size",
    "data.clients",
    "data.shards_per_client",
    "fl.clients_per_round",
    "train.local_epochs",
    "train.batch_size",
    "runtime.workers",
    "runtime.threads_per_client",
    "dsfl.open_size",
    "dsfl.public_per_round",
    "dsfl.kd_epochs",
    "dsfl.kd_batch_size",
)


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


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


_DEFAULT_FLAT = flatten(DEFAULTS)


def _type_name(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[t]


def _check_value(key: str, value: Any) -> Any:
    default = _DEFAULT_FLAT[key]
    expected: type = _OPTIONAL.get(key) or type(default)
    if value is None:
        if key in _OPTIONAL:
            return None
        raise ConfigError(f"config key {key} must be {_type_name(expected)}, got null")
    ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(
            f"config key {key} must be {_type_name(expected)}, got {value!r} "
            f"({type(value).__name__})"
        )
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(
            f"config key {key} must be one of {', '.join(_CHOICES[key])}, got {value!r}"
        )
    if key in _POSITIVE and value <= 0:
        raise ConfigError(f"config key {key} must be >= 1, got {value}")
    return value


def _validate(flat: dict[str, Any]) -> dict[str, Any]:
    for key in flat:
        if key not in _DEFAULT_FLAT:
            raise ConfigError(
                f"unknown config key {key!r}; known keys: {', '.join(sorted(_DEFAULT_FLAT))}"
            )
    merged = dict(_DEFAULT_FLAT)
    merged.update({k: _check_value(k, v) for k, v in flat.items()})
    if merged["seed"] < 0:
        raise ConfigError(f"config key seed must be >= 0, got {merged['seed']}")
    if merged["fl.rounds"] < 0:
        raise ConfigError(f"config key fl.rounds must be >= 0, got {merged['fl.rounds']}")
    for key in ("data.alpha",):
        if merged[key] <= 0:
            raise ConfigError(f"config key {key} must be > 0, got {merged[key]}")
    if not 0 <= merged["model.dropout"] < 1:
        raise ConfigError(
            f"config key model.dropout must be in [0, 1), got {merged['model.dropout']}"
        )
    for key in ("dsfl.kd_lr", "dsfl.era_temperature"):
        if merged[key] <= 0:
            raise ConfigError(f"config key {key} must be > 0, got {merged[key]}")
    if merged["fl.algorithm"] == "dsfl":
        private = merged["data.size"] - merged["dsfl.open_size"]
        if private < merged["data.clients"]:
            raise ConfigError(
                f"dsfl.open_size ({merged['dsfl.open_size']}) leaves {private} private samples "
                f"for {merged['data.clients']} clients: lower dsfl.open_size or raise data.size"
            )
        if merged["dsfl.public_per_round"] > merged["dsfl.open_size"]:
            raise ConfigError(
                f"dsfl.public_per_round ({merged['dsfl.public_per_round']}) must be <= "
                f"dsfl.open_size ({merged['dsfl.open_size']})"
            )
    if merged["train.lr"] <= 0:
        raise ConfigError(f"config key train.lr must be > 0, got {merged['train.lr']}")
    for key in ("train.momentum", "train.weight_decay"):
        if merged[key] < 0:
            raise ConfigError(f"config key {key} must be >= 0, got {merged[key]}")
    k, n = merged["fl.clients_per_round"], merged["data.clients"]
    if k is not None and k > n:
        raise ConfigError(
            f"config key fl.clients_per_round ({k}) must be <= data.clients ({n}); "
            "lower it or add clients"
        )
    if merged["data.clients"] > merged["data.size"] and merged["data.dataset"] == "synthetic":
        raise ConfigError(
            f"data.clients ({n}) exceeds data.size ({merged['data.size']}): every client "
            "needs at least one sample"
        )
    if merged["data.dataset"] != "synthetic" and not merged["data.root"]:
        raise ConfigError(
            f"data.dataset {merged['data.dataset']} needs data.root: the folder holding the "
            "torchvision files (downloads are disabled)"
        )
    return merged


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
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML") from None
    return out


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Read params.yaml (missing or empty file: all defaults), apply overrides, validate.

    Args:
        path: the YAML file; None means defaults only.
        overrides: dotted keys to override (from `--set`).

    Returns:
        The full flat config: every dotted key with its value.

    Raises:
        ConfigError: unreadable YAML, unknown key, wrong type or bad value.
    """
    import yaml

    tree: Any = {}
    if path is not None:
        p = Path(path)
        if p.exists():
            try:
                tree = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" (line {mark.line + 1})" if mark else ""
                raise ConfigError(f"{p} is not valid YAML{where}: fix the syntax") from None
            except OSError as exc:
                raise ConfigError(f"cannot read config {p}: {exc.strerror}") from None
        elif str(path) != "params.yaml":
            raise ConfigError(f"config file {p} does not exist: pass an existing --config")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(tree).__name__}")
    flat = flatten(tree)
    flat.update(overrides or {})
    return _validate(flat)


def byte_config(config: dict[str, Any]) -> dict[str, Any]:
    """The keys that determine artifact bytes (all but rounds / mode / workers / ipc)."""
    return {k: v for k, v in sorted(config.items()) if k not in NON_BYTE_KEYS}


def config_sha256(config: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the byte-relevant config."""
    blob = json.dumps(byte_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def to_spec(config: dict[str, Any]) -> Any:
    """Build the library's `ExperimentSpec` from a validated flat config."""
    from blazefl.algorithms.common import TrainHParams
    from blazefl.algorithms.dsfl import DSFLHParams
    from blazefl.experiment import ExperimentSpec

    c = config
    return ExperimentSpec(
        seed=c["seed"],
        dataset=c["data.dataset"],
        data_root=c["data.root"],
        data_size=c["data.size"],
        test_size=c["data.test_size"],
        num_clients=c["data.clients"],
        partition=c["data.partition"],
        alpha=c["data.alpha"],
        shards_per_client=c["data.shards_per_client"],
        model=c["model.name"],
        dropout=c["model.dropout"],
        algorithm=c["fl.algorithm"],
        rounds=c["fl.rounds"],
        clients_per_round=c["fl.clients_per_round"],
        hparams=TrainHParams(
            local_epochs=c["train.local_epochs"],
            batch_size=c["train.batch_size"],
            lr=c["train.lr"],
            momentum=c["train.momentum"],
            weight_decay=c["train.weight_decay"],
            augment=c["train.augment"],
        ),
        threads_per_client=c["runtime.threads_per_client"],
        open_size=c["dsfl.open_size"],
        dsfl=DSFLHParams(
            public_size_per_round=c["dsfl.public_per_round"],
            kd_epochs=c["dsfl.kd_epochs"],
            kd_batch_size=c["dsfl.kd_batch_size"],
            kd_lr=c["dsfl.kd_lr"],
            era_temperature=c["dsfl.era_temperature"],
        ),
    )


def dump_yaml(config: dict[str, Any]) -> str:
    """The config as nested YAML (params.yaml), keys in schema order."""
    import yaml

    tree = copy.deepcopy(DEFAULTS)
    for dotted, value in config.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=False)
