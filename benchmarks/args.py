"""Command-line arguments of `python -m benchmarks.run`."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.workloads import workloads

RESULTS = Path(__file__).resolve().parent / "results"


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
    p.add_argument("--workdir", default=None, help="parent of the scratch dir (default: $TMPDIR)")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    p.add_argument("--timeout", type=float, default=1800, help="per-run timeout, seconds")
    p.add_argument("--keep", action="store_true", help="keep run directories")
    p.add_argument(
        "--readme",
        default=None,
        help="also replace the section between '<!-- benchmark:WORKLOAD:start -->' "
        "and '<!-- benchmark:WORKLOAD:end -->' in this markdown file",
    )
    a = p.parse_args(argv)
    if a.repeats is None:
        a.repeats = 1 if a.quick else 3
    if a.pss is None:
        a.pss = "inline" if a.quick else "pass"
    return a
