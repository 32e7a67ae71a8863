"""Params files that are hostile or broken end with one `YAMLInputError` line, quickly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blazefl.stages import safe_yaml
from blazefl.stages.safe_yaml import YAMLInputError, load_yaml, load_yaml_file

LAUGHS = "\n".join(
    ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
)
NESTED_LAUGHS = "train:\n  lr: &x [1, 1, 1]\n  momentum: [*x, *x, *x]\n"


def _refused(text: str, *fragments: str) -> str:
    with pytest.raises(YAMLInputError) as info:
        load_yaml(text, "params.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("params.yaml")
    for fragment in fragments:
        assert fragment in message
    return message


@pytest.fixture(params=["libyaml", "pure"])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a test with the libyaml parser and with PyYAML's pure-Python one."""
    if request.param == "pure":
        monkeypatch.setattr(safe_yaml, "_LOADER", yaml.SafeLoader)
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("libyaml is not available")


def test_plain_config_loads(loader: None) -> None:
    text = "seed: 7\ntrain:\n  lr: 0.05\n  augment: true\ndata:\n  root: null\n"
    assert load_yaml(text, "p") == yaml.safe_load(text)
    assert load_yaml("", "p") is None


@pytest.mark.parametrize("text", [LAUGHS, NESTED_LAUGHS, "a: &x 1\n"])
def test_anchors_and_aliases_are_refused(loader: None, text: str) -> None:
    _refused(text, "anchors or aliases", "write each value out in full")


@pytest.mark.parametrize(
    "text",
    ["[" * 50_000 + "]" * 50_000, "{a: " * 50_000 + "1" + "}" * 50_000],
    ids=["lists", "mappings"],
)
def test_50000_levels_deep_is_refused(loader: None, text: str) -> None:
    _refused(text)


def test_block_nesting_over_the_bound_is_refused(loader: None) -> None:
    text = "".join("  " * i + "a:\n" for i in range(40)) + "  " * 40 + "1\n"
    _refused(text, "nested more than 32 levels")
    shallow = "".join("  " * i + "a:\n" for i in range(10)) + "  " * 10 + "1\n"
    assert load_yaml(shallow, "p") is not None


def test_node_count_and_size_are_bounded(loader: None) -> None:
    with pytest.raises(YAMLInputError, match="more than 1000 YAML values"):
        load_yaml("[" + ",".join(["1"] * 1001) + "]", "p", max_nodes=1000)
    assert len(load_yaml("[" + ",".join(["1"] * 999) + "]", "p", max_nodes=1000)) == 999
    _refused("a: '" + "x" * (1 << 20) + "'", "larger than 1048576 bytes")


def test_default_node_bound() -> None:
    # libyaml only: the pure-Python parser takes seconds for 100,000 values
    if not hasattr(yaml, "CSafeLoader"):
        pytest.skip("libyaml is not available")
    _refused("[" + ",".join(["1"] * 100_001) + "]", "more than 100000 YAML values")


@pytest.mark.parametrize(
    "text",
    [
        "a:\n\tb: 1\n",  # tab indentation
        "\x00\x01\x02 binary",
        "[1, 2",
        "a: 1\n---\nb: 2\n",
        "? [1, 2]\n: 3\n",
        "!!python/object/apply:os.system ['true']\n",
        "x: " + "9" * 5000,
        "x: 2020-13-45",
        "x: !!timestamp abc",
        "x: !!float abc",
    ],
)
def test_broken_input_is_one_line(loader: None, text: str) -> None:
    _refused(text)


def test_file_errors_are_one_line(tmp_path: Path) -> None:
    cases: dict[str, Path] = {"does not exist": tmp_path / "missing.yaml", "is a folder": tmp_path}
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"seed: 1\n\xff\xfe\x00garbage")
    cases["not UTF-8"] = binary
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:
        f.truncate(2 << 20)  # sparse: the size alone must refuse it
    cases["more than the 1048576 allowed"] = huge
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # no writer: a blocking open would hang
    cases["not a regular file"] = fifo
    cases["not a regular file "] = Path("/dev/zero")
    for fragment, path in cases.items():
        with pytest.raises(YAMLInputError) as info:
            load_yaml_file(path)
        assert fragment.strip() in str(info.value) and "\n" not in str(info.value)


def test_file_with_bom_loads(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xef\xbb\xbfseed: 3\n")
    assert load_yaml_file(path) == {"seed": 3}


_TOKENS = st.sampled_from(
    ["[", "]", "{", "}", ":", ",", "- ", " ", "\n", "  ", "\t", "&a ", "*a", "!!int ", "!!float ",
     "!!timestamp ", "!!binary ", "!!set ", "!!omap ", "? ", "a", "1", "1e999", "0x1f",
     "2020-01-01", "'", '"', "#", "---", "%YAML 1.1", "!!python/name:os", "<<", "|", ">", "~",
     "\\", "\x00", "\u00e9", "9" * 5000]
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.lists(_TOKENS, max_size=25).map("".join), st.text(max_size=40)))
def test_fuzz_never_raises_anything_else(text: str) -> None:
    for parser in (yaml.SafeLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        safe_yaml._LOADER = parser
        try:
            load_yaml(text, "fuzz.yaml")
        except YAMLInputError as exc:
            assert "\n" not in str(exc)
        finally:
            safe_yaml._LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("seed: 1\nseed: 2\n", ["line 2", "repeats the key seed", "first on line 1", "keep one"]),
        (
            "data:\n  size: 100\n  test_size: 20\n  size: 200\n",
            ["line 4", "repeats the key data.size", "first on line 2"],
        ),
        ("train:\n  lr: 0.1\ntrain:\n  lr: 0.2\n", ["line 3", "repeats the key train"]),
        ("{a: 1, b: 2, a: 3}\n", ["repeats the key a"]),
        ("1: a\n1: b\n", ["repeats a key", "line 2"]),
    ],
)
def test_duplicate_keys_are_refused(loader: None, text: str, fragments: list[str]) -> None:
    _refused(text, *fragments)


def test_same_key_in_different_sections_is_fine(loader: None) -> None:
    text = "data:\n  size: 1\nmodel:\n  size: 2\n"
    assert load_yaml(text, "p") == {"data": {"size": 1}, "model": {"size": 2}}


@pytest.mark.parametrize("value", ["1:30", "-1:30", "190:20:30", "1:30.5", "!!int 1:30"])
def test_base_60_numbers_are_refused(loader: None, value: str) -> None:
    _refused(f"data:\n  test_size: {value}\n", "line 2", "base 60", "quote it")


def test_quoted_base_60_and_times_stay_strings(loader: None) -> None:
    assert load_yaml("a: '1:30'\nb: 1.5\nc: 90\n", "p") == {"a": "1:30", "b": 1.5, "c": 90}


@pytest.mark.parametrize(
    "text",
    [
        "root:*:20228:0:99999:7:::\ndaemon:*:20228:0:99999:7:::\n",  # /etc/shadow's first line
        "password: hunter2\nsecret_token: !vault abcdef\n",
        "key: \x01hunter2\n",
        "x: !!int hunter2\n",
        "x: " + "9" * 5000 + "\n",
        "x: !!float hunter2\n",
        "x: [hunter2, {y: 'hunter2\n",
        "? [hunter2]\n: 1\n",
    ],
)
def test_errors_never_echo_the_file(loader: None, tmp_path: Path, text: str) -> None:
    path = tmp_path / "not-params"
    path.write_text(text)
    with pytest.raises(YAMLInputError) as info:
        load_yaml_file(path, key_pattern=safe_yaml.CONFIG_KEY)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    for secret in ("hunter2", "root", "20228", "vault", "99999"):
        assert secret not in message.replace(str(path), "")


def test_key_pattern_allows_config_keys(loader: None) -> None:
    text = "seed: 1\ntrain:\n  lr: 0.1\ndata.size: 5\nfedprox:\n  mu: 0.01\n"
    assert load_yaml(text, "p", key_pattern=safe_yaml.CONFIG_KEY)["train"] == {"lr": 0.1}
    with pytest.raises(YAMLInputError, match="line 2.*not a config key name"):
        load_yaml("seed: 1\nyes: 1\n", "p", key_pattern=safe_yaml.CONFIG_KEY)
