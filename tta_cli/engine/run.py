"""``adapt`` and ``resume``: stream a source through a ``Session``, recording every step.

SIGINT and SIGTERM end the run after the step in flight is committed (``tta_cli.engine.stopping``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from tta_cli.config import AdaptConfig
from tta_cli.engine.adapter import StepResult
from tta_cli.engine.session import Session
from tta_cli.engine.stopping import stop_on_signals
from tta_cli.history import RunSummary
from tta_cli.models import ModelSpec, load_bundle
from tta_cli.streams import Batch, Stream, batches, open_source


@dataclass
class Progress:
    """Running totals of this invocation, handed to the caller after every step."""

    total_images: int | None  # None for a live source or one of unknown length
    images_seen: int = 0
    images_skipped: int = 0
    frames_dropped: int = 0
    steps: int = 0
    entropy_sum: float = 0.0
    labeled: int = 0
    correct: int = 0
    started: float = 0.0

    @property
    def mean_entropy(self) -> float | None:
        return self.entropy_sum / self.images_seen if self.images_seen else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labeled if self.labeled else None

    @property
    def images_per_second(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.images_seen / elapsed if elapsed > 0 else 0.0

    def count(self, batch: Batch, result: StepResult) -> None:
        self.images_seen += len(batch)
        self.steps += 1
        self.entropy_sum += result.entropy.sum().item()
        labeled = batch.labeled
        self.labeled += int(labeled.sum())
        self.correct += int((result.predictions[labeled] == batch.labels[labeled]).sum())


def adapt(config: AdaptConfig, on_step: Callable[[Progress], None] | None = None) -> RunSummary:
    """Start a new run in ``config.run``; returns the summary also written to ``summary.json``."""
    bundle = load_bundle(config.model)
    # Opened first, so that a source that cannot be read leaves no run directory behind.
    stream = open_run_source(config, bundle.spec)
    try:
        session = Session.create(config, bundle)
    except BaseException:
        stream.close()  # a camera or a reader thread is not left open by a run that did not start
        raise
    return _run(session, stream, on_step)


def resume(run: Path, on_step: Callable[[Progress], None] | None = None) -> RunSummary:
    """Continue a run from its ``current`` state with the same configuration, after the last
    recorded step's input."""
    session = Session.resume(run)
    try:
        stream = open_run_source(session.config, session.bundle.spec, start=session.position)
    except BaseException:
        session.close()
        raise
    return _run(session, stream, on_step)


def open_run_source(config: AdaptConfig, spec: ModelSpec, start: int = 0) -> Stream:
    """The stream a run reads, from stream position ``start``: its source, framed for the model,
    in the run's order."""
    return open_source(
        config.source,
        spec.framing,
        spec.class_names,
        order=config.order,
        seed=config.seed,
        workers=config.workers,
        start=start,
        stride=config.stride,
        max_frames=config.limit,
        duration=config.duration,
        reconnect=config.live,
    )


def _run(session: Session, stream: Stream, on_step: Callable[[Progress], None] | None) -> RunSummary:
    total = None if stream.length is None else stream.length - stream.start
    progress = Progress(total_images=total, started=time.perf_counter())
    dropped = 0
    stopped_by = None
    try:
        with (
            stop_on_signals(stream.stop) as stop,
            closing(stream),
            closing(batches(stream, session.config.batch_size, session.preprocess)) as stream_batches,
        ):
            for batch in stream_batches:
                # Frames gathered after a stop request are left for a resumed run.
                if stop.requested:
                    break
                result = session.step(batch, frames_dropped=stream.dropped - dropped)
                session.record(stream.events.drain(), stream.skipped.drain(before=batch.end_position))
                dropped = stream.dropped
                progress.count(batch, result)
                progress.images_skipped = stream.skipped.total
                progress.frames_dropped = dropped
                if on_step is not None:
                    on_step(progress)
            stream.close()
            # A stopped run that resumes reads a file or folder again from its last step's end:
            # inputs skipped beyond it are recorded then, not twice.
            resumes_at = session.position if stop.requested and stream.replayable else None
            session.record(stream.events.drain(), stream.skipped.drain(before=resumes_at))
            stopped_by = stop.signal
    finally:
        summary = session.close(stopped_by=stopped_by, source_lost=stream.failure)
    return summary
