"""What a step of the learned update and of the guard costs against a Tent step, in one run.

    python scripts/step_times.py --model BUNDLE --data CIFAR10_DIR/test --out docs/bench/speed/BUNDLE

Every method's adapter is built on its own copy of the bundle, and the methods take their timed
steps in turn (one step each, round after round), so that a machine that slows down in the
middle slows all of them alike. A step's time is the mean over the rounds, not the median: the
guard's reference scores one batch in ``harm_every``, and the rounds are a multiple of that. The
floor is a bare forward, and a forward plus the backward pass to θ, on the same batch; a method
named ``NAME@contiguous`` keeps the weights in their stored layout rather than channels-last. A
guarded method's guard watches without acting (``WATCHING``), so that no step is skipped or
undone. On CUDA each method's peak memory during a step, beyond what the adapters hold between
steps, is recorded too; on a CPU that column says it was not measured. Writes ``steps.json``
and ``steps.md`` into ``--out``.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from tta_cli.bench.protocols import bench_method
from tta_cli.bench.speed import device_name, floor_passes
from tta_cli.bench.streams import build_streams
from tta_cli.config import GuardConfig
from tta_cli.engine import Adapter, build_adapter
from tta_cli.engine.device import resolve_device
from tta_cli.models import load_bundle
from tta_cli.streams import UNLABELED, Batch, Preprocess

METHODS = "tent,tent@contiguous,tent+guard,harmonized+harmonize1,harmonized,mgtta+harmonize1,mgtta,mgtta+guard"


CONTIGUOUS = "@contiguous"
"""A method name ending so runs with the model's weights in their stored layout, not channels-last
(``Bundle.on``), so that what the layout saves is a ratio in the same run."""

WATCHING = GuardConfig(harm_min=1e-9, entropy_ema_min=0.0, majority_max=1.0)
"""The guard computing its signals, the harm signal included, and never acting on them: every
step takes its update, so that the time measured is what watching costs, on any stream."""


def main(
    model: Annotated[Path, typer.Option(help="Model bundle.")],
    data: Annotated[Path, typer.Option(help="Labeled clean folder; its first images under the corruption.")],
    out: Annotated[Path, typer.Option(help="Folder for steps.json and steps.md.")],
    methods: Annotated[str, typer.Option(help="Comma-separated; the first is the reference of the ratios.")] = METHODS,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated.")] = "200,64",
    corruption: Annotated[str, typer.Option()] = "gaussian_noise",
    rounds: Annotated[int, typer.Option(help="Timed steps per method (a multiple of the guard's harm_every).")] = 24,
    warmup: Annotated[int, typer.Option(help="Untimed steps per method first.")] = 4,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    target = resolve_device(device)
    names = methods.split(",")
    sizes = [int(size) for size in batch_sizes.split(",")]
    every = GuardConfig().harm_every
    if rounds % every:
        raise typer.BadParameter(f"--rounds must be a multiple of the guard's harm_every ({every}).")
    spec = load_bundle(model).spec
    (stream,) = build_streams(data, spec.class_names, [corruption], 5, spec.framing, max(sizes) * 4, seed=0)
    preprocess = Preprocess(spec.mean, spec.std, target)
    rows = []
    for size in sizes:
        # Consecutive batches of the stream, as a deployed run sees them.
        batches = [
            Batch(
                stream.ids[start : start + size],
                preprocess(stream.images[start : start + size]),
                torch.full((size,), UNLABELED),
            )
            for start in range(0, 4 * size, size)
        ]
        rows += _time_methods(model, names, batches, target, rounds, warmup)
        rows += _time_floor(model, batches[0], target, rounds, warmup)
    result = {"device": device_name(target), "bundle": spec.name, "corruption": corruption, "rounds": rounds}
    result["rows"] = rows
    out.mkdir(parents=True, exist_ok=True)
    (out / "steps.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "steps.md").write_text(_table(result, names[0]))
    print(_table(result, names[0]))


def _time_methods(
    model: Path, names: list[str], batches: list[Batch], device: torch.device, rounds: int, warmup: int
) -> list[dict[str, Any]]:
    adapters: dict[str, Adapter] = {}
    for name in names:
        bundle = load_bundle(model)
        bundle.channels_last = bundle.channels_last and not name.endswith(CONTIGUOUS)
        method = bench_method(name.removesuffix(CONTIGUOUS), bundle)
        guard = WATCHING.model_copy(update={"enabled": method.guard})
        adapters[name] = build_adapter(bundle, method, device, guard=guard)
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, int] = {}
    for step in range(warmup + rounds):
        batch = batches[step % len(batches)]
        for name, adapter in adapters.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                held = torch.cuda.memory_allocated(device)
            seconds = _timed(device, functools.partial(adapter.step, batch))
            if step >= warmup:
                times[name].append(seconds)
                if device.type == "cuda":
                    # What the step needs beyond what every adapter holds between steps.
                    peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(device) - held)
    for adapter in adapters.values():
        adapter.close()
    return [_row(name, len(batches[0]), times[name], peaks.get(name)) for name in names]


def _time_floor(model: Path, batch: Batch, device: torch.device, rounds: int, warmup: int) -> list[dict[str, Any]]:
    """A bare forward without gradient, and a forward with the backward pass to θ."""
    forward, forward_backward = floor_passes(load_bundle(model).on(device), batch.images)
    rows = []
    for name, work in (("forward", forward), ("forward+backward", forward_backward)):
        for _ in range(warmup):
            work()
        rows.append(_row(name, len(batch), [_timed(device, work) for _ in range(rounds)], None))
    return rows


def _timed(device: torch.device, work: Callable[[], object]) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began


def _row(name: str, batch_size: int, seconds: list[float], peak: int | None) -> dict[str, Any]:
    return {
        "method": name,
        "batch_size": batch_size,
        "mean_ms": 1000 * statistics.fmean(seconds),
        "spread_ms": 1000 * float(np.std(seconds)),
        "peak_memory_mib": None if peak is None else peak / 2**20,
    }


def _table(result: dict[str, Any], reference: str) -> str:
    lines = [
        f"Step times on {result['device']}, {result['bundle']}, {result['corruption']} severity 5, "
        f"mean of {result['rounds']} steps per method, taken in turn.",
        "",
        f"| batch | method | ms per step | ± (std) | × {reference} | step peak memory (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for size in sorted({row["batch_size"] for row in result["rows"]}, reverse=True):
        rows = [row for row in result["rows"] if row["batch_size"] == size]
        base = next(row["mean_ms"] for row in rows if row["method"] == reference)
        for row in rows:
            memory = "not measured (no GPU)" if row["peak_memory_mib"] is None else f"{row['peak_memory_mib']:.0f}"
            lines.append(
                f"| {size} | {row['method']} | {row['mean_ms']:.1f} | {row['spread_ms']:.1f} | "
                f"{row['mean_ms'] / base:.2f} | {memory} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    typer.run(main)
