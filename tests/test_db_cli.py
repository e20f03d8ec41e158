"""`sorter db stats|prune` and `sorter watch --help`: thin commands over the store, read-only where possible."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner

from sorter import store
from sorter.cli import app

runner = CliRunner()


def _seed(path):
    db = store.open_writer(path)
    old = (datetime.now(UTC) - timedelta(days=120)).isoformat(timespec="milliseconds")
    base = {"source": "watch", "state": "done", "received_at": store.now_iso()}
    store.insert_items(db, [
        {**base, "sha256": "a", "source_path": "/in/a.jpg", "label": "freshred", "verdict": "fresh"},
        {**base, "sha256": "b", "source_path": "/in/b.jpg", "label": "rottenblue", "verdict": "rotten"},
        {**base, "sha256": "c", "source_path": "/in/c.jpg", "error": "empty: zero-byte file"},
        {**base, "sha256": "a", "source_path": "/in/a2.jpg", "label": "freshred", "verdict": "fresh",
         "duplicate_of": 1},
        {**base, "sha256": "o", "source_path": "/in/o.jpg", "label": "freshred", "verdict": "fresh",
         "received_at": old},
    ])
    db.close()


def test_stats_json(tmp_path):
    _seed(tmp_path / "s.db")
    result = runner.invoke(app, ["db", "stats", "--db", str(tmp_path / "s.db"), "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["items"] == 5 and figures["duplicates"] == 1
    assert figures["by_verdict"] == {"fresh": 2, "rotten": 1}  # the duplicate is not counted twice
    assert figures["by_error"] == {"empty: zero-byte file": 1}
    assert figures["first"] < figures["last"]


def test_stats_table_and_missing_db(tmp_path):
    _seed(tmp_path / "s.db")
    result = runner.invoke(app, ["db", "stats", "--db", str(tmp_path / "s.db")])
    assert result.exit_code == 0 and "rottenblue" in result.output
    missing = runner.invoke(app, ["db", "stats", "--db", str(tmp_path / "nope.db")])
    assert missing.exit_code == 2 and not (tmp_path / "nope.db").exists()


def test_prune_dry_run_then_real(tmp_path):
    _seed(tmp_path / "s.db")
    dry = runner.invoke(app, ["db", "prune", "--db", str(tmp_path / "s.db"), "--older-than", "90d", "--dry-run"])
    assert dry.exit_code == 0 and "would delete 1 rows" in dry.output
    assert store.stats(tmp_path / "s.db")["items"] == 5
    real = runner.invoke(app, ["db", "prune", "--db", str(tmp_path / "s.db"), "--older-than", "90d"])
    assert real.exit_code == 0 and "deleted 1 rows and vacuumed" in real.output
    assert store.stats(tmp_path / "s.db")["items"] == 4


def test_prune_rejects_a_bad_age(tmp_path):
    _seed(tmp_path / "s.db")
    result = runner.invoke(app, ["db", "prune", "--db", str(tmp_path / "s.db"), "--older-than", "soon"])
    assert result.exit_code == 2


def test_every_new_command_has_help():
    for args in (["watch"], ["db"], ["db", "stats"], ["db", "prune"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0 and len(result.output) > 100, args
    assert "sorted" in runner.invoke(app, ["watch", "--help"]).output  # the default OUT is documented
