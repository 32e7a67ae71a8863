"""Writing round t while round t+1 trains.

A round's compute needs only what the previous round left in memory (global model, RNG
states, algorithm state, the parent hashes), so `blazefl run` hands each computed round to one
background thread that writes and syncs it, and starts the next round at once. Writing is
mostly waiting on the disk (file writes and fsync release the GIL), so it overlaps training
instead of adding to it: for ResNet-18 that is ~45 MB and ~0.1 s per round.

Guarantees kept: rounds are committed in order, one at a time (round t+1's unchanged
per-client files are hard links into round t, so t must be on disk first); a round's progress
line is printed only after it is committed; a failed write stops the run at the next round
boundary with its own error; on any exit (error, Ctrl-C) the round being written is finished
first, so nothing computed and complete is lost and nothing is left half-written.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from blazefl.stages.session import RoundOutputs, Session

__all__ = ["BackgroundCommits"]


class BackgroundCommits:
    """Commits computed rounds in a background thread, in order, one at a time.

    Args:
        session: the session whose `commit` writes a round.

    Example:
        >>> commits = BackgroundCommits(session)
        >>> for t in rounds:
        ...     commits.submit(session.compute(t), on_done=lambda out: print(out.round))
        >>> commits.wait()
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, out: RoundOutputs, on_done: Callable[[RoundOutputs], None]) -> None:
        """Wait for the previous round's commit (raising its error), then start this one.

        Args:
            out: a computed round.
            on_done: called in the writer thread after the round is committed.
        """
        self.wait()
        self._thread = threading.Thread(
            target=self._commit, args=(out, on_done), name=f"blazefl-commit-{out.round}"
        )
        self._thread.start()

    def _commit(self, out: RoundOutputs, on_done: Callable[[RoundOutputs], None]) -> None:
        try:
            self._session.commit(out)
            on_done(out)
        except BaseException as exc:  # handed to the main thread by wait()
            self._error = exc

    def wait(self) -> None:
        """Block until the round in flight is committed; re-raise its error, if any."""
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                thread.join()
            except BaseException:
                thread.join()  # Ctrl-C while waiting: still finish the round being written
                raise
        error, self._error = self._error, None
        if error is not None:
            raise error

    def drain(self) -> None:
        """Finish the round in flight, dropping its error (the caller is already failing)."""
        with contextlib.suppress(BaseException):  # the exception in flight is the one to report
            self.wait()
