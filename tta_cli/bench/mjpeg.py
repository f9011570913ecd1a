"""A paced MJPEG stream on 127.0.0.1, as an IP camera serves one, for tests and benchmarks.

Each client gets ``multipart/x-mixed-replace`` JPEG parts at ``fps``, the part shown at any
moment being the one a real camera would show then (a shared clock, not a per-client
counter). ``cut()`` drops every open connection (the camera rebooting), ``stall()`` keeps
connections open but sends nothing (a frozen encoder), and the server stops by itself after
``max_seconds`` so that a forgotten one cannot outlive its test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BOUNDARY = "frame"


def encode_jpegs(images: Sequence[np.ndarray], quality: int = 90) -> list[bytes]:
    """RGB uint8 images as JPEG files."""
    parts = []
    for image in images:
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("OpenCV could not encode a frame as JPEG")
        parts.append(data.tobytes())
    return parts


class MjpegServer:
    """Serves ``jpegs`` in a loop at ``fps`` on an ephemeral port of 127.0.0.1."""

    def __init__(self, jpegs: Sequence[bytes], fps: float = 30.0, max_seconds: float = 60.0) -> None:
        if not jpegs:
            raise ValueError("an MJPEG server needs at least one frame")
        self.jpegs = list(jpegs)
        self.fps = fps
        self.max_seconds = max_seconds
        self.frames_sent = 0
        self.connections = 0
        self._generation = 0
        self._stalled = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="mjpeg server", daemon=True)
        self._timer = threading.Timer(max_seconds, self.stop)
        self._timer.daemon = True
        self._started = 0.0

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/stream.mjpg"

    def start(self) -> MjpegServer:
        self._started = time.monotonic()
        self._thread.start()
        self._timer.start()
        return self

    def cut(self) -> None:
        """Close every open connection; new ones are still accepted."""
        with self._lock:
            self._generation += 1

    def stall(self, stalled: bool = True) -> None:
        """Keep connections open but send nothing (or resume sending)."""
        if stalled:
            self._stalled.set()
        else:
            self._stalled.clear()

    def stop(self) -> None:
        """Close every connection and the listening socket; idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._timer.cancel()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    generation = server._generation
                    server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                period = 1.0 / server.fps
                next_send = time.monotonic()
                while not server._stopped.is_set() and generation == server._generation:
                    delay = next_send - time.monotonic()
                    if delay > 0:
                        time.sleep(min(delay, 0.05))
                        continue
                    next_send += period
                    if server._stalled.is_set():
                        continue
                    index = int((time.monotonic() - server._started) * server.fps)
                    data = server.jpegs[index % len(server.jpegs)]
                    header = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                    try:
                        self.wfile.write(header.encode() + data + b"\r\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    with server._lock:
                        server.frames_sent += 1

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
