"""Frames per second classified by `sorter camera` from a 640×480 video file, beside inference alone.

    python benchmarks/bench_camera.py [--model models/fruit-lite1-int8.tflite] [--frames 300] [--threads N]
                                      [--against REV [--rounds 5]]

The camera path is the real one (capture thread, stale guard, interval trigger on every frame,
K-of-N voting, SQLite rows for decisions; outputs in dry-run); inference alone is `predict` on
pre-resized frames, one at a time like the camera does. Their ratio is the pipeline's overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("BENCH_CODE") or str(ROOT))  # BENCH_CODE: a checkout to measure instead

from sorter import store  # noqa: E402
from sorter.camera import CameraRunner  # noqa: E402
from sorter.classify import rules_for  # noqa: E402
from sorter.config import CameraSettings  # noqa: E402
from sorter.imaging import resize_rgb  # noqa: E402
from sorter.model import DEFAULT_MODEL, Classifier  # noqa: E402
from sorter.outputs import Dispatcher  # noqa: E402


def make_video(path: Path, frames: int) -> Path:
    """A 640×480 MJPG belt: coloured items over a scrolling striped background, every frame distinct."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    stripes = (np.indices((480, 1280))[1] // 20 % 2 * 80 + 60).astype(np.uint8)
    colours = [(0, 0, 230), (0, 230, 0), (230, 0, 0), (128, 128, 128)]
    for i in range(frames):
        frame = np.repeat(stripes[:, (i * 5) % 640 : (i * 5) % 640 + 640, None], 3, axis=2)
        cv2.rectangle(frame, (200, 120), (440, 360), colours[(i // 30) % 4], -1)
        writer.write(frame)
    writer.release()
    return path


def camera_fps(video: Path, clf: Classifier, db: Path) -> tuple[float, int, int]:
    settings = CameraSettings(interval_ms=1, votes=3, window=5, snapshots=db.parent / "snaps",
                              stall_seconds=10, status_seconds=3600)
    writer = store.Writer(db)
    runner = CameraRunner(str(video), clf, rules_for(clf), settings, writer, Dispatcher([], dry_run=True),
                          dry_run=True)
    started = time.perf_counter()
    runner.run(threading.Event())
    elapsed = time.perf_counter() - started
    writer.close()
    return runner.status.classified / elapsed, runner.status.classified, sum(runner.status.decisions.values())


def inference_fps(video: Path, clf: Classifier, limit: int) -> float:
    cap = cv2.VideoCapture(str(video))
    inputs = []
    while len(inputs) < limit and (frame := cap.read()[1]) is not None:
        inputs.append(resize_rgb(frame, clf.input_size)[None])
    clf.predict(inputs[0])  # warm-up
    started = time.perf_counter()
    for x in inputs:
        clf.predict(x)
    return len(inputs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--against", metavar="REV", help="Also time this git revision's camera path.")
    parser.add_argument("--rounds", type=int, default=5, help="New/old pairs with --against.")
    parser.add_argument("--camera-only", type=Path, help=argparse.SUPPRESS)  # child: time VIDEO, print JSON
    args = parser.parse_args()
    if args.camera_only:
        clf = Classifier(args.model, num_threads=args.threads, max_batch=1)
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(camera_fps(args.camera_only, clf, Path(tmp) / "bench.db")[0]))
        return
    if args.against:
        versus(args)
        return
    clf = Classifier(args.model, num_threads=args.threads, max_batch=1)
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "belt-640x480.avi", args.frames)
        infer = inference_fps(video, clf, args.frames)
        fps, classified, decisions = camera_fps(video, clf, Path(tmp) / "bench.db")
    print(f"model {clf.path.name} ({clf.card.quantization}, input {clf.input_size[1]}×{clf.input_size[0]}, "
          f"{clf.num_threads} threads, {clf.backend}); video 640×480, {args.frames} frames")
    print(f"| {'path':<56} | {'frames/s':>9} | {'ms/frame':>8} |")
    print(f"|{'-' * 58}|{'-' * 11}|{'-' * 10}|")
    for name, value in ((f"sorter camera (decode→vote→DB; {classified} frames, {decisions} items)", fps),
                        ("inference alone (predict on resized input)", infer)):
        print(f"| {name:<56} | {value:>9.1f} | {1000 / value:>8.2f} |")
    print(f"pipeline overhead: {100 * (1 - fps / infer):.0f}% of the inference-only rate lost")


def versus(args: argparse.Namespace) -> None:
    """This checkout's camera frames/s over REV's, each pair timed back to back in child processes."""
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.against],
                       check=True, capture_output=True)
        try:
            video = make_video(Path(tmp) / "belt-640x480.avi", args.frames)
            ratios = []
            for i in range(args.rounds):
                got = {}
                for code in ([None, old] if i % 2 else [old, None]):
                    env = {**os.environ, "BENCH_CODE": str(code or ROOT)}
                    cmd = [sys.executable, __file__, "--model", str(args.model), "--camera-only", str(video)]
                    cmd += ["--threads", str(args.threads)] if args.threads else []
                    got[code] = float(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                                     text=True).stdout.split()[-1])
                ratios.append(got[None] / got[old])
                print(f"round {i + 1}: new {got[None]:.1f} frames/s, old {got[old]:.1f} frames/s, "
                      f"new/old {ratios[-1]:.3f}")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    print(f"this checkout vs {args.against}: sorter camera frames/s new/old median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}, {args.rounds} rounds; target >= 0.97)")


if __name__ == "__main__":
    main()
