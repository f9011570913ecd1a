"""The evaluation protocols of the CIFAR-10-C benchmark, with online evaluation.

- ``reset``: every corruption starts from the source model (θ, normalisation statistics, a fresh
  optimizer and fresh method state), as in Tent's and EATA's per-corruption results.
- ``continual``: the corruptions follow each other in one stream and nothing is reset between
  them, as in CoTTA's continual protocol. With several rounds the whole sequence is played again,
  still without a reset: a longer stream, on which a method that slowly collapses shows it.
- ``mixed``: every corruption's images shuffled together into one stream (the "mixed domains"
  protocol of the public benchmark code); each image keeps its corruption for the report only,
  and a cell is one corruption's share of that stream. Each corruption's images keep the order
  they have (``--order``) relative to one another. Beside ``reset``, each image is also compared
  with its prediction when its corruption was adapted to alone: transfer and interference
  (``tta_cli.analysis``).

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

import numpy as np
import torch

from tta_cli.bench.streams import ShiftedStream
from tta_cli.config import GuardConfig, WeightedNormConfig
from tta_cli.engine import Adapter, Method, get_method
from tta_cli.engine.build import build_adapter, default_method, resolve_method
from tta_cli.engine.methods import AUTO_METHOD
from tta_cli.engine.recovery import MemoryKeeper, Recovery
from tta_cli.models import Bundle
from tta_cli.streams import Batch, Preprocess

PROTOCOLS = ("reset", "continual")
"""The protocols run unless others are asked for."""
ALL_PROTOCOLS = (*PROTOCOLS, "mixed")


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
    correct: dict[str, bool] = field(default_factory=dict)
    """Whether each image (by id) was predicted right."""

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
    return replace(resolve_method(name, default=default_method(bundle)), name=AUTO_METHOD, guard=True)


def bench_adapter(
    bundle: Bundle,
    method: Method,
    device: torch.device,
    weighted_norm: WeightedNormConfig | None = None,
    domain_weighting: bool = False,
) -> Adapter:
    """An adapter as the method's paper runs it: the method's own settings, and no guard unless
    the method asks for one (``+guard``); ``weighted_norm`` replaces the weighted norm's settings;
    ``domain_weighting`` applies to the methods that take gradient steps."""
    guard = GuardConfig(enabled=method.guard)
    weighting = domain_weighting and method.updates
    return build_adapter(bundle, method, device, guard=guard, weighted_norm=weighted_norm, domain_weighting=weighting)


def mix(streams: Sequence[ShiftedStream], seed: int) -> ShiftedStream:
    """All ``streams`` in one, their images interleaved at random (a seeded permutation that keeps
    each stream's own order); ``domains`` holds each image's corruption, and its id is
    ``CORRUPTION/ID`` (the streams share their images' ids)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, len(streams)]))
    sources = np.concatenate([np.full(len(stream), index) for index, stream in enumerate(streams)])
    sources = sources[rng.permutation(len(sources))]
    positions = np.empty(len(sources), dtype=np.int64)
    for index, stream in enumerate(streams):
        positions[sources == index] = np.arange(len(stream))
    images = np.empty((len(sources), *streams[0].images.shape[1:]), dtype=streams[0].images.dtype)
    labels = np.empty(len(sources), dtype=np.int64)
    for index, stream in enumerate(streams):
        chosen = sources == index
        images[chosen] = stream.images[positions[chosen]]
        labels[chosen] = stream.labels[positions[chosen]]
    domains = [streams[source].corruption for source in sources.tolist()]
    ids = [
        f"{domain}/{streams[source].ids[position]}"
        for domain, source, position in zip(domains, sources.tolist(), positions.tolist(), strict=True)
    ]
    first = streams[0]
    return ShiftedStream("mixed", first.severity, first.folder, ids, images, labels, domains)


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
    domain_weighting: bool = False,
    seed: int = 0,
) -> list[CellResult]:
    """Run ``method`` through ``streams``, ``rounds`` times over, under ``protocol``; the bundle's
    model is left as it was.

    ``on_batch(cell, images)`` follows every batch; ``on_corruption_start(name, adapter)`` is
    called before a corruption's first batch, with the adapter about to see it; ``weighted_norm``
    replaces the weighted norm's settings; ``domain_weighting`` weighs inputs by cluster; ``seed``
    draws the interleaving of ``mixed``.
    """
    if protocol == "mixed":
        streams = [mix(streams, seed)]
    if protocol not in ALL_PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; use one of {', '.join(ALL_PROTOCOLS)}.")
    original = copy.deepcopy(bundle.model.state_dict())
    preprocess = Preprocess(bundle.spec.mean, bundle.spec.std, device)
    adapter = bench_adapter(bundle, method, device, weighted_norm, domain_weighting)
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
                adapter = bench_adapter(bundle, method, device, weighted_norm, domain_weighting)
                recovery = Recovery(adapter, MemoryKeeper(adapter))
            if on_corruption_start is not None:
                on_corruption_start(stream.corruption, adapter)
            cell = CellResult(method.name, protocol, stream.corruption, number)
            cell = _run_stream(adapter, recovery, stream, cell, batch_size, preprocess, device, on_batch)
            results.extend(_per_domain(cell, stream) if stream.domains is not None else [cell])
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
        cell.correct.update(zip(batch.ids, (result.predictions == labels).tolist(), strict=True))
        for event in result.events:
            cell.notes[event.kind.value] += 1
        if result.verdict.action == "rollback":
            cell.notes[f"guard: rollback to {result.verdict.target}"] += 1
        if on_batch is not None:
            on_batch(cell, end - start)
    if cuda:
        cell.peak_gpu_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    return cell


def _per_domain(cell: CellResult, stream: ShiftedStream) -> list[CellResult]:
    """The cell of a mixed stream as one cell per corruption in it, in the order first seen: the
    time shared out by images, each with the stream's time per step, and the stream's events and
    cosines with the first (counted once, however many corruptions a step held)."""
    assert stream.domains is not None
    names = list(dict.fromkeys(stream.domains))
    cells = []
    for index, name in enumerate(names):
        ids = [image_id for image_id, domain in zip(stream.ids, stream.domains, strict=True) if domain == name]
        share = len(ids) / len(stream)
        correct = {image_id.removeprefix(f"{name}/"): cell.correct[image_id] for image_id in ids}
        cells.append(
            replace(
                cell,
                corruption=name,
                images=len(ids),
                errors=len(ids) - sum(correct.values()),
                total_seconds=cell.total_seconds * share,
                notes=cell.notes if index == 0 else Counter(),
                cosines=cell.cosines if index == 0 else [],
                correct=correct,
            )
        )
    return cells
