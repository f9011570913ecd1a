"""``tta-cli bench``: methods side by side on a labeled clean folder under the 15 corruptions.

streams (cached) → put in ``order`` → Fisher on clean source data (EATA) → every method under
every protocol, ``rounds`` times → speed → OUT/bench.json, OUT/bench.md, OUT/bench.png
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tta_cli.analysis import split_by_id
from tta_cli.bench.orders import parse_order
from tta_cli.bench.protocols import ALL_PROTOCOLS, PROTOCOLS, CellResult, bench_method, run_method
from tta_cli.bench.report import write_report
from tta_cli.bench.speed import measure_speed
from tta_cli.bench.streams import ShiftedStream, build_streams, select_images
from tta_cli.corruptions import BEYOND, CORRUPTIONS
from tta_cli.engine import Method, get_method, resolve_device
from tta_cli.engine.build import check_fits
from tta_cli.engine.methods import AUTO_METHOD
from tta_cli.engine.params import configure_model, norm_affine_parameters
from tta_cli.errors import UsageError
from tta_cli.models import Bundle, load_bundle
from tta_cli.objectives import measure_fisher
from tta_cli.streams import Preprocess
from tta_cli.streams.decode import decode_image

BASELINES = ("source", "norm", "tent", "eata", "sar")


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: Path = Field(description="model bundle folder")
    data: Path = Field(description="labeled clean folder (<class>/<image>) to corrupt")
    out: Path = Field(description="folder for bench.json, bench.md and bench.png")
    corruptions: tuple[str, ...] = CORRUPTIONS
    severity: int = Field(5, ge=1, le=5)
    num_examples: int | None = Field(None, ge=1, description="images per corruption (default all)")
    methods: tuple[str, ...] = BASELINES
    protocols: tuple[str, ...] = PROTOCOLS
    batch_size: int = Field(200, ge=1)
    order: str = Field("shuffled", description="shuffled, sorted, dirichlet:ALPHA or video:K (``orders``)")
    rounds: int = Field(1, ge=1, description="passes over the corruption sequence (continual: without a reset)")
    seed: int = 0
    device: str = "auto"
    source_data: Path | None = Field(None, description="clean labeled source images for EATA's Fisher")
    fisher_examples: int = Field(2000, ge=1)
    cache_dir: Path | None = None
    speed: bool = True
    speed_repeats: int = Field(10, ge=1)
    domain_weighting: bool = Field(
        False, description="weigh inputs by cluster in the mixed protocol's runs of methods with gradient steps"
    )

    @field_validator("order")
    @classmethod
    def _known_order(cls, value: str) -> str:
        parse_order(value)
        return value


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
        if name != AUTO_METHOD:
            get_method(name)
    for name in config.corruptions:
        if name not in CORRUPTIONS + BEYOND:
            raise UsageError(f"Unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS + BEYOND)}.")
    for name in config.protocols:
        if name not in ALL_PROTOCOLS:
            raise UsageError(f"Unknown protocol {name!r}; choose from {', '.join(ALL_PROTOCOLS)}.")
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
    for name in config.methods:
        check_fits(bundle, bench_method(name, bundle))
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
        spec.framing,
        config.num_examples,
        config.seed,
        config.cache_dir,
        on_image=corrupted,
    )
    for index, stream in enumerate(streams):
        # One at a time, so that at most one stream is held twice.
        streams[index] = stream.reordered(config.order, config.seed)
    report("corrupt", "streams ready", total_images, total_images)
    # Every corruption's stream has one length; "mixed" runs them all as one stream.
    lengths = {len(streams[0]), *([sum(map(len, streams))] if "mixed" in config.protocols else [])}
    last_batches = [length % config.batch_size or config.batch_size for length in lengths]
    if min(last_batches) == 1 and any(bench_method(name, bundle).batch_statistics for name in config.methods):
        check_batch_of_one(bundle, streams[0], device)

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


def check_batch_of_one(bundle: Bundle, stream: ShiftedStream, device: torch.device) -> None:
    """A batch of one image is normalised with its own statistics only where every BatchNorm
    layer still has more than one value per channel (spatial size above 1×1): the zoo's CIFAR
    networks do; a network that pools to 1×1 before a BatchNorm does not, and torch refuses it."""
    model = bundle.on(device)
    original = {name: value.clone() for name, value in model.state_dict().items()}
    configure_model(model, batch_statistics=True, params=[])
    try:
        with torch.no_grad():
            model(Preprocess(bundle.spec.mean, bundle.spec.std, device)(stream.images[:1]))
    except ValueError as error:
        raise UsageError(
            f"A batch of one image leaves a BatchNorm layer of {bundle.spec.architecture} one value per channel, "
            "which test-batch statistics cannot normalise; use a --batch-size of 2 or more and a --num-examples "
            "whose last batch is not a single image (under mixed: --num-examples times the corruptions)."
        ) from error
    finally:
        # Train-mode BatchNorm moved the running statistics.
        model.load_state_dict(original)


def _attach_fisher(bundle: Bundle, config: BenchConfig, device: torch.device) -> int:
    """Measure EATA's Fisher information once and keep it on the bundle for the EATA runs."""
    assert config.source_data is not None
    spec = bundle.spec
    files = select_images(config.source_data, spec.class_names, config.fisher_examples, config.seed)
    preprocess = Preprocess(spec.mean, spec.std, device)
    model = bundle.on(device)
    params = norm_affine_parameters(model)
    original = {name: value.clone() for name, value in model.state_dict().items()}
    configure_model(model, batch_statistics=True, params=list(params.values()))
    batches = (
        preprocess(np.stack([decode_image(config.source_data / path, spec.framing) for path in chunk]))
        for chunk in (files[start : start + config.batch_size] for start in range(0, len(files), config.batch_size))
    )
    bundle.fisher = measure_fisher(model, params, batches)
    # The Fisher pass ran BatchNorm in train mode; its running statistics must stay the source's.
    model.load_state_dict(original)
    return len(files)


def _run_matrix(
    bundle: Bundle,
    config: BenchConfig,
    streams: list[ShiftedStream],
    device: torch.device,
    report: Callable[..., None],
) -> list[CellResult]:
    stream_images = sum(len(stream) for stream in streams)
    plan = []
    for name in config.methods:
        method = bench_method(name, bundle)
        # Nothing carries over from batch to batch in a method without steps or smoothed
        # statistics, so reset and continual give the same predictions (and mixed too, unless the
        # method normalises with the batch's statistics, which mixing changes): it runs once and
        # its cells are listed under each such protocol. For such a method, and under reset,
        # every round repeats the first: it runs once and is listed under each round.
        for protocol, copies in _distinct_runs(method, config.protocols).items():
            carried = method.carries_state and protocol != "reset"
            plan.append((method, protocol, copies, config.rounds if carried else 1))
    total = stream_images * sum(rounds for *_, rounds in plan)
    done = {"images": 0}
    cells: list[CellResult] = []
    for method, protocol, copies, rounds in plan:

        def advance(cell: CellResult, images: int, protocol: str = protocol) -> None:
            done["images"] += images
            where = f"round {cell.round} · {cell.corruption}" if config.rounds > 1 else cell.corruption
            report("adapt", f"{cell.method} · {protocol} · {where}", done["images"], total)

        torch.manual_seed(config.seed)
        ran = run_method(
            bundle,
            method,
            streams,
            protocol,
            config.batch_size,
            device,
            on_batch=advance,
            rounds=rounds,
            # Only the mixed stream is weighed, so that it is compared with the same runs alone.
            domain_weighting=config.domain_weighting and protocol == "mixed",
            seed=config.seed,
        )
        if rounds < config.rounds:
            ran += [
                replace(cell, copied_from="round 1", round=number)
                for number in range(2, config.rounds + 1)
                for cell in ran
            ]
        cells.extend(ran)
        for other in copies:
            cells.extend(replace(cell, copied_from=f"protocol {protocol}", protocol=other) for cell in ran)
    return cells


def _distinct_runs(method: Method, protocols: Sequence[str]) -> dict[str, list[str]]:
    """The protocols a method runs under, each with the protocols that only repeat its run.

    >>> _distinct_runs(get_method("norm"), ("reset", "continual", "mixed"))
    {'reset': ['continual'], 'mixed': []}
    >>> _distinct_runs(get_method("source"), ("reset", "continual", "mixed"))
    {'reset': ['continual', 'mixed']}
    >>> _distinct_runs(get_method("norm+weighted"), ("reset", "continual", "mixed"))
    {'reset': [], 'continual': [], 'mixed': []}
    """
    if method.carries_state:
        return {protocol: [] for protocol in protocols}
    runs: dict[str, list[str]] = {}
    for protocol in protocols:
        kind = protocol == "mixed" and method.batch_statistics
        first = next(other for other in protocols if (other == "mixed" and method.batch_statistics) == kind)
        runs.setdefault(first, []).extend([] if first == protocol else [protocol])
    return runs


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
            "round": cell.round,
            "images": cell.images,
            "error_percent": round(cell.error_percent, 2),
            "images_per_second": round(cell.images_per_second, 1),
            "step_ms": round(cell.step_ms, 2),
            "peak_gpu_memory_mb": None if cell.peak_gpu_memory_mb is None else round(cell.peak_gpu_memory_mb, 1),
            "notes": dict(cell.notes),
            "copied_from": cell.copied_from,
            "cosines": [round(value, 4) for value in cell.cosines],
        }
        | _against_alone(cell, cells)
        for cell in cells
    ]
    mean_error = {
        protocol: {name: _mean_error(cells, protocol, name) for name in config.methods} for protocol in config.protocols
    }
    error_per_round = {
        protocol: {
            name: [_mean_error(cells, protocol, name, number) for number in range(1, config.rounds + 1)]
            for name in config.methods
        }
        for protocol in config.protocols
    }
    methods = {}
    for name in config.methods:
        method = bench_method(name, bundle)
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
        "fisher_measured": config.source_data is not None,
        "results": results,
        "mean_error_percent": mean_error,
        "error_per_round": error_per_round,
        "worse_than_source": worse_than_source(cells, config.methods, config.protocols),
        "speed": speed,
        "seconds": round(seconds, 1),
    }


def _mean_error(cells: list[CellResult], protocol: str, method: str, number: int | None = None) -> float:
    """Mean error % of a method's cells under a protocol, over every round or in round ``number``."""
    errors = [
        cell.error_percent
        for cell in cells
        if (cell.protocol, cell.method) == (protocol, method) and (number is None or cell.round == number)
    ]
    return round(float(np.mean(errors)), 2)


def worse_than_source(
    cells: Sequence[CellResult], methods: Sequence[str], protocols: Sequence[str]
) -> dict[str, dict[str, int]] | None:
    """Per protocol and method, the cells (corruption and round) with more errors than ``source``
    on the same images; ``None`` where ``source`` was not run."""
    if "source" not in methods:
        return None
    source = {(cell.protocol, cell.round, cell.corruption): cell.errors for cell in cells if cell.method == "source"}
    return {
        protocol: {
            name: sum(
                cell.errors > source[protocol, cell.round, cell.corruption]
                for cell in cells
                if (cell.protocol, cell.method) == (protocol, name)
            )
            for name in methods
        }
        for protocol in protocols
    }


def _against_alone(cell: CellResult, cells: Sequence[CellResult]) -> dict[str, Any]:
    """For a cell of ``mixed``: its transfer and interference against the same method's ``reset``
    cell of the corruption (adapted to alone), in the same round, where that ran."""
    if cell.protocol != "mixed":
        return {}
    for alone in cells:
        if (alone.method, alone.protocol, alone.corruption, alone.round) == (
            cell.method,
            "reset",
            cell.corruption,
            cell.round,
        ):
            return {"against_alone": split_by_id(alone.correct, cell.correct).as_dict()}
    return {}
