"""`blazefl run` writes round t while round t+1 trains: in order, errors surfaced, nothing lost."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from click.testing import Result

from blazefl.pipeline.background_commit import BackgroundCommits
from blazefl.stages.session import RoundOutputs, Session


class _FakeSession:
    """Records commit start/end; round `fail_at` raises OSError; a commit waits for `release`
    (set from the start unless a test holds it)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.events: list[tuple[str, int]] = []
        self.fail_at = fail_at
        self.release = threading.Event()
        self.release.set()

    def commit(self, out: Any) -> float:
        self.events.append(("start", out.round))
        self.release.wait(10)  # a synchronous commit would hold the caller here, then fail it
        if out.round == self.fail_at:
            raise OSError(28, "No space left on device")
        self.events.append(("end", out.round))
        return 0.0


class _Out:
    def __init__(self, t: int) -> None:
        self.round = t


def _commits(session: _FakeSession) -> BackgroundCommits:
    return BackgroundCommits(cast(Session, session))


def _out(t: int) -> RoundOutputs:
    return cast(RoundOutputs, _Out(t))


def test_rounds_commit_in_order_behind_the_caller() -> None:
    session, done = _FakeSession(), []
    session.release.clear()  # round 1's write is held until the caller has moved on
    commits = _commits(session)
    commits.submit(_out(1), lambda out: done.append(out.round))
    assert done == [] and ("end", 1) not in session.events  # returned while round 1 is written
    session.release.set()
    for t in (2, 3):
        commits.submit(_out(t), lambda out: done.append(out.round))
    commits.wait()
    assert session.events == [(k, t) for t in (1, 2, 3) for k in ("start", "end")]
    assert done == [1, 2, 3]


def test_a_failed_commit_surfaces_at_the_next_round_boundary() -> None:
    session = _FakeSession(fail_at=2)
    commits = _commits(session)
    commits.submit(_out(1), lambda out: None)
    commits.submit(_out(2), lambda out: None)
    with pytest.raises(OSError, match="No space left"):
        commits.submit(_out(3), lambda out: None)
    assert ("start", 3) not in session.events  # nothing after the failed round
    commits.wait()  # the error was handed over once


def test_drain_finishes_the_round_in_flight_and_keeps_the_callers_error() -> None:
    session = _FakeSession(fail_at=1)
    commits = _commits(session)
    commits.submit(_out(1), lambda out: None)
    commits.drain()  # no raise: the caller is reporting its own exception
    assert session.events == [("start", 1)]
    assert not any(t.name.startswith("blazefl-commit") for t in threading.enumerate())


def test_a_write_failure_stops_the_run_and_resume_gives_the_same_bytes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    blazefl: Callable[..., Result],
    tiny_args: list[str],
    tiny_run: Path,
    snapshot: Callable[[Path], dict[str, str]],
) -> None:
    real_commit = Session.commit

    def failing(self: Session, out: RoundOutputs) -> float:
        if out.round == 2:
            raise OSError(28, "No space left on device")
        return real_commit(self, out)

    out = tmp_path / "run"
    args = ("run", "--out", str(out), "--mode", "threads", "--workers", "2", *tiny_args)
    monkeypatch.setattr(Session, "commit", failing)
    result = blazefl(*args)
    assert result.exit_code != 0
    assert "No space left on device" in result.output
    assert (out / "round-0001" / "manifest.json").exists()
    assert not (out / "round-0002").exists()
    assert "round   1/3" in result.output and "round   2/3" not in result.output
    monkeypatch.setattr(Session, "commit", real_commit)
    result = blazefl(*args)
    assert result.exit_code == 0, result.output
    rounds = [f"round-{t:04d}" for t in (1, 2, 3)]
    mine, ref = snapshot(out), snapshot(tiny_run)
    for name in rounds:
        assert {k: v for k, v in mine.items() if k.startswith(name)} == {
            k: v for k, v in ref.items() if k.startswith(name)
        }
