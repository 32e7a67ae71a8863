"""Command-line arguments of `python -m benchmarks.run`, and finding Flower's interpreter."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks.workloads import workloads

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

#: Where benchmarks/README.md installs Flower (its ray pin clashes with the dev extra's ray).
FLOWER_VENV_PYTHON = ROOT / ".venv-flower" / "bin" / "python"

FLOWER_INSTALL = (
    "python3.11 -m venv .venv-flower && .venv-flower/bin/pip install torch==2.14.1 "
    "torchvision==0.29.1 && .venv-flower/bin/pip install -e '.[bench-flower,ray]'"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="blazefl benchmark harness: every execution mode against a plain-PyTorch floor",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workload", default="W", choices=[*workloads(), "all"])
    p.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    p.add_argument("--quick", action="store_true", help="shrunk workloads, 1 repeat: smoke test")
    p.add_argument(
        "--variants", default=None, help="comma-separated subset of variant names (default: all)"
    )
    p.add_argument(
        "--pss",
        choices=["pass", "inline", "off"],
        default=None,
        help="PSS measurement: extra untimed pass (default), during timed runs "
        "(default with --quick), or none",
    )
    p.add_argument(
        "--flower-python",
        default=None,
        metavar="PATH",
        help="interpreter with flwr[simulation] for flower-2 (default: this one if it imports "
        f"flwr, else {FLOWER_VENV_PYTHON.relative_to(ROOT)} if it does)",
    )
    p.add_argument(
        "--ray-netns",
        choices=["auto", "on", "off"],
        default="auto",
        help="run the variants that start Ray (ray-2, flower-2) in a network namespace with "
        "only loopback (unshare -n): on, off, or auto (on where unshare works, e.g. as root)",
    )
    p.add_argument("--workdir", default=None, help="parent of the scratch dir (default: $TMPDIR)")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    p.add_argument(
        "--label",
        default=None,
        help="results as <workload>-LABEL.md/.json, so a subset run (e.g. --variants) does not "
        "replace the full table",
    )
    p.add_argument("--timeout", type=float, default=1800, help="per-run timeout, seconds")
    p.add_argument("--keep", action="store_true", help="keep run directories")
    p.add_argument(
        "--readme",
        default=None,
        help="also replace the section between '<!-- benchmark:WORKLOAD:start -->' "
        "and '<!-- benchmark:WORKLOAD:end -->' in this markdown file",
    )
    a = p.parse_args(argv)
    if a.label is not None and not a.label.replace("-", "").replace("_", "").isalnum():
        p.error(f"--label {a.label!r}: letters, digits, '-' and '_' only")
    if a.repeats is None:
        a.repeats = 1 if a.quick else 3
    if a.pss is None:
        a.pss = "inline" if a.quick else "pass"
    return a


def _versions(python: str, modules: str) -> str | None:
    """`python -c 'import MODULES'` and their versions, or None if that fails."""
    code = f"import {modules}; print(' '.join(m.__version__ for m in ({modules},)))"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def find_flower_python(arg: str | None) -> tuple[str | None, str]:
    """(interpreter, "flwr X ray Y") for flower-2, or (None, one line saying what to do)."""
    candidates = [arg] if arg else [sys.executable, str(FLOWER_VENV_PYTHON)]
    for python in candidates:
        if Path(python).exists() and (found := _versions(python, "flwr, ray")):
            flwr, ray = found.split()
            return python, f"flwr {flwr}, ray {ray}"
    where = f"--flower-python {arg} cannot import flwr and ray" if arg else "flwr is not installed"
    return None, f"flower-2: {where}; install the pinned extra: {FLOWER_INSTALL}"


def ray_version() -> str | None:
    """Ray's version for this interpreter (blazefl's ray mode runs here), None if missing."""
    return _versions(sys.executable, "ray")


def ray_install(python: str) -> str:
    """Which Ray install `python` has: "minimal" (`pip install ray`, what `blazefl[ray]` and
    Flower's extra install) or "default" (with `ray[default]`'s dashboard packages, whose
    modules Ray's daemons then load: its start takes seconds more on 2 cores)."""
    code = "import ray.dashboard.optional_deps"  # Ray's own test for ray[default]
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return "default" if done.returncode == 0 else "minimal"
