"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (``docker stop``, systemd).

The first signal only asks: the run loop finishes and commits the step in flight, then ends
with its summary written. A second SIGINT stops at once (``KeyboardInterrupt``); the history
is transactional, so even that leaves it consistent, as ``kill -9`` does.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from tta_cli.errors import ExitCode

EXIT_CODES = {"SIGINT": ExitCode.SIGINT, "SIGTERM": ExitCode.SIGTERM}


class StopRequest:
    """Which signal asked the run to stop, if any."""

    def __init__(self) -> None:
        self.signal: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_on_signals(on_stop: Callable[[], None] = lambda: None) -> Iterator[StopRequest]:
    """While inside, SIGINT and SIGTERM set the request and call ``on_stop`` (which must be
    safe to call from a signal handler); the previous handlers come back on leaving. Outside
    the main thread, where Python allows no handlers, nothing is installed."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if request.requested and name == "SIGINT":
            raise KeyboardInterrupt
        request.signal = request.signal or name
        on_stop()

    previous = {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
