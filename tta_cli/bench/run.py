"""``tta-cli bench``: methods side by side on a labeled clean folder under the 15 corruptions.

streams (cached) → Fisher on clean source data (EATA) → every method under every protocol
→ speed → OUT/bench.json, OUT/bench.md, OUT/bench.png
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from tta_cli.bench.protocols import PROTOCOLS, CellResult, run_method
from tta_cli.bench.report import write_report
from tta_cli.bench.speed import measure_speed
from tta_cli.bench.streams import build_streams, select_images
from tta_cli.corruptions import CORRUPTIONS
from tta_cli.engine import get_method, resolve_device
from tta_cli.engine.params import configure_model, norm_affine_parameters
from tta_cli.errors import UsageError
from tta_cli.models import Bundle, load_bundle
from tta_cli.objectives import measure_fisher
from tta_cli.streams import Preprocess
from tta_cli.streams.decode import decode_image

BASELINES = ("source", "norm", "tent", "eata", "sar")


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="model bundle folder")
    data: Path = Field(description="labeled clean folder (<class>/<image>) to corrupt")
    out: Path = Field(description="folder for bench.json, bench.md and bench.png")
    corruptions: tuple[str, ...] = CORRUPTIONS
    severity: int = Field(5, ge=1, le=5)
    num_examples: int | None = Field(None, ge=1, description="images per corruption (default all)")
    methods: tuple[str, ...] = BASELINES
    protocols: tuple[str, ...] = PROTOCOLS
    batch_size: int = Field(200, ge=1)
    seed: int = 0
    device: str = "auto"
    source_data: Path | None = Field(None, description="clean labeled source images for EATA's Fisher")
    fisher_examples: int = Field(2000, ge=1)
    cache_dir: Path | None = None
    speed: bool = True
    speed_repeats: int = Field(10, ge=1)


@dataclass
class BenchProgress:
    """What the benchmark is doing: ``phase`` with ``completed`` of ``total`` units."""

    phase: str
    description: str
    completed: int
    total: int


def check_config(config: BenchConfig) -> None:
    """Unknown names are a one-sentence usage error before any work starts."""
    for name in config.methods:
        get_method(name)
    for name in config.corruptions:
        if name not in CORRUPTIONS:
            raise UsageError(f"Unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}.")
    for name in config.protocols:
        if name not in PROTOCOLS:
            raise UsageError(f"Unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}.")
    if not config.methods or not config.corruptions or not config.protocols:
        raise UsageError("Give at least one method, one corruption and one protocol.")


def run_bench(config: BenchConfig, on_progress: Callable[[BenchProgress], None] | None = None) -> dict[str, Any]:
    """Run the whole matrix and write the report; returns what ``bench.json`` holds."""
    check_config(config)

    def report(phase: str, description: str, completed: int, total: int) -> None:
        if on_progress is not None:
            on_progress(BenchProgress(phase, description, completed, total))

    device = resolve_device(config.device)
    bundle = load_bundle(config.model)
    spec = bundle.spec
    started = time.perf_counter()

    built = {"count": 0}
    total_images = len(config.corruptions) * len(
        select_images(config.data, spec.class_names, config.num_examples, config.seed)
    )

    def corrupted(name: str) -> None:
        built["count"] += 1
        report("corrupt", f"corrupting ({name})", built["count"], total_images)

    streams = build_streams(
        config.data,
        spec.class_names,
        config.corruptions,
        config.severity,
        spec.input_size,
        config.num_examples,
        config.seed,
        config.cache_dir,
        on_image=corrupted,
    )
    report("corrupt", "streams ready", total_images, total_images)

    fisher_note = "not needed (EATA not run)"
    if "eata" in config.methods:
        if config.source_data is None:
            fisher_note = "not measured (no --source-data): EATA ran without its Fisher term, i.e. as ETA"
        else:
            report("fisher", "Fisher information on clean source images", 0, 1)
            count = _attach_fisher(bundle, config, device)
            fisher_note = f"measured on {count} clean images of {config.source_data}"
            report("fisher", "Fisher information on clean source images", 1, 1)

    cells = _run_matrix(bundle, config, streams, device, report)
    speed: dict[str, Any] = {"gpu": "not measured (--no-speed)"}
    if config.speed:
        report("speed", "speed", 0, 1)
        speed = measure_speed(
            bundle,
            config.methods,
            streams[0],
            device,
            repeats=config.speed_repeats,
            end_to_end_limit=None if device.type == "cuda" else 2 * config.batch_size,
        )
        report("speed", "speed", 1, 1)
    result = _summary(config, bundle, device, cells, fisher_note, speed, time.perf_counter() - started)
    write_report(result, config.out)
    return result


def _attach_fisher(bundle: Bundle, config: BenchConfig, device: torch.device) -> int:
    """Measure EATA's Fisher information once and keep it on the bundle for the EATA runs."""
    assert config.source_data is not None
    spec = bundle.spec
    files = select_images(config.source_data, spec.class_names, config.fisher_examples, config.seed)
    preprocess = Preprocess(spec.mean, spec.std, device)
    model = bundle.model.to(device)
    params = norm_affine_parameters(model)
    original = {name: value.clone() for name, value in model.state_dict().items()}
    configure_model(model, batch_statistics=True, params=list(params.values()))
    batches = (
        preprocess(np.stack([decode_image(config.source_data / path, spec.input_size) for path in chunk]))
        for chunk in (files[start : start + config.batch_size] for start in range(0, len(files), config.batch_size))
    )
    bundle.fisher = measure_fisher(model, params, batches)
    # The Fisher pass ran BatchNorm in train mode; its running statistics must stay the source's.
    model.load_state_dict(original)
    return len(files)


def _run_matrix(
    bundle: Bundle,
    config: BenchConfig,
    streams: list,
    device: torch.device,
    report: Callable[..., None],
) -> list[CellResult]:
    stream_images = sum(len(stream) for stream in streams)
    plan = []
    for name in config.methods:
        method = get_method(name)
        # Nothing adapts in a method without objectives, so both protocols give the same
        # predictions: it runs once and its cells are listed under each protocol.
        plan.append((method, config.protocols if method.updates else config.protocols[:1]))
    total = stream_images * sum(len(protocols) for _, protocols in plan)
    done = {"images": 0}
    cells: list[CellResult] = []
    for method, protocols in plan:
        for protocol in protocols:

            def advance(cell: CellResult, images: int, protocol: str = protocol) -> None:
                done["images"] += images
                report("adapt", f"{cell.method} · {protocol} · {cell.corruption}", done["images"], total)

            torch.manual_seed(config.seed)
            ran = run_method(bundle, method, streams, protocol, config.batch_size, device, on_batch=advance)
            cells.extend(ran)
            if not method.updates:
                for other in config.protocols[1:]:
                    cells.extend(_relabel(cell, other) for cell in ran)
    return cells


def _relabel(cell: CellResult, protocol: str) -> CellResult:
    copied = CellResult(**{**cell.__dict__, "protocol": protocol})
    copied.notes = cell.notes.copy()
    copied.notes["same run as protocol " + cell.protocol] += 1
    return copied


def _summary(
    config: BenchConfig,
    bundle: Bundle,
    device: torch.device,
    cells: list[CellResult],
    fisher_note: str,
    speed: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    from tta_cli.bench.speed import device_name

    results = [
        {
            "method": cell.method,
            "protocol": cell.protocol,
            "corruption": cell.corruption,
            "images": cell.images,
            "error_percent": round(cell.error_percent, 2),
            "images_per_second": round(cell.images_per_second, 1),
            "step_ms": round(cell.step_ms, 2),
            "peak_gpu_memory_mb": None if cell.peak_gpu_memory_mb is None else round(cell.peak_gpu_memory_mb, 1),
            "notes": dict(cell.notes),
        }
        for cell in cells
    ]
    mean_error = {
        protocol: {
            name: round(
                float(np.mean([c.error_percent for c in cells if (c.protocol, c.method) == (protocol, name)])), 2
            )
            for name in config.methods
        }
        for protocol in config.protocols
    }
    methods = {}
    for name in config.methods:
        method = get_method(name)
        methods[name] = {
            "summary": method.summary,
            "batch_statistics": method.batch_statistics,
            "norm": method.norm if method.batch_statistics else None,
            "objectives": list(method.objectives),
            "optimizer": method.optimizer if method.updates else None,
            "lr": method.lr if method.updates else None,
            "objective_options": method.objective_options,
            "update": method.update if method.updates else None,
            "update_options": method.update_options,
        }
    return {
        "config": config.model_dump(mode="json"),
        "model": {"path": str(bundle.path), "architecture": bundle.spec.architecture, "sha256": bundle.weights_sha256},
        "machine": {
            "device": device_name(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "images_per_corruption": results[0]["images"] if results else 0,
        "methods": methods,
        "fisher": fisher_note,
        "results": results,
        "mean_error_percent": mean_error,
        "speed": speed,
        "seconds": round(seconds, 1),
    }
