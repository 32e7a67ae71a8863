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
    sha256_bytes,
)
from blazefl.stages.provenance import check_round_provenance, check_stores
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
    stores = check_stores(config, run)
    manifest = run.manifest(t, max_clients=config["data.clients"])
    check_round_provenance(config, run, t, manifest, stores)
    pin_client_threads(config["runtime.threads_per_client"])
    exp = build_from_stores(config, run)
    server = exp.server()
    rel = f"round-{t:04d}/{GLOBAL}"
    data = run.read_file(rel)
    if sha256_bytes(data) != manifest["outputs"][GLOBAL]:
        raise ArtifactError(f"{rel} does not match the hash in its manifest: restore it")
    try:
        from safetensors.torch import load

        load_model_state_dict(server.model, load(data))
    except Exception as exc:  # damaged bytes or another model's tensors
        raise ArtifactError(f"{rel} does not fit the model: {str(exc)[:100]}") from None
    # where `blazefl run` evaluates (the run's first device), so the metrics bytes agree
    result = evaluate_model(server.model, exp.test, device=getattr(server, "eval_device", None))
    metrics = {
        "round": t,
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "train_loss": manifest.get("summary", {}).get("train_loss"),
    }
    path = run.metrics_path(t)
    atomic_write(path, canonical_json(metrics), run.root)
    return path
