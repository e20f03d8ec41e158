"""Every accepted setting has an effect (issue 14 item 22): the config file's keys reach the commands
that use them, a mistyped SORTER_* variable is an error like a mistyped TOML key, and an [outputs]
section that `sorter watch` does not fire yet is said out loud."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from sorter import store
from sorter.cli import app
from sorter.config import Settings
from sorter.outputs import child_env
from tests.settings_helpers import settings_keys
from tests.watch_helpers import MODEL, SORTER, drop, files_under, jpeg, rows

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _watch_config(tmp: Path, extra: str = "") -> Path:
    """A config naming everything `sorter watch` needs, so the command line names nothing."""
    (tmp / "in").mkdir()
    return _write_config(tmp / "sorter.toml", f"""
model = "{MODEL}"
incoming = "{tmp / 'in'}"
out = "{tmp / 'sorted'}"
db = "{tmp / 'from-config.db'}"
log_format = "json"
stable_seconds = 0.2
threads = 1
{extra}""")


def _run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`sorter ARGS` run from CWD; PYTHONPATH keeps it on this checkout's `sorter`, whatever CWD holds."""
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(REPO)}
    return subprocess.run([*SORTER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_watch_takes_incoming_out_db_and_log_format_from_the_config_file(tmp_path):
    cfg = _watch_config(tmp_path)
    drop(tmp_path / "in", "a.jpg", jpeg("red"))
    drop(tmp_path / "in", "b.jpg", jpeg("blue"))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    done = _run(["watch", "--once", "--config", str(cfg)], elsewhere)
    assert done.returncode == 0, done.stderr
    assert [p.relative_to(tmp_path / "sorted").parent.as_posix() for p in files_under(tmp_path / "sorted")] \
        == ["fresh/freshred", "rotten/rottenblue"]  # config `out`
    assert len(rows(tmp_path / "from-config.db")) == 2 and not (elsewhere / "sorter.db").exists()  # config `db`
    lines = done.stderr.splitlines()
    logged = [json.loads(line) for line in lines[:-1]]  # config `log_format = "json"`: every log line parses
    assert len(logged) >= 2 and {"time", "level", "logger", "message"} <= set(logged[0])
    assert lines[-1].startswith("routed 2")  # the closing summary line


def test_the_log_format_flag_outranks_the_config_file(tmp_path):
    cfg = _watch_config(tmp_path)
    drop(tmp_path / "in", "a.jpg", jpeg("red"))
    done = _run(["--log-format", "text", "watch", "--once", "--config", str(cfg)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert not any(line.startswith("{") for line in done.stderr.splitlines())
    assert re.search(r"^\S+ \S+ INFO sorter", done.stderr, re.M)


def test_watch_fires_the_configured_command_output_per_routed_item(tmp_path):
    marks = tmp_path / "fired"
    marks.mkdir()
    touch = f'touch "{marks}/$SORTER_IDEMPOTENCY_KEY"'
    cfg = _watch_config(tmp_path, f'[outputs.command]\nargv = ["sh", "-c", \'{touch}\']\nverdicts = ["fresh"]\n')
    drop(tmp_path / "in", "a.jpg", jpeg("red"))
    drop(tmp_path / "in", "b.jpg", jpeg("blue"))
    done = _run(["watch", "--once", "--config", str(cfg)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stderr.splitlines()[:-1] if json.loads(line)["level"] == "WARNING"]
    assert "command sh: sent 1, failed 0" in done.stderr.splitlines()[-1]
    fresh = [r for r in rows(tmp_path / "from-config.db") if r["verdict"] == "fresh"]
    assert [p.name for p in marks.iterdir()] == [f"{fresh[0]['id']}-{fresh[0]['sha256'][:16]}"]
    checked = _run(["config", "check", "--config", str(cfg)], tmp_path)
    assert checked.returncode == 0 and checked.stdout == f"ok: {cfg}\n" and checked.stderr == ""


def test_db_stats_opens_the_config_db_not_the_working_folder_one(tmp_path, monkeypatch):
    db = store.open_writer(tmp_path / "line.db")
    store.insert_items(db, [{"source": "watch", "state": "done", "received_at": store.now_iso(), "sha256": s,
                             "source_path": f"/in/{s}.jpg", "label": "freshred", "verdict": "fresh"}
                            for s in "abc"])
    db.close()
    cfg = _write_config(tmp_path / "sorter.toml", f'db = "{tmp_path / "line.db"}"\n')
    monkeypatch.chdir(tmp_path / "..")
    monkeypatch.delenv("SORTER_CONFIG", raising=False)
    result = runner.invoke(app, ["db", "stats", "--json", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["items"] == 3
    monkeypatch.setenv("SORTER_CONFIG", str(cfg))  # the environment's config file too
    assert json.loads(runner.invoke(app, ["db", "stats", "--json"]).output)["items"] == 3


def test_a_mistyped_environment_variable_is_an_error_with_a_suggestion(monkeypatch):
    monkeypatch.setenv("SORTER_BATCH_SIZ", "4")
    monkeypatch.setenv("SORTER_CAMRA__STALL_SECONDS", "3")
    monkeypatch.delenv("SORTER_CONFIG", raising=False)
    result = runner.invoke(app, ["config", "check"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "error: environment SORTER_BATCH_SIZ: unknown variable (did you mean 'SORTER_BATCH_SIZE'?)",
        "environment SORTER_CAMRA__STALL_SECONDS: unknown variable (did you mean 'SORTER_CAMERA__STALL_SECONDS'?)"]


def test_what_a_command_output_hands_its_child_is_not_mistaken_for_settings(tmp_path):
    """A `sorter` run by an [outputs.command] sees SORTER_VERDICT, SORTER_EVENT, … and SORTER_CONFIG."""
    cfg = _write_config(tmp_path / "sorter.toml", "batch_size = 4\n")
    event = {"item_id": 7, "time": "2026-01-01T00:00:00Z", "device": "0", "verdict": "rotten",
             "label": "rottenblue", "confidence": 0.9, "votes": "3/5", "snapshot": None}
    env = {**child_env(event), "SORTER_CONFIG": str(cfg)}
    assert {"SORTER_VERDICT", "SORTER_EVENT", "SORTER_ITEM_ID"} <= set(env)
    done = _run(["config", "check"], tmp_path, env)
    assert (done.returncode, done.stdout) == (0, f"ok: {cfg}\n"), done.stderr
    done = _run(["config", "check"], tmp_path, {**env, "SORTER_VERDICTS": "x"})  # not an event key: a typo
    assert done.returncode == 2 and "environment SORTER_VERDICTS: unknown variable" in done.stderr


# ---- each key reaches the code that uses it ----

# Every key of Settings → the module that reads it (outside config.py). A new key without a line
# here fails the test: say where it takes effect. `*_file` keys fill their secret in config.py.
KEY_READ_IN = {
    "line": "sorter/fleet.py", "model": "sorter/cli.py", "incoming": "sorter/cli.py",
    "rotten_labels": "sorter/classify.py", "log_format": "sorter/cli.py", "min_free_mb": "sorter/doctor.py",
    "threads": "sorter/cli.py", "interpreters": "sorter/cli.py", "batch_size": "sorter/cli.py",
    "batch_ms": "sorter/watch.py", "default_min_confidence": "sorter/classify.py",
    "min_confidence": "sorter/classify.py", "max_pixels": "sorter/cli.py", "db": "sorter/cli.py",
    "rotten_at": "sorter/classify.py", "fresh_at": "sorter/classify.py", "unknown_below": "sorter/classify.py",
    "unknown": "sorter/classify.py",  # their effect tests: KEYS_SHOWN in tests/test_decision.py
    "out": "sorter/cli.py", "stable_seconds": "sorter/watch.py", "recursive": "sorter/watch.py",
    "temp_suffixes": "sorter/watch.py", "decode_workers": "sorter/watch.py", "background_nice": "sorter/watch.py",
    "retry_seconds": "sorter/watch.py", "max_file_bytes": "sorter/watch.py",
    "camera.*": "sorter/camera.py",
    "outputs.retries": "sorter/camera.py", "outputs.retry_seconds": "sorter/camera.py",
    "outputs.resend_seconds": "sorter/watch.py",
    "outputs.targets": "sorter/outputs/registry.py",  # outputs.<type>.*: sorter/outputs/<type>.py (_module_for)
    "report.*": "sorter/cli.py", "metrics.*": "sorter/cli.py", "retention.*": "sorter/cli.py",
    "fleet.broker": "sorter/cli.py", "fleet.topic": "sorter/cli.py", "fleet.counters_seconds": "sorter/fleet.py",
    "fleet.spool": "sorter/fleet.py", "fleet.username": "sorter/cli.py", "fleet.password": "sorter/cli.py",
}
# keys a module reads under another name or through a helper (the names they are read by)
READ_AS = {"outputs.command.verdicts": "verdicts", "outputs.webhook.token_file": "token_file",
           "outputs.mqtt.password_file": "password_file", "fleet.password_file": "password_file",
           "camera.snapshot_retention_days": "snapshot_retention_days"}


_keys = settings_keys


def _module_for(key: str) -> str | None:
    """Where a key is read: `<key>_file` by sorter.secrets, an output type's keys by its own module (its
    `verdicts` by the registry, which hands them to the dispatcher), the rest as KEY_READ_IN says."""
    if key.endswith("_file"):
        return "sorter/secrets.py"
    parts = key.split(".")
    if parts[0] == "outputs" and len(parts) == 3 and (REPO / "sorter" / "outputs" / f"{parts[1]}.py").is_file():
        return "sorter/outputs/registry.py" if parts[2] == "verdicts" else f"sorter/outputs/{parts[1]}.py"
    section = key.rsplit(".", 1)[0] + ".*" if "." in key else None
    return KEY_READ_IN.get(key) or KEY_READ_IN.get(section or "")


def test_every_key_is_listed_with_the_module_that_reads_it():
    missing = [k for k in _keys(Settings) if _module_for(k) is None]
    assert missing == [], "say in KEY_READ_IN where these settings take effect"


def test_every_key_is_read_where_the_table_says():
    unread = []
    for key in _keys(Settings):
        leaf = key.rsplit(".", 1)[-1]
        text = (REPO / str(_module_for(key))).read_text()
        pattern = rf"\.{leaf}\b" if not key.endswith("_file") else r'f"\{key\}_file"'
        if not re.search(pattern, text):
            unread.append(f"{key} in {_module_for(key)}")
    assert unread == []


# ---- a test per key shows its effect ----

# The keys this file shows; the other effect files keep tables of their own (`KEYS_SHOWN`).
KEYS_SHOWN = {
    "model": "test_each_classification_key_changes_the_verdicts",
    "rotten_labels": "test_each_classification_key_changes_the_verdicts",
    "default_min_confidence": "test_each_classification_key_changes_the_verdicts",
    "min_confidence": "test_each_classification_key_changes_the_verdicts",
    "max_pixels": "test_each_classification_key_changes_the_verdicts",
    "incoming": "test_watch_takes_incoming_out_db_and_log_format_from_the_config_file",
    "out": "test_watch_takes_incoming_out_db_and_log_format_from_the_config_file",
    "db": "test_watch_takes_incoming_out_db_and_log_format_from_the_config_file",
    "log_format": "test_watch_takes_incoming_out_db_and_log_format_from_the_config_file",
    "report.drift_margin": "test_report_and_retention_keys_reach_report_json_and_prune",
    "report.min_audited": "test_report_and_retention_keys_reach_report_json_and_prune",
    "retention.items_days": "test_report_and_retention_keys_reach_report_json_and_prune",
    "retention.camera_events_days": "test_report_and_retention_keys_reach_report_json_and_prune",
    "retention.snapshots_days": "test_report_and_retention_keys_reach_report_json_and_prune",
}
EFFECT_FILES = ("test_settings_effect", "test_settings_effect_camera", "test_settings_effect_outputs",
                "test_settings_effect_runtime", "test_decision",
                *sorted(p.stem for p in (REPO / "tests").glob("test_outputs_*.py")))  # an output type's own test


def test_every_accepted_key_has_a_test_that_shows_its_effect():
    """Item 22: each key of Settings is named in one effect file's KEYS_SHOWN, by a test that exists there."""
    import importlib

    shown: dict[str, str] = {}
    for name in EFFECT_FILES:
        module = importlib.import_module(f"tests.{name}")
        for key, test in module.KEYS_SHOWN.items():
            assert callable(getattr(module, test, None)), f"{name}.{test} (for {key}) is not a test there"
            assert key not in shown, f"{key} is shown twice: {shown[key]} and {name}.{test}"
            shown[key] = f"{name}.{test}"
    assert sorted(set(_keys(Settings)) - set(shown)) == []
    assert sorted(set(shown) - set(_keys(Settings))) == []  # no table names a key that is gone


# ---- each classification key changes what `sorter classify` decides ----

CLASSIFY_KEYS = {  # config lines → verdict (or error) of a red and a blue photo
    "": {"red": "fresh", "blue": "rotten"},  # `model` from the config: no --model on the command line
    'rotten_labels = ["freshred"]': {"red": "rotten", "blue": "fresh"},
    "default_min_confidence = 0.999": {"red": "uncertain", "blue": "uncertain"},
    "[min_confidence]\nrottenblue = 0.999": {"red": "fresh", "blue": "uncertain"},
    "max_pixels = 100": {"red": "error", "blue": "error"},
}


def test_each_classification_key_changes_the_verdicts(tmp_path, monkeypatch):
    monkeypatch.delenv("SORTER_MODEL", raising=False)
    photos = {c: tmp_path / f"{c}.jpg" for c in ("red", "blue")}
    for colour, path in photos.items():
        path.write_bytes(jpeg(colour))
    for lines, expected in CLASSIFY_KEYS.items():
        cfg = _write_config(tmp_path / "sorter.toml", f'model = "{MODEL}"\n{lines}\n')
        result = runner.invoke(app, ["classify", "--json", "--config", str(cfg), *map(str, photos.values())])
        got = {Path(r["path"]).stem: r.get("verdict", "error" if r.get("error") else None)
               for r in map(json.loads, result.stdout.splitlines())}
        assert got == expected, (lines, result.output)


def test_report_and_retention_keys_reach_report_json_and_prune(tmp_path):
    from datetime import UTC, datetime, timedelta

    old = (datetime.now(UTC) - timedelta(days=10)).isoformat(timespec="milliseconds")
    db = store.open_writer(tmp_path / "s.db")
    store.insert_items(db, [{"source": "watch", "state": "done", "received_at": when, "sha256": s,
                             "source_path": f"/in/{s}.jpg", "label": "freshred", "verdict": "fresh"}
                            for s, when in (("a", store.now_iso()), ("b", old))])
    db.close()
    cfg = _write_config(tmp_path / "sorter.toml", f'db = "{tmp_path / "s.db"}"\nmodel = "{MODEL}"\n'
                        "[report]\ndrift_margin = 0.2\nmin_audited = 3\n"
                        "[retention]\nitems_days = 5\ncamera_events_days = 5\nsnapshots_days = 5\n")
    result = runner.invoke(app, ["report", "--out", str(tmp_path / "r"), "--config", str(cfg), "--no-publish"])
    assert result.exit_code == 0, result.output
    drift = json.loads((tmp_path / "r" / "report.json").read_text())["drift"]
    assert (drift["margin"], drift["min_audited"]) == (0.2, 3)
    result = runner.invoke(app, ["db", "prune", "--dry-run", "--config", str(cfg)])
    assert result.output.strip() == "would delete 1 items, 0 camera events, 0 snapshots"
    cfg.write_text(cfg.read_text().replace("items_days = 5", "items_days = 20"))
    result = runner.invoke(app, ["db", "prune", "--dry-run", "--config", str(cfg)])
    assert result.output.strip() == "would delete 0 items, 0 camera events, 0 snapshots"
