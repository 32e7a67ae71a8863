"""What README.md shows must be true: its config table is the schema the code derives, its
Python example runs, and every key it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from blazefl.stages.config import schema, schema_table

README = Path(__file__).resolve().parents[1] / "README.md"


def _text() -> str:
    return README.read_text()


def test_config_table_is_the_derived_schema() -> None:
    block = re.search(r"<!-- schema:start -->\n(.*?)<!-- schema:end -->", _text(), re.S)
    assert block, "README lost its schema markers"
    assert block.group(1) == schema_table("fedavg"), "regenerate with `blazefl schema`"


def test_python_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", _text(), re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})


def test_yaml_examples_parse_and_name_real_sections() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", _text(), re.S)
    assert blocks
    known = {key.partition(".")[0] for key in schema("fedavg")}
    for text in blocks:
        tree = yaml.safe_load(text)
        assert isinstance(tree, dict)
        assert {"fl", "model", "data"} <= set(tree) and set(tree) - known <= {"myalgo"}


def test_algorithm_keys_named_in_the_readme_exist() -> None:
    named = set(re.findall(r"`((?:fedprox|fedavgm|scaffold|dsfl)\.(?!py`)[a-z_]+)`", _text()))
    for key in named:
        assert key in schema(key.partition(".")[0]), key
