"""Log lines: one per record on stderr; `--log-format json` gives one JSON object per line."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest

from sorter.logs import setup
from tests.watch_helpers import MODEL, SORTER, jpeg

pytestmark = pytest.mark.timeout(60)


def test_text_lines_stay_single_even_with_tracebacks(capsys):
    setup("text")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logging.getLogger("sorter.test").exception("failed on\nitem 3")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ERROR sorter.test: failed on\\nitem 3" in err and "boom" in err


def test_cli_json_logs_are_one_object_per_line(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(jpeg("red"))
    done = subprocess.run([*SORTER, "--log-format", "json", "watch", str(tmp_path / "in"),
                           "--once", "--db", str(tmp_path / "db"), "-m", str(MODEL), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert lines and all(set(e) >= {"time", "level", "logger", "message"} for e in lines)
    assert any(e["logger"] == "sorter.watch" and "a.jpg" in e["message"] for e in lines)


def test_the_handler_follows_stderr_when_a_runner_swaps_and_closes_it(capsys):
    """Commands run in-process (CliRunner) swap sys.stderr and close it after: a handler bound to the old
    stream printed '--- Logging error ---' and a traceback into the next command's output."""
    import io
    import sys

    first = io.StringIO()
    real = sys.stderr
    try:
        sys.stderr = first
        setup("text")
        logging.getLogger("sorter.test").warning("into the first stream")
        first.close()
        sys.stderr = second = io.StringIO()
        logging.getLogger("sorter.test").warning("into the second stream")
    finally:
        sys.stderr = real
    assert "into the second stream" in second.getvalue() and "Logging error" not in second.getvalue()
