"""Throughput of a live source: frames adapted and dropped per second at a camera's pace.

    python -m tta_cli.bench.live --model sample_models/cifar10-airnet --data sample_models/data \\
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

import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model bundle")
    parser.add_argument("--data", type=Path, help="images to show the camera (default random noise)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="reading time per batch size")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--method", default="tent")
    parser.add_argument("--frame-size", default="640x480", help="WIDTHxHEIGHT of the camera's frames")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default torch's own choice)")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    width, height = (int(value) for value in args.frame_size.lower().split("x"))
    # Other work on the machine slows the model: record how busy it was.
    load_before = os.getloadavg()[0]
    jpegs = camera_frames(args.data, (height, width), count=120)
    results = []
    for batch_size in (int(value) for value in args.batch_sizes.split(",")):
        result = measure(args.model, jpegs, args.fps, args.seconds, batch_size, args.method)
        print(json.dumps(result), flush=True)
        results.append(result)
    report = {
        "command": "python -m tta_cli.bench.live " + " ".join(_quoted(vars(args))),
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
        "settings": {"fps": args.fps, "seconds": args.seconds, "frame_size": args.frame_size, "method": args.method},
        "results": results,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


def _quoted(arguments: dict[str, Any]) -> list[str]:
    return [f"--{name.replace('_', '-')} {value}" for name, value in arguments.items() if value is not None]


if __name__ == "__main__":
    main()
