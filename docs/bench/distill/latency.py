"""onnxruntime latency of two exported models, measured in one run on the same machine.

    python docs/bench/distill/latency.py TEACHER.onnx STUDENT.onnx [--repeats 50]

Per batch size (1 and 64): the median over ``repeats`` timed runs (after 5 untimed) of one
``InferenceSession.run`` on the CPU execution provider, and the ratio student / teacher.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import onnxruntime as ort
import typer


def median_ms(path: Path, batch: int, repeats: int) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    shape = [batch, *[int(size) for size in feed.shape[1:]]]
    inputs = {feed.name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    for _ in range(5):
        session.run(None, inputs)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, inputs)
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def main(
    teacher: Annotated[Path, typer.Argument()],
    student: Annotated[Path, typer.Argument()],
    repeats: Annotated[int, typer.Option()] = 50,
) -> None:
    rows = {}
    for batch in (1, 64):
        teacher_ms, student_ms = median_ms(teacher, batch, repeats), median_ms(student, batch, repeats)
        rows[batch] = {"teacher_ms": round(teacher_ms, 3), "student_ms": round(student_ms, 3),
                       "ratio": round(student_ms / teacher_ms, 3)}  # fmt: skip
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    typer.run(main)
