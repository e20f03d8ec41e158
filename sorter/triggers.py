"""When to classify and when to act: ROI crop, interval/motion/line triggers, K-of-N voting.

Triggers only decide which frames are looked at; the `Voter` decides when enough of them agree
that an output may fire, so one blurred or half-in-view frame never moves the diverter.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
from dataclasses import dataclass
from typing import IO, Protocol

import cv2
import numpy as np

from sorter.verdict import Verdict

log = logging.getLogger("sorter.camera")


@dataclass(frozen=True)
class Roi:
    x: int
    y: int
    w: int
    h: int

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The region, clipped to the frame; a region wholly outside the frame is an error."""
        height, width = image.shape[:2]
        x0, y0 = min(self.x, width), min(self.y, height)
        x1, y1 = min(self.x + self.w, width), min(self.y + self.h, height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"ROI {self} lies outside the {width}×{height} frame")
        return image[y0:y1, x0:x1]


def parse_roi(text: str | None) -> Roi | None:
    """'x,y,w,h' in pixels → Roi; None passes through."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"ROI '{text}' is not x,y,w,h in whole pixels")
    roi = Roi(*map(int, parts))
    if roi.w < 1 or roi.h < 1:
        raise ValueError(f"ROI '{text}' has an empty width or height")
    return roi


def crop(image: np.ndarray, roi: Roi | None) -> np.ndarray:
    return image if roi is None else roi.crop(image)


class Trigger(Protocol):
    """What starts an item, and how the item's window of frames runs: each trigger says so itself, so the
    camera loop never asks which trigger it has."""

    paced: bool  # fire() picks the frames to classify (a clock); else it opens a window that takes every frame
    tracks: bool  # fire() sees every frame, inside an open window too (motion follows the scene)
    stop_ends_item: bool  # a window still open at a stop is an item (in view); a paced one cut short is none

    def fire(self, image: np.ndarray, now: float) -> bool:
        """Does this fresh frame start (or, for interval, is it) something to classify?"""
        ...


class IntervalTrigger:
    """Every `interval_ms` of stream time: a steady sample for a continuous belt."""

    paced, tracks, stop_ends_item = True, False, False

    def __init__(self, interval_ms: int):
        self.interval = interval_ms / 1000
        self._last: float | None = None

    def fire(self, image: np.ndarray, now: float) -> bool:
        if self._last is None or now - self._last >= self.interval:
            self._last = now
            return True
        return False


class MotionTrigger:
    """Fires once when the changed fraction of the (ROI) picture rises past `threshold`: an item
    arrived. It re-arms only after the scene settles below the threshold again."""

    paced, tracks, stop_ends_item = False, True, True

    def __init__(self, threshold: float = 0.02, pixel_delta: int = 25, roi: Roi | None = None):
        self.threshold, self.pixel_delta, self.roi = threshold, pixel_delta, roi
        self._previous: np.ndarray | None = None
        self._armed = True
        self.last_fraction = 0.0

    def changed_fraction(self, image: np.ndarray) -> float:
        gray = cv2.cvtColor(crop(image, self.roi), cv2.COLOR_BGR2GRAY)
        gray = cv2.GaussianBlur(gray, (5, 5), 0)  # sensor noise is not motion
        previous, self._previous = self._previous, gray
        if previous is None or previous.shape != gray.shape:
            return 0.0
        return float(np.count_nonzero(cv2.absdiff(gray, previous) > self.pixel_delta)) / gray.size

    def fire(self, image: np.ndarray, now: float) -> bool:
        self.last_fraction = fraction = self.changed_fraction(image)
        if fraction < self.threshold:
            self._armed = True
            return False
        fired, self._armed = self._armed, False
        return fired


class SceneGate:
    """After a decision, no next one until the (ROI) picture has changed: one item, one decision.

    Why: the interval trigger samples a belt by the clock, so an item that stays in view, a belt
    that stopped, or a camera whose picture froze (a ticking clock overlay keeps its frames
    "fresh") would be decided again every interval and fire the outputs each time. The picture is
    compared with the one last decided on, downscaled so that sensor noise and compression do not
    count, and changes confined to a small area (a clock, a timestamp) are ignored: more than
    `fraction` of it must differ by more than `pixel_delta` levels in some colour channel.
    `fraction` 0 turns it off.
    """

    WIDTH = 64  # pixels across the compared picture: enough for an item, blind to noise and text

    def __init__(self, fraction: float = 0.02, pixel_delta: int = 25):
        self.fraction, self.pixel_delta = fraction, pixel_delta
        self._reference: np.ndarray | None = None
        self.last_fraction = 1.0

    def _small(self, image: np.ndarray) -> np.ndarray:
        """In colour: a green item on a grey belt has nearly the grey's brightness."""
        height, width = image.shape[:2]
        size = (self.WIDTH, max(1, round(height * self.WIDTH / width)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    def changed(self, image: np.ndarray) -> bool:
        """Is this a new scene (or is there nothing decided yet)?"""
        if self.fraction == 0 or self._reference is None:
            return True
        small = self._small(image)
        if small.shape != self._reference.shape:
            return True
        diff = cv2.absdiff(small, self._reference)
        diff = diff.max(axis=2) if diff.ndim == 3 else diff
        self.last_fraction = float(np.count_nonzero(diff > self.pixel_delta)) / diff.size
        return self.last_fraction > self.fraction

    def settle(self, image: np.ndarray) -> None:
        """A decision was made on `image`: the next one waits for a picture that differs from it."""
        self._reference = self._small(image)


class LineTrigger:
    """An external signal (stdin line, HTTP POST, GPIO edge); each pulse starts one item.

    At most `max_pending` pulses wait for their window: more items than that between the sensor
    and the camera is a stuck belt or a flood (500 POSTs were 500 decisions), so further pulses
    are refused and counted (one log line when the queue fills), not queued without bound."""

    paced, tracks, stop_ends_item = False, False, True

    def __init__(self, max_pending: int = 8) -> None:
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self.received = self.refused = 0
        self._pending_was_free = False  # a window opened since the last refusal: log the next one

    @property
    def pending(self) -> int:
        return self._pending

    def pulse(self, source: str = "external") -> bool:
        """Queue one item; False (refused) when `max_pending` are already waiting."""
        with self._lock:
            full = self._pending >= self.max_pending
            if full:
                self.refused += 1
                first = self.refused == 1 or self._pending_was_free
                self._pending_was_free = False
            else:
                self._pending += 1
                self.received += 1
        if full:
            if first:
                log.warning("trigger from %s refused: %d already waiting (refused so far: %d)", source,
                            self.max_pending, self.refused)
            return False
        log.info("trigger from %s", source)
        return True

    def fire(self, image: np.ndarray, now: float) -> bool:
        with self._lock:
            if self._pending:
                self._pending -= 1
                self._pending_was_free = True
                return True
        return False


def follow_stdin(trigger: LineTrigger, stream: IO[str] | None = None) -> threading.Thread:
    """Each line on stdin is one pulse (a PLC or a shell script can drive the sorter)."""
    source = stream or sys.stdin

    def run() -> None:
        for _line in source:
            trigger.pulse("stdin")

    thread = threading.Thread(target=run, name="stdin-trigger", daemon=True)
    thread.start()
    return thread


def gpio_edge(trigger: LineTrigger, pin: int | str):
    """A rising edge on `pin` (gpiozero, imported only when asked for) is one pulse."""
    from gpiozero import Button

    button = Button(pin, pull_up=False)
    button.when_pressed = lambda: trigger.pulse(f"gpio {pin}")
    return button


ABSTAIN = (Verdict.UNCERTAIN, Verdict.UNKNOWN)  # verdicts whose frames agree whatever label they carry


@dataclass(frozen=True)
class Vote:
    label: str
    verdict: Verdict
    confidence: float

    @property
    def key(self) -> str:
        """What must agree: the label, except that all `uncertain` frames agree with each other, and so
        do all `unknown` ones (not produce the model knows, whatever its top class)."""
        return self.verdict if self.verdict in ABSTAIN else self.label


@dataclass(frozen=True)
class Decision:
    label: str | None
    verdict: Verdict
    confidence: float
    agreeing: int
    frames: int
    consensus: bool


class Voter:
    """Act when `k` of the last `n` votes agree; an item's window that ends without agreement
    (`close`) is `uncertain` (or `unknown` when most of its frames were), never fresh or rotten."""

    def __init__(self, k: int, n: int):
        if not 1 <= k <= n:
            raise ValueError(f"need 1 <= votes ({k}) <= window ({n})")
        self.k, self.n = k, n
        self._votes: collections.deque[Vote] = collections.deque(maxlen=n)

    def add(self, vote: Vote) -> Decision | None:
        self._votes.append(vote)
        agreeing = [v for v in self._votes if v.key == vote.key]
        if len(agreeing) < self.k:
            return None
        label = collections.Counter(v.label for v in agreeing).most_common(1)[0][0]
        decision = Decision(label, vote.verdict,
                            round(sum(v.confidence for v in agreeing) / len(agreeing), 6),
                            len(agreeing), len(self._votes), True)
        self._votes.clear()
        return decision

    def close(self) -> Decision | None:
        """End the item: no consensus among its frames → uncertain, or unknown when more than half of
        them were unknown (a hand in view is no uncertain apple); None if it had no frames."""
        if not self._votes:
            return None
        counts = collections.Counter(v.label for v in self._votes)
        label, agreeing = counts.most_common(1)[0]
        unknown = sum(v.verdict == Verdict.UNKNOWN for v in self._votes)
        verdict = Verdict.UNKNOWN if 2 * unknown > len(self._votes) else Verdict.UNCERTAIN
        decision = Decision(label, verdict, round(sum(v.confidence for v in self._votes) / len(self._votes), 6),
                            agreeing, len(self._votes), False)
        self._votes.clear()
        return decision

    def reset(self) -> None:
        self._votes.clear()

    def __len__(self) -> int:
        return len(self._votes)
