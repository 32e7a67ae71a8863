"""evaluate: round t's global model -> metrics/round-t.json (test loss and accuracy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blazefl.algorithms.common import evaluate_model
from blazefl.core.serialization import load_model_state_dict
from blazefl.reproducibility import pin_client_threads
from blazefl.stages.artifacts import (
    ArtifactError,
    RunDir,
    atomic_write,
    canonical_json,
    read_safetensors,
)
from blazefl.stages.snapshot import GLOBAL
from blazefl.stages.stores import build_from_stores


def evaluate(config: dict[str, Any], run: RunDir, t: int) -> Path:
    """Evaluate round t's global model on the test set and write its metrics file.

    The bytes equal the metrics `blazefl run` writes for the same round.

    Returns:
        The metrics file.
    """
    if t < 1:
        raise ArtifactError(f"--round must be >= 1, got {t}")
    manifest = run.manifest(t)
    pin_client_threads(config["runtime.threads_per_client"])
    exp = build_from_stores(config, run)
    server = exp.server()
    try:
        load_model_state_dict(server.model, read_safetensors(run.round_dir(t) / GLOBAL, run.root))
    except ValueError as exc:
        raise ArtifactError(f"round-{t:04d}/{GLOBAL} does not fit the model: {exc}") from None
    result = evaluate_model(server.model, exp.test)
    metrics = {
        "round": t,
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "train_loss": manifest.get("summary", {}).get("train_loss"),
    }
    path = run.metrics_path(t)
    atomic_write(path, canonical_json(metrics))
    return path
