"""``kill -9`` at any instant leaves a history that opens, a ``current`` that loads, and a run
that resumes and rolls back."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_image_folder
from tta_cli.history import HistoryStore, read_history, rollback

KILLS = 20


@pytest.mark.slow
def test_sigkill_at_random_moments(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=100)
    run = tmp_path / "run"
    rng = random.Random(1234)
    start = [sys.executable, "-m", "tta_cli", "adapt", "--model", str(bundle_path), "--source", str(data)]
    start += ["--run", str(run), "--method", "tent", "--batch-size", "2", "--order", "shuffled"]
    deadline = time.monotonic() + 240
    for attempt in range(KILLS):
        assert time.monotonic() < deadline, f"only {attempt} kills fitted in the time bound"
        command = [sys.executable, "-m", "tta_cli", "adapt", "--resume", str(run)] if run.exists() else start
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if command is start:
            # Let the first invocation create the run (a kill before that leaves no run directory).
            while not run.exists() and process.poll() is None:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            # Start-up (importing torch) takes one to three seconds: kills land before, during
            # and after the first resumed steps.
            time.sleep(rng.uniform(0.2, 5.0))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert run.exists()
        store = HistoryStore.open(run)
        current = store.aliases()["current"]
        state = store.load_snapshot(current.id)
        assert state["params"], "current must load"
        recorded_steps = [step.step for step in store.steps()]
        assert recorded_steps == sorted(recorded_steps)
        store.close()
        rows = (run / "predictions.csv").read_text().splitlines()
        assert rows[0].startswith("id,")
        if attempt % 3 == 2 and recorded_steps:
            target = rng.choice(["source", "last-good", str(rng.choice(recorded_steps))])
            rollback(run, target)

    finished = subprocess.run(
        [sys.executable, "-m", "tta_cli", "adapt", "--resume", str(run)], capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    history = read_history(run)
    steps = [step["step"] for step in history["steps"]]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    predictions = (run / "predictions.csv").read_text().splitlines()[1:]
    assert len(predictions) == 300, "every input predicted exactly once across all the kills"
    assert len({row.split(",")[0] for row in predictions}) == 300
