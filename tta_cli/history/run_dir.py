"""The run directory: resolved configuration, per-input predictions and the run summary.

RUN_DIR/run.toml          the fully resolved configuration
RUN_DIR/predictions.csv   one row per input: id, class, confidence, step, label
RUN_DIR/summary.json      totals for the whole run
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from tta_cli.errors import UsageError


class RunSummary(BaseModel):
    method: str
    device: str
    images_seen: int
    images_skipped: int
    skipped: list[tuple[str, str]]
    steps: int
    seconds: float
    images_per_second: float
    mean_entropy: float | None
    online_accuracy: float | None
    labeled_images: int


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write ``text`` (or bytes) to ``path`` so that a reader sees the old or the new file, never
    half; a failed write leaves no temporary file behind."""
    mode = "wb" if isinstance(text, bytes) else "w"
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        try:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            handle.close()
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)


class RunDirectory:
    CONFIG = "run.toml"
    PREDICTIONS = "predictions.csv"
    SUMMARY = "summary.json"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def create(self) -> None:
        """Make a new run directory; an existing non-empty one is never overwritten."""
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise UsageError(f"Run directory {self.path} already exists and is not empty; choose a new --run.")
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, text: str) -> None:
        write_atomic(self.path / self.CONFIG, text)

    def write_summary(self, summary: RunSummary) -> None:
        write_atomic(self.path / self.SUMMARY, summary.model_dump_json(indent=2) + "\n")

    def read_summary(self) -> RunSummary:
        return RunSummary.model_validate(json.loads((self.path / self.SUMMARY).read_text()))

    def predictions(self) -> PredictionWriter:
        return PredictionWriter(self.path / self.PREDICTIONS)


class PredictionWriter:
    """Appends prediction rows, flushed after every batch so a stopped run keeps them."""

    FIELDS = ("id", "class", "confidence", "step", "label")

    def __init__(self, path: Path) -> None:
        self._handle: IO[str] = path.open("w", newline="")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(self.FIELDS)

    def write(self, rows: list[tuple[str, str, float, int, str]]) -> None:
        self._writer.writerows((i, c, f"{p:.5f}", s, label) for i, c, p, s, label in rows)
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
