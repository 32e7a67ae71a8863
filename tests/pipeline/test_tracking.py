"""Experiment tracking (`blazefl run --track`): what reaches MLflow's embedded store and
TensorBoard's event files, that tracking never changes a run's bytes, and that a tracker that
fails costs one warning line and no round. The real MLflow server: test_tracking_server.py."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from blazefl.pipeline.tracking import Tracking, TrackingError, TrackOptions, round_values
from blazefl.pipeline.tracking_sinks import MLFLOW_HTTP_DEFAULTS
from blazefl.stages.artifacts import MANIFEST, RunDir
from blazefl.stages.config import RunConfig, byte_config, config_sha256
from blazefl.trackers import parse_track

# -- options: every mistake is one line before any work ------------------------------------


def test_track_values_parse() -> None:
    assert parse_track("none") == ()
    assert parse_track("tensorboard,mlflow") == ("mlflow", "tensorboard")
    for bad in ("wandb", "mlflow,none", "", 3):
        with pytest.raises(ValueError, match="runtime.track must be none, mlflow"):
            parse_track(bad)


def test_options_resolve_flags_over_the_config_and_the_folder_next_to_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = str(tmp_path / "runs" / "a")
    options = TrackOptions.of("mlflow", (), None, out)
    assert options.kinds == ("mlflow",) and options.run_name == "a"
    assert options.folder == tmp_path / "runs" / "tracking"
    assert options.mlflow_uri == f"sqlite:///{tmp_path}/runs/tracking/mlflow.db"
    assert TrackOptions.of("mlflow", ("none",), None, out).kinds == ()
    assert TrackOptions.of("none", ("tensorboard",), None, out).kinds == ("tensorboard",)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert TrackOptions.of("mlflow", (), None, out).mlflow_uri == "http://127.0.0.1:9"
    mine = TrackOptions.of("mlflow", (), str(tmp_path / "t"), out)  # a named folder wins
    assert mine.mlflow_uri == f"sqlite:///{tmp_path}/t/mlflow.db"


@pytest.mark.parametrize(
    ("flags", "track_dir", "message"),
    [
        (("none", "mlflow"), None, "--track none cannot be combined"),
        ((), "somewhere", "--track-dir needs a tracker"),
        (("tensorboard",), "RUN/tb", "lies inside the run directory"),
    ],
)
def test_option_mistakes_are_one_line(
    tmp_path: Path, flags: tuple[str, ...], track_dir: str | None, message: str
) -> None:
    out = tmp_path / "run"
    folder = track_dir.replace("RUN", str(out)) if track_dir else None
    with pytest.raises(TrackingError, match=message):
        TrackOptions.of("none", flags, folder, str(out))


def test_a_missing_package_names_what_to_install_before_any_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    blazefl: Callable[..., Result],
    tiny_args: list[str],
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    out = tmp_path / "run"
    result = blazefl("run", "--out", str(out), "--track", "mlflow", *tiny_args)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: --track mlflow needs the mlflow package, which is not installed: "
        "pip install 'blazefl[track]' (or: pip install 'mlflow>=2')"
    ]
    assert not out.exists()  # nothing was written


def test_tracking_is_not_hashed() -> None:
    plain = RunConfig.of({})
    tracked = RunConfig.of({"runtime.track": "mlflow,tensorboard"})
    assert "runtime.track" not in byte_config(tracked)
    assert config_sha256(tracked) == config_sha256(plain)


def test_run_help_names_the_flags_and_imports_no_tracker_nor_torch() -> None:
    code = (
        "import sys; from blazefl.pipeline.cli import main\n"
        "try:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'mlflow', 'tensorboard'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--track [mlflow|tensorboard|none]" in result.stdout and "--track-dir" in result.stdout


# -- the fan-out: a failing sink is one warning, the others go on ---------------------------


class FakeSink:
    def __init__(self, name: str, fail_at: str | None = None) -> None:
        self.name, self.fail_at = name, fail_at
        self.calls: list[tuple[str, Any]] = []

    def _record(self, what: str, value: Any) -> None:
        if what == self.fail_at:
            raise ConnectionError(f"{self.name} is down\n(second line)")
        self.calls.append((what, value))

    def start(self, info: Any) -> None:
        self._record("start", info.name)

    def log_round(self, t: int, values: dict[str, float]) -> None:
        self._record("log_round", (t, values))

    def finish(self, info: Any) -> str:
        self._record("finish", info.digest)
        return f"{self.name}: here"

    def abort(self, status: str) -> None:
        self._record("abort", status)


def test_a_failing_sink_is_one_warning_and_the_others_get_everything(tiny_run: Path) -> None:
    warnings: list[str] = []
    good, bad = FakeSink("good"), FakeSink("bad", fail_at="log_round")
    tracking = Tracking([bad, good], warnings.append)
    config = RunConfig.of(RunDir(tiny_run).manifest(0)["config"])
    tracking.start(config, RunDir(tiny_run), 2)  # rounds 1-2 from disk, round 3 "live"
    tracking.round(3, {"round": 3, "test_accuracy": 0.5, "train_loss": None})
    assert tracking.finish(RunDir(tiny_run)) == ["good: here"]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith("bad tracking stopped (ConnectionError: bad is down (second")
    assert [c[0] for c in good.calls] == ["start", "log_round", "log_round", "log_round", "finish"]
    assert good.calls[3] == ("log_round", (3, {"test_accuracy": 0.5}))
    assert bad.calls == [("start", "run")]


def test_a_file_that_cannot_be_read_for_the_trackers_is_one_warning(
    tiny_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "metrics" / "round-0002.json").unlink()
    warnings: list[str] = []
    sink = FakeSink("s")
    tracking = Tracking([sink], warnings.append)
    tracking.start(RunConfig.of(RunDir(run).manifest(0)["config"]), RunDir(run), 3)
    assert tracking.finish(RunDir(run)) == []
    assert len(warnings) == 1 and "round-0002.json" in warnings[0], warnings
    assert [c[0] for c in sink.calls] == ["start", "log_round"]


@pytest.mark.parametrize(
    ("error", "status"), [(KeyboardInterrupt(), "KILLED"), (RuntimeError("x"), "FAILED")]
)
def test_a_failed_or_interrupted_run_marks_the_records(
    tiny_run: Path, error: BaseException, status: str
) -> None:
    sink = FakeSink("s")
    tracking = Tracking([sink], lambda _: None)
    tracking.start(RunConfig.of(RunDir(tiny_run).manifest(0)["config"]), RunDir(tiny_run), 0)
    tracking.close(error)
    assert sink.calls == [("start", "run"), ("abort", status)]
    assert tracking.finish(RunDir(tiny_run)) == []  # closed: nothing more


def test_round_values_keep_finite_numbers_only() -> None:
    got = round_values({"round": 1, "a": 1, "b": float("nan"), "c": True, "d": "x", "e": 0.5})
    assert got == {"a": 1.0, "e": 0.5}


# -- the embedded store and TensorBoard, end to end -----------------------------------------


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((run / "metrics").glob("round-*.json"))]


@pytest.mark.slow
def test_embedded_mlflow_and_tensorboard_get_params_metrics_digest_and_manifests(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    blazefl: Callable[..., Result],
    tiny_args: list[str],
    tiny_run: Path,
) -> None:
    mlflow = pytest.importorskip("mlflow")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out, folder = tmp_path / "run", tmp_path / "track"
    args = ["--mode", "threads", "--workers", "2", "--track", "mlflow", "--track", "tensorboard"]
    result = blazefl("run", "--out", str(out), "--track-dir", str(folder), *args, *tiny_args)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    tail = result.stderr.splitlines()[-3:]
    assert tail[0] == f"plot: {out}/plots/metrics.png"
    assert tail[1].startswith("mlflow: run ") and tail[1].endswith(f"sqlite:///{folder}/mlflow.db")
    assert tail[2] == f"tensorboard: tensorboard --logdir {folder}/tensorboard"

    # the run's bytes: those of the same run untracked, and nothing more in its folder
    same = blazefl("diff", str(out), str(tiny_run))
    assert same.exit_code == 0, same.output
    assert _files(out) == _files(tiny_run)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    (record,) = client.search_runs([client.get_experiment_by_name("blazefl").experiment_id])
    assert record.info.status == "FINISHED" and record.info.run_name == "run"
    run = RunDir(out)
    config = run.manifest(3)["config"]
    assert record.data.params == {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in byte_config(config).items()
    }
    shown = blazefl("show", str(out)).output.splitlines()
    digest = next(line.split()[1] for line in shown if line.startswith("digest: "))
    assert record.data.tags["blazefl.digest"] == digest
    metrics = _metrics(out)
    for key in ("test_accuracy", "test_loss", "train_loss"):
        history = client.get_metric_history(record.info.run_id, key)
        assert [(m.step, m.value) for m in history] == [(m["round"], m[key]) for m in metrics]
    kept = [MANIFEST, f"round-0003/{MANIFEST}", "summary.json", "plots/metrics.json"]
    for rel in ["dataset/" + kept[0], "partitions/" + kept[0], *kept[1:]]:
        copy = client.download_artifacts(record.info.run_id, rel, str(tmp_path / "dl"))
        assert Path(copy).read_bytes() == (out / rel).read_bytes(), rel
    assert (folder / "mlartifacts").is_dir()  # not MLflow's ./mlruns in whatever folder

    events = accumulator.EventAccumulator(str(folder / "tensorboard" / "run"))
    events.Reload()
    for key in ("test_accuracy", "test_loss", "train_loss"):
        got = [(s.step, s.value) for s in events.Scalars(key)]
        assert got == [(m["round"], pytest.approx(m[key], rel=1e-6)) for m in metrics]


@pytest.mark.slow
def test_a_resumed_or_repeated_run_logs_each_round_once(
    tmp_path: Path, blazefl: Callable[..., Result], tiny_args: list[str]
) -> None:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out, folder = tmp_path / "run", tmp_path / "track"
    track = ["--out", str(out), "--track", "tensorboard", "--track-dir", str(folder), "-q"]
    assert blazefl("run", *track, *tiny_args, "--set", "fl.rounds=2").exit_code == 0
    assert blazefl("run", *track, *tiny_args).exit_code == 0  # resumes: round 3
    assert blazefl("run", *track, *tiny_args).exit_code == 0  # complete: logs it again
    events = accumulator.EventAccumulator(str(folder / "tensorboard" / "run"))
    events.Reload()
    assert [s.step for s in events.Scalars("test_accuracy")] == [1, 2, 3]


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_a_server_that_is_down_is_one_warning_line_and_the_same_bytes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    blazefl: Callable[..., Result],
    tiny_args: list[str],
    tiny_run: Path,
) -> None:
    pytest.importorskip("mlflow")
    for key in MLFLOW_HTTP_DEFAULTS:  # the defaults this run sets, not another test's
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_unused_port()}")
    out = tmp_path / "run"
    args = ["--mode", "threads", "--workers", "2", "--track", "mlflow", "-q"]
    result = blazefl("run", "--out", str(out), *args, *tiny_args)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: mlflow tracking stopped ("), lines
    assert "the run goes on" in lines[0]
    assert blazefl("diff", str(out), str(tiny_run)).exit_code == 0
    assert _files(out) == _files(tiny_run)
    assert not (tmp_path / "tracking").exists()

    # what the warning says to do: run again once the tracker works (here: the embedded one)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    again = blazefl("run", "--out", str(out), *args, *tiny_args)
    assert again.exit_code == 0 and again.stderr == "", again.output
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/tracking/mlflow.db")
    experiment = client.get_experiment_by_name("blazefl")
    assert experiment is not None
    (record,) = client.search_runs([experiment.experiment_id])
    assert [m.step for m in client.get_metric_history(record.info.run_id, "test_loss")] == [
        1,
        2,
        3,
    ]
