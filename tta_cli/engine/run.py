"""``adapt`` and ``resume``: stream a source through the adapter, recording every step.

Per batch: the adapter steps; predictions are appended to ``predictions.csv``; the state is
snapshotted; the step's row and the ``current`` alias are committed together. A guard alarm
restores ``last-good`` through the history, as a user's rollback would. SIGINT and SIGTERM
end the run after the step in flight is committed (``tta_cli.engine.stopping``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch

from tta_cli.config import AdaptConfig, dump_config, read_config
from tta_cli.engine.adapter import Adapter, StepResult
from tta_cli.engine.build import adapter_for, resolve_method
from tta_cli.engine.device import resolve_device
from tta_cli.engine.stopping import stop_on_signals
from tta_cli.errors import UsageError
from tta_cli.history import HistoryStore, RunDirectory, RunLock, RunSummary, StepRecord, summarize
from tta_cli.models import Bundle, load_bundle
from tta_cli.streams import Batch, Preprocess, Stream, batches, open_source


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


def adapt(config: AdaptConfig, on_step: Callable[[Progress], None] | None = None) -> RunSummary:
    """Start a new run in ``config.run``; returns the summary also written to ``summary.json``."""
    # Absolute, so that resume and export find the bundle from any working directory.
    config = config.model_copy(update={"model": Path(config.model).resolve()})
    device, bundle = resolve_device(config.device), load_bundle(config.model)
    method = resolve_method(config.method, config.norm)
    # The run records the method it ran, whatever "auto" or --norm named.
    config = config.model_copy(update={"method": method.name, "norm": None})
    stream = _stream(config, bundle)
    run_dir = RunDirectory(config.run)
    adapter = adapter_for(bundle, config, device)
    with run_dir.creating() as staging:
        RunDirectory(staging).write_config(dump_config(config))
        store = HistoryStore(staging)
        store.begin_run(method.name, bundle.weights_sha256, dump_config(config))
        source = store.write_snapshot(adapter.state_dict(), step=0, parent=None)
        for alias in ("source", "current", "last-good"):
            store.set_alias(alias, source, 0)
        store.close()
    with RunLock(run_dir.path):
        store = HistoryStore.open(run_dir.path)
        store.run_id = store.latest_run_id()
        return _run(config, bundle, stream, adapter, store, run_dir, on_step)


def resume(run: Path, on_step: Callable[[Progress], None] | None = None) -> RunSummary:
    """Continue a run from its ``current`` state with the same configuration, after the last
    recorded step's input."""
    run_dir = RunDirectory(run)
    with RunLock(run_dir.path):
        store = HistoryStore.open(run_dir.path)
        config = read_config(store.first_config())
        device, bundle = resolve_device(config.device), load_bundle(config.model)
        method = resolve_method(config.method, config.norm)
        if bundle.weights_sha256 != store.bundle_sha256():
            raise UsageError(f"The bundle at {config.model} has changed since this run started; it cannot resume.")
        current = store.aliases()["current"]
        stream = _stream(config, bundle, start=store.stream_position())
        adapter = adapter_for(bundle, config, device)
        # A reset (RDumb's, SAR's) returns to the run's source, not to where it resumed.
        adapter.source_state = store.load_snapshot(store.aliases()["source"].id)
        adapter.load_state_dict(store.load_snapshot(current.id))
        adapter.step_count = store.last_step()
        store.begin_run(method.name, bundle.weights_sha256, dump_config(config), resumed_from_step=adapter.step_count)
        store.record_event(adapter.step_count, "resume", f"resumed from snapshot of step {current.step}", current.id)
        return _run(config, bundle, stream, adapter, store, run_dir, on_step)


def _stream(config: AdaptConfig, bundle: Bundle, start: int = 0) -> Stream:
    spec = bundle.spec
    return open_source(
        config.source,
        spec.input_size,
        spec.class_names,
        order=config.order,
        seed=config.seed,
        workers=config.workers,
        start=start,
        stride=config.stride,
        max_frames=config.limit,
        duration=config.duration,
        **config.live.model_dump(),
    )


def _run(
    config: AdaptConfig,
    bundle: Bundle,
    stream: Stream,
    adapter: Adapter,
    store: HistoryStore,
    run_dir: RunDirectory,
    on_step: Callable[[Progress], None] | None,
) -> RunSummary:
    torch.manual_seed(config.seed + adapter.step_count)
    class_names = bundle.spec.class_names
    total = None if stream.length is None else stream.length - stream.start
    progress = Progress(total_images=total, started=time.perf_counter())
    preprocess = Preprocess(bundle.spec.mean, bundle.spec.std, next(adapter.model.parameters()).device)
    dropped = 0
    with (
        run_dir.predictions(keep_through_step=adapter.step_count) as predictions,
        stop_on_signals(stream.stop) as stop,
        closing(stream),
        closing(batches(stream, config.batch_size, preprocess)) as stream_batches,
    ):
        for batch in stream_batches:
            # Frames gathered after a stop request are left for a resumed run.
            if stop.requested:
                break
            result = adapter.step(batch)
            predictions.write(prediction_rows(batch, result, class_names))
            for input_id, reason in stream.skipped.drain(before=batch.end_position):
                store.record_event(result.step, "skipped", f"{input_id}: {reason}")
            for kind, detail in stream.events.drain():
                store.record_event(result.step, kind, detail)
            _record(config, adapter, store, batch, result, frames_dropped=stream.dropped - dropped)
            dropped = stream.dropped
            _count(progress, batch, result)
            progress.images_skipped = stream.skipped.total
            progress.frames_dropped = dropped
            if on_step is not None:
                on_step(progress)
        stream.close()
        for input_id, reason in stream.skipped.drain():
            store.record_event(adapter.step_count, "skipped", f"{input_id}: {reason}")
        for kind, detail in stream.events.drain():
            store.record_event(adapter.step_count, kind, detail)
        if stop.requested:
            store.record_event(adapter.step_count, "stopped", f"{stop.signal} after step {adapter.step_count}")
    adapter.close()
    summary = summarize(store, adapter.method.name, str(next(adapter.model.parameters()).device))
    summary = summary.model_copy(update={"stopped_by": stop.signal, "source_lost": stream.failure})
    run_dir.write_summary(summary)
    store.close()
    return summary


def _record(
    config: AdaptConfig,
    adapter: Adapter,
    store: HistoryStore,
    batch: Batch,
    result: StepResult,
    frames_dropped: int = 0,
) -> None:
    """Snapshot and commit one step; carry out the guard's verdict."""
    verdict, step = result.verdict, result.step
    aliases: tuple[str, ...] = ("current",)
    snapshot_id = None
    if verdict.action == "rollback":
        target = store.aliases()[verdict.target]
        adapter.load_state_dict(store.load_snapshot(target.id))
        adapter.guard.reset()
        store.rollback(target, f"guard: {verdict.reason}", at_step=step)
        aliases = ()
    elif verdict.action == "skip":
        store.record_event(step, "skip", f"guard: {verdict.reason}")
    for event in result.events:
        store.record_event(step, event.kind, event.detail)
    if verdict.action != "rollback" and step % config.history.snapshot_every == 0:
        snapshot_id = store.write_snapshot(adapter.state_dict(), step, parent=store.aliases()["current"].id)
    labeled = batch.labeled
    store.record_step(
        StepRecord(
            step=step,
            time=time.time(),
            batch_size=len(batch),
            position=batch.end_position,
            losses=result.losses,
            update_norm=result.update_norm,
            entropy=result.entropy.mean().item(),
            majority_fraction=adapter.guard.majority_fraction(),
            labeled=int(labeled.sum()),
            correct=int((result.predictions[labeled] == batch.labels[labeled]).sum()),
            verdict=verdict.action if verdict.ok else f"{verdict.action}: {verdict.reason}",
            snapshot_id=snapshot_id,
            diagnostics=result.diagnostics | ({"frames_dropped": frames_dropped} if frames_dropped else {}),
        ),
        aliases=aliases,
    )
    if verdict.ok:
        confirmed = adapter.guard.promote(step, snapshot_id)
        if confirmed is not None:
            store.set_alias("last-good", confirmed[1], confirmed[0])
    if step % config.history.keep_every == 0:
        store.prune(config.history.keep_last, config.history.keep_every)


def _count(progress: Progress, batch: Batch, result: StepResult) -> None:
    progress.images_seen += len(batch)
    progress.steps += 1
    progress.entropy_sum += result.entropy.sum().item()
    labeled = batch.labeled
    progress.labeled += int(labeled.sum())
    progress.correct += int((result.predictions[labeled] == batch.labels[labeled]).sum())


def prediction_rows(batch: Batch, result: StepResult, class_names: list[str]) -> list[tuple[str, str, float, int, str]]:
    """``(id, class, confidence, step, true class or "")`` for each input of the batch."""
    columns = zip(
        batch.ids, result.predictions.tolist(), result.confidence.tolist(), batch.labels.tolist(), strict=True
    )
    return [
        (input_id, class_names[predicted], confidence, result.step, class_names[label] if label >= 0 else "")
        for input_id, predicted, confidence, label in columns
    ]
