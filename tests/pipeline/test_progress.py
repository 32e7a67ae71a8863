"""What a researcher sees while a run goes: on a terminal one line redrawn in place during a
round (clients done of those sampled, the round's and the run's ETA), one summary line per
round always; on a log or CI stream only the summary lines. The end-to-end tests run
`blazefl run` with a pseudo-terminal as its stderr, and with a pipe."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from blazefl.pipeline.runner import Progress, _seconds
from tests.pipeline.conftest import TINY_SETS


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_round_line_counts_clients_with_an_eta_and_the_summary_line_replaces_it() -> None:
    stream = FakeTTY()
    progress = Progress(total_rounds=3, stream=stream)
    progress.begin(1)
    progress.begin(2)
    for done in range(1, 5):
        progress._drawn = 0.0  # no throttling in the test
        progress.client(done, 4)
    progress.line("round   2/3  train_loss 1.0")
    text = stream.getvalue()
    assert "\r\033[Kround 2/3  client 1/4 [#####" in text
    assert "client 4/4 [" + "#" * 20 + "]" in text
    assert "round ETA" in text and "run ETA" in text  # round 2 of 3: one more round to go
    assert text.endswith("\r\033[Kround   2/3  train_loss 1.0\n")


def test_redraws_are_throttled_but_the_last_client_always_shows() -> None:
    stream = FakeTTY()
    progress = Progress(total_rounds=1, stream=stream)
    progress.begin(1)
    for done in range(1, 101):
        progress.client(done, 100)
    text = stream.getvalue()
    assert text.count("\r") < 20 and "client 100/100" in text
    assert "run ETA" not in text  # the last round: the round's ETA is the run's


def test_no_in_round_line_when_not_a_terminal_and_nothing_when_quiet() -> None:
    plain = io.StringIO()
    progress = Progress(total_rounds=1, stream=plain)
    progress.begin(1)
    progress.client(1, 2)
    progress.line("round   1/1")
    assert plain.getvalue() == "round   1/1\n"
    quiet = FakeTTY()
    progress = Progress(total_rounds=1, stream=quiet, quiet=True)
    progress.begin(1)
    progress.client(1, 2)
    progress.line("round   1/1")
    assert quiet.getvalue() == ""
    progress.warn("mlflow tracking stopped")  # warnings are not progress: shown with -q too
    assert quiet.getvalue() == "\r\033[Kwarning: mlflow tracking stopped\n"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0s"), (42, "42s"), (185, "3m05s"), (3725, "1h02m"), (-1, "0s")]
)
def test_eta_text(seconds: float, text: str) -> None:
    assert _seconds(seconds) == text


def _command(tmp_path: Path) -> list[str]:
    (tmp_path / "params.yaml").write_text("")
    sets = [a for item in TINY_SETS for a in ("--set", item)]
    return [sys.executable, "-m", "blazefl.pipeline.cli", "run", "--out", "run", *sets]


def _read_all(fd: int, proc: subprocess.Popen[bytes]) -> bytes:
    """Everything written to a pty master until the child exits (EIO: the slave closed)."""
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks)


@pytest.mark.slow
def test_a_terminal_sees_clients_done_within_each_round(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        _command(tmp_path), cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=slave,
    )  # fmt: skip
    os.close(slave)
    try:
        text = _read_all(master, proc).decode()
    finally:
        os.close(master)
    assert proc.wait(timeout=300) == 0, text
    for t in (1, 2, 3):  # 3 clients sampled per round: the last one always redraws
        assert f"round {t}/3  client 3/3 [" in text, text
        assert re.search(rf"\r\033\[Kround +{t}/3  train_loss", text), text
    assert "round ETA" in text
    assert "plot: run/plots/metrics.png" in text


@pytest.mark.slow
def test_a_log_gets_one_line_per_round_and_where_the_plot_is(tmp_path: Path) -> None:
    proc = subprocess.run(
        _command(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "\r" not in proc.stderr and "client" not in proc.stderr
    assert [line.split()[1] for line in lines[:3]] == ["1/3", "2/3", "3/3"], lines
    assert lines[3].startswith("done: 3 rounds in run")
    assert lines[4:] == ["plot: run/plots/metrics.png"]
    assert (tmp_path / "run" / "plots" / "metrics.png").is_file()
    quiet = subprocess.run(
        [*_command(tmp_path), "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""
