"""Stopping a run with SIGINT or SIGTERM: the step in flight is committed, nothing is half-written."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.streams.helpers import write_video
from tta_cli.config import AdaptConfig
from tta_cli.engine import Progress, adapt, resume
from tta_cli.history import HistoryStore, read_history


def recorded_steps(run: Path) -> int:
    database = run / "history.db"
    if not database.is_file():
        return 0
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
        try:
            return db.execute("SELECT count(*) FROM steps").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def test_sigint_ends_the_cli_with_a_consistent_history(bundle_path: Path, tmp_path: Path) -> None:
    video = write_video(tmp_path / "long.avi", 3000, size=(32, 32))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "tta_cli", "adapt", "--model", str(bundle_path), "--source", str(video)]
    process = subprocess.Popen(
        [*command, "--run", str(run), "--method", "tent", "--batch-size", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 60
    while recorded_steps(run) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be stopped"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Stopped by SIGINT" in stderr and "images adapted" in stdout

    store = HistoryStore.open(run)
    steps = store.steps()
    assert store.load_snapshot(store.aliases()["current"].id)["params"]
    store.close()
    assert [step.step for step in steps] == list(range(1, len(steps) + 1))
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    ids = [int(row["id"].split("@")[0]) for row in rows]
    assert ids == list(range(2 * len(steps))), "every frame, in order"
    assert {int(row["step"]) for row in rows} == {step.step for step in steps}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == len(steps) and summary["stopped_by"] == "SIGINT"
    assert read_history(run)["events"][-1]["kind"] == "stopped"


def test_a_stopped_run_resumes_at_the_next_frame(bundle_path: Path, tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", 21, size=(32, 32))
    run = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)

    def terminate(progress: Progress) -> None:
        if progress.steps == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    summary = adapt(AdaptConfig(model=bundle_path, source=video, run=run, method="tent", batch_size=4), terminate)
    assert summary.stopped_by == "SIGTERM" and summary.steps == 3 and summary.images_seen == 12
    assert signal.getsignal(signal.SIGTERM) is before
    summary = resume(run)
    assert summary.stopped_by is None and summary.steps == 6 and summary.images_seen == 21
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert [row["id"] for row in rows] == [f"{index}@{index / 30:.3f}s" for index in range(21)]
    assert [int(row["step"]) for row in rows] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4 + [6]
