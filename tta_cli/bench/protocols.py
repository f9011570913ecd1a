"""The two evaluation protocols of the CIFAR-10-C benchmark, with online evaluation.

- ``reset``: every corruption starts from the source model (θ, normalisation statistics, a fresh
  optimizer and fresh method state), as in Tent's and EATA's per-corruption results.
- ``continual``: the corruptions follow each other in one stream and nothing is reset between
  them, as in CoTTA's continual protocol. With several rounds the whole sequence is played again,
  still without a reset: a longer stream, on which a method that slowly collapses shows it.

Under ``reset`` a round repeats the first: every corruption starts from the source again.

Online evaluation: each batch is predicted as the method predicts it at that moment, and only
then adapted on; the error counts those predictions (``StepResult.probabilities`` are taken
before the update). No label is ever seen by a method.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from tta_cli.bench.streams import ShiftedStream
from tta_cli.config import GuardConfig, WeightedNormConfig
from tta_cli.engine import Adapter, Method, get_method
from tta_cli.engine.build import build_adapter, has_batch_norm, resolve_method
from tta_cli.engine.methods import AUTO_METHOD
from tta_cli.engine.recovery import MemoryKeeper, Recovery
from tta_cli.models import Bundle
from tta_cli.streams import Batch, Preprocess

PROTOCOLS = ("reset", "continual")


@dataclass
class CellResult:
    """One method on one corruption under one protocol."""

    method: str
    protocol: str
    corruption: str
    round: int = 1
    """Which pass over the corruption sequence, from 1."""
    images: int = 0
    errors: int = 0
    steps: int = 0
    step_seconds: float = 0.0
    total_seconds: float = 0.0
    peak_gpu_memory_mb: float | None = None
    notes: Counter[str] = field(default_factory=Counter)
    """Events of the run, by kind, counted over its steps."""
    copied_from: str | None = None
    """Where the numbers come from when they are another cell's: a method that does not adapt
    gives every protocol the same run, and under ``reset`` every round repeats the first."""
    cosines: list[float] = field(default_factory=list)
    """cos(g1, g2) of each step that had two objectives' gradients."""

    @property
    def error_percent(self) -> float:
        return 100 * self.errors / self.images if self.images else float("nan")

    @property
    def images_per_second(self) -> float:
        """Images over the wall time of preprocessing and adapter steps."""
        return self.images / self.total_seconds if self.total_seconds else float("nan")

    @property
    def step_ms(self) -> float:
        return 1000 * self.step_seconds / self.steps if self.steps else float("nan")


def bench_method(name: str, bundle: Bundle) -> Method:
    """The method ``name`` as the benchmark runs it; ``auto`` is what ``tta-cli adapt`` runs on
    this bundle by default, guarded as there."""
    if name != AUTO_METHOD:
        return get_method(name)
    return replace(resolve_method(name, batch_norm=has_batch_norm(bundle)), name=AUTO_METHOD, guard=True)


def bench_adapter(
    bundle: Bundle, method: Method, device: torch.device, weighted_norm: WeightedNormConfig | None = None
) -> Adapter:
    """An adapter as the method's paper runs it: the method's own settings, and no guard unless
    the method asks for one (``+guard``); ``weighted_norm`` replaces the weighted norm's settings."""
    guard = GuardConfig(enabled=method.guard)
    return build_adapter(bundle, method, device, guard=guard, weighted_norm=weighted_norm)


def run_method(
    bundle: Bundle,
    method: Method,
    streams: Sequence[ShiftedStream],
    protocol: str,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[CellResult, int], None] | None = None,
    on_corruption_start: Callable[[str, Adapter], None] | None = None,
    rounds: int = 1,
    weighted_norm: WeightedNormConfig | None = None,
) -> list[CellResult]:
    """Run ``method`` through ``streams``, ``rounds`` times over, under ``protocol``; the bundle's
    model is left as it was.

    ``on_batch(cell, images)`` follows every batch; ``on_corruption_start(name, adapter)`` is
    called before a corruption's first batch, with the adapter about to see it; ``weighted_norm``
    replaces the weighted norm's settings.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}.")
    original = copy.deepcopy(bundle.model.state_dict())
    preprocess = Preprocess(bundle.spec.mean, bundle.spec.std, device)
    adapter = bench_adapter(bundle, method, device, weighted_norm)
    recovery = Recovery(adapter, MemoryKeeper(adapter))
    source_state = adapter.state_dict()
    sequence = [(number, stream) for number in range(1, rounds + 1) for stream in streams]
    results = []
    try:
        for index, (number, stream) in enumerate(sequence):
            if protocol == "reset" and index > 0:
                # A new adapter over the restored model: fresh optimizer and method state too.
                adapter.load_state_dict(source_state)
                adapter.close()
                adapter = bench_adapter(bundle, method, device, weighted_norm)
                recovery = Recovery(adapter, MemoryKeeper(adapter))
            if on_corruption_start is not None:
                on_corruption_start(stream.corruption, adapter)
            cell = CellResult(method.name, protocol, stream.corruption, number)
            results.append(_run_stream(adapter, recovery, stream, cell, batch_size, preprocess, device, on_batch))
    finally:
        adapter.close()
        bundle.model.load_state_dict(original)
    return results


def _run_stream(
    adapter: Adapter,
    recovery: Recovery,
    stream: ShiftedStream,
    cell: CellResult,
    batch_size: int,
    preprocess: Preprocess,
    device: torch.device,
    on_batch: Callable[[CellResult, int], None] | None,
) -> CellResult:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for start in range(0, len(stream), batch_size):
        end = min(start + batch_size, len(stream))
        began = time.perf_counter()
        images = preprocess(stream.images[start:end])
        labels = torch.from_numpy(stream.labels[start:end]).to(device)
        batch = Batch(stream.ids[start:end], images, labels, end)
        if cuda:
            torch.cuda.synchronize(device)
        stepped = time.perf_counter()
        result = adapter.step(batch)
        recovery.after_step(result)
        errors = int((result.predictions != labels).sum())
        if cuda:
            torch.cuda.synchronize(device)
        finished = time.perf_counter()
        cell.step_seconds += finished - stepped
        cell.total_seconds += finished - began
        cell.steps += 1
        if "cosine" in result.diagnostics:
            cell.cosines.append(result.diagnostics["cosine"])
        cell.images += end - start
        cell.errors += errors
        for event in result.events:
            cell.notes[event.kind.value] += 1
        if result.verdict.action == "rollback":
            cell.notes[f"guard: rollback to {result.verdict.target}"] += 1
        if on_batch is not None:
            on_batch(cell, end - start)
    if cuda:
        cell.peak_gpu_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    return cell
