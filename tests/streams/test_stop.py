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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.streams.helpers import write_video
from tta_cli.config import AdaptConfig
from tta_cli.engine import Progress, adapt, resume
from tta_cli.engine import run as run_loop
from tta_cli.history import HistoryStore, read_history
from tta_cli.streams import Frame, Stream


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


class ScriptedFolder(Stream):
    """Six images at positions 0-5 of which position 2 is unreadable; a stop arrives after
    the reader passed it, while the second batch is being gathered."""

    @property
    def length(self) -> int:
        return 6

    @property
    def replayable(self) -> bool:
        return True

    def __iter__(self) -> Iterator[Frame]:
        for position in range(self.start, 6):
            if position == 2:
                self.skipped.add(position, "002-broken.png", "cannot identify image file")
                if self.start == 0:
                    os.kill(os.getpid(), signal.SIGTERM)
                continue
            if self.stopping:
                return
            yield Frame(f"{position:03d}.png", np.full((32, 32, 3), 40 * position, dtype=np.uint8), None, position)


def test_inputs_skipped_beyond_a_stop_are_recorded_once_by_the_resumed_run(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_loop, "open_run_source", lambda config, spec, start=0: ScriptedFolder(start))
    run = tmp_path / "run"
    config = AdaptConfig(model=bundle_path, source=tmp_path, run=run, method="norm", batch_size=2)
    assert adapt(config).steps == 1
    summary = resume(run)
    assert summary.images_seen == 5 and summary.images_skipped == 1
    skipped = json.loads((run / "summary.json").read_text())["skipped"]
    assert [entry["input_id"] for entry in skipped] == ["002-broken.png"]
