"""The core needs only torch and numpy: safetensors and zarr serve the pipeline."""

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

    BLOCKED = ("safetensors", "zarr")

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

    spec = ExperimentSpec(
        seed=1, data_size=120, test_size=40, num_clients=4, clients_per_round=2, rounds=1,
        hparams=TrainHParams(batch_size=32, augment=True),
    )
    hashes = []
    for mode in ("sequential", "threads"):
        server, rounds = simulate(spec, mode=mode, workers=2)
        hashes.append(rounds[0].uplink_sha256)
    assert hashes[0] == hashes[1]
    loaded = sorted(m for m in ("safetensors", "zarr") if m in sys.modules)
    print("OK", rounds[0].summary["test_accuracy"], loaded)
    """
)


def test_core_imports_and_simulates_without_safetensors_and_zarr(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK") and proc.stdout.rstrip().endswith("[]"), proc.stdout
