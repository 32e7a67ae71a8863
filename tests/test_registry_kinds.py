"""An import path in the config must resolve to the kind of object its key expects, checked
before anything it names is instantiated or called: a wrong one ends in one `error:` line
(exit 2) that names the key, the path, what it resolved to and what it must be, and nothing
is written. Importing keeps `sys.path` as it was, except where pool workers need the folder.

User modules are written to a temp folder the test runs in, each under a name of its own (the
registries cache what they accepted by import path, and `sys.modules` outlives a test).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

from blazefl.algorithms import ALGORITHMS
from blazefl.data import DATASETS
from blazefl.models import MODELS, build_model
from blazefl.pipeline.cli import main
from blazefl.registry import Registry, RegistryError, describe_kind, import_object

_counter = itertools.count()

ALGO_MUST = "name a subclass of blazefl.algorithms.Algorithm"
MODEL_MUST = "name a plain Python function (def) or a subclass of torch.nn.Module accepting"
DATA_MUST = "name a plain Python function (def) accepting root="


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_refused(result: Result, out: Path, *needles: str) -> str:
    """Exit 2, exactly one `error:` line on stderr holding every needle, no traceback, and
    nothing under `out`; returns the line."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))
    return lines[0]


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder of user modules, the working directory; its modules leave `sys.modules`."""
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if str(folder) in (getattr(sys.modules[name], "__file__", None) or ""):
            del sys.modules[name]


@pytest.fixture
def write_module(user_dir: Path) -> Callable[[str], str]:
    """Write a user module with this source; returns its (unique) module name."""

    def write(source: str) -> str:
        name = f"usercode_{next(_counter)}"
        (user_dir / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


# -- the CLI: every wrong kind is one line, before anything runs -------------------------------
@pytest.mark.parametrize(
    ("setting", "needles"),
    [
        ("fl.algorithm=subprocess:Popen", ["fl.algorithm", "'subprocess:Popen'", "class Popen"]),
        ("fl.algorithm=os.path:join", ["fl.algorithm", "'os.path:join'", "a function"]),
        ("fl.algorithm=os:sep", ["fl.algorithm", "'os:sep'", "a str"]),
        ("fl.algorithm=blazefl:registry", ["fl.algorithm", "a module"]),
        ("model.name=os:system", ["model.name", "'os:system'", "a builtin_function_or_method"]),
        ("model.name=builtins:dict", ["model.name", "'builtins:dict'", "class dict"]),
        ("model.name=torch.nn:Linear", ["model.name", "class Linear", "must accept"]),
        ("data.dataset=builtins:print", ["data.dataset", "'builtins:print'", "a builtin_"]),
        ("data.dataset=functools:partial", ["data.dataset", "class partial"]),
        ("data.dataset=shutil:rmtree", ["data.dataset", "a function", "must accept"]),
    ],
)
def test_a_wrong_kind_is_one_line_and_nothing_is_written(
    tmp_path: Path, setting: str, needles: list[str]
) -> None:
    out = tmp_path / "out"
    line = assert_refused(cli("run", "--out", str(out), "-q", "--set", setting), out, *needles)
    assert "<" not in line  # a type name, never a repr like <function join at 0x...>


def test_the_refusal_names_what_the_key_must_be(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for setting, must in [
        ("fl.algorithm=subprocess:Popen", ALGO_MUST),
        ("model.name=os:system", MODEL_MUST),
        ("data.dataset=builtins:print", DATA_MUST),
    ]:
        assert_refused(cli("run", "--out", str(out), "--set", setting), out, must)


def test_a_plain_class_in_a_user_module_is_refused_without_being_instantiated(
    tmp_path: Path, user_dir: Path, write_module: Callable[[str], str]
) -> None:
    # it looks like an algorithm (name, HParams, builders) but does not derive from Algorithm
    module = write_module(
        """
        from pathlib import Path
        from blazefl.algorithms import NoHParams

        class LooksLikeOne:
            name = "looks"
            HParams = NoHParams

            def __init__(self):
                Path("instantiated").write_text("x")

            def server(self, exp, generator): ...
            def workload(self, exp): ...
            def public_size(self, hparams): return 0
            def check(self, spec): ...

        def factory(*, num_classes, in_channels, image_size, dropout):
            Path("called").write_text("x")

        class Callable:
            def __call__(self, *, root, size, seed, train):
                Path("called").write_text("x")

        loader = Callable()
        """
    )
    out = tmp_path / "out"
    for setting, needles in [
        (f"fl.algorithm={module}:LooksLikeOne", ["class LooksLikeOne", ALGO_MUST]),
        (f"data.dataset={module}:loader", ["a Callable", DATA_MUST]),
        (f"data.dataset={module}:Callable", ["class Callable", DATA_MUST]),
    ]:
        assert_refused(cli("run", "--out", str(out), "--set", setting), out, *needles)
    assert not (user_dir / "instantiated").exists()
    assert not (user_dir / "called").exists()


def test_an_algorithm_class_that_cannot_be_built_is_one_line(
    tmp_path: Path, write_module: Callable[[str], str]
) -> None:
    module = write_module(
        """
        from blazefl.algorithms import FedAvg

        class NeedsArgs(FedAvg):
            name = "needs_args"

            def __init__(self, lr):
                super().__init__()
        """
    )
    out = tmp_path / "out"
    result = cli("run", "--out", str(out), "--set", f"fl.algorithm={module}:NeedsArgs")
    assert_refused(result, out, "fl.algorithm", "class NeedsArgs() failed (TypeError:", "without")


@pytest.mark.parametrize(
    ("source", "needles"),
    [
        ("raise RuntimeError('boom')\n", ["RuntimeError: boom", ".py:1)", "fix that module"]),
        ("def f(:\n", ["SyntaxError: invalid syntax", ".py:1)"]),
        ("import sys\nsys.exit(3)\n", ["SystemExit: 3"]),
    ],
    ids=["raises", "syntax-error", "sys-exit"],
)
def test_a_user_module_that_fails_to_import_is_one_line(
    tmp_path: Path, write_module: Callable[[str], str], source: str, needles: list[str]
) -> None:
    module = write_module(source)
    out = tmp_path / "out"
    result = cli("run", "--out", str(out), "--set", f"fl.algorithm={module}:X")
    assert_refused(result, out, "fl.algorithm", f"importing {module} raised", *needles)


def test_the_command_line_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "blazefl.pipeline.cli", "run", "--out", str(out)]
        + ["--set", "fl.algorithm=subprocess:Popen"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: fl.algorithm: "), proc.stderr
    assert not out.exists()


# -- what is admitted ------------------------------------------------------------------------
def test_user_functions_and_module_subclasses_are_admitted(
    write_module: Callable[[str], str],
) -> None:
    module = write_module(
        """
        import torch
        from blazefl.algorithms import FedAvg

        class Net(torch.nn.Module):
            def __init__(self, *, num_classes, in_channels, image_size, dropout):
                super().__init__()
                self.fc = torch.nn.Linear(in_channels * image_size * image_size, num_classes)

        def loader(*, root, size, seed, train, **_):
            raise AssertionError("not called by the check")

        class MyFedAvg(FedAvg):
            name = "my_fedavg"

        instance = MyFedAvg()
        """
    )
    assert isinstance(build_model(f"{module}:Net", num_classes=3, image_size=4), torch.nn.Module)
    assert DATASETS.get(f"{module}:loader").__name__ == "loader"
    assert ALGORITHMS.get(f"{module}:MyFedAvg").name == "my_fedavg"
    assert ALGORITHMS.get(f"{module}:instance").name == "my_fedavg"


def test_describe_kind_is_one_bounded_line_and_never_a_repr() -> None:
    odd = type("a\nb" + "c" * 200, (), {"__repr__": lambda self: "NEVER"})
    assert describe_kind(odd) == "class a?b" + "c" * 77
    assert describe_kind(odd()).startswith("an a?b")
    assert describe_kind(print) == "a builtin_function_or_method"


# -- importing: only well-formed names, and sys.path as it was --------------------------------
@pytest.mark.parametrize("name", ["evil", "evil.f", "evil:", "evil:f;x", "evil :f", "./evil:f"])
def test_a_malformed_name_imports_nothing(tmp_path: Path, user_dir: Path, name: str) -> None:
    (user_dir / "evil.py").write_text("open('imported', 'w').close()\ndef f(): pass\n")
    out = tmp_path / "out"
    for key in ("fl.algorithm", "model.name", "data.dataset"):
        result = cli("run", "--out", str(out), "--set", f"{key}={name}")
        assert_refused(result, out, key)
    with pytest.raises(RegistryError, match="not an import path"):
        import_object(name, "thing")
    assert not (user_dir / "imported").exists()
    assert "evil" not in sys.modules


def test_sys_path_is_restored_after_a_refused_or_failed_import(
    user_dir: Path, write_module: Callable[[str], str]
) -> None:
    module = write_module("class Plain:\n    pass\n")
    before = list(sys.path)
    cases: list[tuple[Registry[Any], str]] = [
        (ALGORITHMS, f"{module}:Plain"),  # imported from the folder, then refused
        (MODELS, f"{module}:missing"),
        (DATASETS, "no_such_module_here:f"),
    ]
    for registry, path in cases:
        with pytest.raises(RegistryError):
            registry.get(path)
        assert sys.path == before
    assert import_object("os.path:join", "function") is not None
    assert sys.path == before


def test_the_folder_stays_on_sys_path_once_user_code_from_it_is_admitted(
    user_dir: Path, write_module: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # process-pool workers copy this process's sys.path and unpickle the workload by name
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(user_dir))])
    module = write_module("def loader(*, root, size, seed, train):\n    pass\n")
    assert str(user_dir) not in sys.path
    DATASETS.get(f"{module}:loader")
    assert sys.path[0] == str(user_dir)
