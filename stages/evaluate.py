"""evaluate: round t's global model -> metrics/round-t.json (test loss and accuracy, and the
metrics the round's manifest records: train loss and every metric an algorithm adds)."""

from __future__ import annotations

import math
import numbers
import re
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
from blazefl.stages.config import RunConfig
from blazefl.stages.provenance import check_round_provenance, check_stores
from blazefl.stages.snapshot import GLOBAL
from blazefl.stages.stores import build_from_stores

#: Summary keys `evaluate` recomputes from the global model; the others come from the round.
TEST_KEYS = ("test_accuracy", "test_loss")
_METRIC_NAME = re.compile(r"[A-Za-z_][\w.-]{0,63}")


class SummaryError(ValueError):
    """A server summary value that cannot be recorded; the message names the key."""


def round_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """What a round's manifest records of `server.summary()`: the train loss and every metric
    an algorithm adds (FedNova's `tau_eff`, a loss spread, ...), as floats; not the round
    number nor the test metrics (`evaluate` recomputes those from the global model).

    Raises:
        SummaryError: a key that is not a metric name, or a value that is not a finite
            number or None (one line naming the key).

    Example:
        >>> round_summary({"round": 3, "train_loss": 0.4, "tau_eff": 2, "test_loss": 0.5})
        {'train_loss': 0.4, 'tau_eff': 2.0}
    """
    out: dict[str, Any] = {"train_loss": summary.get("train_loss")}
    for key, value in summary.items():
        if key == "round" or key in TEST_KEYS:
            continue
        if not (isinstance(key, str) and _METRIC_NAME.fullmatch(key)):
            raise SummaryError(
                f"server summary key {str(key)[:60]!r} is not a metric name (a letter or _, "
                "then letters, digits, _ . -, at most 64): rename it in summary()"
            )
        if value is None:
            out[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SummaryError(
                f"server summary key {key!r} is a {type(value).__name__}, not a number: "
                "summary() must return finite numbers (or None)"
            )
        if not math.isfinite(float(value)):
            raise SummaryError(
                f"server summary key {key!r} is {float(value)}, not a finite number: "
                "summary() must return finite numbers (or None)"
            )
        out[key] = float(value)
    return out


def round_metrics(
    t: int, test_accuracy: float | None, test_loss: float | None, recorded: dict[str, Any]
) -> dict[str, Any]:
    """The metrics file of round t: its test metrics and what its manifest's summary records.

    Example:
        >>> round_metrics(3, 0.8, 0.5, {"train_loss": 0.4})
        {'round': 3, 'test_accuracy': 0.8, 'test_loss': 0.5, 'train_loss': 0.4}
    """
    return {"round": t, "test_accuracy": test_accuracy, "test_loss": test_loss, **recorded}


def evaluate(config: RunConfig, run: RunDir, t: int) -> Path:
    """Evaluate round t's global model on the test set and write its metrics file.

    The bytes equal the metrics `blazefl run` writes for the same round.

    Returns:
        The metrics file.
    """
    if t < 1:
        raise ArtifactError(f"--round must be >= 1, got {t}")
    stores = check_stores(config, run)
    manifest = run.manifest(t, max_clients=config.spec.data.clients)
    check_round_provenance(config, run, t, manifest, stores)
    pin_client_threads(config.spec.runtime.threads_per_client)
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
    metrics = round_metrics(t, result["accuracy"], result["loss"], manifest["summary"])
    path = run.metrics_path(t)
    atomic_write(path, canonical_json(metrics), run.root)
    return path
