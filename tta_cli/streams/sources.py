"""One ``--source`` grammar: a folder, a glob, an image, a video file, a camera or a URL.

    data/ · shots/*/*.jpg · cat.png     folder stream (sorted, labels from class folders)
    clip.mp4 · clip.avi · clip.mkv      video file: every frame, in order
    0 · /dev/video0                     camera (live)
    rtsp://… · http(s)://…              network stream, e.g. MJPEG or H.264 (live)

Video, cameras and URLs are read with OpenCV in one reader thread per source. A file is read
through a bounded queue: every frame arrives, in order, and the reader waits when the model
is slower. A live source is read through a one-frame slot: the reader keeps the newest frame
and counts each one it overwrites as dropped, so the model always sees the present. A live
source that fails or delivers nothing for ``watchdog_timeout`` seconds is reopened after a
back-off that doubles each time; after ``reconnect_attempts`` failures in a row the stream
ends and says why in ``failure``.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from tta_cli.config import Interpolation, LiveConfig
from tta_cli.errors import UsageError
from tta_cli.events import Event, EventKind
from tta_cli.streams.decode import IMAGE_SUFFIXES
from tta_cli.streams.folder import FolderStream, is_glob
from tta_cli.streams.frames import Frame, Stream
from tta_cli.streams.framing import Framing

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"}
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
"""A URL's scheme, as in ``rtsp://camera/stream``."""
# How often a waiting loop looks at its stop flag: the bound on how late a stop is noticed.
POLL_SECONDS = 0.1
# Failed grabs in a row that end a video file (a second at 30 fps): fewer are damaged frames
# it reads on after.
DAMAGED_FRAMES_IN_A_ROW = 30
# OpenCV's filter for each interpolation where a frame grows. Where it shrinks, PIL (the files'
# path) widens its bilinear, bicubic and box filters so that they average, which in OpenCV only
# INTER_AREA does; nearest stays nearest. INTER_NEAREST_EXACT picks the pixels PIL's nearest
# picks, and PIL's box filter enlarges as nearest does.
CV2_ENLARGING: dict[Interpolation, int] = {
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST_EXACT,
    "box": cv2.INTER_NEAREST_EXACT,
}


def open_source(
    text: str | Path,
    framing: Framing,
    class_names: Sequence[str] = (),
    *,
    order: str = "sorted",
    seed: int = 0,
    workers: int | None = None,
    start: int = 0,
    stride: int = 1,
    max_frames: int | None = None,
    duration: float | None = None,
    reconnect: LiveConfig | None = None,
) -> Stream:
    """The stream that ``text`` names. ``max_frames`` counts frames kept (after ``stride``)
    from the beginning of the source, so a resumed run stops where the first would have;
    ``duration`` is wall-clock seconds of reading in this invocation."""
    text = str(text)
    if stride < 1:
        raise UsageError(f"Stride must be at least 1, got {stride}.")
    live: dict[str, Any] = {"reconnect": reconnect or LiveConfig()}
    bounds: dict[str, Any] = {"start": start, "stride": stride, "max_frames": max_frames, "duration": duration}
    kind = live_kind(text)
    if kind == "url":
        if text.split("://", 1)[0].lower() not in URL_SCHEMES:
            raise UsageError(f"Source {text!r} has an unsupported scheme; use one of {', '.join(URL_SCHEMES)}.")
        return CaptureStream(text, framing, live=True, **bounds, **live)
    if kind == "camera":
        return CaptureStream(int(text), framing, live=True, **bounds, **live)
    path = Path(text)
    if kind == "device":
        if not path.exists():
            raise UsageError(f"Camera {text} does not exist (is the device passed through to this container?).")
        return CaptureStream(text, framing, live=True, **bounds, **live)
    if path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES:
        if path.suffix.lower() not in VIDEO_SUFFIXES and not _opens_as_video(path):
            raise UsageError(f"Source {text} is neither an image nor a video OpenCV can read.")
        return CaptureStream(text, framing, live=False, **bounds, **live)
    if path.exists() or is_glob(text):
        return FolderStream(
            text if is_glob(text) and not path.exists() else path,
            framing,
            class_names,
            order=order,
            seed=seed,
            workers=workers,
            limit=max_frames,
            start=start,
            stride=stride,
            duration=duration,
        )
    raise UsageError(
        f"Source {text} does not exist; give a folder, a glob, an image or video file, a camera index "
        "or device, or an rtsp:// or http(s):// URL."
    )


def live_kind(text: str) -> Literal["url", "camera", "device"] | None:
    """Which live source ``text`` names (a URL, a camera index, a device), or ``None`` for a
    path or a glob."""
    if SCHEME.match(text):
        return "url"
    if text.isdigit():
        return "camera"
    return "device" if text.startswith("/dev/") else None


def absolute_source(text: str) -> str:
    """``text`` with a relative path to a folder, file or glob made absolute, so that a run
    resumed or exported from another working directory reads the same images; a camera, a
    device or a URL as given."""
    if live_kind(text) is None and (Path(text).exists() or is_glob(text)):
        return os.path.abspath(text)
    return text


def _opens_as_video(path: Path) -> bool:
    capture = cv2.VideoCapture(str(path))
    try:
        return capture.isOpened() and capture.grab()
    finally:
        capture.release()


class CaptureStream(Stream):
    """Frames from an OpenCV capture (video file, camera, URL), read in a thread.

    Frame ids are ``INDEX@TIME``. For a file: the frame's index in the file and its time in the
    video, as ``90@3.000s``. For a live source: the frame's index among those read in this
    invocation (dropped and strided frames included, so gaps show them) and the UTC time it
    was read, as ``1234@2026-11-23T20:15:01.123Z``.
    """

    def __init__(
        self,
        target: str | int,
        framing: Framing,
        *,
        live: bool,
        start: int = 0,
        stride: int = 1,
        max_frames: int | None = None,
        duration: float | None = None,
        reconnect: LiveConfig | None = None,
        queue_size: int = 64,
    ) -> None:
        super().__init__(start)
        self.target = target
        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self.framing = framing
        self.live = live
        self.stride = stride
        self.max_frames = max_frames
        self.duration = duration
        self.reconnect = reconnect or LiveConfig()
        self.queue_size = queue_size
        self._length: int | None = None
        self._dropped_before = 0  # by readers replaced after a stall
        self.failures = 0  # in a row: reset by every frame that comes through
        self.frames_read = 0 if live else start * stride  # the next frame's number; a replacing reader goes on from it
        self._readers: list[Reader] = []
        if not live:
            capture = self._open()
            if not capture.isOpened():
                raise UsageError(f"Video {target} cannot be opened by OpenCV.")
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            capture.release()
            if count > 0:
                self._length = -(-count // stride) if max_frames is None else min(-(-count // stride), max_frames)

    @property
    def length(self) -> int | None:
        return self._length

    @property
    def replayable(self) -> bool:
        return not self.live

    def __iter__(self) -> Iterator[Frame]:
        if self.max_frames is not None and self.start >= self.max_frames:
            return
        outbox: Outbox = LatestFrame() if self.live else FrameQueue(self.queue_size)
        reader = self._start_reader(outbox)
        deadline = None if self.duration is None else time.monotonic() + self.duration
        position = self.start
        try:
            while not self.stopping:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                frame = outbox.get(POLL_SECONDS)
                if frame is None:
                    if outbox.finished and outbox.empty:
                        break
                    if self.live and reader.stuck(2 * self.reconnect.watchdog_timeout):
                        # The reader is blocked inside the driver (OpenCV's own timeouts did
                        # not fire); leave it behind and reconnect with a fresh one.
                        reader.abandon()
                        outbox = LatestFrame()
                        reader = self._start_reader(outbox, reason="reader stalled")
                    continue
                self.dropped = outbox.dropped + self._dropped_before
                yield replace(frame, position=position) if self.live else frame
                # A file's frames carry their own positions, which skip the damaged ones.
                position = position + 1 if self.live else frame.position + 1
                if self.max_frames is not None and position >= self.max_frames:
                    break
        finally:
            self.dropped = outbox.dropped + self._dropped_before
            reader.abandon()
            if reader.failure is not None and not self.stopping:
                self.failure = reader.failure

    def _start_reader(self, outbox: Outbox, reason: str | None = None) -> Reader:
        if reason is not None:
            self._dropped_before = self.dropped
        reader = Reader(self, outbox, first_reason=reason)
        reader.start()
        self._readers.append(reader)
        return reader

    def _open(self) -> cv2.VideoCapture:
        if isinstance(self.target, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", self.target):
            # OpenCV's FFmpeg backend honours these, so a dead connection fails a read
            # instead of blocking it.
            timeout_ms = int(self.reconnect.watchdog_timeout * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            return cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        return cv2.VideoCapture(self.target)

    def close(self) -> None:
        super().close()
        for reader in self._readers:
            reader.abandon()
            reader.join(timeout=2 * POLL_SECONDS + self.reconnect.watchdog_timeout)


def frame_array(image: np.ndarray, framing: Framing) -> np.ndarray:
    """An OpenCV image (BGR, BGRA or gray) as uint8 RGB framed by ``framing``, as
    ``decode_image`` frames the same picture read from a file."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    source_height, source_width = image.shape[:2]
    height, width = framing.resized(source_height, source_width)
    if (height, width) != (source_height, source_width):
        shrinking = height < source_height or width < source_width
        nearest = framing.interpolation == "nearest"
        kernel = cv2.INTER_AREA if shrinking and not nearest else CV2_ENLARGING[framing.interpolation]
        image = cv2.resize(image, (width, height), interpolation=kernel)
    return framing.crop(image[..., ::-1])


class Reader(threading.Thread):
    """Opens the capture, reads frames into the outbox, and reconnects with back-off."""

    def __init__(self, stream: CaptureStream, outbox: Outbox, first_reason: str | None = None) -> None:
        # A daemon: a reader stuck in a driver call must not keep the process alive.
        super().__init__(name=f"reader {stream.name}", daemon=True)
        self.stream = stream
        self.outbox = outbox
        self.failure: str | None = None
        self._abandoned = threading.Event()
        self._first_reason = first_reason
        self._heartbeat = time.monotonic()

    def abandon(self) -> None:
        self._abandoned.set()

    def stuck(self, seconds: float) -> bool:
        """Has the reader been inside one OpenCV call for more than ``seconds``?"""
        return self.is_alive() and time.monotonic() - self._heartbeat > seconds

    @property
    def done(self) -> bool:
        return self._abandoned.is_set() or self.stream.stopping

    def run(self) -> None:
        stream = self.stream
        if self._first_reason is not None and not self._after_failure(self._first_reason):
            return
        frame_number = stream.frames_read
        while not self.done:
            self._heartbeat = time.monotonic()
            capture = stream._open()
            self._heartbeat = time.monotonic()
            if capture.isOpened():
                frame_number, reason = self._pump(capture, frame_number)
                capture.release()
            else:
                reason = f"could not open {stream.name}"
            if self.done:
                return
            if reason is None:
                self.outbox.finish()
                return
            if not stream.live:
                self.failure = f"reading {stream.name} failed: {reason}"
                self.outbox.finish()
                return
            if not self._after_failure(reason):
                return

    def _after_failure(self, reason: str) -> bool:
        """Count a failure (in a row, across replaced readers) and wait out its back-off;
        ``False`` when the reader should end: out of attempts, or told to stop meanwhile."""
        stream = self.stream
        stream.failures += 1
        settings = stream.reconnect
        if stream.failures > settings.reconnect_attempts:
            self.failure = f"gave up on {stream.name} after {settings.reconnect_attempts} reconnect attempts ({reason})"
            log.error("%s", self.failure)
            stream.events.add(Event(EventKind.SOURCE_LOST, self.failure))
            self.outbox.finish()
            return False
        delay = min(settings.backoff * 2 ** (stream.failures - 1), settings.backoff_max)
        stream.reconnects += 1
        attempt = f"reconnect attempt {stream.failures} of {settings.reconnect_attempts}"
        detail = f"{stream.name}: {reason}; {attempt} in {delay:.1f} s"
        log.warning("%s", detail)
        stream.events.add(Event(EventKind.RECONNECT, detail))
        until = time.monotonic() + delay
        while time.monotonic() < until:
            if self.done:
                return False
            self._heartbeat = time.monotonic()
            time.sleep(min(POLL_SECONDS, max(0.0, until - time.monotonic())))
        return not self.done

    def _pump(self, capture: cv2.VideoCapture, frame_number: int) -> tuple[int, str | None]:
        """Read until the source ends (reason ``None``), fails (the reason) or the reader is
        told to stop; returns the next frame number and the reason."""
        if not self.stream.live:
            return self._pump_file(capture, frame_number), None
        stream = self.stream
        last_frame = time.monotonic()
        while not self.done:
            # Frames between kept ones are grabbed, not decoded into images; frame numbers
            # that are multiples of the stride are kept.
            while frame_number % stream.stride and capture.grab():
                frame_number += 1
            ok, image = capture.read()
            self._heartbeat = time.monotonic()
            if not ok or image is None:
                silent = self._heartbeat - last_frame
                return frame_number, f"no frame for {silent:.1f} s" if silent > 1 else "read failed"
            last_frame = self._heartbeat
            stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            if not self._deliver(image, frame_number, stamp):
                break
            frame_number += 1
        return frame_number, None

    def _pump_file(self, capture: cv2.VideoCapture, resume_at: int) -> int:
        """Read a video file from frame ``resume_at`` to its end; returns the next frame number.

        OpenCV reports a frame it cannot decode as it reports the end of the file, by a failed
        grab, and reads on after it. So failed frames count as skipped once a later frame
        decodes, and only ``DAMAGED_FRAMES_IN_A_ROW`` failures in a row end the file.
        """
        stream = self.stream
        fps = capture.get(cv2.CAP_PROP_FPS)
        failed: list[int] = []
        frame_number = 0
        while not self.done:
            # Frame-exact: the frames before the resume point and between kept ones are
            # grabbed, not decoded into images (seeking can land on a key frame instead).
            kept = frame_number >= resume_at and frame_number % stream.stride == 0
            ok = capture.grab()
            image = capture.retrieve()[1] if ok and kept else None
            self._heartbeat = time.monotonic()
            if not ok or (kept and image is None):
                failed.append(frame_number)
                frame_number += 1
                if len(failed) >= DAMAGED_FRAMES_IN_A_ROW:
                    break
                continue
            for number in failed:
                self._skip_damaged(number, resume_at, fps)
            failed.clear()
            if image is not None:
                stamp = f"{capture.get(cv2.CAP_PROP_POS_MSEC) / 1000:.3f}s"
                if not self._deliver(image, frame_number, stamp):
                    break
            frame_number += 1
        return frame_number

    def _skip_damaged(self, frame_number: int, resume_at: int, fps: float) -> None:
        """Count a frame of the file that could not be decoded, if it is one the stream keeps."""
        stream = self.stream
        position = frame_number // stream.stride
        if frame_number < resume_at or frame_number % stream.stride:
            return
        if stream.max_frames is not None and position >= stream.max_frames:
            return
        frame_id = f"{frame_number}@{frame_number / fps:.3f}s" if fps > 0 else str(frame_number)
        stream.skipped.add(position, frame_id, "the frame could not be decoded")
        log.warning("skipped frame %s of %s: it could not be decoded", frame_id, stream.name)

    def _deliver(self, image: np.ndarray, frame_number: int, stamp: str) -> bool:
        """Frame ``image`` and hand it to the outbox; ``False`` when the reader was told to stop."""
        stream = self.stream
        image = frame_array(image, stream.framing)
        frame = Frame(f"{frame_number}@{stamp}", image, None, frame_number // stream.stride)
        stream.frames_read = frame_number + 1
        stream.failures = 0
        delivered = self.outbox.put(frame, lambda: self.done)
        self._heartbeat = time.monotonic()
        return delivered


class Outbox:
    """Where a reader leaves frames for the run loop."""

    dropped = 0

    def __init__(self) -> None:
        self._finished = threading.Event()

    def put(self, frame: Frame, cancelled: Callable[[], bool]) -> bool:
        raise NotImplementedError

    def get(self, timeout: float) -> Frame | None:
        raise NotImplementedError

    def finish(self) -> None:
        self._finished.set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def empty(self) -> bool:
        raise NotImplementedError


class FrameQueue(Outbox):
    """Every frame in order; a full queue makes the reader wait (files)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._queue: queue.Queue[Frame] = queue.Queue(size)

    def put(self, frame: Frame, cancelled: Callable[[], bool]) -> bool:
        while not cancelled():
            try:
                self._queue.put(frame, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float) -> Frame | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    @property
    def empty(self) -> bool:
        return self._queue.empty()


class LatestFrame(Outbox):
    """One slot: a new frame replaces one not yet taken, which counts as dropped (live)."""

    def __init__(self) -> None:
        super().__init__()
        self._ready = threading.Condition()
        self._frame: Frame | None = None

    def put(self, frame: Frame, cancelled: Callable[[], bool]) -> bool:
        with self._ready:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._ready.notify()
        return True

    def get(self, timeout: float) -> Frame | None:
        with self._ready:
            self._ready.wait_for(lambda: self._frame is not None, timeout)
            frame, self._frame = self._frame, None
        return frame

    def finish(self) -> None:
        with self._ready:
            super().finish()
            self._ready.notify()

    @property
    def empty(self) -> bool:
        return self._frame is None
