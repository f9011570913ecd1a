"""``adapt``: stream a source through the adapter and leave a complete run directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tta_cli.config import AdaptConfig, dump_config
from tta_cli.engine.adapter import Adapter, StepResult
from tta_cli.engine.device import resolve_device
from tta_cli.engine.methods import Method, get_method
from tta_cli.history import RunDirectory, RunSummary
from tta_cli.models import Bundle, load_bundle
from tta_cli.objectives import OBJECTIVES
from tta_cli.streams import Batch, FolderStream, Preprocess, batches
from tta_cli.update import make_optimizer_rule


@dataclass
class Progress:
    """Running totals, handed to the caller after every step (for a progress bar)."""

    total_images: int
    images_seen: int = 0
    images_skipped: int = 0
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

    def add(self, batch: Batch, result: StepResult) -> None:
        self.images_seen += len(batch)
        self.steps += 1
        self.entropy_sum += result.entropy.sum().item()
        labeled = batch.labeled
        self.labeled += int(labeled.sum())
        self.correct += int((result.predictions[labeled] == batch.labels[labeled]).sum())


def build_adapter(bundle: Bundle, method: Method, config: AdaptConfig, device: torch.device) -> Adapter:
    model = bundle.model.to(device)
    objectives = [OBJECTIVES[name](bundle) for name in method.objectives]
    adapter = Adapter(model, method, objectives, None, bundle.spec.feature_layers)
    if method.updates:
        adapter.update_rule = make_optimizer_rule(
            config.optimizer or method.optimizer, adapter.params, config.lr or method.lr
        )
    return adapter


def prediction_rows(batch: Batch, result: StepResult, class_names: list[str]) -> list[tuple[str, str, float, int, str]]:
    """``(id, class, confidence, step, true class or "")`` for each input of the batch."""
    columns = zip(
        batch.ids, result.predictions.tolist(), result.confidence.tolist(), batch.labels.tolist(), strict=True
    )
    return [
        (input_id, class_names[predicted], confidence, result.step, class_names[label] if label >= 0 else "")
        for input_id, predicted, confidence, label in columns
    ]


def adapt(config: AdaptConfig, on_step: Callable[[Progress], None] | None = None) -> RunSummary:
    """Adapt the bundle's model on ``config.source``; returns the summary also written to disk."""
    method = get_method(config.method)
    device = resolve_device(config.device)
    bundle = load_bundle(config.model)
    stream = FolderStream(
        config.source,
        bundle.spec.input_size,
        bundle.spec.class_names,
        order=config.order,
        seed=config.seed,
        workers=config.workers,
        limit=config.limit,
    )
    torch.manual_seed(config.seed)
    run_dir = RunDirectory(config.run)
    run_dir.create()
    run_dir.write_config(dump_config(config))
    adapter = build_adapter(bundle, method, config, device)
    class_names = bundle.spec.class_names
    progress = Progress(total_images=len(stream), started=time.perf_counter())
    with run_dir.predictions() as predictions:
        for batch in batches(stream, config.batch_size, Preprocess(bundle.spec.mean, bundle.spec.std, device)):
            result = adapter.step(batch)
            progress.add(batch, result)
            progress.images_skipped = len(stream.skipped)
            predictions.write(prediction_rows(batch, result, class_names))
            if on_step is not None:
                on_step(progress)
    adapter.close()
    summary = RunSummary(
        method=method.name,
        device=str(device),
        images_seen=progress.images_seen,
        images_skipped=len(stream.skipped),
        skipped=stream.skipped.entries,
        steps=progress.steps,
        seconds=round(time.perf_counter() - progress.started, 3),
        images_per_second=round(progress.images_per_second, 2),
        mean_entropy=progress.mean_entropy,
        online_accuracy=progress.accuracy,
        labeled_images=progress.labeled,
    )
    run_dir.write_summary(summary)
    return summary
