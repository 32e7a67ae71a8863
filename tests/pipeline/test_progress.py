"""The runner's progress output: a per-round bar on a terminal, summary lines always."""

from __future__ import annotations

import io

from blazefl.pipeline.runner import Progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_counts_clients_on_a_terminal_and_summary_line_replaces_it() -> None:
    stream = FakeTTY()
    progress = Progress(total_rounds=3, stream=stream)
    progress.round = 2
    for done in range(1, 5):
        progress.client(done, 4)
    progress.line("round   2/3  train_loss 1.0")
    text = stream.getvalue()
    assert "\rround 2/3 [" in text and "] 1/4 clients" in text and "] 4/4 clients" in text
    assert "#" * 30 in text  # full bar at 4/4
    assert text.endswith("\r\033[Kround   2/3  train_loss 1.0\n")


def test_no_bar_when_not_a_terminal_and_nothing_when_quiet() -> None:
    plain = io.StringIO()
    progress = Progress(total_rounds=1, stream=plain)
    progress.round = 1
    progress.client(1, 2)
    progress.line("round   1/1")
    assert plain.getvalue() == "round   1/1\n"
    quiet = FakeTTY()
    progress = Progress(total_rounds=1, stream=quiet, quiet=True)
    progress.client(1, 2)
    progress.line("round   1/1")
    assert quiet.getvalue() == ""
