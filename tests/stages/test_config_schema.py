"""The config schema is derived from the settings dataclasses: one source for every default,
every list of choices and every bound, and only the selected algorithm's keys are hashed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from blazefl.algorithms import ALGORITHMS
from blazefl.algorithms.common import TrainHParams
from blazefl.spec import DataConfig, ExperimentSpec
from blazefl.stages.config import (
    ConfigError,
    byte_config,
    config_sha256,
    default_config,
    load_config,
    schema,
)

BASE_SECTIONS = {"seed", "data", "model", "fl", "train", "runtime"}


def test_defaults_come_from_the_dataclasses() -> None:
    config = default_config()
    assert config["train.lr"] == TrainHParams().lr
    assert config["data.clients"] == DataConfig().clients
    assert ExperimentSpec().to_flat() == config


def test_empty_params_file_is_the_default_experiment(tmp_path: Path) -> None:
    empty = tmp_path / "params.yaml"
    empty.write_text("")
    assert load_config(empty) == default_config()


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_only_the_selected_algorithms_section_is_in_the_config_and_hash(algorithm: str) -> None:
    config = default_config(algorithm)
    name = ALGORITHMS.get(algorithm).name
    sections = {key.partition(".")[0] for key in byte_config(config)}
    assert sections <= BASE_SECTIONS | {name}
    for other in ALGORITHMS:
        other_name = ALGORITHMS.get(other).name
        if other_name != name:
            assert not any(k.startswith(other_name + ".") for k in config)


def test_another_algorithms_section_is_validated_but_changes_nothing(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("dsfl:\n  kd_lr: 0.5\n")
    assert config_sha256(load_config(params)) == config_sha256(default_config())
    params.write_text("dsfl:\n  kd_lr: .nan\n")
    with pytest.raises(ConfigError, match="dsfl.kd_lr"):
        load_config(params)


def test_non_byte_keys_stay_out_of_the_hash() -> None:
    base = default_config()
    for key, value in (("fl.rounds", 99), ("runtime.mode", "processes"), ("runtime.workers", 7)):
        assert config_sha256({**base, key: value}) == config_sha256(base), key
    assert config_sha256(load_config(None, {"train.lr": 0.01})) != config_sha256(base)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_every_float_key_rejects_nan_and_infinity(algorithm: str) -> None:
    keys = [k for k, s in schema(algorithm).items() if s.type is float]
    assert keys
    for key in keys:
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                load_config(None, {"fl.algorithm": algorithm, key: bad})


def test_every_number_has_an_upper_bound_checked_before_anything_runs() -> None:
    for key, spec in schema("fedavg").items():
        if spec.type is int and not spec.optional and key != "seed":
            assert spec.high is not None, key
            with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                load_config(None, {key: int(spec.high) + 1})
    with pytest.raises(ConfigError, match="seed"):
        load_config(None, {"seed": 2**64})


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"train.lr": "fast"}, "train.lr"),
        ({"train.momentum": True}, "train.momentum"),
        ({"data.clients": 2.5}, "data.clients"),
        ({"nope.key": 1}, "unknown config section 'nope'"),
        ({"train.nope": 1}, "unknown config key train.nope"),
        ({"fl.algorithm": "fedsgd"}, "fedavg"),
        ({"fl.algorithm": "no_such_pkg.mod:Algo"}, "cannot import"),
        ({"model.name": "vgg"}, "cnn"),
        ({"data.dataset": "imagenet"}, "synthetic"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, override)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
