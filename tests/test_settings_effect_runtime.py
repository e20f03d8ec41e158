"""Every accepted key has an effect (issue 14 item 22), shown per key from a TOML file (or SORTER_*):
the daemon's layout and pacing seen from outside (/proc, the database's timestamps, a real HTTP GET),
what `watch --once` leaves alone, `doctor`, `report` and `db prune` figures, and the fleet keys
against a real mosquitto that refuses anonymous clients.

Heavy runs are shared: one live `sorter watch` (DAEMON), one `watch --once` (ONCE) and one fleet
daemon (FLEET), each started once per module; every key still has its own test of what it changed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from sorter import store
from sorter.cli import app
from tests.camera_helpers import free_port
from tests.mqtt_helpers import MOSQUITTO, Broker
from tests.report_helpers import build_db, card_bundle
from tests.watch_helpers import MODEL, SORTER, drop, jpeg, rows, wait_for

# full key → the test that shows its effect (the lead's meta test checks every Settings key is in a table)
KEYS_SHOWN: dict[str, str] = {
    "line": "test_line_names_the_fleet_topics_and_payloads",
    "min_free_mb": "test_min_free_mb_makes_doctor_fail_the_disk_check",
    "threads": "test_thread_layout_keys_shape_the_daemons_threads",
    "interpreters": "test_thread_layout_keys_shape_the_daemons_threads",
    "decode_workers": "test_thread_layout_keys_shape_the_daemons_threads",
    "batch_size": "test_batch_size_ends_a_batch_without_waiting_for_batch_ms",
    "batch_ms": "test_batch_ms_holds_a_lone_file_for_its_batch",
    "stable_seconds": "test_stable_seconds_delays_a_file_written_in_place",
    "recursive": "test_recursive_false_leaves_subfolders_alone",
    "temp_suffixes": "test_temp_suffixes_replace_the_ignored_names",
    "background_nice": "test_background_nice_is_the_nice_of_the_helper_threads",
    "retry_seconds": "test_retry_seconds_paces_the_retry_of_a_failed_move",
    "max_file_bytes": "test_max_file_bytes_rejects_a_larger_file_with_its_reason",
    "report.max_thumbnails": "test_report_max_thumbnails_caps_the_gallery",
    "metrics.host": "test_metrics_host_is_where_metrics_are_served",
    "metrics.port": "test_metrics_port_serves_metrics_and_health",
    "retention.batch_size": "test_retention_batch_size_is_rows_per_delete_transaction",
    "retention.vacuum_freelist_ratio": "test_retention_vacuum_freelist_ratio_decides_the_vacuum",
    "fleet.broker": "test_fleet_broker_receives_the_verdicts",
    "fleet.topic": "test_fleet_topic_prefixes_every_topic",
    "fleet.counters_seconds": "test_fleet_counters_seconds_is_the_counters_period",
    "fleet.spool": "test_fleet_spool_holds_verdicts_while_the_broker_is_down",
    "fleet.username": "test_fleet_credentials_decide_whether_the_broker_takes_the_report",
    "fleet.password": "test_fleet_credentials_decide_whether_the_broker_takes_the_report",
    "fleet.password_file": "test_fleet_password_file_is_the_password_the_daemon_logs_in_with",
}

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
USER, PASSWORD, ADMIN = "sorter", "pw-line-7", ("admin", "adm-pw")


# ---- helpers ----

def _env() -> dict[str, str]:
    """The environment without the caller's SORTER_* settings, on this checkout's `sorter`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SORTER_")}, "PYTHONPATH": str(REPO)}


def _watch_config(tmp: Path, extra: str) -> Path:
    """Everything `sorter watch` needs from the file (tmp/in → tmp/sorted, tmp/s.db), plus `extra`."""
    (tmp / "in").mkdir(parents=True, exist_ok=True)
    cfg = tmp / "sorter.toml"
    cfg.write_text(f'model = "{MODEL}"\nincoming = "{tmp / "in"}"\nout = "{tmp / "sorted"}"\n'
                   f'db = "{tmp / "s.db"}"\nlog_format = "json"\n{extra}')
    return cfg


def _when(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _row(db: Path, name: str) -> dict | None:
    return next((r for r in rows(db) if r["source_path"].endswith(f"/{name}")), None)


def _done(db: Path, name: str, timeout: float = 10.0) -> dict:
    assert wait_for(lambda: (r := _row(db, name)) is not None and r["state"] == "done", timeout), \
        f"{name} was not routed in {timeout} s: {_row(db, name)}"
    return _row(db, name)  # type: ignore[return-value]


class Daemon:
    """`sorter watch --config CFG` as its own process, its JSON log lines in a file."""

    def __init__(self, cfg: Path, cwd: Path) -> None:
        self.log = cfg.with_suffix(".log")
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen([*SORTER, "watch", "--config", str(cfg)], cwd=cwd, env=_env(),
                                         stdout=subprocess.DEVNULL, stderr=err)
        assert wait_for(lambda: self.said("ready: watching") or self.proc.poll() is not None, 60), "never ready"
        assert self.proc.poll() is None, self.log.read_text()

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def said(self, text: str) -> list[dict]:
        return [line for line in self.lines() if text in line["message"]]

    def threads(self) -> dict[int, tuple[str, int]]:
        """tid → (OS thread name, nice) from /proc."""
        found = {}
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            with open(task / "stat") as fh:
                stat = fh.read()
            found[int(task.name)] = (stat[stat.index("(") + 1: stat.rindex(")")],
                                     int(stat[stat.rindex(")") + 2:].split()[16]))  # field 19: nice
        return found

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


# ---- one live daemon: thread layout, nice, metrics, pacing ----

DAEMON_KEYS = """threads = 2
interpreters = 3
decode_workers = 3
background_nice = 7
stable_seconds = 2.5
batch_ms = 1500
retry_seconds = 2
[metrics]
host = "127.0.0.2"
port = {port}
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("daemon")
    port = free_port()
    (tmp / "sorted").mkdir()
    d = Daemon(_watch_config(tmp, DAEMON_KEYS.format(port=port)), tmp)
    d.tmp, d.port = tmp, port  # type: ignore[attr-defined]
    yield d
    d.stop()


# the default on this box would be: cores // threads interpreters (1 on 2 cores), 2 decode workers, and
# threads = cores // interpreters (1: no pool thread). A pool thread of an interpreter with threads > 1
# is made by LiteRT during the warm-up, so it carries the warm-up thread's name.
LAYOUT = {"interpreters": ("infer-", ["infer-0", "infer-1", "infer-2"]),
          "decode_workers": ("decode-", ["decode-0", "decode-1", "decode-2"]),
          "threads": ("warm-", ["warm-0", "warm-1", "warm-2"])}  # threads = 2: one pool thread each


@pytest.mark.parametrize("key", list(LAYOUT), ids=list(LAYOUT))
def test_thread_layout_keys_shape_the_daemons_threads(daemon, key):
    prefix, expected = LAYOUT[key]

    def names() -> list[str]:
        return sorted(name for name, _ in daemon.threads().values() if name.startswith(prefix))

    wait_for(lambda: names() == expected, 5)  # the workers start just after the 'ready' line
    assert names() == expected


def test_background_nice_is_the_nice_of_the_helper_threads(daemon):
    wait_for(lambda: "route" in {name for name, _ in daemon.threads().values()}, 5)
    nice = {name: n for name, n in daemon.threads().values()}
    helpers = {name: nice[name] for name in ("decode-0", "decode-1", "decode-2", "route", "db-writer")}
    assert helpers == dict.fromkeys(helpers, 7)  # the default would be 19
    assert {nice[f"infer-{i}"] for i in range(3)} == {0}  # the interpreters keep their priority


def test_metrics_host_is_where_metrics_are_served(daemon):
    status, body = _get(f"http://127.0.0.2:{daemon.port}/metrics")
    assert status == 200 and "sorter_ready 1.0" in body
    with pytest.raises(OSError):  # not on the default host
        _get(f"http://127.0.0.1:{daemon.port}/metrics")


def test_metrics_port_serves_metrics_and_health(daemon):
    status, body = _get(f"http://127.0.0.2:{daemon.port}/healthz")  # the default: no server at all
    assert status == 200 and json.loads(body)["ready"] is True and json.loads(body)["source"] == "watch"
    assert daemon.said(f"metrics on http://127.0.0.2:{daemon.port}/metrics")


def test_stable_seconds_delays_a_file_written_in_place(daemon):
    started = time.time()
    (daemon.tmp / "in" / "inplace.jpg").write_bytes(jpeg("red", tag="inplace"))  # no rename: waits to settle
    row = _done(daemon.tmp / "s.db", "inplace.jpg")
    waited = _when(row["received_at"]) - started
    assert 2.5 <= waited < 2.5 + 3  # read once quiet for 2.5 s (default 1 s)


def test_batch_ms_holds_a_lone_file_for_its_batch(daemon):
    drop(daemon.tmp / "in", "lone.jpg", jpeg("green", tag="lone"))
    row = _done(daemon.tmp / "s.db", "lone.jpg")
    held = _when(row["routed_at"]) - _when(row["received_at"])
    assert 1.499 <= held < 1.5 + 2  # a batch of one waited 1.5 s for company (default 0.05 s)


def test_retry_seconds_paces_the_retry_of_a_failed_move(daemon):
    blocker = daemon.tmp / "sorted" / "rotten"
    blocker.write_text("a file where the rotten folder goes: the move fails with ENOTDIR")
    drop(daemon.tmp / "in", "retry.jpg", jpeg("blue", tag="retry"))
    assert wait_for(lambda: daemon.said("held retry.jpg in place"), 10), daemon.log.read_text()
    blocker.unlink()
    assert daemon.said("held retry.jpg in place")[0]["message"].endswith("retry in ≥2 s")
    row = _done(daemon.tmp / "s.db", "retry.jpg", timeout=15)  # the default would wait 30 s
    # read, batch_ms, the failed move, retry_seconds, read again, batch_ms, moved
    took = _when(row["routed_at"]) - _when(row["received_at"])
    assert 2 * 1.5 + 2 - 0.01 <= took < 2 * 1.5 + 2 + 3
    assert (daemon.tmp / "sorted" / "rotten" / "rottenblue" / "retry.jpg").is_file()


# ---- one `watch --once`: what it leaves alone, what it rejects, how it batches ----

ONCE_KEYS = """stable_seconds = 0.2
threads = 1
recursive = false
temp_suffixes = [".foo"]
max_file_bytes = 3000
batch_size = 1
batch_ms = 4000
"""


def _noisy_jpeg(size: int = 300) -> bytes:
    rng = np.random.default_rng(0)
    img = np.clip(np.array([0, 0, 255]) + rng.integers(-40, 41, (size, size, 3)), 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


@pytest.fixture(scope="module")
def once(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("once")
    cfg = _watch_config(tmp, ONCE_KEYS)
    incoming = tmp / "in"
    (incoming / "sub").mkdir()
    files = {"a.jpg": jpeg("red", tag="a"), "sub/b.jpg": jpeg("red", tag="b"), "c.jpg.foo": jpeg("red", tag="c"),
             "d.jpg.part": jpeg("red", tag="d"), "big.jpg": _noisy_jpeg()}
    for name, data in files.items():
        (incoming / name).write_bytes(data)
        os.utime(incoming / name, (time.time() - 60, time.time() - 60))  # settled long ago
    assert len(files["big.jpg"]) > 3000 > len(files["a.jpg"])
    done = subprocess.run([*SORTER, "watch", "--once", "--config", str(cfg)], cwd=tmp, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return tmp, done, {Path(r["source_path"]).name: r for r in rows(tmp / "s.db")}


def test_recursive_false_leaves_subfolders_alone(once):
    tmp, done, by_name = once
    assert (tmp / "in" / "sub" / "b.jpg").is_file() and "b.jpg" not in by_name  # the default reads it
    assert f"1 subfolder(s) of {tmp / 'in'} not looked into (recursive = false)" in done.stderr


def test_temp_suffixes_replace_the_ignored_names(once):
    tmp, _, by_name = once
    assert (tmp / "in" / "c.jpg.foo").is_file() and "c.jpg.foo" not in by_name  # ignored, as a .part was
    part = by_name["d.jpg.part"]  # no longer a temporary name: read, and rejected for its extension
    assert (part["error"], Path(part["destination"]).parent.name) == ("wrong-extension: .part", "rejected")


def test_max_file_bytes_rejects_a_larger_file_with_its_reason(once):
    tmp, _, by_name = once
    size = (tmp / "sorted" / "rejected" / "big.jpg").stat().st_size
    assert by_name["big.jpg"]["error"] == f"too-large: {size:,} bytes" and by_name["big.jpg"]["label"] is None
    assert (by_name["a.jpg"]["verdict"], by_name["a.jpg"]["error"]) == ("fresh", None)  # a small one passes


def test_batch_size_ends_a_batch_without_waiting_for_batch_ms(once):
    _, _, by_name = once
    waits = {n: _when(r["routed_at"]) - _when(r["received_at"]) for n, r in by_name.items()}
    assert len(waits) == 3 and max(waits.values()) < 2.0, waits  # batches of 8 would wait batch_ms (4 s)


# ---- doctor, report, prune ----

def test_min_free_mb_makes_doctor_fail_the_disk_check(tmp_path, monkeypatch):
    cfg = tmp_path / "sorter.toml"
    cfg.write_text(f'model = "{MODEL}"\ndb = "{tmp_path / "s.db"}"\nthreads = 1\nmin_free_mb = 1000000000\n')
    monkeypatch.delenv("SORTER_MIN_FREE_MB", raising=False)

    def disk() -> tuple[int, dict]:
        result = runner.invoke(app, ["doctor", "--json", "--no-cameras", "--config", str(cfg)])
        return result.exit_code, next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "disk")

    code, check = disk()
    assert code == 1 and not check["ok"] and check["detail"].startswith("low (< 1000000000 MB): db ")
    cfg.write_text(cfg.read_text().replace("min_free_mb = 1000000000\n", ""))
    code, check = disk()  # the default (200 MB) passes on this disk
    assert check["ok"] and check["data"]["free_mb"]["db"] >= 200 and code == 0
    monkeypatch.setenv("SORTER_MIN_FREE_MB", str(check["data"]["free_mb"]["db"] * 2 + 1))  # the environment too
    code, check = disk()
    assert code == 1 and not check["ok"]


@pytest.fixture(scope="module")
def report_db(tmp_path_factory) -> tuple[Path, Path]:
    """report_helpers' database (three audited items the model got wrong, images on disk) and a bundle."""
    tmp = tmp_path_factory.mktemp("report")
    return build_db(tmp), card_bundle(tmp, 0.9)


def _report(tmp: Path, db: Path, bundle: Path, extra: str, *args: str):
    cfg = tmp / "report.toml"
    cfg.write_text(f'db = "{db}"\nmodel = "{bundle}"\n{extra}')
    return runner.invoke(app, ["report", "--out", str(tmp / "r"), "--from", "2026-01-10", "--to", "2026-01-11",
                               "--config", str(cfg), *args])


def test_report_max_thumbnails_caps_the_gallery(tmp_path, report_db):
    figures = {}
    for extra in ("[report]\nmax_thumbnails = 1\n", ""):
        result = _report(tmp_path, *report_db, extra, "--no-publish")
        assert result.exit_code == 0, result.output
        page = (tmp_path / "r" / "report.html").read_text()
        figures[extra] = (page.count("<figure>"), page.count('src="data:image/jpeg'), "and 2 more in report.json"
                          in page)
    assert figures == {"[report]\nmax_thumbnails = 1\n": (1, 1, True), "": (3, 3, False)}


def _old_items(path: Path, n: int, payload: int = 0) -> Path:
    db = store.open_writer(path)
    old = (datetime.now(UTC) - timedelta(days=100)).isoformat(timespec="milliseconds")
    store.insert_items(db, [{"source": "watch", "state": "done", "received_at": old, "sha256": f"{i:064x}",
                             "source_path": f"/in/{i}.jpg" + "x" * payload} for i in range(n)])
    store.insert_item(db, {"source": "watch", "state": "done", "received_at": store.now_iso(), "sha256": "f" * 64,
                        "source_path": "/in/kept.jpg"})
    db.close()
    return path


def test_retention_batch_size_is_rows_per_delete_transaction(tmp_path, monkeypatch):
    """Each write transaction prune opens (`store.immediate`) is counted when it deleted rows."""
    import contextlib

    transactions: list[int] = []
    real = store.immediate

    @contextlib.contextmanager
    def counted(db):
        before = db.conn.total_changes
        with real(db) as inner:
            yield inner
        if db.conn.total_changes > before:
            transactions.append(db.conn.total_changes - before)

    monkeypatch.setattr(store, "immediate", counted)
    commits = {}
    for i, extra in enumerate(("batch_size = 7\n", "")):
        db = _old_items(tmp_path / f"p{i}.db", 50)
        cfg = tmp_path / "prune.toml"
        cfg.write_text(f'db = "{db}"\n[retention]\nvacuum_freelist_ratio = 1.0\n{extra}')  # no vacuum
        transactions.clear()
        result = runner.invoke(app, ["db", "prune", "--config", str(cfg)])
        assert result.output == "deleted 50 items, 0 camera events, 0 snapshots\n", result.output
        commits[extra] = len(transactions)
    assert commits == {"batch_size = 7\n": 8, "": 1}  # ceil(50 / 7) transactions; the default 1000: one


def test_retention_vacuum_freelist_ratio_decides_the_vacuum(tmp_path):
    after = {}
    for i, extra in enumerate(("vacuum_freelist_ratio = 0.99\n", "")):
        db = _old_items(tmp_path / f"v{i}.db", 2000, payload=1000)  # rows outweigh the empty schema
        cfg = tmp_path / "prune.toml"
        cfg.write_text(f'db = "{db}"\n[retention]\n{extra}')
        result = runner.invoke(app, ["db", "prune", "--config", str(cfg)])
        conn = sqlite3.connect(db)
        try:
            free, pages = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("freelist_count", "page_count"))
        finally:
            conn.close()
        after[extra] = (result.output.strip().endswith("and vacuumed"), free > pages / 2)
    assert after == {"vacuum_freelist_ratio = 0.99\n": (False, True), "": (True, False)}


# ---- fleet and secrets against a real mosquitto that refuses anonymous clients ----

@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory):
    if MOSQUITTO is None:
        pytest.skip("the mosquitto binary is missing (apt-get install mosquitto; .ci/run does this)")
    tmp = tmp_path_factory.mktemp("broker")
    passwords = tmp / "passwords"
    for i, (user, password) in enumerate([(USER, PASSWORD), ADMIN]):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwords), user, password],
                       check=True, capture_output=True)
    broker = Broker(tmp)
    run_as = "user root\n" if os.geteuid() == 0 else ""  # as root it drops to `mosquitto`: no tmp access
    broker.conf.write_text(f"listener {broker.port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
                           f"persistence false\n{run_as}")
    yield broker.start()
    broker.stop()


class Heard:
    """Every message on the broker (as admin), with the time it came."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[float, str, bytes]] = []
        self._lock, ready = threading.Lock(), threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.username_pw_set(*ADMIN)
        self.client.on_message = self._add
        self.client.on_connect = lambda c, *a: c.subscribe("#", qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect("127.0.0.1", port, 10)
        self.client.loop_start()
        assert ready.wait(10), "no SUBACK from mosquitto"

    def _add(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((time.time(), msg.topic, msg.payload))

    def on(self, prefix: str) -> list[tuple[float, str, bytes]]:
        with self._lock:
            return [m for m in self.messages if m[1].startswith(prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _counted(messages: list) -> list[int]:
    return [sum(sum(labels.values()) for labels in json.loads(p)["counts"].values()) for _, _, p in messages]


@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory, auth_broker):
    """A line's daemon publishing to the broker: two items counters_seconds apart, then one more with the
    broker down (spooled); killed, since a clean exit waits for the broker to drain the spool."""
    tmp = tmp_path_factory.mktemp("fleet")
    (tmp / "secret").write_text(PASSWORD + "\n")
    (tmp / "cwd").mkdir()
    cfg = _watch_config(tmp, f"""threads = 1
stable_seconds = 0.2
line = "line-7"
[fleet]
broker = "127.0.0.1:{auth_broker.port}"
topic = "plant/a"
counters_seconds = 1.5
spool = "{tmp / 'spool'}"
username = "{USER}"
password_file = "{tmp / 'secret'}"
""")
    heard = Heard(auth_broker.port)
    daemon = Daemon(cfg, tmp / "cwd")
    seen: dict = {"tmp": tmp}
    try:
        drop(tmp / "in", "a.jpg", jpeg("red", tag="fleet-a"))
        wait_for(lambda: _counted(heard.on("plant/a/line-7/counters/")) == [1], 10)
        first = heard.on("plant/a/line-7/counters/")
        time.sleep(max(0.0, first[0][0] + 1.7 - time.time()) if first else 0)
        drop(tmp / "in", "b.jpg", jpeg("blue", tag="fleet-b"))
        wait_for(lambda: len(heard.on("plant/a/line-7/counters/")) >= 2, 5)  # while it runs, not at exit
        wait_for(lambda: len(heard.on("plant/a/line-7/verdict/")) == 2
                 and not list((tmp / "spool" / "watch").glob("*.json")), 10)
        seen["messages"] = list(heard.messages)
        heard.close()
        auth_broker.stop()
        drop(tmp / "in", "c.jpg", jpeg("grey", tag="fleet-c"))
        wait_for(lambda: list((tmp / "spool" / "watch").glob("*.json")), 10)
        seen["spooled"] = sorted((tmp / "spool" / "watch").glob("*.json"))
    finally:
        daemon.kill()
        if auth_broker.proc is None:
            auth_broker.start()
    return seen


def test_fleet_broker_receives_the_verdicts(fleet_run):
    verdicts = sorted(t for _, t, _ in fleet_run["messages"] if "/verdict/" in t)
    assert verdicts == ["plant/a/line-7/verdict/fresh", "plant/a/line-7/verdict/rotten"]  # default: no broker


def test_line_names_the_fleet_topics_and_payloads(fleet_run):
    ours = [(t, json.loads(p)) for _, t, p in fleet_run["messages"] if "/verdict/" in t or "/counters/" in t]
    assert ours and {t.split("/")[2] for t, _ in ours} == {"line-7"}  # the default: this host's name
    assert {p["line"] for _, p in ours} == {"line-7"}


def test_fleet_topic_prefixes_every_topic(fleet_run):
    topics = {t for _, t, _ in fleet_run["messages"]}
    assert topics and all(t.startswith("plant/a/line-7/") for t in topics)  # the default: sorter/fleet/…
    assert "plant/a/line-7/availability" in topics


def test_fleet_counters_seconds_is_the_counters_period(fleet_run):
    counters = [m for m in fleet_run["messages"] if "/counters/" in m[1]]
    assert _counted(counters) == [1, 2]  # the second item's totals while running: 1.5 s had passed (default 60)
    assert counters[1][0] - counters[0][0] >= 1.5


def test_fleet_spool_holds_verdicts_while_the_broker_is_down(fleet_run):
    spooled = [json.loads(p.read_text()) for p in fleet_run["spooled"]]
    assert [s["topic"] for s in spooled] == ["plant/a/line-7/verdict/uncertain"]
    assert not (fleet_run["tmp"] / "cwd" / "fleet-spool").exists()  # the default, under the working folder


def test_fleet_password_file_is_the_password_the_daemon_logs_in_with(fleet_run):
    # the broker refuses anonymous clients and wrong passwords: the daemon got in with the file's password
    assert any("/verdict/" in t for _, t, _ in fleet_run["messages"])
    assert PASSWORD not in (fleet_run["tmp"] / "sorter.toml").read_text()


CREDENTIALS = {  # key → (config lines the broker takes, the same with this key's value wrong)
    "fleet.username": (f'username = "{USER}"\npassword = "{PASSWORD}"\n',
                       f'username = "intruder"\npassword = "{PASSWORD}"\n'),
    "fleet.password": (f'username = "{USER}"\npassword = "{PASSWORD}"\n',
                       f'username = "{USER}"\npassword = "not-it"\n'),
}


@pytest.mark.parametrize("key", list(CREDENTIALS), ids=list(CREDENTIALS))
def test_fleet_credentials_decide_whether_the_broker_takes_the_report(tmp_path, report_db, auth_broker, key):
    heard = Heard(auth_broker.port)
    outputs = []
    try:
        for lines in CREDENTIALS[key]:
            fleet = f'line = "line-r"\n[fleet]\nbroker = "127.0.0.1:{auth_broker.port}"\ntopic = "plant/{key}"\n'
            result = _report(tmp_path, *report_db, fleet + lines)
            assert result.exit_code == 0, result.output
            outputs.append(result.output)
        topic = f"plant/{key}/line-r/report/2026-01-10"
        assert wait_for(lambda: heard.on(topic), 5)
    finally:
        heard.close()
    assert f"published to {topic}\n" in outputs[0]
    assert "warning: report not published" in outputs[1] and "Not authorized" in outputs[1]
    assert len(heard.on(topic)) == 1 and json.loads(heard.on(topic)[0][2])["line"] == "line-r"
