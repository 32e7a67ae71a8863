"""Issue 8: worker faults through the CLI end in one line with the right exit code, and leave
nothing behind: a worker that cannot start, client code raising SystemExit or
KeyboardInterrupt, a hung thread client under Ctrl-C, a SIGKILLed storage-mode runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from blazefl.stages.temp_cleanup import OWNED_PREFIX
from tests.core.broken_workloads import HANG_MARKER_ENV
from tests.pipeline.integrity_helpers import cli, one_line_error, sets

REPO = Path(__file__).parents[2]
ALGOS = "tests.core.broken_workloads"


def blazefl_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`blazefl ARGS` in a child process (stderr captured), from the repository root."""
    return subprocess.Popen(
        [sys.executable, "-m", "blazefl.pipeline.cli", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def stderr_lines(text: str) -> list[str]:
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.strip()]


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.exists(), f"{path} never appeared (exit code {proc.poll()})"


def test_worker_process_that_cannot_load_its_workload_is_bad_input(tmp_path: Path) -> None:
    # exit 2: the pool never started; the workload is the user's input to fix (no client ran)
    algo = f"fl.algorithm={ALGOS}:UnloadableFedAvg"
    proc = blazefl_process(
        "run", "--out", str(tmp_path / "run"), "--quiet", "--mode", "processes", *sets(algo)
    )
    _, err = proc.communicate(timeout=300)
    lines = stderr_lines(err)  # the worker printed nothing either
    assert proc.returncode == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: worker process failed to start: RuntimeError: "), err
    assert "client" not in lines[0]


def test_make_worker_raising_in_thread_mode_is_bad_input(tmp_path: Path) -> None:
    algo = f"fl.algorithm={ALGOS}:MakeWorkerFailsFedAvg"
    result = cli("run", "--out", str(tmp_path / "run"), "--mode", "threads", *sets(algo))
    line = one_line_error(result, code=2)
    assert line.startswith("error: worker failed to start: ValueError: make_worker"), line


@pytest.mark.parametrize(
    ("algo", "cause"),
    [("SystemExitFedAvg", "SystemExit: 4"), ("KeyboardInterruptFedAvg", "KeyboardInterrupt")],
)
def test_system_exit_or_keyboard_interrupt_in_a_thread_client_is_a_client_failure(
    tmp_path: Path, algo: str, cause: str
) -> None:
    result = cli(
        "run",
        "--out",
        str(tmp_path / "run"),
        "--mode",
        "threads",
        "--workers",
        "2",
        *sets(f"fl.algorithm={ALGOS}:{algo}"),
    )
    line = one_line_error(result, code=1)  # not 4, not 130
    assert line.startswith("error: client ") and line.endswith(f" failed in round 1: {cause}")


def test_ctrl_c_with_a_hung_thread_client_exits_130(tmp_path: Path) -> None:
    out, marker = tmp_path / "run", tmp_path / "hanging"
    proc = blazefl_process(
        "run",
        "--out",
        str(out),
        "--quiet",
        "--mode",
        "threads",
        "--workers",
        "2",
        *sets(f"fl.algorithm={ALGOS}:HangingFedAvg"),
        env={HANG_MARKER_ENV: str(marker)},
    )
    try:
        wait_for(marker, proc)  # a client is inside its hour-long sleep
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)  # before: still running after 60 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert stderr_lines(err) == ["interrupted: completed rounds are kept; run again to resume"]


def test_sigkilled_storage_runner_leaves_no_ipc_folder_after_the_next_run(tmp_path: Path) -> None:
    tmp, out = tmp_path / "tmp", tmp_path / "run"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    args = ("run", "--out", str(out), "--quiet", "--mode", "processes", "--ipc", "storage")
    proc = blazefl_process(*args, *sets(), env=env)
    try:
        owned: list[Path] = []
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:  # mid-round: IPC folder made
            owned = [p for p in tmp.glob(f"{OWNED_PREFIX}{proc.pid}-*") if any(p.iterdir())]
            if owned:
                break
            time.sleep(0.01)
        assert owned, "the runner never made its storage-mode IPC folder"
        workers = psutil.Process(proc.pid).children()
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    psutil.wait_procs(workers, timeout=30)  # the kernel kills them with their runner
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    assert [p.name for p in owned[0].iterdir()][0].startswith("blazefl-ipc-")
    rerun = blazefl_process(*args, *sets(), env=env)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    # the dead runner's folders were removed at the rerun's start, the rerun's own at its end
    assert sorted(p.name for p in tmp.iterdir()) == []
