"""What a step records besides its numbers: typed events, stored as ``(kind, detail)`` rows of
the history. Reports count and filter them by kind; nothing parses a detail."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EventKind(str, enum.Enum):
    # What the adapter did at a step.
    RESET = "reset"
    """The state went back to the source's (RDumb's period, SAR's recovery)."""
    NO_UPDATE = "no-update"
    """A step that would have moved θ did not (the detail says why)."""
    NORM_RETURN = "norm-return"
    """A normalisation sent its estimates back to the source's statistics."""
    NORM_JUMP = "norm-jump"
    """A normalisation's estimates took a far-off batch's own statistics."""
    DEFER = "defer"
    """The source's statistics predict, without gradient steps, on a mild shift."""
    DEFER_END = "defer-end"
    """The stream's statistics predict again."""
    # What the run loop did.
    SKIP = "skip"
    """The guard skipped an update."""
    ROLLBACK = "rollback"
    RESUME = "resume"
    STOPPED = "stopped"
    # What the stream did.
    SKIPPED_INPUT = "skipped"
    """An input could not be read; it is left out and counted."""
    RECONNECT = "reconnect"
    SOURCE_LOST = "source-lost"
    FOLDER_NOT_LISTED = "folder-not-listed"
    """A folder of the source could not be listed; whatever it holds is left out."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Event:
    kind: EventKind
    detail: str = ""


@dataclass(frozen=True)
class SkippedInput:
    """An input that could not be used, and why; the run goes on without it."""

    input_id: str
    reason: str
    position: int = 0
    """Its position in the stream."""
