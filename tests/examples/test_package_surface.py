"""The FedAdam example is FedAvg with a twist written with at most 12 names of the package,
and docs/tutorial.md lists exactly the names it uses.

A name counts when the example imports it from `blazefl`, sets or overrides an attribute its
package base class defines (`HParams`, `global_update`, ...), or reads one of its package
base's attributes on `self` (`self.params`, `self.hparams`). Python's own names (`__init__`,
`super`) and the example's own attributes (`self.m`) do not count.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "custom_algorithm" / "myalgo.py"
TUTORIAL = Path(__file__).parents[2] / "docs" / "tutorial.md"
LIMIT = 12


def package_names(source: str) -> set[str]:
    """The package names a plugin module uses (see the module docstring)."""
    tree = ast.parse(source)
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("blazefl")
        for alias in node.names
    }
    own = {  # attributes the example assigns on self: its own state
        t.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
    }
    used = set(imported)
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        if not any(isinstance(b, ast.Name) and b.id in imported for b in cls.bases):
            continue  # a plain dataclass of the example's own
        for item in cls.body:
            if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                used.add(item.name)  # an overridden hook
            elif isinstance(item, ast.Assign):
                used.update(t.id for t in item.targets if isinstance(t, ast.Name))
        for node in ast.walk(cls):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and node.attr not in own
                and not node.attr.startswith("_")
            ):
                used.add(node.attr)
    return used


def test_the_example_uses_at_most_twelve_package_names() -> None:
    names = package_names(EXAMPLE.read_text())
    assert len(names) <= LIMIT, sorted(names)
    # every counted name really is the package's (a typo would count as a name, wrongly)
    import blazefl.algorithms as algorithms
    import blazefl.hparams as hparams

    bases = (algorithms.FedAvg, algorithms.FedAvgServerHandler, algorithms.FedAvgWorker)
    for name in names:
        known = hasattr(algorithms, name) or hasattr(hparams, name)
        known = known or any(hasattr(b, name) for b in bases)
        known = known or name in {"hparams"}  # set by both bases' __init__ (instance attribute)
        assert known, name


def test_the_tutorial_lists_the_names_it_counts() -> None:
    names = package_names(EXAMPLE.read_text())
    text = TUTORIAL.read_text()
    match = re.search(r"<!-- names -->(.*?)<!-- /names -->", text, re.S)
    assert match, "docs/tutorial.md lacks its <!-- names --> list"
    listed = set(re.findall(r"`([A-Za-z_]+)`", match.group(1)))
    assert listed == names
    assert f"{len(names)} names" in text


def test_the_counter_counts_what_it_should() -> None:
    source = (
        "from blazefl.algorithms import FedAvg, FedAvgServerHandler\n"
        "class S(FedAvgServerHandler):\n"
        "    state = ('m',)\n"
        "    def __init__(self, *a):\n"
        "        super().__init__(*a)\n"
        "        self.m = self.params * 0\n"
        "    def global_update(self):\n"
        "        self.m += self.hparams.lr * self.m\n"
        "class A(FedAvg):\n"
        "    Server = S\n"
    )
    assert package_names(source) == {
        "FedAvg",
        "FedAvgServerHandler",
        "state",
        "params",
        "global_update",
        "hparams",
        "Server",
    }
