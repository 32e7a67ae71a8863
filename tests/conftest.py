"""Suite-wide fixtures."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C tests send SIGINT to this process: make it raise KeyboardInterrupt as in a
    terminal even when the suite was started in the background (`cmd &` in a script sets
    SIGINT to ignored), and put back whatever handler was there."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
