"""Cooperative cancellation of running client work.

A trainer owns a ``threading.Event`` (its ``stop_event``) per round. It is set when the round is
abandoned: Ctrl-C, an exception in the consumer's loop, a failing client, ``close()``, or a user
calling ``trainer.stop_event.set()`` from another thread. Python cannot stop a thread from the
outside, so client work checks the event between steps: :func:`raise_if_cancelled` raises
:class:`ClientCancelledError` once it is set. The built-in local SGD loop checks it between
batches; a custom ``ClientWorker.train`` can do the same.

The event reaches client code without changing any signature: :func:`run_client_task` binds it to
the running client (a context variable, so each pool thread sees its own client's event), and
:func:`current_stop_event` / :func:`raise_if_cancelled` read it. Outside a trainer (a plain call
to ``worker.train``) nothing is bound and the check is a no-op.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = [
    "ClientCancelledError",
    "bound_stop_event",
    "current_stop_event",
    "raise_if_cancelled",
]

_STOP_EVENT: ContextVar[threading.Event | None] = ContextVar("blazefl_stop_event", default=None)


class ClientCancelledError(RuntimeError):
    """Client work stopped early because its round was cancelled (not a client failure)."""


@contextmanager
def bound_stop_event(stop_event: threading.Event | None) -> Iterator[None]:
    """Make ``stop_event`` the one :func:`raise_if_cancelled` checks, inside the ``with`` block.

    Args:
        stop_event: the running round's event; ``None`` binds nothing (checks are no-ops).

    Example:
        >>> with bound_stop_event(threading.Event()):
        ...     raise_if_cancelled()  # not set: returns
    """
    token = _STOP_EVENT.set(stop_event)
    try:
        yield
    finally:
        _STOP_EVENT.reset(token)


def current_stop_event() -> threading.Event | None:
    """The stop event of the client running in this thread, or ``None`` outside a trainer.

    Returns:
        The bound ``threading.Event`` (pass it on to code that polls it), or ``None``.

    Example:
        >>> current_stop_event() is None
        True
    """
    return _STOP_EVENT.get()


def raise_if_cancelled() -> None:
    """Raise :class:`ClientCancelledError` if this client's round has been cancelled.

    Cheap (one context-variable read); call it between training steps.

    Raises:
        ClientCancelledError: the bound stop event is set.

    Example:
        >>> raise_if_cancelled()  # outside a trainer: never raises
    """
    event = _STOP_EVENT.get()
    if event is not None and event.is_set():
        raise ClientCancelledError("client work cancelled: its round was stopped")
