"""What every stream yields, and what it reports about the inputs it could not use."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from tta_cli.events import Event, SkippedInput


@dataclass(frozen=True)
class Frame:
    """One input: an id the user can trace back (relative path or frame index), the RGB image
    at the model's input size, the class index when the source is labeled, and its position
    in the stream (so a resumed run can continue after it)."""

    id: str
    image: np.ndarray
    label: int | None = None
    position: int = 0


@dataclass
class SkipLog:
    """Inputs that could not be used, with why; the run goes on without them.

    A video's reader thread may add while the run loop drains, so both go through a lock.
    """

    pending: list[SkippedInput] = field(default_factory=list)
    total: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, position: int, input_id: str, reason: str) -> None:
        with self._lock:
            self.pending.append(SkippedInput(input_id, reason, position))
            self.total += 1

    def drain(self, before: int | None = None) -> list[SkippedInput]:
        """Hand over the entries at stream positions before ``before`` (all when ``None``)."""
        with self._lock:
            taken = [entry for entry in self.pending if before is None or entry.position < before]
            self.pending = [entry for entry in self.pending if not (before is None or entry.position < before)]
        return taken


class EventLog:
    """Things a source reports while it runs (reconnects, a lost source), for the history.

    A reader thread adds and the run loop drains, so both go through a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Event] = []

    def add(self, event: Event) -> None:
        with self._lock:
            self._pending.append(event)

    def drain(self) -> list[Event]:
        with self._lock:
            taken, self._pending = self._pending, []
        return taken


class Stream:
    """What the run loop sees of any source: iteration over ``Frame``s from position
    ``start``, ``length`` (``None`` when unknown or live), the inputs it skipped, the events it
    reports, and counters for stale frames dropped and reconnects. ``stop()`` may be called
    from a signal handler or another thread; iteration then ends at the next frame boundary."""

    def __init__(self, start: int = 0) -> None:
        self.start = start
        self.skipped = SkipLog()
        self.events = EventLog()
        self.dropped = 0
        self.reconnects = 0
        self.failure: str | None = None  # why the source ended early, when it did
        self._stop = threading.Event()

    @property
    def length(self) -> int | None:
        return None

    @property
    def replayable(self) -> bool:
        """Whether a resumed run reads this source's positions again (a folder, a video file),
        rather than whatever comes next (a camera)."""
        return False

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Stop and release whatever the stream holds (threads, devices, connections)."""
        self.stop()
