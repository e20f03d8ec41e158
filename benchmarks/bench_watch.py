"""Benchmark `sorter watch --once` against the interpreter alone, plus decode cost, RSS and start-up.

Run: python benchmarks/bench_watch.py [--model M] [--count 1000] [--src ../shared/data/fruit_dev]
     [--against REV]   also run REV's `sorter watch` (a git worktree) in every round: new/old ratio
Each photo is copied with a unique JPEG COM segment, so every file has distinct bytes (no
duplicates) and identical pixels. Two sets: ≤224 px re-encodes and 1000 px upscaled copies.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sorter.imaging import decode  # noqa: E402
from sorter.model import Classifier, default_threads, inference_layout  # noqa: E402

SORTER = Path(sys.executable).parent / "sorter"


def with_comment(jpeg: bytes, text: str) -> bytes:
    """Insert a COM segment after SOI: new bytes (new hash), same pixels."""
    body = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def make_set(photos: list[Path], count: int, side: int, folder: Path) -> list[bytes]:
    """`count` distinct JPEGs with the longer side `side` px, written to folder and returned."""
    folder.mkdir(parents=True)
    encoded = []
    for path in photos[: min(len(photos), 200)]:
        img = cv2.imread(str(path))
        if img is None:
            continue
        scale = side / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        encoded.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    out, old = [], time.time() - 3600
    for i in range(count):
        data = with_comment(encoded[i % len(encoded)], f"bench-{i}")
        target = folder / f"img{i:05d}.jpg"
        target.write_bytes(data)
        os.utime(target, (old, old))  # settled: no stability wait
        out.append(data)
    return out


def decode_cost(data: list[bytes], size: tuple[int, int]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    images = [decode(d, size) for d in data]
    return (time.perf_counter() - start) / len(data), np.stack(images)


def inference_rate(clf: Classifier, images: np.ndarray, batch: int, interpreters: int = 1) -> float:
    """Images/s of `interpreters` copies of the interpreter, each scoring its share of the images
    in batches on its own thread: the raw interpreter with nothing else to do."""
    clfs = [clf] + [clf.replica() for _ in range(interpreters - 1)]
    for c in clfs:
        c.predict(images[:batch])  # warm-up and tensor allocation
    shares = np.array_split(np.arange(len(images)), interpreters)

    def work(c: Classifier, idx: np.ndarray) -> None:
        for i in range(0, len(idx), batch):
            c.predict(images[idx[i : i + batch]])

    threads = [threading.Thread(target=work, args=pair) for pair in zip(clfs, shares, strict=True)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(images) / (time.perf_counter() - start)


def alone_rates(clfs: dict[tuple[int, int], Classifier], images: np.ndarray, batch: int) -> dict[str, float]:
    """Inference alone in each layout (interpreters × threads), named like "2×1"."""
    return {f"{n}×{t}": inference_rate(clf, images, batch, n) for (n, t), clf in clfs.items()}


def _env(layout: tuple[int, int], batch: int, code: Path | None = None) -> dict[str, str]:
    """The daemon's settings; `code`: a checkout whose `sorter` package runs instead of this one's."""
    extra = {"PYTHONPATH": str(code)} if code else {}
    return {**os.environ, **extra, "SORTER_INTERPRETERS": str(layout[0]), "SORTER_THREADS": str(layout[1]),
            "SORTER_BATCH_SIZE": str(batch), "SORTER_STABLE_SECONDS": "0"}


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .* routed ")


def _vm_hwm_kb(pid: int) -> int:
    """Peak resident set of a running process, from /proc (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def daemon_run(model: Path, work: Path, incoming: Path, layout: tuple[int, int], batch: int,
               code: Path | None = None) -> dict[str, float]:
    """`sorter watch --once` (of `code`, a checkout, when given): wall time, steady rate (`middle_rate` of
    the routed lines), whole-window rate (`_work_window`), peak RSS (MB)."""
    log = work / f"{incoming.name}.log"
    cmd = [str(SORTER), "watch", str(incoming), "--out", str(work / f"{incoming.name}-out"),
           "--db", str(work / f"{incoming.name}.db"), "--model", str(model), "--once"]
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stderr=err, env=_env(layout, batch, code))
    peak_kb = 0
    while proc.poll() is None:  # VmHWM of the daemon itself (ru_maxrss would start at this process's size)
        peak_kb = max(peak_kb, _vm_hwm_kb(proc.pid))
        time.sleep(0.02)
    status = proc.returncode
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"sorter watch failed:\n{log.read_text()[-2000:]}")
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
              for line in log.read_text().splitlines() if (m := _STAMP.match(line))]
    return {"wall": wall, "steady": middle_rate(sorted(stamps)),
            "window": len(stamps) / _work_window(work / f"{incoming.name}.db"),
            "end_to_end": len(stamps) / wall, "rss_mb": peak_kb / 1024, "routed": len(stamps)}


def middle_rate(stamps: list[datetime]) -> float:
    """Items per second in the steady state: the least-squares slope of routed count against time
    over the middle 80 % of the routed items (start-up, the first batch's trip through the pipeline
    and the final drain left out). A fit, not the rate between the 10 % and 90 % items: routing is
    background work that routes up to 8 batches at once, and where those two items fall on such a
    step moved the end-point rate by ±8 % (even above inference alone). Routing that lags at the
    span's start and catches up before its end still lifts it: the whole window is the headline."""
    lo, hi = int(0.1 * (len(stamps) - 1)), int(0.9 * (len(stamps) - 1))
    seconds = np.array([(stamp - stamps[lo]).total_seconds() for stamp in stamps[lo : hi + 1]])
    if hi <= lo or seconds[-1] <= 0:
        return float("nan")
    return float(np.polyfit(seconds, np.arange(len(seconds)), 1)[0])


def _work_window(db: Path) -> float:
    """Seconds from the first photo read to the last one routed, from the daemon's own rows: every
    photo's whole path, start-up excluded. Unlike the routed log lines it cannot look faster when
    routing lags behind inference and catches up at the end."""
    with closing(sqlite3.connect(db)) as conn:
        first, last = conn.execute("SELECT MIN(received_at), MAX(routed_at) FROM items").fetchone()
    return (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()


def time_to_ready(model: Path, work: Path, tries: int = 3) -> float:
    """Median seconds from exec to the 'ready' log line of `sorter watch` on an empty folder."""
    times = []
    for i in range(tries):
        empty = work / f"empty{i}"
        empty.mkdir()
        log = work / f"ready{i}.log"
        start = time.perf_counter()
        with open(log, "w") as err:
            proc = subprocess.Popen([str(SORTER), "watch", str(empty), "--out", str(work / "ready-out"),
                                     "--db", str(work / f"ready{i}.db"), "--model", str(model)],
                                    stderr=err, env=_env((1, 1), 8))
        while "ready" not in log.read_text():
            if proc.poll() is not None:
                raise SystemExit(f"sorter watch exited early:\n{log.read_text()}")
            time.sleep(0.01)
        times.append(time.perf_counter() - start)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fruit-lite1-int8.tflite")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "fruit_dev")
    parser.add_argument("--cores", type=int, default=default_threads(), help="Threads in all (default: every core).")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5,
                        help="Alone-then-watch rounds per set; the table gives the median (shared machines drift).")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    parser.add_argument("--against", metavar="REV", help="Also run this git revision's sorter watch each round "
                                                          "(a worktree), and print new/old throughput.")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    photos = sorted(p for p in args.src.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not photos:
        raise SystemExit(f"no photos under {args.src}")
    layout = inference_layout(None, None, args.cores)  # what `sorter watch` picks on this many cores
    # inference alone in each distinct layout: one interpreter on every core, and the daemon's own
    alone_clfs = {lay: Classifier(args.model, num_threads=lay[1], max_batch=args.batch)
                  for lay in dict.fromkeys([(1, args.cores), layout])}
    single = next(iter(alone_clfs.values()))
    work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    rows = []
    old = worktree(args.against, work / "old") if args.against else None
    versus: list[tuple[str, list[float]]] = []
    try:
        for label, side in (("224 px", 224), ("1000 px", 1000)):
            source = work / f"src{side}"
            data = make_set(photos, args.count, side, source)
            per_image, images = decode_cost(data, single.input_size)
            rounds, new_over_old = [], []
            for i in range(args.rounds):  # alone, watch, alone again: drift during a round hits both alike
                before = alone_rates(alone_clfs, images, args.batch)
                incoming = work / f"in{side}-{i}"
                shutil.copytree(source, incoming)  # copy2 keeps the settled (old) mtimes
                if old is not None:  # old and new back to back, which goes first alternating by round
                    incoming_old = work / f"old{side}-{i}"
                    shutil.copytree(source, incoming_old)
                    pair = [(incoming, None), (incoming_old, old)][:: 1 if i % 2 else -1]
                    got = {code: daemon_run(args.model, work, folder, layout, args.batch, code)
                           for folder, code in pair}
                    run = got[None]
                    new_over_old.append(run["window"] / got[old]["window"])
                else:
                    run = daemon_run(args.model, work, incoming, layout, args.batch)
                after = alone_rates(alone_clfs, images, args.batch)
                rounds.append((run, {name: (before[name] + after[name]) / 2 for name in before}))
            rows.append((label, rounds, per_image))
            versus.append((label, new_over_old))
        ready = time_to_ready(args.model, work)
    finally:
        if old is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(args, single, layout, rows, ready)
    if old is not None:
        print_versus(args.against, versus)


def worktree(rev: str, folder: Path) -> Path:
    """A detached checkout of `rev`, whose `sorter` package the old runs import (PYTHONPATH)."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev], check=True,
                   capture_output=True)
    return folder


def print_versus(rev: str, versus: list[tuple[str, list[float]]]) -> None:
    """This checkout's whole-window throughput over REV's, round by round (each pair back to back)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"this checkout vs {rev}: watch img/s (first read → last routed), new / old")
    for col in ("images", "median new/old (target ≥0.97)", "range", "rounds"):
        table.add_column(col, justify="right")
    for label, ratios in versus:
        table.add_row(label, f"{statistics.median(ratios):.3f}", f"{min(ratios):.3f}–{max(ratios):.3f}",
                      " ".join(f"{r:.3f}" for r in ratios))
    Console(width=200).print(table)


def print_table(args: argparse.Namespace, clf: Classifier, layout: tuple[int, int], rows: list,
                ready: float) -> None:
    """Each round's ratio divides the watch's rate by the FASTER inference-alone layout, measured just
    before and just after it (the mean of the two). The headline ratio takes the whole window, first
    read to last routed: nothing left out, and nothing for routing that lags and catches up to flatter.
    Each row is the median round by that ratio (the lower one of an even count); ranges cover all rounds."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sorter watch --once: {args.count} images, model {clf.path.name} "
                        f"({clf.input_size[1]}×{clf.input_size[0]}), {args.cores} cores, watch runs "
                        f"{layout[0]} interpreter(s) × {layout[1]} thread(s), batch {args.batch}, "
                        f"median round of {args.rounds}")
    layouts = list(rows[0][1][0][1])
    for col in ("images", "watch img/s (first read → last routed)", "watch img/s (steady: fit over middle 80 %)",
                "watch img/s (end-to-end)", *(f"inference alone {name} img/s" for name in layouts),
                "ratio, first read → last routed (target ≥0.90)", "ratio range", "ratio, steady",
                "decode ms/img", "peak RSS MB (<250)"):
        table.add_column(col, justify="right")
    for label, rounds, per_image in rows:
        ratios = [run["window"] / max(alone.values()) for run, alone in rounds]
        median = statistics.median_low(ratios)
        run, alone = rounds[ratios.index(median)]
        table.add_row(label, f"{run['window']:.0f}", f"{run['steady']:.0f}", f"{run['end_to_end']:.0f}",
                      *(f"{alone[name]:.0f}" for name in layouts),
                      f"{median:.2f}", f"{min(ratios):.2f}–{max(ratios):.2f}",
                      f"{run['steady'] / max(alone.values()):.2f}",
                      f"{per_image * 1000:.2f}", f"{max(r['rss_mb'] for r, _ in rounds):.0f}")
    Console(width=200).print(table)
    print(f"time to 'ready' (median of 3): {ready:.2f} s (target < 2 s)")


if __name__ == "__main__":
    main()
