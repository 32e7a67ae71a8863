"""`blazefl run` and `blazefl stage`: byte-identical artifacts in every mode, resume, crash
safety, and one-line errors for bad input."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from blazefl.pipeline.cli import main

TINY = [
    "--set",
    "data.size=600",
    "--set",
    "data.test_size=200",
    "--set",
    "data.clients=6",
    "--set",
    "fl.clients_per_round=3",
    "--set",
    "fl.rounds=3",
    "--set",
    "train.local_epochs=1",
    "--set",
    "train.batch_size=32",
    "--set",
    "data.partition=dirichlet",
]


def tree(root: Path, skip: tuple[str, ...] = ("timings",)) -> dict[str, str]:
    """sha256 of every file under root, except the top-level folders in `skip`."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel.split("/")[0] not in skip:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    code, output = invoke("run", "--out", str(out), "--mode", "sequential", "--quiet", *TINY)
    assert code == 0, output
    return out


def test_run_writes_every_artifact_of_the_contract(reference_run: Path) -> None:
    files = tree(reference_run, skip=())
    for t in range(4):
        for name in ("global.safetensors", "rng.safetensors", "manifest.json"):
            assert f"round-{t:04d}/{name}" in files
    for t in range(1, 4):
        assert f"metrics/round-{t:04d}.json" in files
        assert f"timings/round-{t:04d}.json" in files
    assert "summary.json" in files and "plots/metrics.png" in files
    assert "dataset/manifest.json" in files and "partitions/manifest.json" in files
    assert not [f for f in files if ".partial" in f]


@pytest.mark.parametrize(
    "mode_args",
    [
        ("--mode", "threads", "--workers", "2"),
        ("--mode", "processes", "--workers", "2", "--ipc", "shared_memory"),
        ("--mode", "processes", "--workers", "2", "--ipc", "storage"),
    ],
    ids=["threads2", "processes2-shm", "processes2-storage"],
)
def test_every_mode_gives_byte_identical_run_directories(
    reference_run: Path, tmp_path: Path, mode_args: tuple[str, ...]
) -> None:
    out = tmp_path / "run"
    code, output = invoke("run", "--out", str(out), "--quiet", *mode_args, *TINY)
    assert code == 0, output
    assert tree(out) == tree(reference_run)


def test_rerun_on_complete_run_does_nothing_and_extending_rounds_resumes(
    reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert invoke("run", "--out", str(out), "--quiet", *TINY)[0] == 0
    before = tree(out, skip=())
    assert invoke("run", "--out", str(out), "--quiet", *TINY)[0] == 0
    assert tree(out, skip=()) == before
    code, output = invoke("run", "--out", str(out), *TINY, "--set", "fl.rounds=4")
    assert code == 0, output
    assert "resuming after round 3" in output
    assert "round   4/4" in output and "round   3/4" not in output
    assert (out / "round-0004" / "manifest.json").exists()


def test_stage_commands_reproduce_the_runner_bytes(reference_run: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    for name in ("prepare", "partition", "init"):
        assert invoke("stage", name, "--out", out, *TINY)[0] == 0
    for t in (1, 2, 3):
        code, output = invoke("stage", "round", "--round", str(t), "--out", out, *TINY)
        assert code == 0, output
    assert invoke("stage", "report", "--out", out, *TINY)[0] == 0
    assert tree(Path(out)) == tree(reference_run)
    # evaluate recomputes a round's metrics with the same bytes
    metrics = Path(out) / "metrics" / "round-0002.json"
    original = metrics.read_bytes()
    metrics.unlink()
    assert invoke("stage", "evaluate", "--round", "2", "--out", out, *TINY)[0] == 0
    assert metrics.read_bytes() == original


def test_progress_lines_and_quiet(tmp_path: Path) -> None:
    code, output = invoke("run", "--out", str(tmp_path / "a"), *TINY)
    assert code == 0
    lines = [ln for ln in output.splitlines() if ln.startswith("round")]
    assert len(lines) == 3 and all("test_acc" in ln and ln.endswith("s") for ln in lines)
    code, output = invoke("run", "--out", str(tmp_path / "b"), "--quiet", *TINY)
    assert code == 0 and output == ""


def test_sigkill_during_round_3_then_rerun_resumes_byte_identically(
    reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "blazefl.pipeline.cli",
        "run",
        "--out",
        str(out),
        "--quiet",
        "--mode",
        "sequential",
        *TINY,
        "--set",
        "fl.rounds=5",
    ]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[2])
    marker = out / "metrics" / "round-0002.json"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the runner never reached round 3"
    assert not (out / "round-0005").exists(), "killed too late to test a crash mid-run"
    code, output = invoke("run", "--out", str(out), "--quiet", *TINY, "--set", "fl.rounds=5")
    assert code == 0, output
    assert not [p for p in out.rglob("*") if p.name.endswith((".partial", ".old"))]
    full = tmp_path / "full"
    assert invoke("run", "--out", str(full), "--quiet", *TINY, "--set", "fl.rounds=5")[0] == 0
    assert tree(out) == tree(full)


def test_partial_round_directory_is_not_taken_for_a_complete_round(
    reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert invoke("run", "--out", str(out), "--quiet", *TINY, "--set", "fl.rounds=2")[0] == 0
    partial = out / ".round-0003.partial"
    partial.mkdir()
    (partial / "global.safetensors").write_bytes(b"half")
    code, output = invoke("run", "--out", str(out), "--quiet", *TINY)
    assert code == 0, output
    assert not partial.exists()
    assert tree(out) == tree(reference_run)


# -- bad input: one line, exit code 2, nothing written ------------------------------------
def _assert_clean_failure(code: int, output: str, *needles: str) -> None:
    assert code == 2, output
    lines = [ln for ln in output.strip().splitlines() if ln]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output


@pytest.mark.parametrize(
    ("sets", "needles"),
    [
        (["data.sizee=5"], ["unknown config key", "data.sizee"]),
        (["data.size=abc"], ["data.size", "integer"]),
        (["data.clients=0"], ["data.clients", ">= 1"]),
        (["data.dataset=imagenet"], ["data.dataset", "synthetic"]),
        (["data.alpha=-1"], ["data.alpha", "> 0"]),
        (["model.name=vgg"], ["model.name", "cnn"]),
        (["fl.clients_per_round=50"], ["fl.clients_per_round", "data.clients"]),
        (["data.dataset=cifar10", "data.root=/nonexistent/cifar"], ["/nonexistent/cifar"]),
        (["train.lr"], ["KEY=VALUE"]),
    ],
)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, sets: list[str], needles: list[str]
) -> None:
    out = tmp_path / "run"
    args = [a for s in sets for a in ("--set", s)]
    code, output = invoke("run", "--out", str(out), "--quiet", *TINY, *args)
    _assert_clean_failure(code, output, *needles)
    assert not out.exists() or not any(out.iterdir())


def test_unparseable_config_file_is_a_one_line_error(tmp_path: Path) -> None:
    cfg = tmp_path / "params.yaml"
    cfg.write_text("data: [unclosed\n")
    code, output = invoke("run", str(cfg), "--out", str(tmp_path / "run"))
    _assert_clean_failure(code, output, "not valid YAML")


def test_workers_zero_is_a_usage_error(tmp_path: Path) -> None:
    code, output = invoke("run", "--out", str(tmp_path / "run"), "--workers", "0", *TINY)
    assert code == 2 and "--workers" in output and not (tmp_path / "run").exists()


def test_run_directory_made_with_another_config_is_refused(
    reference_run: Path, tmp_path: Path
) -> None:
    before = tree(reference_run, skip=())
    code, output = invoke("run", "--out", str(reference_run), *TINY, "--set", "train.lr=0.5")
    _assert_clean_failure(code, output, "another config", "train.lr", "new --out")
    assert tree(reference_run, skip=()) == before


@pytest.fixture()
def two_round_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    assert invoke("run", "--out", str(out), "--quiet", *TINY, "--set", "fl.rounds=2")[0] == 0
    return out


def test_round_past_last_complete_plus_one_is_refused(two_round_run: Path) -> None:
    before = tree(two_round_run, skip=())
    code, output = invoke("stage", "round", "--round", "4", "--out", str(two_round_run), *TINY)
    _assert_clean_failure(code, output, "round 4", "last complete round is 2")
    assert tree(two_round_run, skip=()) == before


def test_missing_previous_round_is_refused(two_round_run: Path) -> None:
    (two_round_run / "round-0002" / "manifest.json").unlink()
    before = tree(two_round_run, skip=())
    code, output = invoke("stage", "round", "--round", "3", "--out", str(two_round_run), *TINY)
    _assert_clean_failure(code, output, "round 3", "last complete round is 1")
    assert tree(two_round_run, skip=()) == before


@pytest.mark.parametrize("victim", ["global.safetensors", "rng.safetensors"])
def test_corrupt_previous_round_is_refused(two_round_run: Path, victim: str) -> None:
    path = two_round_run / "round-0002" / victim
    path.write_bytes(path.read_bytes()[:50])
    before = tree(two_round_run, skip=())
    code, output = invoke("stage", "round", "--round", "3", "--out", str(two_round_run), *TINY)
    _assert_clean_failure(code, output, "round-0002", "corrupt")
    assert tree(two_round_run, skip=()) == before


def test_missing_dataset_store_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, output = invoke("stage", "partition", "--out", str(out), *TINY)
    _assert_clean_failure(code, output, "prepare")
    assert not out.exists() or not any(out.iterdir())


def test_cli_help_does_not_import_torch() -> None:
    code = (
        "import sys; from blazefl.pipeline.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported for --help'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout and "verify" in result.stdout


def test_the_command_freezes_the_gc_at_exit_and_in_process_calls_do_not() -> None:
    """`console_main` (the `blazefl` script) freezes what is left before the interpreter's
    exit collections walk it; `main` called in-process (tests, notebooks) leaves the GC as is.
    """
    code = (
        "import atexit, gc, sys\n"
        "from blazefl.pipeline.cli import console_main, main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print('in-process frozen:', gc.get_freeze_count() > 0, flush=True)\n"
        "atexit.register(lambda: print('at exit frozen:', gc.get_freeze_count() > 0))\n"
        "sys.argv = ['blazefl', 'show', '/nonexistent-run']\n"
        "console_main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )
    assert result.returncode != 0  # the command's own exit code passes through
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert "in-process frozen: False" in result.stdout
    assert "at exit frozen: True" in result.stdout
    script = Path(sys.executable).parent / "blazefl"
    if script.exists():  # the installed command is this entry point
        assert "console_main" in script.read_text()


def test_rounds_left_from_another_config_are_refused(
    two_round_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DVC_STAGE", "round_000")  # outside DVC redoing init is refused
    code, output = invoke(
        "stage", "init", "--out", str(two_round_run), *TINY, "--set", "train.lr=0.5"
    )
    monkeypatch.delenv("DVC_STAGE")
    assert code == 0, output  # redoing init alone is allowed (dvc does this)...
    before = tree(two_round_run, skip=())
    code, output = invoke("run", "--out", str(two_round_run), *TINY, "--set", "train.lr=0.5")
    # ...but round 2, made with the old lr, must not be resumed from
    _assert_clean_failure(code, output, "another config", "train.lr")
    assert tree(two_round_run, skip=()) == before


def test_out_below_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    code, output = invoke("run", "--out", str(blocker / "run"), "--quiet", *TINY)
    _assert_clean_failure(code, output, "not-a-dir")
    assert blocker.read_text() == "x"


class _SlowClose:
    """A session whose close takes a while and says when it ran."""

    def __init__(self, wait_for: threading.Event | None = None, fail: bool = False) -> None:
        self.wait_for = wait_for
        self.fail = fail
        self.closed = threading.Event()
        self.thread = ""

    def close(self) -> None:
        self.thread = threading.current_thread().name
        if self.wait_for is not None:
            assert self.wait_for.wait(10)
        time.sleep(0.2)
        self.closed.set()
        if self.fail:
            raise OSError("a worker would not stop")


def test_the_report_is_written_while_the_workers_stop() -> None:
    from blazefl.pipeline.runner import _closing_in_background

    reporting = threading.Event()
    session = _SlowClose(wait_for=reporting)  # closes only once the report has begun
    with _closing_in_background(session):  # type: ignore[arg-type]
        reporting.set()
        assert not session.closed.is_set()
    assert session.closed.is_set() and session.thread == "blazefl-session-close"


def test_the_close_ends_before_a_failing_report_or_ctrl_c_propagates() -> None:
    from blazefl.pipeline.runner import _closing_in_background

    for raised in (ValueError("disk full"), KeyboardInterrupt()):
        session = _SlowClose()
        with pytest.raises(type(raised)), _closing_in_background(session):  # type: ignore[arg-type]
            raise raised
        assert session.closed.is_set()  # the `with Session` that follows closes nothing at once


def test_a_close_that_fails_is_raised_after_the_report() -> None:
    from blazefl.pipeline.runner import _closing_in_background

    session, reported = _SlowClose(fail=True), []
    with pytest.raises(OSError, match="would not stop"), _closing_in_background(session):  # type: ignore[arg-type]
        reported.append(True)
    assert reported == [True]
