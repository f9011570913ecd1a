"""Live sources against a real MJPEG server on 127.0.0.1: newest frame wins, reconnects, a clean end."""

from __future__ import annotations

import csv
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.streams.helpers import card_jpegs
from tta_cli.bench.mjpeg import MjpegServer
from tta_cli.config import AdaptConfig, LiveConfig
from tta_cli.engine import Progress, adapt
from tta_cli.events import EventKind
from tta_cli.history import read_history
from tta_cli.streams import CaptureStream, Framing, open_source

FAST_RECONNECT = LiveConfig(watchdog_timeout=1.0, reconnect_attempts=2, backoff=0.1, backoff_max=0.2)


@pytest.fixture
def camera() -> MjpegServer:
    with MjpegServer(card_jpegs(), fps=30, max_seconds=30) as server:
        yield server


def test_a_slow_reader_gets_the_newest_frame_and_counts_the_rest(camera: MjpegServer) -> None:
    stream = open_source(camera.url, Framing((32, 32)), reconnect=FAST_RECONNECT)
    frames = []
    for frame in stream:
        frames.append(frame)
        time.sleep(0.2)  # a model far slower than the camera
        if len(frames) == 5:
            break
    stream.close()
    numbers = [int(frame.id.split("@")[0]) for frame in frames]
    assert [frame.position for frame in frames] == list(range(5))
    assert numbers == sorted(numbers) and numbers[-1] - numbers[0] >= 12, "stale frames were skipped"
    assert 12 <= stream.dropped <= stream.frames_read - len(frames)
    assert all(frame.id.split("@")[1].endswith("Z") for frame in frames)


def test_adapt_from_a_url_reconnects_after_a_cut_and_ends_cleanly_when_it_is_gone(
    bundle_path: Path, tmp_path: Path, camera: MjpegServer
) -> None:
    run = tmp_path / "run"
    config = AdaptConfig(
        model=bundle_path, source=camera.url, run=run, method="tent", batch_size=2, live=FAST_RECONNECT
    )
    actions = {3: camera.cut, 12: camera.stop}

    def act(progress: Progress) -> None:
        assert progress.total_images is None
        if progress.steps in actions:
            actions.pop(progress.steps)()

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the tests were started in the background
    summary = adapt(config, on_step=act)
    assert not actions, "the run went on after the cut"
    assert summary.reconnects >= 1 and summary.source_lost is not None and "gave up" in summary.source_lost
    assert summary.stopped_by is None
    history = read_history(run)
    kinds = [event["kind"] for event in history["events"]]
    assert "reconnect" in kinds and kinds[-1] == "source-lost"
    assert len(history["steps"]) == summary.steps >= 12
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert len(rows) == summary.images_seen == sum(step["batch_size"] for step in history["steps"])
    assert all("@" in row["id"] and row["label"] == "" for row in rows)
    assert signal.getsignal(signal.SIGINT) is before, "handlers restored after the run"


def test_a_stalled_source_is_reconnected_by_the_watchdog(camera: MjpegServer) -> None:
    stream = open_source(camera.url, Framing((32, 32)), reconnect=FAST_RECONNECT)
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 3:
            camera.stall()
            # Frozen for longer than the watchdog's second, back before the reconnects run out.
            threading.Timer(1.4, camera.stall, (False,)).start()
        if seen == 10:
            break
    stream.close()
    assert seen == 10 and stream.reconnects >= 1 and stream.failure is None
    events = stream.events.drain()
    assert any(event.kind == EventKind.RECONNECT and "no frame" in event.detail for event in events), events


def test_duration_ends_a_live_run(bundle_path: Path, tmp_path: Path, camera: MjpegServer) -> None:
    started = time.monotonic()
    summary = adapt(
        AdaptConfig(model=bundle_path, source=camera.url, run=tmp_path / "run", method="norm", batch_size=4, duration=1)
    )
    assert time.monotonic() - started < 10
    assert summary.steps >= 1 and summary.source_lost is None and summary.stopped_by is None


class FakeCapture:
    """A capture that hangs inside ``read`` (a wedged driver) or gives grey frames."""

    def __init__(self, hang: threading.Event | None) -> None:
        self.hang = hang

    def isOpened(self) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray]:
        if self.hang is not None:
            self.hang.wait(10)
            return False, None
        time.sleep(0.01)
        return True, np.full((48, 64, 3), 100, np.uint8)

    def grab(self) -> bool:
        return True

    def release(self) -> None:
        pass


def test_a_reader_stuck_in_the_driver_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    wedged = threading.Event()
    captures = iter([FakeCapture(wedged), FakeCapture(None)])
    monkeypatch.setattr(CaptureStream, "_open", lambda self: next(captures))
    stream = CaptureStream(
        0, Framing((32, 32)), live=True, reconnect=LiveConfig(watchdog_timeout=0.3, backoff=0.05, reconnect_attempts=2)
    )
    started = time.monotonic()
    frame = next(iter(stream))
    stream.close()
    wedged.set()
    assert frame.image.shape == (32, 32, 3) and 0.6 <= time.monotonic() - started < 3
    assert stream.reconnects == 1
    assert [event.kind for event in stream.events.drain()] == [EventKind.RECONNECT]
