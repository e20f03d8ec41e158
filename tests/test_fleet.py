"""Fleet: three real `sorter watch` processes publish to one real mosquitto; the report adds up exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.fleet import aggregate, collect
from tests.test_mqtt import Broker
from tests.watch_helpers import MODEL, jpeg

pytestmark = pytest.mark.timeout(120)
SORTER = [sys.executable, "-c", "from sorter.cli import app; app(prog_name='sorter')"]
LINES = {"line-a": ["red", "red", "blue"], "line-b": ["green", "blue", "blue", "grey"], "line-c": ["red"]}


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


def start_sorter(tmp_path, line: str, colours: list[str], port: int) -> subprocess.Popen:
    root = tmp_path / line
    (root / "in").mkdir(parents=True)
    for i, colour in enumerate(colours):
        (root / "in" / f"{i}.jpg").write_bytes(jpeg(colour, tag=f"{line}-{i}"))
    (root / "s.toml").write_text(f"line = '{line}'\nthreads = 1\ndb = '{root / 'db'}'\nout = '{root / 'out'}'\n"
                                 f"[fleet]\nbroker = '127.0.0.1:{port}'\nspool = '{root / 'spool'}'\n")
    return subprocess.Popen([*SORTER, "watch", str(root / "in"), "--once", "-c", str(root / "s.toml"),
                             "-m", str(MODEL)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_three_sorters_one_broker_exact_report(tmp_path, broker):
    live: dict = {}
    listener = threading.Thread(target=lambda: live.update(collect(f"127.0.0.1:{broker.port}", 12)))
    listener.start()
    procs = [start_sorter(tmp_path, line, colours, broker.port) for line, colours in LINES.items()]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["fleet", "report", "--broker", f"127.0.0.1:{broker.port}",
                                      "--duration", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    lines = report["lines"]
    assert set(lines) == set(LINES)
    assert lines["line-a"]["by_verdict"] == {"fresh": 2, "rotten": 1}
    assert lines["line-a"]["by_label"] == {"freshred": 2, "rottenblue": 1}
    assert lines["line-b"]["by_verdict"] == {"fresh": 1, "rotten": 2, "uncertain": 1}
    assert lines["line-c"]["by_verdict_label"] == {"fresh/freshred": 1}
    assert report["total"]["items"] == 8 and report["total"]["by_verdict"] == {"fresh": 4, "rotten": 3,
                                                                                "uncertain": 1}
    assert all(len(line["runs"]) == 1 for line in lines.values())
    page = (out / "report.html").read_text()
    assert 'id="fleet-items" data-value="8"' in page
    assert all(f"<td>{name}</td>" in page for name in LINES)
    listener.join(30)
    assert live["live_events"] == {"line-a": 3, "line-b": 4, "line-c": 1}  # every verdict arrived live too
    assert live["total"] == report["total"]


def test_aggregate_sums_runs_and_hours():
    counters = {
        "t/a/counters/h1/r1": {"line": "a", "run": "r1", "hour": "h1", "counts": {"fresh": {"x": 2}}},
        "t/a/counters/h2/r2": {"line": "a", "run": "r2", "hour": "h2", "counts": {"rotten": {"y": 1}}},
    }
    report = aggregate(counters)
    assert report["lines"]["a"]["items"] == 3 and report["lines"]["a"]["hours"] == {"h1": 2, "h2": 1}
    assert report["lines"]["a"]["runs"] == ["r1", "r2"]
