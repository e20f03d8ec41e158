"""Shared helpers for the watch/route/store tests: coloured JPEGs, a watcher in a thread, polling."""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from sorter import store
from sorter.classify import rules_for
from sorter.config import Settings
from sorter.metrics import Telemetry
from sorter.model import Classifier
from sorter.watch import Watcher

MODEL = Path(__file__).resolve().parent / "data" / "color-int8.tflite"
BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0), "grey": (128, 128, 128)}
EXPECTED = {"red": "fresh/freshred", "green": "fresh/freshgreen", "blue": "rotten/rottenblue",
            "grey": "uncertain"}


def jpeg(color: str, tag: str = "", size: int = 40) -> bytes:
    """A small solid-colour JPEG; a distinct `tag` (a COM segment) gives distinct bytes, same pixels."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = BGR[color]
    data = cv2.imencode(".jpg", img)[1].tobytes()
    if not tag:
        return data
    text = tag.encode()
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]


def settings(**kw) -> Settings:
    base = {"batch_size": 8, "batch_ms": 20, "stable_seconds": 0.3, "threads": 1}
    return Settings(**{**base, **kw})


def make_watcher(tmp: Path, out: Path | None = None, dry_run: bool = False, interpreters: int = 1,
                 telemetry: Telemetry | None = None, **kw) -> Watcher:
    cfg = settings(**kw)
    clf = Classifier(MODEL, num_threads=1, max_batch=cfg.batch_size)
    (tmp / "in").mkdir(exist_ok=True)
    return Watcher(tmp / "in", out or tmp / "out", tmp / "db.sqlite", clf, rules_for(clf), cfg,
                   dry_run=dry_run, interpreters=interpreters, telemetry=telemetry)


class Running:
    """A watcher running in a background thread until `stop()`."""

    def __init__(self, watcher: Watcher, once: bool = False):
        self.watcher, self.stop_event = watcher, threading.Event()
        self.thread = threading.Thread(target=watcher.run, args=(self.stop_event, once), daemon=True)
        self.thread.start()
        assert watcher.ready.wait(10), "watcher never became ready"

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(15)
        assert not self.thread.is_alive()


def wait_for(pred: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll until `pred()` holds or the time is up; its last answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    if not wait_for(pred, timeout, 0.05):
        raise AssertionError(f"timed out waiting for {what}")


SORTER = [sys.executable, "-c", "from sorter.cli import app; app(prog_name='sorter')"]


def watch_command(tmp: Path, *extra: str) -> list[str]:
    """The installed `sorter watch` on tmp/in → tmp/out with tmp/db.sqlite and the colour model."""
    return [str(Path(sys.executable).parent / "sorter"), "watch", str(tmp / "in"), "--out", str(tmp / "out"),
            "--db", str(tmp / "db.sqlite"), "--model", str(MODEL), *extra]


def drop(incoming: Path, name: str, data: bytes) -> None:
    """Write under a temporary name, then rename: how cameras and copy tools deliver a file."""
    part = incoming / f"{name}.part"
    part.write_bytes(data)
    part.rename(incoming / name)


def rows(db: Path) -> list[dict]:
    if not db.exists():
        return []
    conn = store.open_reader(db)
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM items ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()) if root.exists() else []


def kill_env() -> dict[str, str]:
    """Settings for the SIGKILL runs: quick to settle, small batches, one thread."""
    return {**os.environ, "SORTER_STABLE_SECONDS": "0.2", "SORTER_BATCH_SIZE": "8", "SORTER_THREADS": "1"}


def start_watch(tmp: Path, n: int) -> subprocess.Popen:
    """`sorter watch` as a subprocess (run `n`, its stderr in tmp/run<n>.log), once it says ready."""
    log = tmp / f"run{n}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(watch_command(tmp), stderr=err, env=kill_env())
    wait_until(lambda: "ready" in log.read_text() or proc.poll() is not None, timeout=30, what="ready")
    assert proc.poll() is None, log.read_text()
    return proc
