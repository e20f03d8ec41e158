"""`sorter camera` keeps a random share of every verdict's snapshots (`camera.keep_share`, issue 16) and
records that share on each row (`items.keep_p`), so confident fresh items can be audited and the audits
weighted back. A real video file through `sorter.camera.serve` (what the CLI calls) with the real colour
model, a real SQLite file and a seeded RNG: the kept counts are exact."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import cv2
import pytest

from sorter import store
from sorter.audit import import_folder
from sorter.camera import serve
from sorter.card import sha256_file
from sorter.classify import rules_for
from sorter.config import ConfigError, Settings, load_settings
from sorter.model import Classifier
from tests.camera_helpers import write_video
from tests.conftest import COLOR_INT8

pytestmark = pytest.mark.timeout(60)
# every frame a new scene (one decision each): 45 fresh items (red, green) and 5 rotten (blue)
COLOURS = ["red", "green"] * 20 + ["blue", "red"] * 5
LABELS = ["freshgreen", "freshred", "rottenblue"]


def run_camera(tmp_path: Path, keep_share: dict | None, seed: int) -> list[dict]:
    camera = {"device": str(write_video(tmp_path / "belt.avi", COLOURS)), "interval_ms": 1, "votes": 1,
              "window": 1, "snapshots": str(tmp_path / "snaps")}
    if keep_share is not None:
        camera["keep_share"] = keep_share
    settings = Settings.model_validate({"model": str(COLOR_INT8), "db": str(tmp_path / "cam.db"), "camera": camera})
    clf = Classifier(COLOR_INT8, num_threads=1)
    serve(camera["device"], clf, rules_for(clf, settings), settings, settings.db, threading.Event(),
          rng=random.Random(seed))
    conn = store.open_reader(settings.db)
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM items ORDER BY id")]
    finally:
        conn.close()


def test_a_seeded_share_of_fresh_items_is_kept_and_every_row_records_its_share(tmp_path):
    rows = run_camera(tmp_path, {"fresh": 0.2}, seed=3)
    assert [r["verdict"] for r in rows] == ["fresh"] * 40 + ["rotten", "fresh"] * 5
    draws = random.Random(3)  # one draw per fresh item, in order; rotten (share 1) draws nothing
    expected = [draws.random() < 0.2 if r["verdict"] == "fresh" else True for r in rows]
    kept = [r["destination"] is not None for r in rows]
    assert kept == expected
    assert sum(k for k, r in zip(kept, rows, strict=True) if r["verdict"] == "fresh") == 7  # of 45 fresh
    assert sum(k for k, r in zip(kept, rows, strict=True) if r["verdict"] == "rotten") == 5  # all rotten
    assert {(r["verdict"], r["keep_p"]) for r in rows} == {("fresh", 0.2), ("rotten", 1.0)}
    files = sorted((tmp_path / "snaps").glob("*/*.jpg"))
    assert len(files) == 12 and sorted(r["destination"] for r in rows if r["destination"]) == [str(f) for f in files]
    for r in rows:  # a kept snapshot carries its content hash (audits find camera items by it); others none
        assert r["sha256"] == (sha256_file(Path(r["destination"])) if r["destination"] else None)


def test_the_default_keeps_two_percent_of_fresh_and_all_rotten(tmp_path):
    rows = run_camera(tmp_path, None, seed=0)
    draws = random.Random(0)
    expected = [draws.random() < 0.02 if r["verdict"] == "fresh" else True for r in rows]
    assert [r["destination"] is not None for r in rows] == expected
    assert sum(expected) == 5 + 2  # every rotten item, and two of the 45 fresh with this seed
    assert {(r["verdict"], r["keep_p"]) for r in rows} == {("fresh", 0.02), ("rotten", 1.0)}


def test_a_kept_fresh_snapshot_can_be_audited_by_content_hash(tmp_path):
    rows = run_camera(tmp_path, {"fresh": 1.0, "rotten": 0.0}, seed=1)
    assert [r["destination"] is not None for r in rows] == [r["verdict"] == "fresh" for r in rows]
    audit = tmp_path / "audit" / "freshred"
    audit.mkdir(parents=True)
    first = Path(rows[0]["destination"])
    (audit / first.name).write_bytes(first.read_bytes())
    result = import_folder(tmp_path / "cam.db", tmp_path / "audit", LABELS, "ann")
    assert (result.inserted, result.errors) == (1, [])
    conn = store.open_reader(tmp_path / "cam.db")
    assert [tuple(r) for r in conn.execute("SELECT item_id, true_label FROM audits")] == [(rows[0]["id"], "freshred")]
    assert cv2.imread(str(first)) is not None


@pytest.mark.parametrize(("toml", "message"), [
    ("keep_share = {frsh = 0.1}", "camera.keep_share: Value error, not a verdict: 'frsh' (verdicts are fresh, "
                                  "rotten, uncertain, unknown)"),
    ("keep_share = {fresh = 1.5}", "camera.keep_share: Value error, a share is between 0 and 1: fresh = 1.5"),
])
def test_a_bad_keep_share_is_one_clear_line(tmp_path, toml, message):
    cfg = tmp_path / "s.toml"
    cfg.write_text(f"[camera]\n{toml}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert str(err.value) == f"{cfg}: {message}"


def test_a_verdict_not_named_keeps_its_default_share(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text("[camera]\nkeep_share = {fresh = 0.1}\n")
    assert load_settings(cfg).camera.keep_share == {"fresh": 0.1, "rotten": 1.0, "uncertain": 1.0, "unknown": 1.0}
