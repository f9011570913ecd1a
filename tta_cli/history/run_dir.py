"""The run directory: resolved configuration, per-input predictions and the run summary.

RUN_DIR/run.toml          the fully resolved configuration
RUN_DIR/predictions.csv   one row per input: id, class, confidence, step, label
RUN_DIR/summary.json      totals for the whole run
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from tta_cli.errors import UsageError
from tta_cli.events import EventKind, SkippedInput
from tta_cli.files import atomic_folder, write_atomic
from tta_cli.history.store import HistoryStore


class RunSummary(BaseModel):
    """Totals over the whole run (every invocation of a resumed run included)."""

    method: str
    device: str
    images_seen: int
    images_skipped: int
    skipped: list[SkippedInput]
    steps: int
    seconds: float
    images_per_second: float
    mean_entropy: float | None
    online_accuracy: float | None
    labeled_images: int
    rollbacks: int
    frames_dropped: int = 0  # stale frames of a live source that no step used
    reconnects: int = 0
    folders_not_listed: list[str] = []  # folders of the source that could not be listed, and why
    stopped_by: str | None = None  # SIGINT or SIGTERM when this invocation was asked to stop
    source_lost: str | None = None  # why a live source ended the run, when it did


class RunDirectory:
    CONFIG = "run.toml"
    PREDICTIONS = "predictions.csv"
    SUMMARY = "summary.json"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def check_new(self) -> None:
        """An existing non-empty run directory is never overwritten."""
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise UsageError(f"Run directory {self.path} already exists and is not empty; choose a new --run.")

    @contextmanager
    def creating(self) -> Iterator[Path]:
        """Yield a temporary folder to fill, then move it into place in one rename, so that a
        run killed while starting leaves either no run directory or a complete one."""
        self.check_new()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_folder(self.path) as staging:
            yield staging

    def write_config(self, text: str) -> None:
        write_atomic(self.path / self.CONFIG, text)

    def write_summary(self, summary: RunSummary) -> None:
        write_atomic(self.path / self.SUMMARY, summary.model_dump_json(indent=2) + "\n")

    def predictions(self, keep_through_step: int = 0) -> PredictionWriter:
        return PredictionWriter(self.path / self.PREDICTIONS, keep_through_step)


class PredictionWriter:
    """Appends prediction rows, flushed after every batch so a stopped run keeps them.

    Rows are written before their step is committed to the history; when a run resumes, rows
    of steps after ``keep_through_step`` (the last committed one) and any half-written last
    line are dropped, so the file again matches the history.
    """

    FIELDS = ("id", "class", "confidence", "step", "label")

    def __init__(self, path: Path, keep_through_step: int = 0) -> None:
        if keep_through_step > 0 and path.exists():
            write_atomic(path, _rows_through_step(path, keep_through_step))
            self._handle: IO[str] = path.open("a", newline="")
            self._writer = csv.writer(self._handle)
        else:
            self._handle = path.open("w", newline="")
            self._writer = csv.writer(self._handle)
            self._writer.writerow(self.FIELDS)
            # A run stopped before its first step still leaves a file with its header.
            self._handle.flush()

    def write(self, rows: list[tuple[str, str, float, int, str]]) -> None:
        self._writer.writerows((i, c, f"{p:.5f}", s, label) for i, c, p, s, label in rows)
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _rows_through_step(path: Path, last_step: int) -> str:
    """The header and the complete rows of steps up to ``last_step``, read as CSV: an id or a
    class name that holds a comma or a quote is a quoted field, not a broken row."""
    with path.open(newline="") as handle:
        text = handle.read()
    # A row a kill cut short has no line end yet.
    rows = csv.reader(io.StringIO(text[: text.rfind("\n") + 1]))
    next(rows, None)
    kept = io.StringIO()
    writer = csv.writer(kept)
    writer.writerow(PredictionWriter.FIELDS)
    for row in rows:
        if len(row) == len(PredictionWriter.FIELDS) and row[3].isdigit() and int(row[3]) <= last_step:
            writer.writerow(row)
    return kept.getvalue()


def summarize(store: HistoryStore, method: str, device: str) -> RunSummary:
    """The run's totals, read back from its history."""
    totals = store.totals()
    events = store.events()
    steps = store.steps()
    seconds = sum(store.run_durations())
    images = int(totals["images"])
    return RunSummary(
        method=method,
        device=device,
        images_seen=images,
        images_skipped=int(totals["skipped"]),
        skipped=store.skipped_inputs(),
        steps=len(steps),
        seconds=round(seconds, 3),
        images_per_second=round(images / seconds, 2) if seconds > 0 else 0.0,
        mean_entropy=totals["entropy_sum"] / totals["entropy_images"] if totals["entropy_images"] else None,
        online_accuracy=totals["correct"] / totals["labeled"] if totals["labeled"] else None,
        labeled_images=int(totals["labeled"]),
        rollbacks=sum(event.kind == EventKind.ROLLBACK for event in events),
        frames_dropped=sum(int(step.diagnostics.get("frames_dropped", 0)) for step in steps),
        reconnects=sum(event.kind == EventKind.RECONNECT for event in events),
        # Each invocation of a resumed run lists the folder again.
        folders_not_listed=sorted({event.detail for event in events if event.kind == EventKind.FOLDER_NOT_LISTED}),
    )
