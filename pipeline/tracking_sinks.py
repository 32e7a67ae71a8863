"""The two trackers behind `blazefl.pipeline.tracking.Tracking`: MLflow and TensorBoard.

Their libraries are imported when a sink starts, in the tracking thread, so a run without
tracking (and `blazefl --help`) never imports them. Every method may raise; `Tracking` turns
a failure into one warning line and drops the sink.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from blazefl.pipeline.tracking import EXPERIMENT, RunEnd, RunStart

__all__ = ["MLflowSink", "TensorBoardSink"]

#: MLflow's defaults retry a refused connection for about four minutes (7 retries, backoff
#: 2): a run would stall that long, in the tracking thread, on a server that is down. These
#: apply unless the user set them: a few seconds, then one warning line.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

#: MLflow takes at most this many params or metrics in one batch call.
_BATCH = 100


class MLflowSink:
    """Params, per-round metrics (step = round), the digest tag and the manifests as
    artifacts, in one MLflow run.

    Args:
        uri: the tracking URI (a server, or `sqlite:///...` for the embedded store).
        artifacts: where an experiment created in the embedded store keeps its artifacts
            (a server decides that itself).
    """

    name = "mlflow"

    def __init__(self, uri: str, artifacts: Path) -> None:
        self.uri = uri
        self.artifacts = artifacts
        self.client: Any = None
        self.run_id = ""

    def start(self, info: RunStart) -> None:
        for key, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        import mlflow  # noqa: F401  (first: importing it resets its loggers' levels)

        with _quiet_logs():
            self._start(info)

    def _start(self, info: RunStart) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        experiment = self._experiment(name)
        run = self.client.create_run(experiment, run_name=info.name, tags=info.tags)
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in info.params.items()]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + _BATCH])

    def _experiment(self, name: str) -> str:
        """The experiment's id, created if missing (a local store keeps its artifacts in
        `self.artifacts`, not in MLflow's default `./mlruns` of whatever folder this is)."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        local = self.uri.startswith("sqlite:///")
        try:
            return str(
                self.client.create_experiment(
                    name, artifact_location=self.artifacts.resolve().as_uri() if local else None
                )
            )
        except Exception:  # another run created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def log_round(self, t: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, t) for k, v in sorted(values.items())]
        with _quiet_logs():
            for i in range(0, len(metrics), _BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[i : i + _BATCH])

    def finish(self, info: RunEnd) -> str:
        with _quiet_logs():
            for key, value in info.tags.items():
                self.client.set_tag(self.run_id, key, value)
            # one call for the whole tree: the artifacts keep the run's layout
            self.client.log_artifacts(self.run_id, str(info.folder))
            self._terminate("FINISHED")
        return f"mlflow: run {self.run_id} in {self.uri}"

    def abort(self, status: str) -> None:
        with _quiet_logs():
            self._terminate(status)

    def _terminate(self, status: str) -> None:
        # MLflow prints "View run ..." links on stdout here. Safe to silence: the main thread
        # is waiting for this call (finish or close), so nothing else is printing meanwhile.
        with contextlib.redirect_stdout(io.StringIO()):
            self.client.set_terminated(self.run_id, status)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Keep MLflow's log chatter (its database set-up lines, retry notes) off the run's
    output: `Tracking` reports a failure as one line, and the run ends with one line per
    tracker saying where its record is."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class TensorBoardSink:
    """Per-round metrics (step = round) as TensorBoard event files in `logdir`; the config
    and the digest as text.

    Args:
        logdir: this run's folder of event files.
    """

    name = "tensorboard"

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.writer: Any = None

    def start(self, info: RunStart) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # Every invocation logs the run's rounds from 1 (earlier ones from disk), so events
        # an earlier invocation wrote for this run are purged: each round appears once.
        self.writer = SummaryWriter(log_dir=str(self.logdir), purge_step=1)
        table = "\n".join(f"    {k}: {v}" for k, v in info.params.items())
        self.writer.add_text("blazefl/config", table, global_step=0)

    def log_round(self, t: int, values: dict[str, float]) -> None:
        for key, value in sorted(values.items()):
            self.writer.add_scalar(key, value, global_step=t)
        self.writer.flush()

    def finish(self, info: RunEnd) -> str:
        self.writer.add_text("blazefl/digest", info.digest, global_step=0)
        self.writer.close()
        return f"tensorboard: tensorboard --logdir {self.logdir.parent}"

    def abort(self, status: str) -> None:
        self.writer.close()
