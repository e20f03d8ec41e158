"""The results database against its size: bytes per row (by table and index), and the commands that read it.

    python benchmarks/bench_db.py [--sizes 1000000,5000000,20000000] [--runs 3] [--work DIR] [--keep] [--against REV]

Each database is built through the project's own migrations (`store.open_writer`), then filled with rows
shaped like a line's: 10 items a second for 16 hours a day (576,000 a day, `--per-day`) ending now, so the
last 24 h hold a full day whatever the size (90 days of retention are ~52 M rows), six labels, verdicts
60 % fresh, 25 % rotten, 12 % uncertain, 3 % unknown, scores for every label, one model, paths under a
camera's dated folders, 0.5 % audited. Rows go in by plain INSERTs in big transactions (synchronous off while
building: this measures the database that results, not the daemon's write path). Then, per size, `runs` times each:

    sorter db stats                                  seconds, peak RSS of the command
    sorter report --since 24h --no-publish           seconds, peak RSS
    sorter audit sample --n 50 --since 24h           seconds, peak RSS
    the watch daemon's writes (3,000 items)          writer-thread CPU per item, against an empty database
    --prune-days D: db prune of the oldest D days    seconds, the writer's longest commit gap, file size after

and the file's bytes per row, split over the items table, each of its indexes and the rest (SQLite's
`dbstat`). One table at the end, sizes side by side; the figures issue 18 sets targets for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sorter import item_layout, store  # noqa: E402

LABELS = ["freshapples", "freshbanana", "freshoranges", "rottenapples", "rottenbanana", "rottenoranges"]
VERDICTS = [("fresh", 0.60), ("rotten", 0.25), ("uncertain", 0.12), ("unknown", 0.03)]
PER_DAY = 576_000  # 10 items/s for 16 h
CHUNK = 50_000
MODEL_SHA = hashlib.sha256(b"fruit-lite1-int8").hexdigest()


def _verdict(rng: random.Random) -> str:
    x, acc = rng.random(), 0.0
    for verdict, share in VERDICTS:
        acc += share
        if x < acc:
            return verdict
    return VERDICTS[-1][0]


IMAGES = 1000  # image files per (verdict folder, label): rows share them, so `audit sample` finds real files


def make_images(root: Path) -> Path:
    """OUT's folders with IMAGES small JPEG-named files each; every row's destination is one of them."""
    for folder in ("fresh", "rotten", "uncertain", "unknown"):
        for label in LABELS:
            (root / folder / label).mkdir(parents=True, exist_ok=True)
            for k in range(IMAGES):
                (root / folder / label / f"IMG_{k:08d}.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    return root


def _row(i: int, n: int, end: datetime, rng: random.Random, per_day: int, out: Path) -> tuple:
    """One item as `sorter watch` writes it (routed, done), the i-th of n arriving at per_day items a day."""
    when = end - timedelta(days=(n - i) / per_day)
    verdict = _verdict(rng)
    side = LABELS[3:] if verdict == "rotten" else LABELS[:3]
    label = rng.choice(side if verdict in ("fresh", "rotten") else LABELS)
    raw = [rng.random() for _ in LABELS]
    raw[LABELS.index(label)] += 3
    total = sum(raw)
    scores = json.dumps({lbl: round(v / total, 6) for lbl, v in zip(LABELS, raw, strict=True)})
    name = f"IMG_{i:08d}.jpg"
    folder = "unknown" if verdict == "unknown" else verdict
    stamp = when.isoformat(timespec="milliseconds")
    routed = (when + timedelta(milliseconds=40)).isoformat(timespec="milliseconds")
    return (hashlib.sha256(i.to_bytes(8, "little")).hexdigest(), f"/srv/incoming/cam1/{when:%Y-%m-%d}/{name}",
            f"{out}/{folder}/{label}/IMG_{i % IMAGES:08d}.jpg", label, round(max(raw) / total, 6), verdict, scores,
            "fruit-lite1-int8", MODEL_SHA, "watch", stamp, routed, "done", round(rng.uniform(-2, 9), 4))


INSERT_COLUMNS = ("sha256", "source_path", "destination", "label", "confidence", "verdict", "scores", "model_id",
                  "model_sha256", "source", "received_at", "routed_at", "state", "ood_score")
INSERT = f"INSERT INTO items ({', '.join(INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(INSERT_COLUMNS))})"


def build(path: Path, n: int, out: Path, per_day: int = PER_DAY, seed: int = 0, code: Path | None = None) -> float:
    """A database of `n` items (0.5 % audited) made through the migrations of this checkout or, with `code`,
    that one's (an older schema); seconds it took. Compact rows (m011) go in through the store's encoder, the
    old table by plain INSERTs."""
    started = time.perf_counter()
    schema = "import sys; from sorter import store; store.open_writer(sys.argv[1]).close()"
    subprocess.run([sys.executable, "-c", schema, str(path)], check=True, cwd=path.parent,  # not '' = this checkout
                   env={**os.environ, "PYTHONPATH": str(code or ROOT)})
    rng = random.Random(seed)
    end = datetime.now(UTC)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    compact = store.has_table(conn, item_layout.ROWS)
    encoder = item_layout.Encoder(conn)
    for start in range(0, n, CHUNK):
        conn.execute("BEGIN")
        rows = (_row(i, n, end, rng, per_day, out) for i in range(start, min(n, start + CHUNK)))
        if compact:
            stored = [encoder.encode(dict(zip(INSERT_COLUMNS, r, strict=True))) for r in rows]
            conn.executemany(item_layout.insert_sql(tuple(stored[0])), [list(r.values()) for r in stored])
        else:
            conn.executemany(INSERT, rows)
        conn.execute("COMMIT")
    audited = rng.sample(range(1, n + 1), max(1, n // 200))
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO audits (item_id, sha256, true_label, auditor, audited_at, origin) "
                     "SELECT id, sha256, label, 'ana', routed_at, 'bench' FROM items WHERE id = ?",
                     ((i,) for i in audited))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def bytes_per_row(path: Path) -> dict[str, float]:
    """The file's bytes per item: all of it, the items table, each of its indexes, everything else."""
    conn = sqlite3.connect(path)
    try:
        table = item_layout.ROWS if store.has_table(conn, item_layout.ROWS) else "items"
        n = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        pages = dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
        indexes = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                              "AND tbl_name = ?", [table])]
    finally:
        conn.close()
    out = {"file": path.stat().st_size / n, "items table": pages.get(table, 0) / n}
    out.update({f"index {name}": pages.get(name, 0) / n for name in sorted(indexes)})
    shown = {table, *indexes}
    out["everything else"] = sum(v for k, v in pages.items() if k not in shown) / n
    return out


CLI = "import sys; from sorter.cli import app; sys.argv[0] = 'sorter'; app()"


def timed(args: list[str], cwd: Path, code: Path | None = None) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one `sorter ARGS` run (the child's own, from wait4), by this checkout's
    sorter package or, with `code`, that checkout's (PYTHONPATH)."""
    command = [sys.executable, "-c", CLI, *args]
    env = {**os.environ, "PYTHONPATH": str(code or ROOT)}  # this checkout's code, whatever is installed
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        why = proc.stderr.read().decode()[-1500:] if proc.stderr else ""
        raise SystemExit(f"sorter {' '.join(args)} failed: {why}")
    return elapsed, usage.ru_maxrss / 1024


def _commands(db: Path, work: Path) -> dict[str, list[str]]:
    return {
        "db stats": ["db", "stats", "--db", str(db), "--json"],
        "report --since 24h": ["report", "--db", str(db), "--since", "24h", "--out", str(work / "report"),
                               "--no-publish"],
        "audit sample --n 50 --since 24h": ["audit", "sample", "--db", str(db), "--n", "50", "--since", "24h",
                                            "--out", str(work / "sample")],
    }


def operations(db: Path, work: Path, old: tuple[Path, Path] | None) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Each command's (seconds, MB) per run, this checkout's ("new") on its database and, with `old` (that
    checkout, its database of the same rows), that checkout's on its own, back to back, alternating which
    goes first."""
    sides = {"new": (_commands(db, work), None), **({"old": (_commands(old[1], work), old[0])} if old else {})}
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name in sides["new"][0]:
        runs = out.setdefault(name, {side: [] for side in sides})
        for i in range(RUNS):
            for side in list(sides) if i % 2 == 0 else list(sides)[::-1]:
                commands, code = sides[side]
                runs[side].append(timed(commands[name], work, code))
    return out


RUNS = 3
WRITES = 3000  # items the writer benchmark writes, in batches as `sorter watch` makes them
BATCH = 16


def writer_cpu(path: Path, out: Path, seed: int = 1) -> float:
    """Milliseconds of writer-thread CPU per item for `sorter watch`'s write path (`store.write_intents`
    then `store.mark_done`, batches of BATCH, synchronous=FULL as the daemon runs) on this database: the
    CPU, not the wall time, so the disk's fsync latency does not hide what the indexes cost."""
    rng = random.Random(seed)
    db = store.open_writer(path)
    try:
        spent = 0.0
        for start in range(0, WRITES, BATCH):
            now = datetime.now(UTC)
            rows = []
            for i in range(start, start + BATCH):
                values = dict(zip(INSERT_COLUMNS, _row(i, 1, now, rng, PER_DAY, out), strict=True))
                values.update(sha256=hashlib.sha256(rng.randbytes(16)).hexdigest(), state="intent", routed_at=None,
                              scores=json.loads(values["scores"]))
                rows.append(values)
            began = time.thread_time()
            ids = store.write_intents(db, rows)
            store.mark_done(db, [{"id": i, "state": "done", "routed_at": store.now_iso()} for i in ids])
            spent += time.thread_time() - began
    finally:
        db.close()
    return spent / WRITES * 1000


def prune_beside_writer(path: Path, days: float, per_day: int) -> dict[str, float]:
    """`sorter db prune` of the oldest `days` of rows (store.apply_retention: batches, pauses, incremental
    vacuum) while a thread writes as `sorter watch` does, one item every 2 ms through the store's functions:
    seconds, rows deleted, the writer's longest and 99th-percentile gap between commits, file MB after."""
    import threading

    conn = sqlite3.connect(path)
    first = conn.execute("SELECT received_at FROM items ORDER BY received_ms LIMIT 1").fetchone()[0]
    conn.close()
    age = datetime.now(UTC) - datetime.fromisoformat(first) - timedelta(days=days)
    commits: list[float] = []
    stop = threading.Event()

    def daemon() -> None:
        db = store.open_writer(path)
        rng = random.Random(7)
        while not stop.is_set():
            values = dict(zip(INSERT_COLUMNS, _row(0, 1, datetime.now(UTC), rng, per_day, path.parent), strict=True))
            values.update(sha256=hashlib.sha256(rng.randbytes(16)).hexdigest(), state="intent", routed_at=None)
            ids = store.write_intents(db, [values])
            store.mark_done(db, [{"id": ids[0], "state": "done", "routed_at": store.now_iso()}])
            commits.append(time.monotonic())
            time.sleep(0.002)
        db.close()

    writer = threading.Thread(target=daemon)
    writer.start()
    time.sleep(0.5)
    began = time.monotonic()
    result = store.apply_retention(path, age, timedelta(days=3650), timedelta(days=3650), None)
    ended = time.monotonic()
    stop.set()
    writer.join()
    during = [t for t in commits if began <= t <= ended]
    gaps = sorted(b - a for a, b in zip([began, *during], [*during, ended], strict=True))
    return {"seconds": ended - began, "deleted": result.items, "max_gap_ms": gaps[-1] * 1000,
            "p99_gap_ms": gaps[int(len(gaps) * 0.99)] * 1000, "mb_after": path.stat().st_size / 1e6}


def in_child(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a forked process: building a database or a writer's cache grows this process, and a
    command forked from it would start with (and report as its peak) that memory."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(fn, args)


def main() -> None:
    global RUNS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,5000000,20000000", help="Item rows per database.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--per-day", type=int, default=PER_DAY, help="Items a day (the last 24 h hold this many).")
    parser.add_argument("--work", type=Path, default=None, help="Where the databases go (big: ~800 B a row).")
    parser.add_argument("--keep", action="store_true", help="Keep the databases.")
    parser.add_argument("--prune-days", type=float, default=0,
                        help="Also prune the oldest DAYS of each database while a writer commits alongside.")
    parser.add_argument("--against", metavar="REV", help="Also run this git revision's commands on each database "
                                                          "(a worktree): old beside new.")
    args = parser.parse_args()
    RUNS = args.runs
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-db-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    old = work / "old" if args.against else None
    if old is not None:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.against], check=True,
                       capture_output=True)
    images = make_images(work / "sorted")
    empty = in_child(writer_cpu, work / "empty.db", images)
    try:
        for n in sizes:
            db = work / f"items-{n}.db"
            db.unlink(missing_ok=True)
            built = in_child(build, db, n, images, args.per_day)
            before = None
            if old is not None:
                before = work / f"items-{n}-old.db"
                before.unlink(missing_ok=True)
                in_child(build, before, n, images, args.per_day, 0, old)
            results[n] = (built, bytes_per_row(db), operations(db, work, (old, before) if before else None),
                          in_child(writer_cpu, db, images),
                          in_child(prune_beside_writer, db, args.prune_days, args.per_day) if args.prune_days else None,
                          bytes_per_row(before)["file"] if before else None)
            if not args.keep:
                for path in (db, before):
                    if path is not None:
                        path.unlink()
    finally:
        if old is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print_table(sizes, results, args.per_day, empty)


def print_table(sizes: list[int], results: dict, per_day: int, empty: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"results database against its size, {per_day:,} items a day "
                        f"(median of {RUNS} runs; min-max)")
    table.add_column("figure")
    for n in sizes:
        table.add_column(f"{n:,} rows", justify="right")
    for key in results[sizes[0]][1]:
        table.add_row(f"bytes/row: {key}", *(f"{results[n][1].get(key, 0):.0f}" for n in sizes))
    for op, sides in results[sizes[0]][2].items():
        for side in sides:
            runs = {n: results[n][2][op][side] for n in sizes}
            tag = f" ({side})" if len(sides) > 1 else ""
            table.add_row(f"{op}{tag}: seconds", *(f"{statistics.median(s for s, _ in runs[n]):.2f} "
                                                   f"({min(s for s, _ in runs[n]):.2f}-"
                                                   f"{max(s for s, _ in runs[n]):.2f})" for n in sizes))
            table.add_row(f"{op}{tag}: peak RSS MB", *(f"{max(m for _, m in runs[n]):.0f}" for n in sizes))
    table.add_row(f"writer CPU ms/item (empty database: {empty:.3f})", *(f"{results[n][3]:.3f} "
                                                                      f"(×{results[n][3] / empty:.2f})" for n in sizes))
    if results[sizes[0]][4]:
        table.add_row(f"prune oldest {results[sizes[0]][4]['deleted']:,} rows beside a writer: seconds",
                      *(f"{results[n][4]['seconds']:.0f}" for n in sizes))
        table.add_row("… writer's longest / p99 gap between commits, ms",
                      *(f"{results[n][4]['max_gap_ms']:.0f} / {results[n][4]['p99_gap_ms']:.0f}" for n in sizes))
        table.add_row("… file MB after", *(f"{results[n][4]['mb_after']:.0f}" for n in sizes))
    if results[sizes[0]][5]:
        table.add_row("bytes/row: file (old)", *(f"{results[n][5]:.0f}" for n in sizes))
    table.add_row("build seconds (not a target)", *(f"{results[n][0]:.0f}" for n in sizes))
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
