"""A thread pool whose threads never keep the process alive.

`concurrent.futures.ThreadPoolExecutor` joins every worker thread at interpreter exit (its
threads are registered with an exit hook), so one client stuck in code that never checks its
stop event (`time.sleep(3600)`, a blocking read) keeps the process running after Ctrl-C.
Python cannot stop a thread from the outside, so the choice here is to *abandon* it:

- the threads are daemon threads, which interpreter exit does not wait for;
- `shutdown()` cancels queued work, waits a bounded grace period for running work to reach
  its next stop check (cooperative clients stop within one step), and returns even if some
  thread is still busy. A thread left behind finishes or dies with the process; its result
  goes nowhere, because every future it could complete has already been given up on.

It returns ordinary `concurrent.futures.Future` objects, so callers (and the original BlazeFL
`progress_fn` hook, e.g. `tqdm`) see the same interface as with `ThreadPoolExecutor`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["DaemonThreadPool", "SHUTDOWN_GRACE_S"]

T = TypeVar("T")

#: How long `shutdown()` waits for running work to stop in total (cooperative clients stop at
#: their next check, well within it; a hung one is abandoned after it).
SHUTDOWN_GRACE_S = 1.5

_STOP = object()


class DaemonThreadPool:
    """A fixed number of daemon worker threads serving submitted calls in FIFO order.

    Args:
        num_threads: worker threads (>= 1), started at once.
        thread_name_prefix: thread names are `PREFIX_N`.
        initializer: called once in every worker thread before it serves work.
        initargs: arguments of `initializer`.

    Example:
        >>> pool = DaemonThreadPool(2, "blazefl-client")
        >>> pool.submit(sum, [1, 2]).result()
        3
        >>> pool.shutdown()
    """

    def __init__(
        self,
        num_threads: int,
        thread_name_prefix: str,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if num_threads <= 0:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(
                target=self._serve,
                args=(initializer, initargs),
                name=f"{thread_name_prefix}_{i}",
                daemon=True,  # see the module docstring: a hung client must not block exit
            )
            for i in range(num_threads)
        ]
        for thread in self._threads:
            thread.start()

    def _serve(self, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
        init_error: BaseException | None = None
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as exc:  # reported through every future this thread takes
                init_error = exc
        while True:
            item = self._work.get()
            if item is _STOP:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            if init_error is not None:
                future.set_exception(RuntimeError(f"pool thread failed to start: {init_error!r}"))
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # the caller decides; nothing escapes the thread
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn, args, item  # do not keep the last result alive while idle

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `fn(*args)`; returns its future.

        Raises:
            RuntimeError: the pool has been shut down.
        """
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._work.put((future, fn, args))
        return future

    def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> list[threading.Thread]:
        """Cancel queued work, stop the threads, wait at most `grace_s` for running work.

        Returns:
            The threads still running after the grace period (abandoned; daemon threads).
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                while True:  # cancel what no thread has taken yet
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _STOP:
                        item[0].cancel()
                for _ in self._threads:
                    self._work.put(_STOP)
        deadline = time.monotonic() + grace_s
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return [t for t in self._threads if t.is_alive()]
