"""An adaptation run that a caller feeds batch by batch: ``tta-cli adapt`` is one such caller,
a user's own inference loop (a service, a ROS node, a GStreamer pipeline) another.

    from tta_cli import Session

    with Session.start("sample_models/cifar10-airnet-ce", run="runs/camera-3") as session:
        for frames in my_camera_batches():           # PIL images, arrays or tensors
            result = session.adapt(frames)
            labels = [session.class_names[i] for i in result.predictions.tolist()]
        session.export("camera-3.onnx")

Per batch: the adapter steps; predictions are appended to ``predictions.csv``; the state is
snapshotted; the step's row and the ``current`` alias are committed together; the guard's
verdict is carried out (``tta_cli.engine.recovery``). The run directory is locked while a
session holds it, and ``close`` writes the summary.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from tta_cli.config import AdaptConfig, dump_config, read_config
from tta_cli.engine.adapter import Adapter, StepResult
from tta_cli.engine.build import adapter_for, default_method, resolve_method
from tta_cli.engine.device import resolve_device
from tta_cli.engine.recovery import HistoryKeeper, Recovery
from tta_cli.errors import SourceNotFinite, UsageError
from tta_cli.events import Event, EventKind, SkippedInput
from tta_cli.history import HistoryStore, RunDirectory, RunLock, RunSummary, SnapshotRef, StepRecord, summarize
from tta_cli.models import Bundle, load_bundle
from tta_cli.streams import Batch, Images, Preprocess, absolute_source, batch_of

PYTHON_SOURCE = "python"
"""The ``source`` recorded for a run whose batches come from a caller's own loop."""
RECENT_IMAGES = 256
"""Inputs kept in memory for verifying an export of a session without a folder to read."""


class Session:
    """One run directory, open for adaptation. Make one with ``start`` (a new run) or ``resume``."""

    def __init__(
        self, config: AdaptConfig, bundle: Bundle, adapter: Adapter, store: HistoryStore, lock: RunLock
    ) -> None:
        self.config, self.bundle, self.adapter, self.store, self._lock = config, bundle, adapter, store, lock
        self.run_dir = RunDirectory(config.run)
        self.recovery = Recovery(adapter, HistoryKeeper(store))
        self.preprocess = Preprocess(bundle.spec.mean, bundle.spec.std, next(adapter.model.parameters()).device)
        self.predictions = self.run_dir.predictions(adapter.step_count)
        self.position = store.stream_position()
        self._recent: deque[torch.Tensor] = deque()
        self._closed = False
        self._at_source = adapter.step_count == 0
        """Whether the next step starts from the source state (a run's first, or after a rollback there)."""
        torch.manual_seed(config.seed + adapter.step_count)

    @property
    def class_names(self) -> list[str]:
        return self.bundle.spec.class_names

    @classmethod
    def start(cls, model: Path | str, run: Path | str | None = None, **settings: Any) -> Session:
        """A new run of the bundle ``model`` in ``run`` (default ``runs/adapt-DATE-TIME``), with
        any ``AdaptConfig`` setting (``method="tent"``, ``guard={"enabled": False}``, ...)."""
        values = {"model": model, "source": PYTHON_SOURCE} | settings | ({"run": run} if run is not None else {})
        return cls.create(AdaptConfig.model_validate(values))

    @classmethod
    def create(cls, config: AdaptConfig, bundle: Bundle | None = None) -> Session:
        """A new run as ``config`` describes it (``bundle``: the loaded ``config.model``)."""
        # Absolute, so that resume and export find the bundle and the images from any working directory.
        images = config.source if config.source == PYTHON_SOURCE else absolute_source(config.source)
        config = config.model_copy(update={"model": Path(config.model).resolve(), "source": images})
        bundle = bundle or load_bundle(config.model)
        method = resolve_method(config.method, config.norm, default_method(bundle))
        # The run records the method it ran, whatever "auto" or --norm named.
        config = config.model_copy(update={"method": method.name, "norm": None})
        adapter = adapter_for(bundle, config, resolve_device(config.device))
        run_dir = RunDirectory(config.run)
        try:
            with run_dir.creating() as staging:
                RunDirectory(staging).write_config(dump_config(config))
                store = HistoryStore(staging)
                try:
                    store.begin_run(method.name, bundle.weights_sha256, dump_config(config))
                    source = store.write_snapshot(adapter.state_dict(), step=0, parent=None)
                    for alias in ("source", "current", "last-good"):
                        store.set_alias(alias, source, 0)
                finally:
                    store.close()
            lock = RunLock(run_dir.path).__enter__()
        except BaseException:
            adapter.close()  # its hooks leave a caller's model as it was
            raise
        try:
            store = HistoryStore.open(run_dir.path)
        except BaseException:
            lock.__exit__(None, None, None)
            adapter.close()
            raise
        store.run_id = store.latest_run_id()
        return cls(config, bundle, adapter, store, lock)

    @classmethod
    def resume(cls, run: Path | str) -> Session:
        """Continue a run from its ``current`` state with the same configuration."""
        store = HistoryStore.open(Path(run))  # a folder without a history: one sentence
        try:
            lock = RunLock(Path(run)).__enter__()
        except BaseException:
            store.close()
            raise
        try:
            # The run is where it is now: moved, or named from another working directory.
            config = read_config(store.first_config()).model_copy(update={"run": Path(run)})
            bundle = load_bundle(config.model)
            if bundle.weights_sha256 != store.bundle_sha256():
                raise UsageError(f"The bundle at {config.model} has changed since this run started; it cannot resume.")
            current = store.aliases()["current"]
            adapter = adapter_for(bundle, config, resolve_device(config.device))
            # A reset (RDumb's, SAR's) returns to the run's source, not to where it resumed.
            adapter.source_state = store.load_snapshot(store.aliases()["source"].id)
            adapter.load_state_dict(store.load_snapshot(current.id))
            adapter.step_count = store.last_step()
            store.begin_run(config.method, bundle.weights_sha256, dump_config(config), adapter.step_count)
            resumed = Event(EventKind.RESUME, f"resumed from snapshot of step {current.step}")
            store.record_events(adapter.step_count, [resumed], current.id)
        except BaseException:
            store.close()
            lock.__exit__(None, None, None)
            raise
        return cls(config, bundle, adapter, store, lock)

    def adapt(
        self, images: Images, ids: Sequence[str] | None = None, labels: Sequence[int] | None = None
    ) -> StepResult:
        """Predict a batch of images (``tta_cli.streams.Images``), then adapt on it; ``labels``
        (class indices), when known, only score the online accuracy."""
        framing, classes = self.bundle.spec.framing, len(self.class_names)
        batch = batch_of(images, framing, self.preprocess, ids, labels, start=self.position, num_classes=classes)
        return self.step(batch)

    def step(self, batch: Batch, frames_dropped: int = 0) -> StepResult:
        """One step on a preprocessed batch, recorded; the guard's verdict carried out."""
        adapter, store, step = self.adapter, self.store, self.adapter.step_count + 1
        result = adapter.step(batch)
        if self._at_source and not bool(torch.isfinite(result.probabilities).all()):
            raise SourceNotFinite(
                f"The model of {self.bundle.path} as given predicts non-finite values on inputs before step {step}; "
                "no rollback can help: check its weights and the input's preprocessing."
            )
        self._at_source = False
        self.predictions.write(_prediction_rows(batch, result, self.class_names))
        verdict = result.verdict
        events = list(result.events)
        if verdict.action == "skip":
            events.insert(0, Event(EventKind.SKIP, f"guard: {verdict.reason}"))
        # One commit for the step: a run killed at any point resumes from a history that has
        # all of it (its events, its row, the guard's rollback) or none.
        with store.transaction():
            snapshot_id = self._record(step, batch, result, events, frames_dropped)
            self.recovery.after_step(result, snapshot_id)
        self._at_source = verdict.action == "rollback" and store.aliases()["current"].step == 0
        if step % self.config.history.keep_every == 0:
            candidates = [candidate for _, candidate in adapter.guard.candidates]
            store.prune(self.config.history.keep_last, self.config.history.keep_every, pending=candidates)
        self.position = batch.end_position
        self._keep_recent(batch.images)
        return result

    def _record(
        self, step: int, batch: Batch, result: StepResult, events: list[Event], frames_dropped: int
    ) -> str | None:
        """Write a step's events, snapshot (every ``snapshot_every`` steps, not of a state the
        guard rolls back) and row; the snapshot's id."""
        adapter, store, verdict = self.adapter, self.store, result.verdict
        store.record_events(step, events)
        snapshot_id = None
        if verdict.action != "rollback" and step % self.config.history.snapshot_every == 0:
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
            aliases=("current",) if verdict.action != "rollback" else (),
        )
        return snapshot_id

    def record(self, events: Iterable[Event] = (), skipped: Iterable[SkippedInput] = ()) -> None:
        """Record what the source reported (reconnects, inputs it could not read) at the last step."""
        self.store.record_events(self.adapter.step_count, events)
        self.store.record_skipped(self.adapter.step_count, skipped)

    def rollback(self, to: str) -> SnapshotRef:
        """Go back to a step number, snapshot id or alias: the live state and ``current`` both."""
        target = self.store.resolve(to)
        self.adapter.load_state_dict(self.store.load_snapshot(target.id))
        self.adapter.guard.reset()
        self._at_source = target.step == 0
        self.store.rollback(target, f"user: rollback to {to}", at_step=self.adapter.step_count)
        return target

    def export(self, out: Path | str, selector: str = "current", **options: Any) -> Any:
        """Export a recorded state to ONNX (``tta_cli.export.export_run``'s options); it is
        verified on the images this session saw last unless ``images`` names a folder."""
        from tta_cli.export import export_run

        if "images" not in options and self._recent:
            options["images"] = torch.cat(list(self._recent)).cpu()
        return export_run(self.run_dir.path, Path(out), selector, **options)

    def close(self, stopped_by: str | None = None, source_lost: str | None = None) -> RunSummary:
        """End the session: the summary written, the run directory released."""
        self._closed = True
        if stopped_by is not None:
            stopped = Event(EventKind.STOPPED, f"{stopped_by} after step {self.adapter.step_count}")
            self.store.record_events(self.adapter.step_count, [stopped])
        self.adapter.close()
        self.predictions.close()
        device = str(next(self.adapter.model.parameters()).device)
        summary = summarize(self.store, self.adapter.method.name, device)
        summary = summary.model_copy(update={"stopped_by": stopped_by, "source_lost": source_lost})
        self.run_dir.write_summary(summary)
        self.store.close()
        self._lock.__exit__(None, None, None)
        return summary

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._closed:
            self.close()

    def _keep_recent(self, images: torch.Tensor) -> None:
        if self.config.source != PYTHON_SOURCE:
            return  # export reads the run's own images again
        self._recent.append(images.detach())
        while sum(len(chunk) for chunk in self._recent) - len(self._recent[0]) >= RECENT_IMAGES:
            self._recent.popleft()


def _prediction_rows(
    batch: Batch, result: StepResult, class_names: list[str]
) -> list[tuple[str, str, float, int, str]]:
    """``(id, class, confidence, step, true class or "")`` for each input of the batch."""
    columns = zip(
        batch.ids, result.predictions.tolist(), result.confidence.tolist(), batch.labels.tolist(), strict=True
    )
    return [
        (input_id, class_names[predicted], confidence, result.step, class_names[label] if label >= 0 else "")
        for input_id, predicted, confidence, label in columns
    ]
