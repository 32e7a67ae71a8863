"""The user code a run executes (`blazefl.stages.user_code`): the closure of the modules a
config names, found by reading their source, and the copies a run keeps of it.

Every test builds a small source tree in a temporary folder; nothing in it is imported by the
code under test (one test imports the re-created tree in a subprocess, as a reader would).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from blazefl.stages import user_code
from blazefl.stages.config import CODE_KEYS
from blazefl.stages.user_code import (
    UserCodeError,
    build_code_copies,
    code_closure,
    code_differences,
    config_code,
    materialize_code,
    write_code_copies,
)

ROOT = Path(__file__).resolve().parents[2]


def tree(base: Path, files: dict[str, str]) -> Path:
    """Write `files` ({relative path: source}) under base; returns base."""
    for rel, source in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return base


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def myfl(tmp_path: Path) -> Path:
    """A plugin package: the algorithm imports a helper module and a stdlib module."""
    return tree(
        tmp_path,
        {
            "myfl/__init__.py": "",
            "myfl/feddyn.py": """\
                import math
                from myfl.common import scale

                class FedDyn:
                    factor = scale(math.pi)
            """,
            "myfl/common.py": "def scale(x):\n    return 2 * x\n",
            "myfl/unused.py": "raise RuntimeError('never imported')\n",
            "mymodel.py": "from myfl import common\n",
            "mydata.py": "import numpy\n",
        },
    )


# -- the closure ---------------------------------------------------------------------------


def test_closure_follows_a_helper_module_and_hashes_every_file(myfl: Path) -> None:
    code = code_closure(["myfl.feddyn:FedDyn"], myfl)
    assert code == {
        "myfl/__init__.py": sha(myfl / "myfl/__init__.py"),
        "myfl/common.py": sha(myfl / "myfl/common.py"),
        "myfl/feddyn.py": sha(myfl / "myfl/feddyn.py"),
    }


def test_relative_imports_at_any_depth_and_in_functions_and_ifs(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/other.py": "thing = 1\n",
            "pkg/util.py": "",
            "pkg/late.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/sibling.py": "",
            "pkg/sub/mod.py": """\
                from . import sibling
                from ..other import thing

                def later():
                    from .. import util
                    if util:
                        import pkg.late
            """,
            "pkg/sub/unused.py": "",
        },
    )
    assert sorted(code_closure(["pkg.sub.mod:X"], tmp_path)) == [
        "pkg/__init__.py",
        "pkg/late.py",
        "pkg/other.py",
        "pkg/sub/__init__.py",
        "pkg/sub/mod.py",
        "pkg/sub/sibling.py",
        "pkg/util.py",
    ]


def test_parent_package_init_files_run_and_their_imports_count(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "a/__init__.py": "from .extra import setup\n",
            "a/extra.py": "def setup():\n    pass\n",
            "a/b/c.py": "VALUE = 1\n",  # a/b is a namespace package: no __init__.py
            "a/b/d.py": "",
        },
    )
    assert sorted(code_closure(["a.b.c:VALUE"], tmp_path)) == [
        "a/__init__.py",
        "a/b/c.py",
        "a/extra.py",
    ]


def test_stdlib_installed_packages_and_blazefl_are_left_out(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "plugin.py": """\
                import json, os.path
                import numpy as np
                from torch import nn
                from blazefl.algorithms.fedavg import FedAvg
                import blazefl
            """
        },
    )
    assert list(code_closure(["plugin:X"], tmp_path)) == ["plugin.py"]
    # even where the blazefl sources lie under base (a run from the repository root)
    assert code_closure(["blazefl.algorithms.fedavg:FedAvg"], ROOT) == {}
    assert code_closure(["stages.user_code:code_closure"], ROOT) == {}


def test_environment_folders_under_base_are_left_out(tmp_path: Path) -> None:
    site = "env/lib/python3.11/site-packages"
    tree(
        tmp_path,
        {
            "env/pyvenv.cfg": "home = /usr/bin\n",
            "env/tools.py": "",
            f"{site}/vendored/__init__.py": "",
            "other/site-packages/lib2/__init__.py": "",
            "plugin.py": "import env.tools\nimport vendored\nimport lib2\n",
        },
    )
    # symlinks from plain folders into an environment: still the environment's files
    (tmp_path / "vendored").symlink_to(tmp_path / site / "vendored")
    (tmp_path / "lib2").symlink_to(tmp_path / "other/site-packages/lib2")
    assert list(code_closure(["plugin:X"], tmp_path)) == ["plugin.py"]


def test_a_module_outside_base_or_missing_contributes_nothing(tmp_path: Path) -> None:
    tree(tmp_path, {"inside/plugin.py": "import outside\n", "outside.py": ""})
    base = tmp_path / "inside"
    (base / "outside.py").symlink_to(tmp_path / "outside.py")  # resolves outside base
    assert list(code_closure(["plugin:X"], base)) == ["plugin.py"]
    assert code_closure(["not_here.mod:X", "fedavg", "cnn"], base) == {}


def test_a_cycle_between_two_modules_ends(tmp_path: Path) -> None:
    tree(tmp_path, {"ping.py": "import pong\n", "pong.py": "from ping import *\n"})
    assert sorted(code_closure(["ping:X"], tmp_path)) == ["ping.py", "pong.py"]


def test_star_imports_and_literal_import_module_calls(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "pkg/__init__.py": "__all__ = ['sub']\n__all__ += ['more']\n",
            "pkg/sub.py": "",
            "pkg/more.py": "",
            "pkg/skipped.py": "",
            "dyn.py": "",
            "plugin.py": """\
                import importlib
                from pkg import *
                importlib.import_module("dyn")
            """,
        },
    )
    assert sorted(code_closure(["plugin:X"], tmp_path)) == [
        "dyn.py",
        "pkg/__init__.py",
        "pkg/more.py",
        "pkg/sub.py",
        "plugin.py",
    ]


def test_closure_is_deterministic_and_sorted(myfl: Path) -> None:
    first = code_closure(["myfl.feddyn:FedDyn", "mymodel:f", "cnn"], myfl)
    second = code_closure(["cnn", "mymodel:f", "myfl.feddyn:FedDyn", "myfl.feddyn:FedDyn"], myfl)
    assert first == second and list(first) == sorted(first)
    assert list(first) == ["myfl/__init__.py", "myfl/common.py", "myfl/feddyn.py", "mymodel.py"]


def test_bounds_and_unparsable_files_are_refused_in_one_line(
    myfl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(user_code, "MAX_CODE_FILES", 2)
    with pytest.raises(UserCodeError, match="more than 2 module files") as info:
        code_closure(["myfl.feddyn:FedDyn"], myfl)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(user_code, "MAX_CODE_FILES", 2000)
    monkeypatch.setattr(user_code, "MAX_CODE_FILE_BYTES", 10)
    with pytest.raises(UserCodeError, match="myfl/feddyn.py: .* bytes, more than the 10"):
        code_closure(["myfl.feddyn:FedDyn"], myfl)
    monkeypatch.undo()
    (myfl / "myfl/common.py").write_text("def broken(:\n")
    with pytest.raises(UserCodeError, match=r"myfl/common.py:1: cannot be parsed"):
        code_closure(["myfl.feddyn:FedDyn"], myfl)


def test_config_code_selects_the_code_each_stage_runs(
    myfl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {
        "fl.algorithm": "myfl.feddyn:FedDyn",
        "model.name": "mymodel:f",
        "data.dataset": "mydata:load",
        "fl.rounds": 3,
    }
    algorithm = code_closure(["myfl.feddyn:FedDyn"], myfl)
    assert config_code(config, "prepare", myfl) == {"mydata.py": sha(myfl / "mydata.py")}
    assert config_code(config, "partition", myfl) == algorithm
    both = code_closure(["myfl.feddyn:FedDyn", "mymodel:f"], myfl)
    assert config_code(config, "init", myfl) == config_code(config, "round", myfl) == both
    assert config_code(config, "report", myfl) == {}
    monkeypatch.chdir(myfl)  # base defaults to the working directory
    assert config_code(config) == code_closure(list(config.values())[:3], myfl)  # type: ignore[arg-type]
    builtin = {"fl.algorithm": "fedavg", "model.name": "cnn", "data.dataset": "synthetic"}
    assert config_code(builtin) == {}
    assert set(CODE_KEYS) == {"data.dataset", "data.partition", "model.name", "fl.algorithm"}


def test_listing_is_silent_about_the_users_source(tmp_path: Path) -> None:
    tree(tmp_path, {"plugin.py": 'PATTERN = "\\d+"\n'})  # an invalid escape: "\d+"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(code_closure(["plugin:X"], tmp_path)) == ["plugin.py"]


def test_code_differences_lists_changed_added_and_removed_paths() -> None:
    recorded = {"a.py": "1", "b.py": "2", "gone.py": "3"}
    current = {"a.py": "1", "b.py": "9", "new.py": "4"}
    assert code_differences(recorded, current) == ["b.py", "gone.py", "new.py"]
    assert code_differences(recorded, dict(recorded)) == []


# -- copies of the code, and the tree re-created from them --------------------------------------


def test_copies_round_trip_into_an_importable_tree(myfl: Path, tmp_path: Path) -> None:
    (myfl / "mymodel.py").write_text((myfl / "myfl/common.py").read_text())  # same bytes
    record = code_closure(["myfl.feddyn:FedDyn", "mymodel:f"], myfl)
    copies = build_code_copies(myfl, record)
    assert sorted(copies) == sorted({f"{h}.py" for h in record.values()})
    assert len(copies) == len(record) - 1  # identical files are stored once
    store = tmp_path / "run" / "code"
    assert write_code_copies(store, myfl, record) == copies
    assert {p.name: p.read_bytes() for p in store.iterdir()} == copies
    before = {p.name: p.stat().st_mtime_ns for p in store.iterdir()}
    write_code_copies(store, myfl, record)  # unchanged copies are left alone
    assert {p.name: p.stat().st_mtime_ns for p in store.iterdir()} == before

    dest = materialize_code(copies, record, tmp_path / "restored")
    assert dest == tmp_path / "restored"
    assert code_closure(["myfl.feddyn:FedDyn", "mymodel:f"], dest) == record
    assert not (dest / "myfl/unused.py").exists()
    probe = "import myfl.feddyn; print(myfl.feddyn.FedDyn.factor)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=dest, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("6.28"), out.stderr


def test_a_file_edited_after_its_record_is_not_copied(myfl: Path) -> None:
    record = code_closure(["myfl.feddyn:FedDyn"], myfl)
    (myfl / "myfl/common.py").write_text("def scale(x):\n    return 3 * x\n")
    with pytest.raises(UserCodeError, match="myfl/common.py changed since the run recorded it"):
        build_code_copies(myfl, record)
    (myfl / "myfl/common.py").unlink()
    with pytest.raises(UserCodeError, match="myfl/common.py cannot be read"):
        build_code_copies(myfl, record)


@pytest.mark.parametrize(
    "rel", ["../evil.py", "/etc/evil.py", "a/../../evil.py", "a//b.py", "./a.py", "notes.txt"]
)
def test_materialize_refuses_unsafe_paths(rel: str, tmp_path: Path) -> None:
    data = b"x = 1\n"
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(UserCodeError, match="not a relative .py path") as info:
        materialize_code({f"{digest}.py": data}, {rel: digest}, tmp_path / "dest")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "evil.py").exists()


def test_materialize_refuses_tampered_or_missing_copies_and_symlinks(
    myfl: Path, tmp_path: Path
) -> None:
    record = code_closure(["myfl.feddyn:FedDyn"], myfl)
    copies = build_code_copies(myfl, record)
    digest = record["myfl/common.py"]
    tampered = {**copies, f"{digest}.py": b"def scale(x):\n    return 0\n"}
    with pytest.raises(UserCodeError, match="copy of myfl/common.py does not hash"):
        materialize_code(tampered, record, tmp_path / "a")
    missing = {k: v for k, v in copies.items() if k != f"{digest}.py"}
    with pytest.raises(UserCodeError, match=f"no copy {digest}.py of myfl/common.py"):
        materialize_code(missing, record, tmp_path / "b")
    with pytest.raises(UserCodeError, match="not a sha256"):
        materialize_code(copies, {"myfl/common.py": "abc"}, tmp_path / "c")
    # a folder of dest swapped for a symlink would send the write elsewhere
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "d").mkdir()
    os.symlink(outside, tmp_path / "d" / "myfl")
    with pytest.raises(UserCodeError, match="symlink"):
        materialize_code(copies, record, tmp_path / "d")
    assert not any(outside.iterdir())
