"""Capture watchdog: read frames in a thread with a deadline, refuse stale ones, reconnect with backoff.

Why a reader thread per connection: `VideoCapture.read()` on a USB or network camera can block
far past any sensible deadline and cannot be interrupted. The supervisor never waits on it: when
no fresh frame arrived within `stall_seconds` it abandons that reader (which releases its own
capture whenever the read returns) and opens a new connection after a backoff. On a live source a
frozen picture never reaches the queue: a frame identical to the last fresh one (a USB camera that
lost its sensor keeps returning its last frame), or identical to it but for a small area (an IP
camera whose sensor stalled still ticks the clock it draws over the picture). A real sensor's noise
changes every part of the picture, so only a frozen one is caught. Nor does an empty read or a
read from an abandoned connection. A video file is not a camera: every frame it holds is
delivered (a photo held for a second is 25 identical frames, not a stall), and a file that is
missing or cannot be decoded is an error, never a reconnect loop.

Abandoned is not forgotten: `close` joins the supervisor and every reader still alive, within the
read deadline (network sources open and read with FFmpeg timeouts of `stall_seconds`) and a margin.
A reader left inside OpenCV when the interpreter exits aborts the process (`sorter.threads.join_within`);
one that outlives the bound is named in an error line instead of hanging the shutdown.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from sorter import threads
from sorter.imaging import quiet_opencv
from sorter.redact import mask_url

log = logging.getLogger("sorter.camera")
NETWORK_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443, "rtmp": 1935}
FROZEN_GRID = 16  # the picture is judged in 16×16 cells: "a small area" is a count of cells
FROZEN_TOLERANCE = 2  # grey levels a decoder may round differently on the very same picture
CLOSE_MARGIN_S = 2.0  # beyond the read deadline, for a reader to release its capture when closing


@dataclass
class Frame:
    image: np.ndarray
    seq: int
    clock: float = field(default_factory=time.monotonic)  # stream time: the file's own clock on replays
    wall: float = field(default_factory=time.time)


def is_file(device: str) -> bool:
    """A replayed video file (ends, or loops) rather than a live camera."""
    return not device.isdigit() and not device.startswith(NETWORK_PREFIXES) and os.path.isfile(device)


def check_source(device: str) -> None:
    """Refuse, before any retry loop, a device that names a file that is not there.

    A live camera may come back (a USB camera replugged, `/dev/video2` reappearing, a network
    camera rebooting), so those are retried; a mistyped video path never appears by waiting.
    An image-sequence pattern (`img_%04d.png`) or a GStreamer pipeline (`… ! appsink`) is OpenCV's
    to judge.
    """
    if device.isdigit() or device.startswith(NETWORK_PREFIXES) or device.startswith("/dev/"):
        return
    if "%" in device or "!" in device:
        return
    if not os.path.exists(device):
        raise FileNotFoundError(f"no such video file: {device}")
    if not os.path.isfile(device):
        raise IsADirectoryError(f"not a video file: {device}") if os.path.isdir(device) else \
            OSError(f"not a video file or camera device: {device}")


def diagnose(device: str, timeout_s: float) -> str:
    """Why opening `device` failed, as far as can be told without OpenCV (which says nothing)."""
    if device.isdigit() or device.startswith("/dev/"):
        node = f"/dev/video{device}" if device.isdigit() else device
        if not os.path.exists(node):
            return f"could not open: {node} does not exist (unplugged?)"
        if not os.access(node, os.R_OK | os.W_OK):
            return f"could not open: no permission on {node} (is the user in the 'video' group?)"
        return f"could not open: {node} is there but gave no video (busy, or not a capture node?)"
    if not device.startswith(NETWORK_PREFIXES) or device.startswith(("udp://", "tcp://")):
        return "could not open"
    return f"could not open: {_reach(device, timeout_s)}"


def _reach(url: str, timeout_s: float) -> str:
    """Can the URL's host and port be reached at all? Tells a dead camera from a wrong path."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme, 80)
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if not host:
        return "the URL names no host"
    try:
        with socket.create_connection((host, port), timeout=min(timeout_s, 3.0)):
            pass
    except socket.gaierror:
        return f"host {host} not found (DNS)"
    except TimeoutError:
        return f"{host}:{port} did not answer within {min(timeout_s, 3.0):g} s"
    except OSError as exc:
        why = {errno.ECONNREFUSED: "connection refused", errno.EHOSTUNREACH: "host unreachable",
               errno.ENETUNREACH: "network unreachable"}.get(exc.errno or 0, exc.strerror or str(exc))
        return f"{host}:{port}: {why}"
    return f"{host}:{port} answers, but no video stream opened (wrong path, credentials or codec?)"


def open_source(device: str, timeout_s: float) -> cv2.VideoCapture:
    """`0` → a local (V4L2) index; URLs through FFmpeg with open/read deadlines; else a file. OpenCV's
    own `[ WARN ]` lines for a failed open are held back: the retry line already says why (`why_closed`)."""
    with quiet_opencv():
        return _open(device, timeout_s)


def _open(device: str, timeout_s: float) -> cv2.VideoCapture:
    if device.isdigit():
        cap = cv2.VideoCapture(int(device))
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the latest frame, not one seconds old
        return cap
    ms = int(timeout_s * 1000)
    if device.startswith(NETWORK_PREFIXES):
        return cv2.VideoCapture(device, cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    return cv2.VideoCapture(device)


def probe(indices: range = range(10)) -> list[dict]:
    """Local camera indices that open and deliver a frame (for `sorter camera --list`)."""
    found = []
    for index in indices:
        with quiet_opencv():  # every absent index would print two [ WARN ] lines
            cap = cv2.VideoCapture(index)
        try:
            ok, frame = cap.read() if cap.isOpened() else (False, None)
            if ok and frame is not None:
                found.append({"index": index, "width": frame.shape[1], "height": frame.shape[0],
                              "backend": cap.getBackendName()})
        finally:
            cap.release()
    return found


class FrameQueue:
    """Bounded: a new frame pushes out the oldest (counted in `dropped`) instead of blocking.

    `lossless=True` (file replay) makes the reader wait for room instead, so a replay classifies
    every frame and gives the same decisions on every run.
    """

    def __init__(self, maxsize: int, lossless: bool = False):
        self._items: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self.maxsize, self.lossless, self.dropped = maxsize, lossless, 0

    def put(self, frame: Frame, stop: threading.Event | None = None) -> None:
        with self._cond:
            while self.lossless and len(self._items) >= self.maxsize and not (stop and stop.is_set()):
                self._cond.wait(0.05)
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(frame)
            self._cond.notify_all()

    def get(self, timeout: float) -> Frame | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame

    def clear(self) -> None:
        with self._cond:
            self._items.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)


def changed_area(image: np.ndarray, reference: np.ndarray | None) -> float:
    """The fraction of the picture's 16×16 cells in which any pixel differs from `reference`.

    Exact but for decoder rounding, on purpose: a live sensor's noise touches every cell of every
    frame, so 0.0 (or a few cells, a clock overlay) means the same picture delivered again. Every
    4th pixel each way is compared (about 2 ms for a 1080p frame): noise shows in any sample.
    """
    if reference is None or image.shape != reference.shape:
        return 1.0
    diff = cv2.absdiff(image[::4, ::4], reference[::4, ::4])
    if diff.ndim == 3:
        diff = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2])
    changed = (diff > FROZEN_TOLERANCE).astype(np.float32)
    cells = cv2.resize(changed, (FROZEN_GRID, FROZEN_GRID), interpolation=cv2.INTER_AREA)  # cell means
    return float(np.count_nonzero(cells > 0)) / cells.size


@dataclass
class CaptureStats:
    read: int = 0
    fresh: int = 0
    stale: int = 0
    empty: int = 0
    connects: int = 0
    offline: int = 0
    online: int = 0


class _Reader(threading.Thread):
    """One connection: open, read until failure, end of file or abandonment; release its capture."""

    def __init__(self, owner: Capture, generation: int):
        super().__init__(name=f"capture-{generation}", daemon=True)
        self.owner, self.generation = owner, generation
        self.abandoned, self.failed, self.ended = threading.Event(), threading.Event(), threading.Event()
        self.last_fresh = time.monotonic()
        self.fresh = self.repeats = 0
        self.repeat_area = 0.0  # the most of the picture a repeated (frozen) frame changed

    def run(self) -> None:
        owner = self.owner
        cap = owner.opener(owner.device, owner.stall_seconds)
        try:
            if not cap.isOpened():
                self.failed.set()
                return
            offset = clock = 0.0  # a looped file's stream time runs on across each rewind
            while not self.abandoned.is_set() and not owner.stop.is_set():
                ok, image = cap.read()
                if self.abandoned.is_set():
                    return  # this connection was given up on while read() blocked: discard
                if not ok or image is None or image.size == 0:
                    if owner.file and ok is False and owner.loop and cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                        # else the interval trigger, seeing time go back, would sample no frame again
                        fps = cap.get(cv2.CAP_PROP_FPS)
                        offset = clock + (1 / fps if fps > 0 else 0.04)
                        continue
                    owner.stats.empty += 1
                    (self.ended if owner.file else self.failed).set()
                    return
                clock = offset + cap.get(cv2.CAP_PROP_POS_MSEC) / 1000 if owner.file else time.monotonic()
                self._offer(image, clock)
        finally:
            cap.release()

    def _offer(self, image: np.ndarray, clock: float) -> None:
        owner = self.owner
        owner.stats.read += 1
        if not owner.file:  # a replayed file is not a stalled camera: every frame it holds counts
            area = changed_area(image, owner.reference)
            if area <= owner.frozen_area:  # against the last fresh frame, across connections too:
                owner.stats.stale += 1  # a replugged dead camera is still dead; never classified
                self.repeats += 1
                self.repeat_area = max(self.repeat_area, area)
                return
            owner.reference, self.repeats, self.repeat_area = image, 0, 0.0
        self.fresh += 1
        self.last_fresh = time.monotonic()
        owner.stats.fresh += 1
        owner._fresh(self)
        owner.frames.put(Frame(image, owner.stats.fresh, clock), owner.stop)
        self.last_fresh = time.monotonic()  # a replay waits for room in the queue: not a stall


class Capture:
    """Supervises readers: online/offline transitions, stall deadline, capped exponential backoff."""

    def __init__(self, device: str, stall_seconds: float = 5.0, backoff_seconds: float = 0.5,
                 backoff_max_seconds: float = 30.0, queue_size: int = 4, loop: bool = False,
                 on_event: Callable[[str, str], None] | None = None,
                 opener: Callable[[str, float], cv2.VideoCapture] = open_source, frozen_area: float = 0.05):
        self.device, self.stall_seconds, self.loop, self.opener = device, stall_seconds, loop, opener
        self.frozen_area = frozen_area  # a live frame changed in no more of its cells is the same picture
        self.name = mask_url(device)  # for log lines: never the camera's password
        self.backoff_seconds, self.backoff_max_seconds = backoff_seconds, backoff_max_seconds
        self.file = is_file(device)
        self.frames = FrameQueue(queue_size, lossless=self.file)
        self.stats = CaptureStats()
        self.state = "connecting"
        self.stop = threading.Event()
        self.ended = threading.Event()  # a video file reached its end (and does not loop)
        self.on_event = on_event or (lambda event, detail: None)
        self.reference: np.ndarray | None = None  # the last fresh frame of a live source
        self.error: str | None = None  # why a video file could not be replayed (the source ended)
        self._lock = threading.Lock()
        self._reader: _Reader | None = None
        self._readers: list[_Reader] = []  # every connection's reader not yet seen to end: joined by close
        self._thread = threading.Thread(target=self._supervise, name="capture-supervisor", daemon=True)

    def start(self) -> Capture:
        if self.opener is open_source:  # (a test's own opener names no real source)
            check_source(self.device)  # a mistyped file name is an error now, not a reconnect loop
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop, and wait for the supervisor and every reader (abandoned ones too) to end: a reader
        still blocked in OpenCV at interpreter exit aborts the process. Bounded: a blocked network read
        returns by its FFmpeg deadline (`stall_seconds`); a reader past the bound is logged, not awaited."""
        self.stop.set()
        limit = self.stall_seconds + CLOSE_MARGIN_S
        started = time.monotonic()
        threads.join_within([self._thread], limit)  # it starts no reader once it has ended
        stuck = threads.join_within(list(self._readers), max(0.0, limit - (time.monotonic() - started)))
        for reader in stuck:
            log.error("camera %s: reader %s still blocked in OpenCV %.1f s after stop; left behind (the "
                      "process may abort when it exits)", self.name, reader.name, time.monotonic() - started)

    def _set_state(self, state: str, detail: str) -> None:
        with self._lock:
            old, self.state = self.state, state
        if old == state:
            return
        event = "reconnect" if state == "online" and self.stats.online else state
        if state == "online":
            self.stats.online += 1
            log.info("camera %s %s: %s", self.name, event, detail)
        else:
            self.stats.offline += 1  # logged by the supervisor's retry line, which says why
        self.on_event(event, detail)

    def _fresh(self, reader: _Reader) -> None:
        if reader is self._reader and self.state != "online":
            self._set_state("online", f"fresh frames (connection {reader.generation})")

    def _watch(self, reader: _Reader) -> str | None:
        """Block until this connection ends; the reason it is unusable, or None on a clean end."""
        while not self.stop.is_set():
            if reader.ended.is_set():
                return None
            if reader.failed.is_set():
                if reader.fresh:
                    return "no frame (closed or unreadable)"
                return "could not open" if self.file else diagnose(self.device, self.stall_seconds)
            stalled = time.monotonic() - reader.last_fresh
            if stalled > self.stall_seconds:
                return f"{self._stall_reason(reader)} for {stalled:.1f} s (stall limit {self.stall_seconds:g} s)"
            self.stop.wait(0.05)
        return None

    @staticmethod
    def _stall_reason(reader: _Reader) -> str:
        if not reader.repeats:
            return "no fresh frame"
        if reader.repeat_area == 0:
            return f"same frame repeated {reader.repeats}×"
        return (f"same picture repeated {reader.repeats}× (frozen but for {reader.repeat_area:.0%} of it, "
                "an overlay such as a clock?)")

    def _supervise(self) -> None:
        backoff, generation = self.backoff_seconds, 0
        while not self.stop.is_set():
            generation += 1
            self.stats.connects += 1
            reader = _Reader(self, generation)
            self._reader = reader
            self._readers = [r for r in self._readers if r.is_alive()] + [reader]
            reader.start()
            problem = self._watch(reader)
            reader.abandoned.set()
            if problem is None:
                if reader.ended.is_set():
                    reader.join(timeout=1.0)
                    self.ended.set()
                return
            if self.file:  # a file that cannot be read now will not be readable after a backoff
                self.error = f"{self.device}: {problem} as a video (a file OpenCV cannot decode?)"
                log.error("camera %s", self.error)
                self.ended.set()
                return
            if self.state == "online":
                backoff = self.backoff_seconds  # it worked for a while: start the backoff afresh
            still = "still offline" if self.state == "offline" else "offline"
            self._set_state("offline", problem)
            self.frames.clear()  # frames from a dying connection are not worth classifying
            # every retry says why the last attempt failed: a camera that never answers is diagnosable
            log.warning("camera %s %s: %s; reconnecting in %.1f s (attempt %d)", self.name, still, problem,
                        backoff, generation + 1)
            self.stop.wait(backoff)
            backoff = min(self.backoff_max_seconds, backoff * 2)
