"""The jsonl output type: one module (sorter/outputs/jsonl.py), found by the registry, fired by `sorter watch`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sorter.config import Settings
from sorter.outputs import Dispatcher, build_outputs
from tests.watch_helpers import drop, jpeg, rows, watch_command

# every key of [outputs.jsonl] → the test here that shows its effect (tests/test_settings_effect reads it)
KEYS_SHOWN = {
    "outputs.jsonl.path": "test_watch_appends_one_line_per_routed_item_with_its_key",
    "outputs.jsonl.verdicts": "test_watch_appends_one_line_per_routed_item_with_its_key",
    "outputs.jsonl.fsync": "test_fsync_puts_each_line_on_disk_before_the_send_counts",
}


def test_watch_appends_one_line_per_routed_item_with_its_key(tmp_path):
    log = tmp_path / "decisions.jsonl"
    config = tmp_path / "sorter.toml"
    config.write_text(f'stable_seconds = 0.2\nthreads = 1\n[outputs.jsonl]\npath = "{log}"\n'
                      'verdicts = ["rotten", "uncertain"]\n')
    (tmp_path / "in").mkdir()
    for name, colour in [("a.jpg", "red"), ("b.jpg", "blue"), ("c.jpg", "grey"), ("d.jpg", "blue")]:
        drop(tmp_path / "in", name, jpeg(colour, tag=name))
    done = subprocess.run(watch_command(tmp_path, "--once", "--config", str(config)), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    owed = [r for r in rows(tmp_path / "db.sqlite") if r["verdict"] in ("rotten", "uncertain")]
    assert sorted(e["idempotency_key"] for e in lines) == sorted(f"{r['id']}-{r['sha256'][:16]}" for r in owed)
    assert sorted(e["verdict"] for e in lines) == ["rotten", "rotten", "uncertain"]
    assert f"jsonl {log}: sent 3, failed 0" in done.stderr


def test_fsync_puts_each_line_on_disk_before_the_send_counts(tmp_path, monkeypatch):
    import sorter.outputs.jsonl as jsonl

    synced: list[int] = []
    monkeypatch.setattr(jsonl.os, "fsync", lambda fd: synced.append(fd))
    for fsync in (True, False):
        settings = Settings(outputs={"jsonl": {"path": str(tmp_path / f"{fsync}.jsonl"), "fsync": fsync}})
        dispatcher = Dispatcher(build_outputs(settings.outputs))
        for n in range(3):
            dispatcher.publish({"item_id": n, "verdict": "rotten"})
        dispatcher.close()
        assert len(Path(tmp_path / f"{fsync}.jsonl").read_text().splitlines()) == 3
    assert len(synced) == 3  # three with fsync = true, none with false
