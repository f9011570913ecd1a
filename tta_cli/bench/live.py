"""Throughput of a live source: frames adapted and dropped per second at a camera's pace.

    python scripts/bench_live.py --model sample_models/cifar10-airnet-ce --data sample_models/data \\
        --fps 30 --seconds 30 --batch-sizes 1,8,32 --out docs/live.json

A local MJPEG server on 127.0.0.1 plays the role of an IP camera: it sends ``--frame-size``
JPEGs (the shipped shifted images, scaled up) at ``--fps``. For each batch size, ``adapt``
reads the stream's URL as a user's run would, through the live reader (newest frame wins),
for ``--seconds``. Rates are taken between the first and the last step, so start-up
(imports, the first backward pass) does not count; the server's count of frames sent gives
the rate actually offered. Latency runs from a frame's reading to the commit of the step
that adapted on it, so it includes the wait for the rest of its batch.

On a CPU that other work shares, ``--threads 1`` can be much faster than torch's default: its
intra-op threads wait at a barrier for whichever of them the scheduler has set aside.
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from tta_cli.bench.mjpeg import MjpegServer, encode_jpegs
from tta_cli.config import AdaptConfig
from tta_cli.engine import Progress, adapt
from tta_cli.history import read_history
from tta_cli.streams import list_images


def camera_frames(data: Path | None, size: tuple[int, int], count: int, seed: int = 0) -> list[bytes]:
    """``count`` JPEGs of ``size`` (height, width): images from ``data`` scaled up, or noise."""
    height, width = size
    rng = np.random.default_rng(seed)
    if data is None:
        images: list[np.ndarray] = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]
    else:
        files = list_images(data)
        chosen = rng.choice(len(files), size=min(count, len(files)), replace=False)
        images = []
        for index in sorted(chosen):
            bgr = cv2.imread(str(files[index]), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SystemExit(f"{files[index]} is not an image OpenCV can read.")
            images.append(np.asarray(cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)[..., ::-1]))
    return encode_jpegs(images)


def measure(
    model: Path,
    jpegs: list[bytes],
    fps: float,
    seconds: float,
    batch_size: int,
    method: str,
) -> dict[str, Any]:
    # After each step: (time, frames adapted, frames dropped, frames the camera has sent).
    steps: list[tuple[float, int, int, int]] = []
    with MjpegServer(jpegs, fps=fps, max_seconds=seconds + 120) as camera, tempfile.TemporaryDirectory() as scratch:

        def record(progress: Progress) -> None:
            steps.append((time.perf_counter(), progress.images_seen, progress.frames_dropped, camera.frames_sent))

        config = AdaptConfig(
            model=model,
            source=camera.url,
            run=Path(scratch) / "run",
            method=method,
            batch_size=batch_size,
            device="cpu",
            duration=seconds,
        )
        summary = adapt(config, on_step=record)
        latencies = frame_latencies(config.run)
    if len(steps) < 2:
        raise SystemExit(f"batch size {batch_size}: only {len(steps)} step(s) in {seconds} s; run longer.")
    first, last = steps[0], steps[-1]
    window = last[0] - first[0]
    step_seconds = [later[0] - earlier[0] for earlier, later in pairwise(steps)]
    return {
        "batch_size": batch_size,
        "steps": summary.steps,
        "frames_adapted": summary.images_seen,
        "frames_dropped": summary.frames_dropped,
        "reconnects": summary.reconnects,
        "adapted_per_second": round((last[1] - first[1]) / window, 2),
        "dropped_per_second": round((last[2] - first[2]) / window, 2),
        "offered_per_second": round((last[3] - first[3]) / window, 2),
        "median_ms_between_steps": round(1000 * statistics.median(step_seconds), 1),
        "median_latency_ms": round(1000 * statistics.median(latencies), 1),
        "p95_latency_ms": round(1000 * statistics.quantiles(latencies, n=20)[-1], 1),
        "steady_window_seconds": round(window, 2),
    }


def frame_latencies(run: Path) -> list[float]:
    """Seconds from reading each frame to committing the step that adapted on it (the read
    time is in the frame's id, the commit time in the step's record)."""
    committed = {step["step"]: step["time"] for step in read_history(run)["steps"]}
    with (run / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        committed[int(row["step"])] - datetime.fromisoformat(row["id"].split("@", 1)[1]).timestamp()
        for row in rows
        if int(row["step"]) in committed
    ]


def live_report(
    model: Path,
    data: Path | None = None,
    fps: float = 30.0,
    seconds: float = 30.0,
    batch_sizes: Sequence[int] = (1, 8, 32),
    method: str = "tent",
    frame_size: tuple[int, int] = (640, 480),
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """``measure`` for each batch size in turn on ``frame_size`` (width, height) frames, with
    the machine it ran on and the settings; ``on_result`` gets each batch size's result."""
    width, height = frame_size
    # Other work on the machine slows the model: record how busy it was.
    load_before = os.getloadavg()[0]
    jpegs = camera_frames(data, (height, width), count=120)
    results = []
    for batch_size in batch_sizes:
        result = measure(model, jpegs, fps, seconds, batch_size, method)
        if on_result is not None:
            on_result(result)
        results.append(result)
    return {
        "machine": {
            "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
        },
        "settings": {"fps": fps, "seconds": seconds, "frame_size": f"{width}x{height}", "method": method},
        "results": results,
    }
