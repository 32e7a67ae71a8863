"""`blazefl run`: every stage in one process, pools kept warm, resuming after the last
complete round."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO, TypeVar

from blazefl.core.loop import ExecutionSettings
from blazefl.core.memory import tune_malloc
from blazefl.data import ImageDataset
from blazefl.pipeline.background_commit import BackgroundCommits
from blazefl.pipeline.tracking import Tracking, TrackOptions
from blazefl.stages import init, partition, report
from blazefl.stages.artifacts import MANIFEST, RunDir
from blazefl.stages.config import ConfigError, RunConfig, byte_config, config_sha256
from blazefl.stages.data_files import data_differences, data_file_hashes
from blazefl.stages.evaluate import evaluate
from blazefl.stages.preflight import preflight
from blazefl.stages.prepare import build_datasets, write_dataset_store
from blazefl.stages.provenance import (
    ProvenanceError,
    check_dataset_store,
    check_format,
    check_round_provenance,
    check_stores,
    check_user_code,
)
from blazefl.stages.session import RoundOutputs, Session
from blazefl.stages.temp_cleanup import clean_stale_pymp_dirs
from blazefl.stages.user_code import config_code

__all__ = ["check_run_config", "run_experiment", "Progress"]

T = TypeVar("T")


class Progress:
    """What a researcher sees: on a terminal, one line redrawn in place during a round
    (clients done of those sampled, the round's and the run's ETA); one summary line per
    round always (on a log or CI stream, only those)."""

    #: Seconds between two redraws of the in-round line (the last client always redraws).
    REDRAW = 0.1

    def __init__(self, total_rounds: int, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.total = total_rounds
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.round = 0
        self._lock = threading.Lock()  # round lines come from the commit thread
        self._started: float | None = None  # this round's start
        self._durations: list[float] = []  # start-to-start seconds of earlier rounds
        self._drawn = 0.0

    def begin(self, t: int) -> None:
        """Round t starts (rounds overlap their commit, so start-to-start is a round's time)."""
        now = time.perf_counter()
        if self._started is not None:
            self._durations.append(now - self._started)
        self.round, self._started = t, now

    def client(self, done: int, total: int) -> None:
        """A client of the round finished: redraw the in-round line (terminal only)."""
        if self.quiet or not self.tty:
            return
        now = time.perf_counter()
        if done < total and now - self._drawn < self.REDRAW:
            return
        self._drawn = now
        elapsed = now - (self._started if self._started is not None else now)
        left = elapsed / done * (total - done) if done else None
        eta = f"  round ETA {_seconds(left)}" if left is not None else ""
        if left is not None and self.round < self.total:
            per_round = (
                sum(self._durations) / len(self._durations) if self._durations else elapsed + left
            )
            eta += f", run ETA {_seconds(left + per_round * (self.total - self.round))}"
        width = 20
        bar = "#" * (width * done // max(total, 1))
        with self._lock:
            self.stream.write(
                f"\r\033[Kround {self.round}/{self.total}  client {done}/{total} "
                f"[{bar:-<{width}}]{eta}"
            )
            self.stream.flush()

    def line(self, text: str) -> None:
        """One line of its own (a round's summary), replacing the in-round line."""
        if self.quiet:
            return
        self._write(text)

    def warn(self, text: str) -> None:
        """A warning line, printed with --quiet too."""
        self._write(f"warning: {text}")

    def _write(self, text: str) -> None:
        with self._lock:
            if self.tty:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            self.stream.flush()


def _seconds(s: float) -> str:
    """A duration for the ETA: 42s, 3m05s, 1h02m."""
    s = max(0, round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _round_line(progress: Progress, out: RoundOutputs, start: float) -> None:
    """The round's summary, printed once it is committed; its seconds run from the round's
    start to its commit (compute + serialising + writing)."""
    seconds = time.perf_counter() - start
    m = out.metrics
    progress.line(
        f"round {out.round:>3}/{progress.total}  train_loss {m['train_loss']:.4f}  "
        f"test_loss {m['test_loss']:.4f}  test_acc {m['test_accuracy']:.4f}  {seconds:.2f}s"
    )


def _committed(progress: Progress, tracker: Tracking, out: RoundOutputs, start: float) -> None:
    """Round `out` is on disk: its line, and its metrics to the trackers (queued)."""
    _round_line(progress, out, start)
    tracker.round(out.round, out.metrics)


def check_run_config(config: RunConfig, run: RunDir) -> None:
    """Refuse a run directory made with another config, another version's manifest format or
    other user code (before anything is written).

    Round 0 and the last complete round are both checked, so a run whose init was redone
    with a new config while older rounds remain is refused too.
    """
    rounds = run.complete_rounds()
    code = config_code(config) if rounds else {}
    for t in sorted({rounds[0], rounds[-1]} if rounds else set()):
        recorded = run.manifest(t)
        what = f"run directory {run.root} (round-{t:04d})"
        check_format(recorded, what)
        if recorded["config_sha256"] == config_sha256(config):
            check_user_code(recorded["user_code"], code, what)
            continue
        old = recorded["config"]
        new = byte_config(config)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        detail = f" (differs in: {', '.join(changed)})" if changed else ""
        raise ConfigError(
            f"run directory {run.root} was made with another config{detail}: use a new --out "
            "to start a new run, or restore the old config to resume"
        )


def _ensure_stores(
    config: RunConfig, run: RunDir, progress: Progress
) -> tuple[ImageDataset, ImageDataset] | None:
    """Make or check the stores: a store made with another config is rebuilt while no round
    depends on it yet, and refused (one line, the differing keys) once rounds do.

    Returns:
        The (train, test) sets if prepare ran here (kept in memory instead of read back).
    """
    has_rounds = bool(run.complete_rounds())
    data = None
    data_files = data_file_hashes(config.spec.data.root)
    rebuild = not (run.dataset / MANIFEST).exists()
    if not rebuild:
        try:
            check_dataset_store(config, run)
            _check_data_files(run, data_files)
        except ProvenanceError as exc:
            if has_rounds:
                raise
            progress.line(f"rebuilding the stores: {str(exc).split(': rebuild')[0]}")
            rebuild = True
    if rebuild:
        data = build_datasets(config)
        preflight(config, *data)  # an impossible config fails before any store is written
        write_dataset_store(config, run, *data, data_files=data_files)
    if rebuild or not (run.partitions / MANIFEST).exists():
        partition(config, run)
    else:
        try:
            stores = check_stores(config, run)
        except ProvenanceError as exc:
            if has_rounds:
                raise
            progress.line(f"rebuilding the partitions: {str(exc).split(': rebuild')[0]}")
            partition(config, run)
            stores = check_stores(config, run)
        rounds = run.complete_rounds()
        for t in sorted({rounds[0], rounds[-1]} if rounds else set()):
            m = run.manifest(t, max_clients=config.spec.data.clients)
            check_round_provenance(config, run, t, m, stores)
    return data


def _check_data_files(run: RunDir, current: dict[str, str]) -> None:
    """Refuse a dataset store made from other files under data.root than those there now."""
    changed = data_differences(run.store_manifest("dataset")["data_files"], current)
    if changed:
        shown = ", ".join(changed[:4]) + (
            f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        )
        raise ProvenanceError(
            f"the dataset store in {run.root} was made from other files under data.root "
            f"(differs: {shown}): restore them, or use a new --out to start a run on this data"
        )


def run_experiment(
    config: RunConfig,
    run: RunDir,
    execution: ExecutionSettings | None = None,
    quiet: bool = False,
    stream: TextIO | None = None,
    track: TrackOptions | None = None,
) -> dict[str, Any]:
    """Run prepare, partition, init and every missing round, then report.

    Args:
        config: the validated config (`RunConfig`).
        run: run directory (created if needed; resumed if it holds complete rounds).
        execution: mode / workers / IPC (default: the config's; never change bytes).
        quiet: no progress output.
        stream: where progress goes (default stderr).
        track: the experiment trackers (`TrackOptions`; default none). Never changes bytes.

    Returns:
        {"rounds_run": [...], "resumed_from": t or None, "summary": {...}, "plot": the PNG
        or None, "tracking": [one line per tracker saying where its record is]}.
    """
    check_run_config(config, run)
    tune_malloc()
    clean_stale_pymp_dirs()  # what a SIGKILLed earlier run left in the temp folder
    run.clean_partials()
    total = config.spec.fl.rounds
    runtime = config.spec.runtime
    how = execution or ExecutionSettings.of(runtime)
    progress = Progress(total, stream, quiet)
    if (run.last_complete_round() or 0) >= total:  # nothing to train: nothing to start
        return _run_stages(config, run, how, progress, track)
    # in ray mode, Ray and its actors start while the stores and round 0 are built
    with how.started(runtime.threads_per_client, runtime.device) as how:
        return _run_stages(config, run, how, progress, track)


def _run_stages(
    config: RunConfig,
    run: RunDir,
    execution: ExecutionSettings,
    progress: Progress,
    track: TrackOptions | None,
) -> dict[str, Any]:
    """`run_experiment` once the execution is settled: stores, round 0, rounds, report."""
    total = config.spec.fl.rounds
    data = _ensure_stores(config, run, progress)
    if not (run.round_dir(0) / MANIFEST).exists():
        init(config, run, data)
    last = run.last_complete_round() or 0
    if last > 0:
        progress.line(f"resuming after round {last} in {run.root}")
    for t in range(1, min(last, total) + 1):  # a crash may have left a round without metrics
        if not run.metrics_path(t).exists():
            evaluate(config, run, t)
    tracker = Tracking.open(track, progress.warn)
    tracker.start(config, run, min(last, total))  # in its own thread: never holds a round back
    try:
        rounds_run, summary_path = _run_rounds(
            config, run, execution, data, last, progress, tracker, lambda: report(config, run)
        )
    except BaseException as exc:  # the trackers' records say the run failed or was stopped
        tracker.close(exc)
        raise
    where = tracker.finish(run)  # waits for the trackers: one line each, where the record is
    return {
        "rounds_run": rounds_run,
        "resumed_from": last if last > 0 else None,
        "summary": run.read_json(summary_path),
        "plot": str(run.plot_path) if run.plot_path.is_file() else None,
        "tracking": where,
    }


def _run_rounds(
    config: RunConfig,
    run: RunDir,
    execution: ExecutionSettings | None,
    data: tuple[ImageDataset, ImageDataset] | None,
    last: int,
    progress: Progress,
    tracker: Tracking,
    then: Callable[[], T],
) -> tuple[list[int], T]:
    """Rounds last+1..fl.rounds: each computed here while the previous one is committed (and
    then tracked) in the background; then `then()` (the report) while the session's workers
    stop in the background. Returns the rounds run and what `then` returned."""
    rounds_run: list[int] = []
    total = config.spec.fl.rounds
    if last >= total:
        return rounds_run, then()
    with Session(config, run, execution, data) as session:
        session.load(last)
        commits = BackgroundCommits(session)
        try:
            for t in range(last + 1, total + 1):
                progress.begin(t)
                start = time.perf_counter()
                out = session.compute(t, on_client=progress.client)
                commits.submit(out, lambda out, s=start: _committed(progress, tracker, out, s))
                rounds_run.append(t)
            commits.wait()
        except BaseException:
            commits.drain()
            raise
        with _closing_in_background(session):
            result = then()
    return rounds_run, result


@contextlib.contextmanager
def _closing_in_background(session: Session) -> Iterator[None]:
    """`session.close()` in a thread while the block runs, then joined (its error raised):
    stopping the workers (a pool's processes, a local Ray runtime: 0.3-0.4 s here) and
    writing the report (0.4 s with the plot) need not wait for each other. `Session.close`
    is idempotent: the `with Session` around this block closes nothing twice."""
    errors: list[BaseException] = []

    def close() -> None:
        try:
            session.close()
        except BaseException as exc:  # raised in the caller's thread below
            errors.append(exc)

    closer = threading.Thread(target=close, name="blazefl-session-close", daemon=True)
    closer.start()
    interrupted: BaseException | None = None
    try:
        yield
    finally:
        # the close finishes before anything else closes the session (never two at once):
        # it is bounded (a pool's grace period), and Ctrl-C during it is raised afterwards
        while closer.is_alive():
            try:
                closer.join()
            except KeyboardInterrupt as exc:
                interrupted = exc
    if interrupted is not None:
        raise interrupted
    if errors:
        raise errors[0]
