"""Capture watchdog: read frames in a thread with a deadline, refuse stale ones, reconnect with backoff.

Why a reader thread per connection: `VideoCapture.read()` on a USB or network camera can block
far past any sensible deadline and cannot be interrupted. The supervisor never waits on it: when
no fresh frame arrived within `stall_seconds` it abandons that reader (which releases its own
capture whenever the read returns) and opens a new connection after a backoff. A frame that is
byte-identical to the previous one (a USB camera that lost its sensor keeps returning its last
frame), an empty read, or a read from an abandoned connection never reaches the queue.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from sorter.redact import mask_url

log = logging.getLogger("sorter.camera")
NETWORK_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


@dataclass
class Frame:
    image: np.ndarray
    seq: int
    clock: float = field(default_factory=time.monotonic)  # stream time: the file's own clock on replays
    wall: float = field(default_factory=time.time)


def is_file(device: str) -> bool:
    """A replayed video file (ends, or loops) rather than a live camera."""
    return not device.isdigit() and not device.startswith(NETWORK_PREFIXES) and os.path.isfile(device)


def open_source(device: str, timeout_s: float) -> cv2.VideoCapture:
    """`0` → a local (V4L2) index; URLs through FFmpeg with open/read deadlines; else a file."""
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


def fingerprint(image: np.ndarray) -> bytes:
    """A cheap identity for 'the exact same frame again' (every 4th pixel is plenty)."""
    return hashlib.blake2b(np.ascontiguousarray(image[::4, ::4]).tobytes(), digest_size=16).digest()


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

    def run(self) -> None:
        owner = self.owner
        cap = owner.opener(owner.device, owner.stall_seconds)
        try:
            if not cap.isOpened():
                self.failed.set()
                return
            while not self.abandoned.is_set() and not owner.stop.is_set():
                ok, image = cap.read()
                if self.abandoned.is_set():
                    return  # this connection was given up on while read() blocked: discard
                if not ok or image is None or image.size == 0:
                    if owner.file and ok is False and owner.loop and cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                        owner.last_print = None
                        continue
                    owner.stats.empty += 1
                    (self.ended if owner.file else self.failed).set()
                    return
                self._offer(image, cap.get(cv2.CAP_PROP_POS_MSEC) / 1000 if owner.file else time.monotonic())
        finally:
            cap.release()

    def _offer(self, image: np.ndarray, clock: float) -> None:
        owner = self.owner
        owner.stats.read += 1
        print_ = fingerprint(image)
        if print_ == owner.last_print:  # across connections too: a replugged dead camera is still dead
            owner.stats.stale += 1  # same bytes again: not fresh, never classified
            self.repeats += 1
            return
        owner.last_print, self.repeats = print_, 0
        self.fresh += 1
        self.last_fresh = time.monotonic()
        owner.stats.fresh += 1
        owner._fresh(self)
        owner.frames.put(Frame(image, owner.stats.fresh, clock), owner.stop)


class Capture:
    """Supervises readers: online/offline transitions, stall deadline, capped exponential backoff."""

    def __init__(self, device: str, stall_seconds: float = 5.0, backoff_seconds: float = 0.5,
                 backoff_max_seconds: float = 30.0, queue_size: int = 4, loop: bool = False,
                 on_event: Callable[[str, str], None] | None = None,
                 opener: Callable[[str, float], cv2.VideoCapture] = open_source):
        self.device, self.stall_seconds, self.loop, self.opener = device, stall_seconds, loop, opener
        self.name = mask_url(device)  # for log lines: never the camera's password
        self.backoff_seconds, self.backoff_max_seconds = backoff_seconds, backoff_max_seconds
        self.file = is_file(device)
        self.frames = FrameQueue(queue_size, lossless=self.file)
        self.stats = CaptureStats()
        self.state = "connecting"
        self.stop = threading.Event()
        self.ended = threading.Event()  # a video file reached its end (and does not loop)
        self.on_event = on_event or (lambda event, detail: None)
        self.last_print: bytes | None = None
        self._lock = threading.Lock()
        self._reader: _Reader | None = None
        self._thread = threading.Thread(target=self._supervise, name="capture-supervisor", daemon=True)

    def start(self) -> Capture:
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=max(2.0, self.stall_seconds + 1))

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
            self.stats.offline += 1
            log.warning("camera %s offline: %s", self.name, detail)
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
                return "no frame (closed or unreadable)" if reader.fresh else "could not open"
            stalled = time.monotonic() - reader.last_fresh
            if stalled > self.stall_seconds:
                why = f"same frame repeated {reader.repeats}×" if reader.repeats else "no fresh frame"
                return f"{why} for {stalled:.1f} s (stall limit {self.stall_seconds:g} s)"
            self.stop.wait(0.05)
        return None

    def _supervise(self) -> None:
        backoff, generation = self.backoff_seconds, 0
        while not self.stop.is_set():
            generation += 1
            self.stats.connects += 1
            reader = _Reader(self, generation)
            self._reader = reader
            reader.start()
            problem = self._watch(reader)
            reader.abandoned.set()
            if problem is None:
                if reader.ended.is_set():
                    reader.join(timeout=1.0)
                    self.ended.set()
                return
            if self.state == "online":
                backoff = self.backoff_seconds  # it worked for a while: start the backoff afresh
            self._set_state("offline", problem)
            self.frames.clear()  # frames from a dying connection are not worth classifying
            log.info("camera %s: reconnecting in %.1f s", self.name, backoff)
            self.stop.wait(backoff)
            backoff = min(self.backoff_max_seconds, backoff * 2)
