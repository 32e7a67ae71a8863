"""The user code a run executes: every module file reached from the import paths of a config.

A config names user code by import path (`fl.algorithm: myfl.feddyn:FedDyn`), looked up in the
folder `blazefl` runs in. The named module is not the whole story: it runs its parent
packages' `__init__.py` files and whatever it imports (`myfl/common.py`), and an edit to any
of them changes the results. `code_closure` finds them all by reading the source with `ast`
(nothing is imported or executed, so listing the code of an untrusted or broken project is
safe) and returns {relative path: sha256}: manifests record it, a resumed run compares it
(`code_differences`), `blazefl dvc` lists it as stage deps, and a published run carries the
files themselves as content-addressed copies (`build_code_copies`, `materialize_code`).

What counts: `.py` files under `base` only. Installed packages (numpy, torch), the standard
library, the blazefl package and anything inside an environment under `base` (a folder holding
`pyvenv.cfg`, any `site-packages` / `dist-packages`) are the environment's, recorded elsewhere.

Static analysis over-approximates on purpose: an import inside a function or an `if` counts
even if it never runs, and `from pkg import name` counts `pkg/name.py` when it exists (a
spurious dependency only costs a rerun; a missed one would let a stale result look current).
It cannot see names built at run time (`import_module(f"algos.{x}")`); string literals passed
to `importlib.import_module` / `__import__` are followed.

Example:
    >>> code_closure(["myfl.feddyn:FedDyn", "fedavg"], Path("."))
    {'myfl/__init__.py': '9f2c...', 'myfl/common.py': '51ab...', 'myfl/feddyn.py': '0c7e...'}
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import blazefl
from blazefl.registry import is_import_path
from blazefl.stages.artifacts import atomic_write
from blazefl.stages.config import CODE_KEYS
from blazefl.stages.untrusted import is_safe_relpath

__all__ = [
    "MAX_CODE_FILES",
    "MAX_CODE_FILE_BYTES",
    "UserCodeError",
    "code_closure",
    "config_code",
    "code_differences",
    "build_code_copies",
    "write_code_copies",
    "materialize_code",
]

#: Bounds on a closure (and on a record read back from a run): a project past them is almost
#: certainly an environment or data folder mistaken for code.
MAX_CODE_FILES = 2000
MAX_CODE_FILE_BYTES = 4 << 20

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENV_FOLDERS = ("site-packages", "dist-packages")


class UserCodeError(ValueError):
    """User code cannot be listed, copied or restored; the one-line message says the fix."""


def _package_dirs() -> list[Path]:
    """The folders of the blazefl package itself (blazefl, blazefl.stages, blazefl.pipeline
    live in separate folders of a source checkout), resolved."""
    dirs = {Path(blazefl.__file__).resolve().parent, Path(__file__).resolve().parent}
    # find_spec, not an import: the pipeline layer sits above this one
    spec = importlib.util.find_spec("blazefl.pipeline")
    for location in (spec.submodule_search_locations or []) if spec else []:
        dirs.add(Path(location).resolve())
    return sorted(dirs)


class _Closure:
    """The module graph below one `sys.path` entry (`base`), walked from some module names."""

    def __init__(self, base: Path) -> None:
        self.base = base.resolve()
        self.excluded = _package_dirs()
        self.files: dict[str, str] = {}  # rel path -> sha256
        self.trees: dict[str, ast.Module] = {}  # rel path -> parsed source
        self.seen: set[str] = set()
        self.pending: list[str] = []  # module names still to read, a stack
        self.env_dirs: dict[Path, bool] = {}

    def run(self, names: list[str]) -> dict[str, str]:
        """Read `names` and everything they import; the closure, keys sorted."""
        self.pending = sorted(set(names), reverse=True)
        while self.pending:
            self.add(self.pending.pop())
        return dict(sorted(self.files.items()))

    # -- finding modules, as the path finder does for one sys.path entry -----------------

    def locate(self, name: str) -> list[tuple[str, Path, bool]]:
        """(module, file, is package) for `name` and each parent package that resolves to
        a file under base, outermost first; stops where a part is not found here."""
        found: list[tuple[str, Path, bool]] = []
        folder = self.base
        parts = name.split(".")
        for i, part in enumerate(parts):
            module = ".".join(parts[: i + 1])
            here = folder / part
            if (here / "__init__.py").is_file():  # a regular package wins over part.py
                found.append((module, here / "__init__.py", True))
            elif (folder / f"{part}.py").is_file():
                found.append((module, folder / f"{part}.py", False))
                break  # a plain module has no submodules
            elif not here.is_dir():  # namespace packages (a bare folder) have no file
                break
            folder = here
        return [f for f in found if self.counts(f[1])]

    def in_environment(self, folder: Path) -> bool:
        if folder not in self.env_dirs:
            self.env_dirs[folder] = folder.name in _ENV_FOLDERS or (folder / "pyvenv.cfg").is_file()
        return self.env_dirs[folder]

    def counts(self, path: Path) -> bool:
        """Whether a module file is user code: under base (symlinks resolved), outside the
        blazefl package and outside any environment folder between base and the file."""
        real = path.resolve()
        if not real.is_relative_to(self.base):
            return False
        if any(real.is_relative_to(d) for d in self.excluded):
            return False
        # both routes to the file: a symlink may lead from a plain folder into an environment
        folders = {
            self.base.joinpath(*parts[: i + 1])
            for where in (path, real)
            for parts in [where.relative_to(self.base).parts[:-1]]
            for i in range(len(parts))
        }
        return not any(self.in_environment(f) for f in sorted(folders))

    # -- reading a module ----------------------------------------------------------------

    def add(self, name: str) -> None:
        """Record the files `import name` executes; queue the module names they import."""
        if name.split(".")[0] == "blazefl" or name in self.seen:
            return
        self.seen.add(name)
        for module, path, is_package in self.locate(name):
            rel = path.relative_to(self.base).as_posix()
            if rel in self.files:
                continue
            tree = self.read(path, rel)
            imported = _imports(tree, module, is_package, self.all_names)
            self.pending += reversed(imported)  # a stack: popped in source order

    def read(self, path: Path, rel: str) -> ast.Module:
        try:
            size = path.stat().st_size
            data = b"" if size > MAX_CODE_FILE_BYTES else path.read_bytes()
        except OSError as exc:
            raise UserCodeError(
                f"{rel} cannot be read ({exc.strerror}); make it readable, the run imports it"
            ) from None
        if size > MAX_CODE_FILE_BYTES or len(data) > MAX_CODE_FILE_BYTES:
            raise UserCodeError(
                f"{rel}: {max(size, len(data))} bytes, more than the {MAX_CODE_FILE_BYTES} a "
                "module may have; move data out of .py files under the folder blazefl runs in"
            )
        try:
            # quiet: an invalid escape in the user's source would warn at every listing, where
            # Python itself warns once, when it compiles the file
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(data, filename=rel)
        except (SyntaxError, ValueError) as exc:
            line = getattr(exc, "lineno", None)
            raise UserCodeError(
                f"{rel}{f':{line}' if line else ''}: cannot be parsed "
                f"({getattr(exc, 'msg', exc)}); fix it, the run imports it"
            ) from None
        self.files[rel] = hashlib.sha256(data).hexdigest()
        self.trees[rel] = tree
        if len(self.files) > MAX_CODE_FILES:
            raise UserCodeError(
                f"the user code imports more than {MAX_CODE_FILES} module files under "
                f"{self.base}; run blazefl from the folder of your own code, not above an "
                "environment or data tree"
            )
        return tree

    def all_names(self, package: str) -> list[str]:
        """The literal `__all__` of a package under base (what `from package import *`
        imports as submodules); [] when it has none or is not here."""
        self.add(package)  # parsed now (its own imports are queued) to read its __all__
        located = self.locate(package)
        if not located or located[-1][0] != package or not located[-1][2]:
            return []
        tree = self.trees.get(located[-1][1].relative_to(self.base).as_posix())
        return _literal_all(tree) if tree is not None else []


def _literal_all(tree: ast.Module) -> list[str]:
    """The strings of every top-level `__all__ = [...]` / `__all__ += [...]` list, in order."""
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and isinstance(
                value, ast.List | ast.Tuple
            ):
                names += [
                    e.value
                    for e in value.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)
                ]
    return names


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str | None:
    """The absolute name of `from <level dots><target> import ...` in `module`; None when
    it climbs above the top-level package (an ImportError when it runs)."""
    if level == 0:
        return target
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".") if package else []
    if level > len(parts):
        return None
    stem = parts[: len(parts) - (level - 1)]
    return ".".join([*stem, target] if target else stem) or None


def _imports(
    tree: ast.Module, module: str, is_package: bool, all_names: Callable[[str], list[str]]
) -> list[str]:
    """Every module name the source may import, in source order: import statements at any
    depth (functions, `if`, `try`), and string literals given to `import_module` /
    `__import__`. `from a import b` yields `a` and `a.b` (b may be a submodule)."""
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, is_package, node.level, node.module)
            if target is None:
                continue
            out.append(target)
            for alias in node.names:
                names = all_names(target) if alias.name == "*" else [alias.name]
                out += [f"{target}.{n}" for n in names]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                called in ("import_module", "__import__")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and not first.value.startswith(".")
            ):
                out.append(first.value)
    return out


def code_closure(import_paths: Iterable[str], base: Path) -> dict[str, str]:
    """{posix path relative to base: sha256} of every module file under `base` that importing
    the modules of these import paths executes.

    That is the named module, its parent packages' `__init__.py` files, and transitively
    every module they import (`import x`, `from x import y` with y possibly a submodule,
    relative imports, imports inside functions and `if` blocks), found by parsing with `ast`:
    nothing is imported or executed. Left out: files outside `base`, inside an environment
    under it (a folder holding `pyvenv.cfg`, any `site-packages` / `dist-packages`), and the
    blazefl package. Built-in names (`fedavg`) and import paths whose module is not under
    `base` (an installed package: the environment's business) contribute nothing.

    Args:
        import_paths: config values such as `myfl.feddyn:FedDyn` or `cnn`.
        base: the folder `blazefl` runs in (it is on `sys.path` there).

    Returns:
        The closure, keys sorted: the same files always give the same dict.

    Raises:
        UserCodeError: more than `MAX_CODE_FILES` files, one over `MAX_CODE_FILE_BYTES`, or
            a file that does not parse.

    Example:
        >>> code_closure(["myfl.feddyn:FedDyn"], Path("."))
        {'myfl/__init__.py': '9f2c...', 'myfl/common.py': '51ab...', 'myfl/feddyn.py': '0c7e...'}
    """
    names = [p.partition(":")[0] for p in import_paths if is_import_path(p)]
    return _Closure(Path(base)).run(names)


def config_code(
    config: Mapping[str, Any], stage: str | None = None, base: Path | None = None
) -> dict[str, str]:
    """The closure of the user code named by `config` that `stage` runs.

    Args:
        config: a flat dotted config or a `RunConfig` (`fl.algorithm`, `model.name`, ...).
        stage: a stage kind of `CODE_KEYS` (`prepare`, `partition`, `init`, `round`); None:
            every key of `CODE_KEYS`; a stage no key lists (`report`) runs no user code.
        base: the folder the stage runs in (default: the working directory).

    Returns:
        {posix path relative to base: sha256}, as `code_closure`.

    Example:
        >>> config_code({"fl.algorithm": "myfl.feddyn:FedDyn", "model.name": "cnn",
        ...              "data.dataset": "synthetic"}, "prepare")
        {}
    """
    names = [
        value
        for key, kinds in CODE_KEYS.items()
        if (stage is None or stage in kinds) and isinstance(value := config.get(key), str)
    ]
    return code_closure(names, Path.cwd() if base is None else base)


def code_differences(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """Paths whose hash differs or that exist on one side only, sorted.

    Example:
        >>> code_differences({"a.py": "1", "b.py": "2"}, {"a.py": "1", "b.py": "3", "c.py": "4"})
        ['b.py', 'c.py']
    """
    return sorted(p for p in recorded.keys() | current.keys() if recorded.get(p) != current.get(p))


def _check_record(record: dict[str, str]) -> None:
    """Refuse a record that could not come from `code_closure` (it may be read back from an
    untrusted run): unsafe paths, malformed hashes, too many files."""
    if len(record) > MAX_CODE_FILES:
        raise UserCodeError(
            f"the code record lists {len(record)} files, more than {MAX_CODE_FILES}: the run "
            "is damaged or tampered; restore it from its source"
        )
    for rel, sha in record.items():
        if not is_safe_relpath(rel) or not rel.endswith(".py"):
            raise UserCodeError(
                f"code record path {rel!r:.200} is not a relative .py path without '..': the "
                "run is damaged or tampered; restore it from its source"
            )
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise UserCodeError(
                f"code record hash of {rel} is not a sha256: the run is damaged or tampered; "
                "restore it from its source"
            )


def build_code_copies(base: Path, record: dict[str, str]) -> dict[str, bytes]:
    """Content-addressed copies of the files of `record`, read from `base`; writes nothing.

    Each file is re-hashed: one edited since `record` was made is refused, so the copies are
    always the code the record (and the results) describe. Named by hash, a file that did not
    change between rounds is stored once however many rounds record it.

    Args:
        base: the folder the record's paths are relative to.
        record: {relative path: sha256}, as `code_closure` returns.

    Returns:
        {f"{sha256}.py": the file's bytes}, keys sorted.

    Raises:
        UserCodeError: a file changed, vanished, or the record is malformed.

    Example:
        >>> copies = build_code_copies(Path("."), code_closure(["myfl.feddyn:X"], Path(".")))
        >>> sorted(copies)[0]
        '0c7e....py'
    """
    _check_record(record)
    out: dict[str, bytes] = {}
    for rel, sha in sorted(record.items()):
        path = Path(base) / rel
        try:
            if path.stat().st_size > MAX_CODE_FILE_BYTES:
                raise UserCodeError(
                    f"{rel}: more than {MAX_CODE_FILE_BYTES} bytes; keep data out of .py files"
                )
            data = path.read_bytes()
        except OSError as exc:
            raise UserCodeError(
                f"{rel} cannot be read ({exc.strerror}) though the run recorded it; restore "
                "it or rerun"
            ) from None
        now = hashlib.sha256(data).hexdigest()
        if now != sha:
            raise UserCodeError(
                f"{rel} changed since the run recorded it (sha256 {sha[:12]} -> {now[:12]}); "
                "undo the edit, or rerun so the results come from the code as it is now"
            )
        out[f"{sha}.py"] = data
    return out


def write_code_copies(dest: Path, base: Path, record: dict[str, str]) -> dict[str, bytes]:
    """`build_code_copies`, also written into the folder `dest` (each file atomically; a copy
    already there with the right bytes is kept, so unchanged code is written once).

    Args:
        dest: the content-addressed folder (created if missing).
        base: the folder the record's paths are relative to.
        record: {relative path: sha256}.

    Returns:
        {f"{sha256}.py": bytes}, as `build_code_copies`.

    Example:
        >>> write_code_copies(Path("runs/a/code"), Path("."), {"m.py": sha})
        {'<sha>.py': b'...'}
    """
    copies = build_code_copies(base, record)
    for name, data in copies.items():
        target = Path(dest) / name
        if (
            target.is_file()
            and not target.is_symlink()
            and target.stat().st_size == len(data)
            and target.read_bytes() == data
        ):
            continue  # content-addressed: the same name with the same bytes is this file
        atomic_write(target, data, root=Path(dest))
    return copies


def materialize_code(copies: dict[str, bytes], record: dict[str, str], dest: Path) -> Path:
    """Re-create the recorded source tree under `dest`, so a reader can put `dest` on
    `sys.path` and import the run's own code.

    `copies` and `record` are untrusted (a downloaded run): every path must be a plain
    relative `.py` path (no `..`, no absolute path), every copy must hash to its name, and no
    write goes through a symlink under `dest`.

    Args:
        copies: {f"{sha256}.py": bytes}, as `build_code_copies` returns.
        record: {relative path: sha256}, as `code_closure` returns.
        dest: the folder to fill (created if missing).

    Returns:
        dest.

    Raises:
        UserCodeError: unsafe path, missing or tampered copy, a file in the way.

    Example:
        >>> sys.path.insert(0, str(materialize_code(copies, record, Path("code"))))
    """
    _check_record(record)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for rel, sha in sorted(record.items()):
        data = copies.get(f"{sha}.py")
        if data is None:
            raise UserCodeError(
                f"no copy {sha}.py of {rel}: the run's code folder is incomplete; restore the "
                "run from its source"
            )
        if len(data) > MAX_CODE_FILE_BYTES or hashlib.sha256(data).hexdigest() != sha:
            raise UserCodeError(
                f"the copy of {rel} does not hash to {sha[:12]}: the run is damaged or "
                "tampered; restore it from its source"
            )
        try:
            # root=dest: every existing folder on the way is checked to be no symlink
            atomic_write(dest / rel, data, root=dest)
        except ValueError as exc:
            raise UserCodeError(str(exc)) from None
        except OSError as exc:
            raise UserCodeError(
                f"{rel} cannot be written under {dest} ({exc.strerror}); use an empty folder"
            ) from None
    return dest
