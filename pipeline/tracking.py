"""Experiment tracking for `blazefl run`: MLflow and TensorBoard sinks behind one small
interface (`Tracking`), fed with what the run commits.

Tracking sits outside the chained bytes: it only reads a run's committed files (metrics,
manifests, summary) and copies them elsewhere, so a tracked run is byte-identical to an
untracked one, and `runtime.track` is not hashed. It never costs a round either: the sinks run
in one background thread (a slow server never holds the next round back), and a sink that
fails (server down, disk full) is dropped with one warning line while the run goes on.

Where things go (`--track-dir DIR`, default `tracking/` next to the run directory; never
inside it, where `verify` and `pack` would meet files no manifest names):

- mlflow: `MLFLOW_TRACKING_URI` when set (a server, e.g. ``http://127.0.0.1:5000``) unless
  `--track-dir` is given; else an embedded store, `DIR/mlflow.db` (SQLite) with artifacts in
  `DIR/mlartifacts/` (MLflow 3 retired the plain-file store). One MLflow run per
  `blazefl run` invocation, in experiment `blazefl` (or `MLFLOW_EXPERIMENT_NAME`).
- tensorboard: event files in `DIR/tensorboard/<run directory name>/`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import numbers
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from blazefl.stages.artifacts import MANIFEST, RunDir, code_version
from blazefl.stages.config import RunConfig, byte_config, config_sha256
from blazefl.trackers import TRACK_INSTALL_HINT, parse_track

__all__ = ["TrackOptions", "Tracking", "TrackingError", "round_values", "DEFAULT_TRACK_DIR"]

#: The tracking folder's default name, next to the run directory.
DEFAULT_TRACK_DIR = "tracking"

#: The MLflow experiment runs go to when `MLFLOW_EXPERIMENT_NAME` is not set.
EXPERIMENT = "blazefl"

#: Longest parameter value sent (older MLflow servers refuse more than 500 characters).
_MAX_PARAM = 500


class TrackingError(ValueError):
    """A tracking option that cannot work (a missing package, a folder inside the run): one
    line, exit code 2, before any work."""


@dataclass(frozen=True)
class TrackOptions:
    """What `blazefl run` tracks, and where.

    Args:
        kinds: the trackers (`TRACKERS` names), possibly none.
        folder: the tracking folder (embedded MLflow store, TensorBoard event files).
        mlflow_uri: the MLflow tracking URI.
        run_name: the name runs get in MLflow and TensorBoard (the run directory's name).
    """

    kinds: tuple[str, ...]
    folder: Path
    mlflow_uri: str
    run_name: str

    @classmethod
    def of(
        cls, config_track: str, flags: tuple[str, ...], track_dir: str | None, out: str
    ) -> TrackOptions:
        """Resolve `--track` flags (over `runtime.track`) and `--track-dir` for run `out`.

        Raises:
            TrackingError: "none" mixed with a tracker, `--track-dir` without a tracker, a
                tracker whose package is not installed, or a folder inside the run directory.
        """
        if flags and "none" in flags and len(set(flags)) > 1:
            raise TrackingError("--track none cannot be combined with another --track")
        kinds = parse_track(",".join(flags) if flags else config_track)
        if track_dir is not None and not kinds:
            raise TrackingError(
                "--track-dir needs a tracker: add --track mlflow or --track tensorboard "
                "(or set runtime.track)"
            )
        for kind in kinds:
            module = "mlflow" if kind == "mlflow" else "tensorboard"
            if importlib.util.find_spec(module) is None:
                raise TrackingError(
                    f"--track {kind} needs the {module} package, which is not installed: "
                    f"{TRACK_INSTALL_HINT[kind]}"
                )
        run_root = Path(out).resolve()
        folder = Path(track_dir) if track_dir is not None else run_root.parent / DEFAULT_TRACK_DIR
        if folder.resolve().is_relative_to(run_root):
            raise TrackingError(
                f"the tracking folder {folder} lies inside the run directory {out}: name one "
                "outside it with --track-dir (a run holds only the files its manifests name)"
            )
        env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        if track_dir is None and env_uri:
            uri = env_uri
        else:  # an embedded store: SQLite, the one local store MLflow 3 still writes
            uri = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
        return cls(kinds, folder, uri, run_root.name)


def round_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The trackable values of a round's metrics: every finite number but the round itself.

    Example:
        >>> round_values({"round": 2, "test_accuracy": 0.5, "train_loss": None, "tau": 3})
        {'test_accuracy': 0.5, 'tau': 3.0}
    """
    return {
        k: float(v)
        for k, v in metrics.items()
        if k != "round"
        and isinstance(v, numbers.Real)
        and not isinstance(v, bool)
        and math.isfinite(float(v))
    }


@dataclass(frozen=True)
class RunStart:
    """What a sink learns when the run starts: its name, byte-relevant config, tags."""

    name: str
    params: dict[str, str]
    tags: dict[str, str]


@dataclass(frozen=True)
class RunEnd:
    """What a sink learns when the run ends: the digest, and the files to keep: copies of
    their bytes under `folder`, at their run-relative paths (`files`)."""

    digest: str
    tags: dict[str, str]
    folder: Path
    files: list[str]


class Sink(Protocol):
    """One tracker. Every method may raise: `Tracking` turns that into one warning line."""

    name: str

    def start(self, info: RunStart) -> None: ...

    def log_round(self, t: int, values: dict[str, float]) -> None: ...

    def finish(self, info: RunEnd) -> str:
        """Close the record; returns one line saying where it is."""
        ...

    def abort(self, status: str) -> None: ...


class Tracking:
    """Fan-out to the sinks, in one background thread, in call order.

    Args:
        sinks: the trackers (none: every method does nothing).
        warn: prints one warning line (the run's progress stream).
    """

    def __init__(self, sinks: list[Sink], warn: Callable[[str], None], run_name: str = "") -> None:
        self._sinks = list(sinks)
        self._warn = warn
        self._run_name = run_name  # "": the run directory's name
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._where: list[str] = []

    @classmethod
    def open(cls, options: TrackOptions | None, warn: Callable[[str], None]) -> Tracking:
        """The sinks `options` name (nothing is imported or contacted yet)."""
        sinks: list[Sink] = []
        if options is not None:
            # imported here, not above: this module must load without mlflow or torch's
            # tensorboard support installed
            from blazefl.pipeline.tracking_sinks import MLflowSink, TensorBoardSink

            if "mlflow" in options.kinds:
                sinks.append(MLflowSink(options.mlflow_uri, options.folder / "mlartifacts"))
            if "tensorboard" in options.kinds:
                sinks.append(TensorBoardSink(options.folder / "tensorboard" / options.run_name))
        return cls(sinks, warn, options.run_name if options is not None else "")

    def start(self, config: RunConfig, run: RunDir, done: int) -> None:
        """Start the trackers and log rounds 1..`done` (already on disk: a resumed run's
        record is complete too). Returns at once."""
        if not self._sinks:
            return
        self._thread = threading.Thread(target=self._work, name="blazefl-tracking", daemon=True)
        self._thread.start()
        params = {k: _param_text(v) for k, v in byte_config(config).items()}
        tags = {
            "blazefl.config_sha256": config_sha256(config),
            "blazefl.version": str(code_version().get("version")),
            "blazefl.run_dir": str(run.root.resolve()),
        }
        name = self._run_name or run.root.name
        self._queue.put(("start", (RunStart(name, params, tags),)))
        for t in range(1, done + 1):
            self._queue.put(("backfill", (run, t)))

    def round(self, t: int, metrics: Mapping[str, Any]) -> None:
        """Log a committed round's metrics (queued)."""
        if self._thread is not None:
            self._queue.put(("log_round", (t, round_values(metrics))))

    def finish(self, run: RunDir) -> list[str]:
        """Tag the digest, keep the manifests and summary, close; wait for every sink.

        Returns:
            One line per sink that tracked the whole run, saying where its record is.
        """
        if self._thread is None:
            return []
        self._queue.put(("end", (run,)))
        self._stop()
        return self._where

    def close(self, error: BaseException) -> None:
        """The run failed or was interrupted: mark the trackers' records so, and wait."""
        if self._thread is None:
            return
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        self._queue.put(("abort", (status,)))
        self._stop()

    def _stop(self) -> None:
        self._queue.put(None)
        assert self._thread is not None
        self._thread.join()
        self._thread = None

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            what, args = item
            try:
                if what == "end":
                    with tempfile.TemporaryDirectory(prefix="blazefl-track-") as tmp:
                        self._each("finish", (_run_end(args[0], Path(tmp)),))
                    continue
                if what == "backfill":
                    run, t = args
                    values = round_values(run.read_json(run.metrics_path(t)))
                    what, args = "log_round", (t, values)
            except Exception as exc:  # reading what to log failed (a file gone): stop them all
                for sink in list(self._sinks):
                    self._drop(sink, exc)
                continue
            self._each(what, args)

    def _each(self, what: str, args: tuple[Any, ...]) -> None:
        for sink in list(self._sinks):
            try:
                result = getattr(sink, what)(*args)
            except Exception as exc:  # anything a tracker raises: the run must go on
                self._drop(sink, exc)
                continue
            if what == "finish":
                self._where.append(str(result))

    def _drop(self, sink: Sink, exc: Exception) -> None:
        """Stop feeding `sink`, with one warning line."""
        self._sinks.remove(sink)
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        self._warn(
            f"{sink.name} tracking stopped ({detail}); the run goes on, its files are "
            "complete (blazefl run again with --track to log it once the tracker works)"
        )


def _param_text(value: Any) -> str:
    """A config value as MLflow stores params: text, in YAML spelling (null, true)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 3] + "..."


def _run_end(run: RunDir, tmp: Path) -> RunEnd:
    """The digest (as `blazefl show` computes it: the sha256 of the last round's manifest)
    and copies of the store and round manifests, summary.json and the plots."""
    last = run.last_complete_round() or 0
    rels = [run.rel(run.dataset / MANIFEST), run.rel(run.partitions / MANIFEST)]
    rels += [run.rel(run.round_dir(t) / MANIFEST) for t in range(last + 1)]
    rels += [run.rel(p) for p in (run.summary_path, run.plot_data_path, run.plot_path)]
    files = []
    for rel in rels:
        if not (run.root / rel).is_file():
            continue  # no plot without matplotlib
        copy = tmp / rel
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(run.read_file(rel))  # the checked bytes, not whatever a link names
        files.append(rel)
    digest = run.hash_file(run.rel(run.round_dir(last) / MANIFEST))
    return RunEnd(digest, {"blazefl.digest": digest, "blazefl.rounds": str(last)}, tmp, files)
