"""The original contract's storage mode keeps its pickles out of reach: the round's files live
in a folder only this user can write (removed with the round), and an uplink file is read
without running pickled code: only tensors, containers and the uplink's own dataclass types."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest
import torch

from blazefl.core import IPCMode
from blazefl.core.original_pool import ROUND_DIR_PREFIX, load_package, private_round_file
from tests.compat.original_process import Downlink, OriginalTrainer, Uplink

MARKER = "blazefl-storage-marker"


class Evil:
    """Unpickling it would run `os.system` (if anything reads it with weights_only=False)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {MARKER}",))


def _round_folder(tmp_path: Path) -> Path:
    folder = tmp_path / f"{ROUND_DIR_PREFIX}test"
    folder.mkdir(mode=0o700)
    return folder


def test_a_round_leaves_no_files_in_share_dir(tmp_path: Path) -> None:
    share = tmp_path / "share"
    trainer = OriginalTrainer(2, share, IPCMode.STORAGE)
    try:
        trainer.local_process(Downlink("down", torch.tensor(1.0)), [0, 1, 2])
        assert [p.cid for p in trainer.uplink_package()] == [0, 1, 2]
        assert list(share.iterdir()) == []  # the private round folder went with the round
    finally:
        trainer.close()


def test_an_uplink_file_runs_no_pickled_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = _round_folder(tmp_path)
    good = folder / "0.pt"
    torch.save(Uplink(0, "up", torch.ones(2)), good)
    assert load_package(good, {Uplink}).message == "up"
    evil = folder / "1.pt"
    evil.write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(ValueError, match="cannot be read as a package"):
        load_package(evil, {Uplink})
    assert not (tmp_path / MARKER).exists()
    with pytest.raises(ValueError, match="cannot be read as a package"):
        load_package(good, set())  # a type nobody allowed is refused too


def test_files_outside_a_private_round_folder_are_refused(tmp_path: Path) -> None:
    planted = tmp_path / "0.pt"
    torch.save(Uplink(0, "up", torch.ones(2)), planted)
    with pytest.raises(ValueError, match="not a file of this round's private folder"):
        private_round_file(planted)
    shared = tmp_path / f"{ROUND_DIR_PREFIX}open"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # group/other may write: not private
    with pytest.raises(ValueError, match="not a file of this round's private folder"):
        private_round_file(shared / "0.pt")
    folder = _round_folder(tmp_path)
    (folder / "link.pt").symlink_to(planted)
    with pytest.raises(ValueError, match="not a file of this round's private folder"):
        private_round_file(folder / "link.pt")
    assert private_round_file(folder / "2.pt") == folder / "2.pt"


#: Every place the package unpickles, and what it reads: nothing there is an artifact (run
#: directories hold safetensors, zarr and JSON only), and only the contrib example's worker
#: unpickles a file in full, the config its own parent process wrote into the private folder.
UNPICKLERS = {
    ("blazefl/contrib/fedavg_clients.py", "torch.load"): "the private round folder's config",
    ("blazefl/core/original_pool.py", "torch.load"): "uplinks, weights_only=True",
    ("blazefl/core/original_workers.py", "_TaskUnpickler"): "tasks on the pool's own pipe",
    ("blazefl/core/pool_worker.py", "pickle.loads"): "the workload on the pool's own pipe",
    ("blazefl/core/ray_actor.py", "pickle.loads"): "the workload from the driver (object store)",
}


def test_the_package_unpickles_only_its_own_pipes_and_private_round_files() -> None:
    root = Path(__file__).resolve().parents[2]
    found: dict[tuple[str, str], list[ast.Call]] = {}
    for folder in ("blazefl", "stages", "pipeline"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    name = ast.unparse(node.func)
                    if name in {"torch.load", "pickle.load", "pickle.loads", "_TaskUnpickler"}:
                        key = (path.relative_to(root).as_posix(), name)
                        found.setdefault(key, []).append(node)
    assert set(found) == set(UNPICKLERS)  # stages/ and pipeline/, the artifact readers: none
    for (file, name), calls in found.items():
        for call in calls:
            if name == "torch.load":  # reads a checked private round file, whatever it holds
                assert ast.unparse(call.args[0]).startswith("private_round_file("), file
                weights_only = {k.arg: ast.unparse(k.value) for k in call.keywords}
                full = file == "blazefl/contrib/fedavg_clients.py"
                assert weights_only.get("weights_only") == ("False" if full else "True"), file
