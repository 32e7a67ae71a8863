"""The core needs only torch and numpy: safetensors and zarr serve the pipeline, scikit-learn
only the digits dataset."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import blazefl

ROOT = Path(blazefl.__file__).resolve().parents[1]

# Installed through sitecustomize, so it also holds in any process the script starts.
BLOCKER = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = BLOCKED_NAMES

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, Blocker())
    """
)

SCRIPT = textwrap.dedent(
    """
    import sys

    for name in ("safetensors", "zarr"):
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"the blocker let {name} through")

    import blazefl
    from blazefl import ExperimentSpec, TrainHParams, simulate

    spec = ExperimentSpec.from_flat({
        "seed": 1, "data.size": 120, "data.test_size": 40, "data.clients": 4,
        "fl.clients_per_round": 2, "fl.rounds": 1, "train.local_epochs": 1,
        "train.batch_size": 32, "train.augment": True,
    })
    hashes = []
    for mode in ("sequential", "threads"):
        server, rounds = simulate(spec, mode=mode, workers=2)
        hashes.append(rounds[0].uplink_sha256)
    assert hashes[0] == hashes[1]
    loaded = sorted(m for m in ("safetensors", "zarr") if m in sys.modules)
    print("OK", rounds[0].summary["test_accuracy"], loaded)
    """
)


DIGITS_SCRIPT = textwrap.dedent(
    """
    from blazefl.data import MissingDependencyError, load_dataset

    assert len(load_dataset("synthetic", size=20)) == 20
    try:
        load_dataset("digits")
    except MissingDependencyError as exc:
        assert isinstance(exc, ImportError) and isinstance(exc, ValueError)
        print("ERR", exc)
    else:
        raise SystemExit("digits loaded without scikit-learn")
    """
)


def run_blocked(tmp_path: Path, blocked: tuple[str, ...], script: str) -> str:
    """Run `script` in a fresh interpreter where importing any of `blocked` fails."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.replace("BLOCKED_NAMES", repr(blocked)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_core_imports_and_simulates_without_safetensors_and_zarr(tmp_path: Path) -> None:
    stdout = run_blocked(tmp_path, ("safetensors", "zarr"), SCRIPT)
    assert stdout.startswith("OK") and stdout.rstrip().endswith("[]"), stdout


def test_digits_without_scikit_learn_says_what_to_install(tmp_path: Path) -> None:
    stdout = run_blocked(tmp_path, ("sklearn",), DIGITS_SCRIPT)
    assert stdout.startswith("ERR") and len(stdout.strip().splitlines()) == 1, stdout
    assert "pip install 'blazefl[digits]'" in stdout, stdout
