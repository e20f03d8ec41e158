"""Run every benchmark in turn with its defaults; each prints its own table.

Run: python benchmarks/run_all.py   (or `make bench`). bench_model_latency.py with no MODEL times the
shipped model against itself: its ratios must come out ≈ 1.0 (a check of the run, not a comparison).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("bench_watch.py", "bench_camera.py", "bench_resnet50.py", "bench_model_latency.py")


def main() -> int:
    failed = 0
    for name in BENCHMARKS:
        print(f"\n=== {name}", flush=True)
        failed += subprocess.run([sys.executable, str(HERE / name)], check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
