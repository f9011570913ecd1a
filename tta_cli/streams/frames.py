"""What every stream yields, and what it reports about the inputs it could not use."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One input: an id the user can trace back (relative path or frame index), the RGB image
    at the model's input size, and the class index when the source is labeled."""

    id: str
    image: np.ndarray
    label: int | None = None


@dataclass
class SkipLog:
    """Inputs that could not be used, with why; the run goes on without them."""

    entries: list[tuple[str, str]] = field(default_factory=list)

    def add(self, input_id: str, reason: str) -> None:
        self.entries.append((input_id, reason))

    def __len__(self) -> int:
        return len(self.entries)
