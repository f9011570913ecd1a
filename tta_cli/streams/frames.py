"""What every stream yields, and what it reports about the inputs it could not use."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
    """Inputs that could not be used, with why; the run goes on without them."""

    pending: list[tuple[int, str, str]] = field(default_factory=list)
    total: int = 0

    def add(self, position: int, input_id: str, reason: str) -> None:
        self.pending.append((position, input_id, reason))
        self.total += 1

    def drain(self, before: int | None = None) -> list[tuple[str, str]]:
        """Hand over the entries at stream positions before ``before`` (all when ``None``)."""
        taken = [entry for entry in self.pending if before is None or entry[0] < before]
        self.pending = [entry for entry in self.pending if not (before is None or entry[0] < before)]
        return [(input_id, reason) for _, input_id, reason in taken]
