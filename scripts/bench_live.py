"""Throughput of a live source: frames adapted and dropped per second at a camera's pace.

    python scripts/bench_live.py --model sample_models/cifar10-airnet-ce --data sample_models/data \\
        --fps 30 --seconds 30 --batch-sizes 1,8,32 --out docs/live.json

What is measured, and how: the docstring of ``tta_cli.bench.live``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from tta_cli.bench.live import live_report


def main(
    model: Annotated[Path, typer.Option(help="Model bundle.")],
    data: Annotated[Path | None, typer.Option(help="Images to show the camera (default random noise).")] = None,
    fps: Annotated[float, typer.Option(help="Frames per second the camera sends.")] = 30.0,
    seconds: Annotated[float, typer.Option(help="Reading time per batch size.")] = 30.0,
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes to measure, comma-separated.")] = "1,8,32",
    method: Annotated[str, typer.Option(help="Method to adapt with.")] = "tent",
    frame_size: Annotated[str, typer.Option(help="WIDTHxHEIGHT of the camera's frames.")] = "640x480",
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads (default torch's own choice).")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON file to write.")] = None,
) -> None:
    """Measure the throughput of a live source at a camera's pace, for each batch size."""
    command = "python scripts/bench_live.py " + " ".join(_quoted(locals()))
    if threads is not None:
        torch.set_num_threads(threads)
    width, height = (int(value) for value in frame_size.lower().split("x"))
    report = live_report(
        model,
        data,
        fps,
        seconds,
        [int(value) for value in batch_sizes.split(",")],
        method,
        (width, height),
        on_result=lambda result: print(json.dumps(result), flush=True),
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"command": command, **report}, indent=2) + "\n")


def _quoted(arguments: dict[str, Any]) -> list[str]:
    return [f"--{name.replace('_', '-')} {value}" for name, value in arguments.items() if value is not None]


if __name__ == "__main__":
    typer.run(main)
