"""The layering is one-way, pipeline -> stages -> blazefl, and the distribution installs nothing
generic at the top level. Checked on the source text, so a new upward or hidden import fails
here before it confuses anyone."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Physical folder -> import name, lowest layer first.
LAYERS = {"blazefl": "blazefl", "stages": "blazefl.stages", "pipeline": "blazefl.pipeline"}
RANK = {"blazefl": 0, "blazefl.stages": 1, "blazefl.pipeline": 2}


def _layer(module: str) -> str | None:
    """The layer an absolute module name belongs to (None: not ours)."""
    for name in ("blazefl.pipeline", "blazefl.stages", "blazefl"):
        if module == name or module.startswith(name + "."):
            return name
    if module.split(".")[0] in ("pipeline", "stages"):
        return "generic"  # the old top-level names must never come back
    return None


def _imports(tree: ast.AST) -> list[tuple[str, bool, int]]:
    """(module, inside a function, line) for every absolute import in a module."""
    out: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                out.extend((a.name, in_function, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.module, in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return out


def _sources() -> list[tuple[Path, str]]:
    files = []
    for folder, layer in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            files.append((path, layer))
    return files


@pytest.mark.parametrize(("path", "layer"), _sources(), ids=lambda v: str(v))
def test_imports_point_down_the_layers_only(path: Path, layer: str) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(ROOT)
    for module, in_function, line in _imports(tree):
        target = _layer(module)
        if target is None:
            continue
        where = f"{rel}:{line} imports {module}"
        assert target != "generic", f"{where}: use the installed name blazefl.{module}"
        assert RANK[target] <= RANK[layer], f"{where}: upward import ({layer} -> {target})"
        # Lazy imports inside a layer are fine (the CLI defers its own modules so `--help`
        # does not import torch); across layers they would hide the dependency graph.
        assert not (in_function and target != layer), f"{where}: function-local import"


def test_files_stay_under_500_lines() -> None:
    folders = [*LAYERS, "benchmarks", "examples"]
    long = {
        str(p.relative_to(ROOT)): n
        for folder in folders
        if (ROOT / folder).is_dir()
        for p in (ROOT / folder).rglob("*.py")
        if (n := len(p.read_text().splitlines())) >= 500
    }
    assert not long, f"split these files: {long}"


def test_no_generic_top_level_module_is_importable(tmp_path: Path) -> None:
    """Installed as blazefl.stages / blazefl.pipeline; `import pipeline` from elsewhere fails."""
    code = (
        "import importlib.util, sys\n"
        "print(importlib.util.find_spec('pipeline'), importlib.util.find_spec('stages'))\n"
        "import blazefl.pipeline.cli, blazefl.stages.config\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "None"], out.stdout


def test_every_public_name_resolves_and_is_listed_for_type_checkers() -> None:
    import blazefl

    source = (ROOT / "blazefl" / "__init__.py").read_text()
    eager = source[source.index("if TYPE_CHECKING:") :]
    for name in blazefl.__all__:
        assert getattr(blazefl, name) is not None, name
        assert re.search(rf"\b{name}\b", eager), f"{name} missing from the TYPE_CHECKING imports"


def test_every_package_is_in_the_distribution() -> None:
    """A subpackage missing from pyproject's list works in an editable install and is absent
    from the wheel users install."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        "blazefl." + ".".join(p.parent.relative_to(root / "blazefl").parts)
        if p.parent != root / "blazefl"
        else "blazefl"
        for p in (root / "blazefl").rglob("__init__.py")
    }
    found |= {"blazefl.stages", "blazefl.pipeline"}
    assert found <= listed, sorted(found - listed)
