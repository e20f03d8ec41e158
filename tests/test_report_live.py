"""Reports and audit imports run against the database while a real `sorter watch` writes to it."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sorter.audit import import_csv
from sorter.report import build_report, generate
from tests.watch_helpers import drop, jpeg, rows, wait_until, watch_command

COLOURS = ["red", "green", "blue", "grey"]
TRUTH = {"red": "freshred", "green": "freshgreen", "blue": "rottenblue"}
N = 80


class Reporter(threading.Thread):
    """Builds reports back to back until stopped; keeps every result and every exception."""

    def __init__(self, db: Path, lo: datetime, hi: datetime):
        super().__init__(daemon=True)
        self.db, self.lo, self.hi = db, lo, hi
        self.stop, self.reports, self.errors = threading.Event(), [], []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.db.exists():
                    self.reports.append(build_report(self.db, self.lo, self.hi))
            except Exception as exc:
                self.errors.append(repr(exc))
            time.sleep(0.03)


def test_reports_while_watch_writes(tmp_path):
    incoming, db = tmp_path / "in", tmp_path / "db.sqlite"
    incoming.mkdir()
    env = {**os.environ, "SORTER_STABLE_SECONDS": "0.2", "SORTER_BATCH_SIZE": "4", "SORTER_THREADS": "1"}
    log = tmp_path / "watch.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(watch_command(tmp_path), stderr=err, env=env)
    try:
        wait_until(lambda: "ready" in log.read_text() or proc.poll() is not None, timeout=60, what="watch ready")
        assert proc.poll() is None, log.read_text()
        now = datetime.now(UTC)
        reporter = Reporter(db, now - timedelta(hours=1), now + timedelta(hours=1))
        reporter.start()
        colour_of = {}
        for i in range(N):
            data = jpeg(COLOURS[i % 4], tag=f"live-{i}")
            colour_of[hashlib.sha256(data).hexdigest()] = COLOURS[i % 4]
            drop(incoming, f"f{i:03d}.jpg", data)
            if i % 4 == 3:
                time.sleep(0.05)
            if i == N // 2:  # a second writer (audit import) while the daemon is busy
                wait_until(lambda: sum(r["state"] == "done" for r in rows(db)) >= 20, timeout=60, what="20 routed")
                audited = [r for r in rows(db) if r["state"] == "done" and colour_of[r["sha256"]] != "grey"]
                with open(tmp_path / "audit.csv", "w", newline="") as fh:
                    writer = csv.writer(fh)
                    writer.writerow(["sha256", "true_label"])
                    writer.writerows([r["sha256"], TRUTH[colour_of[r["sha256"]]]] for r in audited)
                result = import_csv(db, tmp_path / "audit.csv", list(TRUTH.values()))
                assert result.errors == [] and result.inserted == len(audited) >= 10
                mid = generate(db, tmp_path / "mid", reporter.lo, reporter.hi)  # JSON + HTML mid-flow
                assert (mid.folder / "report.html").is_file()
        wait_until(lambda: sum(r["state"] == "done" for r in rows(db)) == N, timeout=90, what="all routed")
        time.sleep(0.2)
        reporter.stop.set()
        reporter.join(30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert reporter.errors == []
    assert len(reporter.reports) >= 5
    counts = [r["items"]["classified"] for r in reporter.reports]
    assert counts == sorted(counts) and counts[0] < N  # they saw the database grow
    final = reporter.reports[-1]
    assert final["items"]["classified"] == N and sum(final["by_verdict"].values()) == N
    assert final["by_verdict"] == {"fresh": N // 2, "rotten": N // 4, "uncertain": N // 4}
    assert final["audit"]["n"] == len(audited) and final["audit"]["accuracy"] == 1.0
    assert all(r["audit"]["n"] <= r["items"]["classified"] for r in reporter.reports)
