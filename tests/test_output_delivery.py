"""Every source fires the configured outputs per item, recorded in `deliveries` (sorter.delivery): `sorter
watch` and `sorter camera` against a real local HTTP receiver and a real mosquitto, down during a run and
back after a restart."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from sorter import store
from sorter.camera import serve
from sorter.classify import rules_for
from sorter.config import Settings
from sorter.model import Classifier
from tests.camera_helpers import free_port, write_video
from tests.http_helpers import Hook
from tests.mqtt_helpers import Broker, Subscriber
from tests.watch_helpers import MODEL, drop, jpeg, make_watcher

pytestmark = pytest.mark.timeout(120)
QUICK = {"retries": 1, "retry_seconds": 0.05}


def _once(tmp: Path, outputs: dict, **kw) -> dict:
    """One `watch --once` run over tmp/in with these [outputs]; its summary's per-output counts."""
    watcher = make_watcher(tmp, outputs=outputs, **kw)
    return watcher.run(threading.Event(), once=True).outputs


def _deliveries(db: Path) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM deliveries ORDER BY item_id, output")]
    finally:
        conn.close()


def _items(db: Path) -> dict[int, dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return {r["id"]: dict(r) for r in conn.execute("SELECT * FROM items")}
    finally:
        conn.close()


def _line(incoming: Path) -> None:
    """Two rotten, one uncertain, two fresh, a copy of a rotten one (a duplicate) and a corrupt file."""
    incoming.mkdir(exist_ok=True)
    for name, colour in [("b1.jpg", "blue"), ("b2.jpg", "blue"), ("g1.jpg", "grey"), ("r1.jpg", "red"),
                         ("r2.jpg", "green")]:
        drop(incoming, name, jpeg(colour, tag=name))
    drop(incoming, "b1-again.jpg", jpeg("blue", tag="b1.jpg"))
    drop(incoming, "broken.jpg", b"\xff\xd8 not a jpeg")


def _keyed(item: dict) -> str:
    return f"{item['id']}-{item['sha256'][:16]}"


def test_each_routed_item_fires_once_with_its_idempotency_key_and_is_recorded_sent(tmp_path):
    hook = Hook()
    try:
        _line(tmp_path / "in")
        stats = _once(tmp_path, {"webhook": {"url": hook.url(), "verdicts": ["rotten", "uncertain"]}})
    finally:
        hook.close()
    items = _items(tmp_path / "db.sqlite")
    owed = {i for i, r in items.items() if r["verdict"] in ("rotten", "uncertain") and r["duplicate_of"] is None
            and r["error"] is None}
    assert len(owed) == 3  # b1, b2, g1: not the duplicate copy, not the corrupt file, not the fresh ones
    bodies = sorted((body for body, _ in hook.received), key=lambda b: b["item_id"])
    assert [b["item_id"] for b in bodies] == sorted(owed)
    for body, headers in zip(bodies, sorted(hook.headers, key=lambda h: int(h["Idempotency-Key"].split("-")[0])),
                             strict=True):
        item = items[body["item_id"]]
        assert body["idempotency_key"] == headers["Idempotency-Key"] == _keyed(item)
        assert (body["verdict"], body["label"], body["sha256"], body["source"]) == \
            (item["verdict"], item["label"], item["sha256"], "watch")
        assert body["destination"] == item["destination"] and Path(item["destination"]).is_file()
    rows = _deliveries(tmp_path / "db.sqlite")
    assert [(r["item_id"], r["state"], r["attempts"], r["last_error"]) for r in rows] == \
        [(i, "sent", 1, None) for i in sorted(owed)]
    assert all(r["delivered_at"] and json.loads(r["event"])["item_id"] == r["item_id"] for r in rows)
    assert list(stats.values()) == [{"sent": 3, "failed": 0, "retried": 0, "last_error": None}]


def test_a_receiver_down_during_the_run_gets_every_item_once_after_a_restart(tmp_path):
    port = free_port()
    webhook = {"webhook": {"url": f"http://127.0.0.1:{port}/hook", "verdicts": ["rotten"]}, **QUICK}
    (tmp_path / "in").mkdir()
    for i in range(4):
        drop(tmp_path / "in", f"b{i}.jpg", jpeg("blue", tag=str(i)))
    _once(tmp_path, webhook)  # nothing listens on the port
    down = _deliveries(tmp_path / "db.sqlite")
    assert [(r["state"], r["attempts"]) for r in down] == [("failed", 2)] * 4
    assert all("Connection refused" in r["last_error"] for r in down)
    hook = Hook(port)  # back
    try:
        _once(tmp_path, webhook)  # the restart: no new files, the owed events go out from the database
        _once(tmp_path, webhook)  # and a third run sends nothing again
    finally:
        hook.close()
    items = _items(tmp_path / "db.sqlite")
    assert sorted(b["idempotency_key"] for b, _ in hook.received) == sorted(_keyed(i) for i in items.values())
    assert [(r["state"], r["attempts"], r["last_error"]) for r in _deliveries(tmp_path / "db.sqlite")] == \
        [("sent", 3, None)] * 4


def _rotten_then_restart(tmp: Path, *changes: str) -> Hook:
    """One rotten item through `watch --once` to a live receiver, the database changed as a stop at the
    wrong moment would leave it (`changes`), then a restart; the receiver."""
    hook = Hook()
    webhook = {"webhook": {"url": hook.url(), "verdicts": ["rotten"]}}
    try:
        (tmp / "in").mkdir()
        drop(tmp / "in", "b.jpg", jpeg("blue"))
        _once(tmp, webhook)
        conn = sqlite3.connect(tmp / "db.sqlite")
        for sql in changes:
            conn.execute(sql)
        conn.commit()
        conn.close()
        _once(tmp, webhook)
    finally:
        hook.close()
    return hook


def test_an_event_sent_but_not_recorded_goes_again_with_the_same_key(tmp_path):
    """A daemon killed between the receiver's 2xx and the writer's commit: the row still says pending."""
    hook = _rotten_then_restart(tmp_path, "UPDATE deliveries SET state = 'pending', delivered_at = NULL")
    keys = [b["idempotency_key"] for b, _ in hook.received]
    assert len(keys) == 2 and keys[0] == keys[1]  # at least once: the repeat carries the key to drop it by
    assert [r["state"] for r in _deliveries(tmp_path / "db.sqlite")] == ["sent"]


def test_mqtt_broker_down_during_the_run_gets_every_item_after_a_restart(tmp_path):
    broker = Broker(tmp_path)  # configured, not started: down for the first run
    outputs = {"mqtt": {"port": broker.port, "spool": str(tmp_path / "spool"), "verdicts": ["rotten", "fresh"]}}
    (tmp_path / "in").mkdir()
    for i, colour in enumerate(["blue", "blue", "red"]):
        drop(tmp_path / "in", f"{colour}{i}.jpg", jpeg(colour, tag=str(i)))
    _once(tmp_path, outputs)
    assert len(list((tmp_path / "spool").glob("*.json"))) == 3  # on disk until the broker's PUBACK
    assert [r["state"] for r in _deliveries(tmp_path / "db.sqlite")] == ["sent"] * 3
    broker.start()
    try:
        subscriber = Subscriber(broker.port)
        try:
            _once(tmp_path, outputs)  # the restart
            assert subscriber.wait(lambda ms: sum("/verdict/" in t for t, _, _ in ms) >= 3)
            _once(tmp_path, outputs)
            events = [json.loads(p) for t, p, _ in subscriber.messages if "/verdict/" in t]
        finally:
            subscriber.close()
    finally:
        broker.stop()
    items = _items(tmp_path / "db.sqlite")
    assert sorted(e["idempotency_key"] for e in events) == sorted(_keyed(i) for i in items.values())
    assert sorted(e["verdict"] for e in events) == ["fresh", "rotten", "rotten"]
    assert not list((tmp_path / "spool").glob("*.json"))


def test_a_dry_run_fires_nothing_and_owes_nothing(tmp_path):
    hook = Hook()
    try:
        _line(tmp_path / "in")
        _once(tmp_path, {"webhook": {"url": hook.url()}}, dry_run=True)
    finally:
        hook.close()
    assert hook.received == []
    assert _deliveries(tmp_path / "db.sqlite") == []


def test_an_item_that_vanished_before_its_move_is_cancelled_not_fired(tmp_path):
    hook = _rotten_then_restart(tmp_path, "UPDATE items SET destination = NULL, error = 'vanished-before-move'",
                                "UPDATE deliveries SET state = 'pending'")  # as a restart finds one whose file vanished
    assert len(hook.received) == 1
    assert [(r["state"], r["last_error"]) for r in _deliveries(tmp_path / "db.sqlite")] == \
        [("cancelled", "the item was not routed")]


def test_pruning_items_prunes_their_deliveries(tmp_path):
    hook = Hook()
    try:
        (tmp_path / "in").mkdir()
        drop(tmp_path / "in", "b.jpg", jpeg("blue"))
        _once(tmp_path, {"webhook": {"url": hook.url()}})
    finally:
        hook.close()
    assert len(_deliveries(tmp_path / "db.sqlite")) == 1
    assert store.prune(tmp_path / "db.sqlite", timedelta(seconds=-60)).deleted == 1
    assert _deliveries(tmp_path / "db.sqlite") == []


def _camera(tmp: Path, outputs: dict, max_decisions: int | None = None) -> dict:
    """`serve` on a video of two rotten items (blue, blue, grey gap, blue, blue) with these [outputs]."""
    video = tmp / "belt.avi"
    if not video.exists():
        write_video(video, ["blue", "blue", "grey", "blue", "blue"])
    settings = Settings(threads=1, camera={"interval_ms": 1, "votes": 2, "window": 2, "scene_change": 0,
                                           "snapshots": str(tmp / "snaps")}, outputs=outputs)
    clf = Classifier(MODEL, num_threads=1)
    return serve(str(video), clf, rules_for(clf, settings), settings, tmp / "cam.db", threading.Event(),
                 max_decisions=max_decisions)


def test_camera_decisions_owed_to_a_dead_receiver_go_out_at_the_next_start_with_their_snapshot(tmp_path):
    port = free_port()
    webhook = {"webhook": {"url": f"http://127.0.0.1:{port}/hook", "verdicts": ["rotten"]}, **QUICK}
    _camera(tmp_path, webhook)
    down = _deliveries(tmp_path / "cam.db")
    rotten = {i for i, r in _items(tmp_path / "cam.db").items() if r["verdict"] == "rotten"}
    assert rotten and [(r["item_id"], r["state"]) for r in down] == [(i, "failed") for i in sorted(rotten)]
    hook = Hook(port)
    try:
        _camera(tmp_path, webhook, max_decisions=0)  # the restart decides nothing: only what is owed goes out
    finally:
        hook.close()
    items = _items(tmp_path / "cam.db")
    got = sorted((b for b, _ in hook.received), key=lambda b: b["item_id"])
    assert [b["item_id"] for b in got] == sorted(rotten)
    for body in got:
        item = items[body["item_id"]]
        assert body["idempotency_key"] == str(item["id"]) and body["source"] == "camera"
        assert body["snapshot"] == item["destination"] and Path(body["snapshot"]).is_file()
        assert body["votes"] == "2/2" and body["device"].endswith("belt.avi")
    assert [r["state"] for r in _deliveries(tmp_path / "cam.db")] == ["sent"] * len(rotten)
