"""report: every round's metrics -> summary.json (a small metric for `dvc exp show`),
plots/metrics.json (all rounds as one list, the data of `dvc plots show`) and a PNG plot of
loss and accuracy per round (needs the optional matplotlib)."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

from blazefl.stages.artifacts import ArtifactError, RunDir, atomic_write, canonical_json
from blazefl.stages.config import RunConfig


def collect_metrics(run: RunDir, rounds: int) -> list[dict[str, Any]]:
    """Metrics of rounds 1..rounds, in order; a missing file is an `ArtifactError`."""
    return [run.read_json(run.metrics_path(t)) for t in range(1, rounds + 1)]


def report(config: RunConfig, run: RunDir, plot: bool = True) -> Path:
    """Write `RUN/summary.json`, `RUN/plots/metrics.json` and, if matplotlib is installed,
    `RUN/plots/metrics.png`.

    Returns:
        The summary file.
    """
    rounds = config.spec.fl.rounds
    if run.last_complete_round() is None or (run.last_complete_round() or 0) < rounds:
        raise ArtifactError(
            f"report needs rounds 1-{rounds} in {run.root}; run them first (blazefl run)"
        )
    metrics = collect_metrics(run, rounds)
    atomic_write(run.summary_path, canonical_json(run_summary(metrics)), run.root)
    atomic_write(run.plot_data_path, canonical_json(metrics), run.root)
    if plot and metrics:
        write_plot(metrics, run.plot_path, run.root)
    return run.summary_path


def run_summary(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json of these rounds' metrics: the last round's value of every metric (an
    algorithm's own included), the best test accuracy and the number of rounds.

    Example:
        >>> run_summary([{"round": 1, "test_accuracy": 0.5, "test_loss": 1.0, "train_loss": 2.0}])
        {'best_test_accuracy': 0.5, 'rounds': 1, 'test_accuracy': 0.5, 'test_loss': 1.0, ...}
    """
    final = metrics[-1] if metrics else {}
    accs = [m["test_accuracy"] for m in metrics if m.get("test_accuracy") is not None]
    return {
        "test_accuracy": None,
        "test_loss": None,
        "train_loss": None,
        **{k: v for k, v in final.items() if k != "round"},
        "best_test_accuracy": max(accs) if accs else None,
        "rounds": len(metrics),
    }


def write_plot(metrics: list[dict[str, Any]], path: Path, run_root: Path | None = None) -> bool:
    """Plot loss and accuracy per round; returns False (with a message) without matplotlib.

    Args:
        metrics: every round's metrics.
        path: the PNG to write (atomically, read-only).
        run_root: the run directory `path` lies in (no symlink between them is followed).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "report: matplotlib is not installed, so no plot was written; "
            "install it with: pip install 'blazefl[plot]'",
            file=sys.stderr,
        )
        return False
    rounds = [m["round"] for m in metrics]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(rounds, [m["train_loss"] for m in metrics], marker="o", label="train")
    ax_loss.plot(rounds, [m["test_loss"] for m in metrics], marker="o", label="test")
    ax_loss.set(xlabel="round", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_acc.plot(rounds, [m["test_accuracy"] for m in metrics], marker="o", color="C2")
    ax_acc.set(xlabel="round", ylabel="accuracy", title="Test accuracy", ylim=(0, 1))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    # through atomic_write like every artifact: read-only, and refused if the run was replaced
    atomic_write(path, buffer.getvalue(), run_root)
    return True
