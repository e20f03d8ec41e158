"""Camera test helpers: generated video files and a tiny MJPEG-over-HTTP camera on 127.0.0.1.

The server is a real multipart/x-mixed-replace stream that OpenCV's FFmpeg backend reads like
a network camera; tests switch its mode to simulate a healthy, frozen, repeating or dead camera.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import COLOURS_BGR

BOUNDARY = "sorterframe"


def colour_frame(colour: str, size: tuple[int, int] = (120, 160), seed: int = 0) -> np.ndarray:
    """A BGR frame of one colour with seeded noise: every seed is a different (fresh) frame."""
    rng = np.random.default_rng(seed)
    img = np.empty((*size, 3), np.int16)
    img[:] = COLOURS_BGR[colour]
    img += rng.integers(-8, 9, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_video(path: Path, colours: list[str], size: tuple[int, int] = (120, 160), fps: float = 25.0) -> Path:
    """An MJPG .avi with one noisy frame per entry of `colours`."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    assert writer.isOpened(), "cv2.VideoWriter could not open an MJPG .avi"
    for i, colour in enumerate(colours):
        writer.write(colour_frame(colour, size, seed=i))
    writer.release()
    return path


def with_clock(image: np.ndarray, tick: int, fps: float = 25.0) -> np.ndarray:
    """`image` with a running clock drawn in its top-left corner (hundredths: new every frame), as
    IP cameras draw one over the picture, and go on drawing it when their sensor stalls."""
    out = image.copy()
    seconds = tick / fps
    text = f"2026-12-01 12:{int(seconds // 60) % 60:02d}:{seconds % 60:05.2f}"
    cv2.putText(out, text, (4, 12), cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def write_frames(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    """An MJPG .avi of exactly these BGR frames (all of one size)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), "cv2.VideoWriter could not open an MJPG .avi"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MjpegCamera:
    """A fake IP camera. mode: 'live' (fresh frames), 'repeat' (one frame forever, like an
    unplugged USB camera), 'clock' (one picture forever with a ticking clock drawn over it, like
    an IP camera whose sensor stalled), 'freeze' (socket open, nothing sent), set via `.mode`."""

    def __init__(self, colour: str = "red", port: int | None = None, fps: float = 20.0,
                 size: tuple[int, int] = (120, 160)):
        self.colour, self.fps, self.mode, self.size = colour, fps, "live", size
        self.port = port or free_port()
        self.served = 0
        self.still: bytes | None = None  # the frame 'repeat' serves, shared by every connection
        self.picture: np.ndarray | None = None  # the last live picture, which 'clock' keeps serving
        self.ticks = 0
        self._server: ThreadingHTTPServer | None = None
        self._stop = threading.Event()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        cam = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                seed = 0
                while not cam._stop.is_set():
                    time.sleep(1 / cam.fps)
                    if cam.mode == "freeze":
                        continue
                    if cam.mode == "repeat" and cam.still is not None:
                        jpeg = cam.still
                    elif cam.mode == "clock" and cam.picture is not None:
                        cam.ticks += 1
                        jpeg = cv2.imencode(".jpg", with_clock(cam.picture, cam.ticks))[1].tobytes()
                    else:
                        seed += 1
                        cam.picture = colour_frame(cam.colour, cam.size, seed=seed)
                        jpeg = cv2.imencode(".jpg", cam.picture)[1].tobytes()
                        cam.still = jpeg
                    part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                            f"Content-Length: {len(jpeg)}\r\n\r\n").encode() + jpeg + b"\r\n"
                    try:
                        self.wfile.write(part)
                        self.wfile.flush()
                    except OSError:
                        return
                    cam.served += 1

        return Handler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MjpegCamera:
        self._stop.clear()
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Unplug: close the listener and end every open stream."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> MjpegCamera:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
