"""Crash safety: SIGKILL `sorter watch` at random moments while 300 files flow; nothing lost or doubled."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from tests.watch_helpers import (
    EXPECTED,
    drop,
    files_under,
    jpeg,
    kill_env,
    rows,
    start_watch,
    watch_command,
)

COLORS = ["red", "green", "blue", "grey"]
N_DISTINCT, N_DUPES = 240, 60


def test_sigkill_at_random_moments_loses_and_doubles_nothing(tmp_path):
    rng = random.Random(1234)
    incoming = tmp_path / "in"
    incoming.mkdir()
    contents = [jpeg(COLORS[i % 4], tag=f"item-{i}") for i in range(N_DISTINCT)]
    files = [(f"f{i:03d}.jpg", contents[i], COLORS[i % 4]) for i in range(N_DISTINCT)]
    files += [(f"d{j:03d}.jpg", contents[k], COLORS[k % 4])
              for j, k in enumerate(rng.sample(range(N_DISTINCT), N_DUPES))]
    rng.shuffle(files)
    color_of = {hashlib.sha256(data).hexdigest(): color for _, data, color in files}

    for name, data, _ in files[:100]:  # a backlog before the first start
        drop(incoming, name, data)
    queue = files[100:]
    kills = 0
    for run in range(4):
        proc = start_watch(tmp_path, run)
        chunk, queue = queue[:50], queue[50:]
        kill_at = rng.randrange(len(chunk))
        for i, (name, data, _) in enumerate(chunk):
            drop(incoming, name, data)
            if i == kill_at:  # mid-flow: some files queued, some decoded, a batch maybe half moved
                time.sleep(rng.uniform(0, 0.3))
                proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
    assert kills >= 3
    for name, data, _ in queue:
        drop(incoming, name, data)
    final = subprocess.run(watch_command(tmp_path, "--once"), env=kill_env(), capture_output=True, text=True,
                           timeout=120)
    assert final.returncode == 0, final.stderr

    assert list(incoming.iterdir()) == []
    placed = files_under(tmp_path / "out")
    assert len(placed) == len(files) == 300
    per_content = Counter()
    for path in placed:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        rel = path.parent.relative_to(tmp_path / "out").as_posix()
        if rel == "duplicates":
            continue
        assert rel == EXPECTED[color_of[sha]], f"{path} holds a {color_of[sha]} image"
        per_content[sha] += 1
    assert set(per_content.values()) == {1} and len(per_content) == N_DISTINCT

    got = rows(tmp_path / "db.sqlite")
    assert len(got) == len(files)
    assert sorted(Path(r["source_path"]).name for r in got) == sorted(name for name, _, _ in files)
    firsts = [r for r in got if r["duplicate_of"] is None]
    assert len(firsts) == N_DISTINCT and len({r["sha256"] for r in firsts}) == N_DISTINCT
    assert {r["state"] for r in got} == {"done"} and all(r["error"] is None for r in got)
    assert sorted(r["destination"] for r in got) == sorted(str(p) for p in placed)
    by_id = {r["id"]: r for r in got}
    for r in got:
        if r["duplicate_of"] is not None:
            assert by_id[r["duplicate_of"]]["sha256"] == r["sha256"]
            assert Path(r["destination"]).parent == tmp_path / "out" / "duplicates"


def test_restart_finishes_intents_left_at_every_crash_point(tmp_path):
    """The states a SIGKILL can leave between 'record intent' and 'record done', finished on start."""
    from sorter import store
    from sorter import watch as watch_mod
    from tests.watch_helpers import make_watcher

    incoming, out = tmp_path / "in", tmp_path / "out" / "fresh" / "freshred"
    incoming.mkdir()
    out.mkdir(parents=True)
    data = {n: jpeg("red", tag=n) for n in ("before", "after", "between", "gone")}
    (incoming / "before.jpg").write_bytes(data["before"])  # killed before the move
    (out / "after.jpg").write_bytes(data["after"])  # killed after the move, before 'done'
    (incoming / "between.jpg").write_bytes(data["between"])  # killed between link and unlink
    os.link(incoming / "between.jpg", out / "between.jpg")
    db = store.open_writer(tmp_path / "db.sqlite")
    store.write_intents(db, [{"sha256": hashlib.sha256(d).hexdigest(), "source_path": str(incoming / f"{n}.jpg"),
                              "destination": str(out / f"{n}.jpg"), "state": "intent", "source": "watch",
                              "received_at": store.now_iso()} for n, d in data.items()])
    db.close()
    for name in ("before.jpg", "between.jpg"):
        os.utime(incoming / name, (time.time() - 60, time.time() - 60))
    summary = make_watcher(tmp_path).run(watch_mod.threading.Event(), once=True)
    assert summary.recovered == 4 and summary.routed == 0  # finished by recovery, not re-processed
    assert list(incoming.iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == ["after.jpg", "before.jpg", "between.jpg"]
    got = {Path(r["source_path"]).name: r for r in rows(tmp_path / "db.sqlite")}
    assert len(got) == 4 and {r["state"] for r in got.values()} == {"done"}
    assert got["gone.jpg"]["error"].startswith("lost") and got["before.jpg"]["error"] is None
