"""How close each method's step comes to the physical floor, and what the rest of ``adapt`` costs.

- **Step against floor**: the median time of ``Adapter.step`` on a real shifted batch, against
  the median time of a bare forward + backward of the same model on the same batch, with the
  same parameters requiring gradients and BatchNorm in the same mode (the least any
  gradient-based method can do per batch). Also the bare forward alone (the floor of the
  methods that do not update).
- **End to end**: ``tta-cli adapt`` (``tta_cli.engine.adapt``) over a folder of images, with
  decoding, history records and snapshots, against the images/s of the step alone.

GPU numbers are measured on CUDA only (with synchronisation around every timed region); on a
machine without one the GPU section says so. The same ratios measured on the CPU are reported
under the CPU's name: they are ratios within one run on one machine, not GPU figures.
"""

from __future__ import annotations

import functools
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tta_cli.bench.protocols import bench_adapter, bench_method
from tta_cli.bench.streams import ShiftedStream
from tta_cli.config import AdaptConfig
from tta_cli.engine import adapt
from tta_cli.engine.params import configure_model, norm_affine_parameters
from tta_cli.models import Bundle
from tta_cli.streams import Batch, Preprocess

NOT_MEASURED = "not measured (no GPU)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _timed(device: torch.device, work: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of ``work`` in milliseconds."""
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def _batch(stream: ShiftedStream, size: int, preprocess: Preprocess) -> Batch:
    """The stream's first ``size`` images, repeated if it holds fewer."""
    index = np.arange(size) % len(stream)
    labels = torch.from_numpy(stream.labels[index]).to(preprocess.device)
    return Batch([stream.ids[i] for i in index], preprocess(stream.images[index]), labels, size)


def step_against_floor(
    bundle: Bundle,
    methods: Sequence[str],
    stream: ShiftedStream,
    batch_sizes: Sequence[int],
    device: torch.device,
    repeats: int = 10,
    warmup: int = 3,
) -> list[dict[str, Any]]:
    preprocess = Preprocess(bundle.spec.mean, bundle.spec.std, device)
    original = {name: value.clone() for name, value in bundle.model.state_dict().items()}
    rows = []
    try:
        for batch_size in batch_sizes:
            batch = _batch(stream, batch_size, preprocess)
            for name in methods:
                method = bench_method(name, bundle)
                adapter = bench_adapter(bundle, method, device)
                step_ms = _timed(device, functools.partial(adapter.step, batch), repeats, warmup)
                adapter.close()
                bundle.model.load_state_dict(original)
                forward_ms, floor_ms = _floor(bundle, method.batch_statistics, batch, device, repeats, warmup)
                bundle.model.load_state_dict(original)
                rows.append(
                    {
                        "method": name,
                        "batch_size": batch_size,
                        "step_ms": step_ms,
                        "forward_ms": forward_ms,
                        "forward_backward_ms": floor_ms,
                        "step_over_forward_backward": step_ms / floor_ms,
                    }
                )
    finally:
        bundle.model.load_state_dict(original)
    return rows


def _floor(
    bundle: Bundle, batch_statistics: bool, batch: Batch, device: torch.device, repeats: int, warmup: int
) -> tuple[float, float]:
    """Bare forward, and bare forward + backward to θ (norm-layer affine parameters)."""
    model = bundle.on(device)
    forward, forward_backward = floor_passes(model, batch.images)
    forward_ms = _timed(device, forward, repeats, warmup)
    floor_ms = _timed(device, forward_backward, repeats, warmup)
    configure_model(model, batch_statistics=batch_statistics, params=[])
    return forward_ms, floor_ms


def floor_passes(model: torch.nn.Module, images: torch.Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    """The floor's two passes over ``images``: a bare forward without gradient, and a forward with
    the backward pass to θ (norm-layer affine parameters, BatchNorm on batch statistics); the
    model is configured for them."""
    params = list(norm_affine_parameters(model).values())
    configure_model(model, batch_statistics=True, params=params)

    def forward() -> None:
        with torch.no_grad():
            model(images)

    def forward_backward() -> None:
        torch.autograd.grad(model(images).mean(), params)

    return forward, forward_backward


def end_to_end(
    bundle: Bundle,
    methods: Sequence[str],
    stream: ShiftedStream,
    batch_size: int,
    device: torch.device,
    step_rows: Sequence[dict[str, Any]],
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """``adapt`` over the stream's folder (PNG files), against step-only images/s at the same batch.

    ``adapt`` loads the bundle from its folder, so EATA runs there without a Fisher term (ETA);
    the term's cost is one small sum per step.
    """
    step_ms = {row["method"]: row["step_ms"] for row in step_rows if row["batch_size"] == batch_size}
    original = {name: value.clone() for name, value in bundle.model.state_dict().items()}
    rows = []
    for name in methods:
        with tempfile.TemporaryDirectory() as scratch:
            config = AdaptConfig(
                model=bundle.path,
                source=stream.folder,
                run=Path(scratch) / "run",
                method=name,
                batch_size=batch_size,
                device=str(device),
                order="shuffled",
                limit=limit,
            )
            began = time.perf_counter()
            summary = adapt(config)
            wall = time.perf_counter() - began
        images = summary.images_seen
        row: dict[str, Any] = {
            "method": name,
            "batch_size": batch_size,
            "images": images,
            "end_to_end_images_per_second": images / wall,
        }
        if name in step_ms:
            row["step_only_images_per_second"] = 1000 * batch_size / step_ms[name]
            row["end_to_end_over_step_only"] = row["end_to_end_images_per_second"] / row["step_only_images_per_second"]
        rows.append(row)
    bundle.model.load_state_dict(original)
    return rows


def measure_speed(
    bundle: Bundle,
    methods: Sequence[str],
    stream: ShiftedStream,
    device: torch.device,
    batch_sizes: Sequence[int] = (200, 64),
    repeats: int = 10,
    end_to_end_limit: int | None = None,
) -> dict[str, Any]:
    """The speed section of ``bench.json``."""
    rows = step_against_floor(bundle, methods, stream, batch_sizes, device, repeats=repeats)
    measured = {
        "device": device_name(device),
        "repeats": repeats,
        "step_against_floor": rows,
        "end_to_end": end_to_end(bundle, methods, stream, batch_sizes[0], device, rows, end_to_end_limit),
    }
    if device.type == "cuda":
        return {"gpu": measured}
    return {"gpu": NOT_MEASURED, "cpu": measured}
