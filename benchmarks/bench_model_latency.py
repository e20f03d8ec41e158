"""Latency of TFLite bundles side by side in one run, at batch 1 and batch 8, as ratios to a baseline.

    python benchmarks/bench_model_latency.py [--baseline models/fruit-lite1-int8.tflite] [MODEL ...]
        [--threads N] [--rounds R] [--runs K] [--batches 1 8] [--samples samples/] [--json PATH]

Issue 15 bounds a new model's latency at 1.5× today's shipped model. The CPU of these machines
changes between sessions and a training job may share it, so absolute milliseconds from two runs
do not compare: only the ratio measured within one run holds. Each bundle is loaded with the
runtime's own `Classifier` and timed on `Classifier.predict` (what `sorter watch` calls per batch:
inference, dequantisation, softmax for a logits card, energy, Prediction rows) on real photos from
`samples/`, decoded at each model's own input size (random uint8 where there are none). Models take
turns call by call within each round (A, B, A, B …), so a frequency change or a noisy neighbour hits
all of them alike; the ratio is the median of the per-round ratios (each model's median call in the
round over the baseline's), with their range. On this 2-core machine beside a training job, turns
in blocks of 10 calls gave the baseline against itself rounds of 0.64-2.73×; call by call, 0.92-1.31×.
With no MODEL the baseline is timed against a second copy of itself: its ratios must come out ≈ 1.0,
and their spread is the noise floor of the run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sorter.imaging import ImageError, decode  # noqa: E402
from sorter.model import DEFAULT_MODEL, Classifier, ModelError, default_threads  # noqa: E402

BOUND = 1.5  # issue 15: a new model's latency within 1.5× today's shipped model
SAME_TOLERANCE = 0.10  # a bundle against itself: ratios within ±10 % of 1.0 say the run is usable
SAMPLES = ROOT / "samples"


@dataclass
class Bundle:
    """One model under test: one warmed interpreter per batch size, so switching batch sizes never
    re-allocates tensors inside a timed call (the first invoke after an allocation costs ~25 ms more)."""

    name: str
    clf: Classifier
    by_batch: dict[int, Classifier]
    inputs: dict[int, list[np.ndarray]]
    times: dict[int, list[list[float]]] = field(default_factory=dict)  # batch → rounds → seconds per call


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (what changes between sessions)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def sample_images(size: tuple[int, int], folder: Path, count: int = 16) -> tuple[np.ndarray, str]:
    """Up to `count` photos from `folder`, decoded by the runtime's decoder at `size` (height, width);
    seeded random uint8 where the folder holds none. Returns the images and where they came from."""
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in {".jpg", ".jpeg"})[:count]
    images = []
    for path in paths:
        try:
            images.append(decode(path.read_bytes(), size))
        except (OSError, ImageError):
            continue
    if images:
        return np.stack(images), f"{len(images)} photos from {folder.name}/"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, *size, 3), dtype=np.uint8), "random uint8 (no JPEGs found)"


def batches_of(images: np.ndarray, batch: int, calls: int) -> list[np.ndarray]:
    """`calls` inputs of `batch` images each, cycling through the set so successive calls differ."""
    n = len(images)
    return [np.ascontiguousarray(images[(np.arange(batch) + i * batch) % n]) for i in range(calls)]


def load_bundle(path: Path, name: str, batches: list[int], threads: int, folder: Path,
                runs: int) -> tuple[Bundle, str]:
    clf = Classifier(path, num_threads=threads, max_batch=max(batches))
    by_batch = {b: clf if i == 0 else clf.replica() for i, b in enumerate(batches)}
    images, source = sample_images(clf.input_size, folder)
    inputs = {b: batches_of(images, b, runs) for b in batches}
    for b, c in by_batch.items():
        c.warm_up(b)
        c.predict(inputs[b][0])  # the first real call too: lazy allocations land outside the timing
    return Bundle(name, clf, by_batch, inputs, {b: [] for b in batches}), source


def time_call(clf: Classifier, x: np.ndarray) -> float:
    """Seconds for one `predict` call."""
    start = time.perf_counter()
    clf.predict(x)
    return time.perf_counter() - start


def measure(bundles: list[Bundle], batches: list[int], rounds: int, runs: int) -> None:
    """Each round times every bundle `runs` times at each batch size, call by call in turn (A, B, A,
    B …), so a burst from a neighbour lands on both within milliseconds rather than on one block of
    calls; the order reverses every other round (B, A …) so neither always runs first. Each
    interpreter keeps its own batch size, so alternating never re-allocates tensors."""
    for r in range(rounds):
        order = bundles if r % 2 == 0 else bundles[::-1]
        for b in batches:
            for bundle in order:
                bundle.times[b].append([])
            for i in range(runs):
                for bundle in order:
                    bundle.times[b][-1].append(time_call(bundle.by_batch[b], bundle.inputs[b][i]))


def summarise(bundle: Bundle, baseline: Bundle, batch: int) -> dict[str, Any]:
    """Figures for one bundle at one batch size: all calls pooled for the milliseconds; per round
    the bundle's median over the baseline's median of the same round, for the ratio."""
    calls = [t for round_ in bundle.times[batch] for t in round_]
    rounds = [statistics.median(round_) for round_ in bundle.times[batch]]
    base = [statistics.median(round_) for round_ in baseline.times[batch]]
    ratios = [mine / theirs for mine, theirs in zip(rounds, base, strict=True)]
    median_ms = 1000 * statistics.median(calls)
    return {"images_per_call": batch, "calls": len(calls), "median_ms": median_ms,
            "ms_per_image": median_ms / batch, "p90_ms": 1000 * float(np.percentile(calls, 90)),
            "round_ms": [1000 * t for t in rounds], "round_ratios": ratios,
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def verdict(ratios: dict[int, dict[str, Any]], bound: float = BOUND) -> str:
    """Within or over the bound, on the median ratio at each batch size; a round past it is noted."""
    over = [f"batch {b} ({f['ratio']:.2f}×)" for b, f in ratios.items() if f["ratio"] > bound]
    if over:
        return f"OVER the {bound}× bound at " + ", ".join(over)
    edge = [f"batch {b}" for b, f in ratios.items() if f["ratio_max"] > bound]
    note = f" (but a round passed it at {', '.join(edge)}: rerun on a quieter machine)" if edge else ""
    return f"within the {bound}× bound{note}"


def headline(name: str, figures: dict[int, dict[str, Any]]) -> str:
    parts = [f"batch {b} {f['ratio']:.2f}× {'the baseline ' if i == 0 else ''}"
             f"(range {f['ratio_min']:.2f}-{f['ratio_max']:.2f})" for i, (b, f) in enumerate(figures.items())]
    return f"{name}: " + ", ".join(parts)


def describe(bundle: Bundle, role: str) -> dict[str, Any]:
    clf = bundle.clf
    return {"name": bundle.name, "path": str(clf.path), "role": role, "sha256": clf.sha256,
            "size_mb": clf.path.stat().st_size / 1e6, "input": list(clf.input_size),
            "quantization": clf.card.quantization, "output": clf.card.output}


def _ms(value: float) -> str:
    """Milliseconds with two decimals, three significant digits below 1 ms (the tiny test bundles)."""
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    info = Table(title="bundles")
    for col in ("model", "role", "size MB", "input", "quantization", "output"):
        info.add_column(col, justify="left" if col in ("model", "role") else "right")
    for m in report["models"]:
        info.add_row(m["name"], m["role"], f"{m['size_mb']:.2f}", f"{m['input'][1]}×{m['input'][0]}",
                     m["quantization"], m["output"])
    console.print(info)
    table = Table(title=f"Classifier.predict latency: {report['cpu']}, {report['threads']} thread(s), "
                        f"{report['backend']}; {report['rounds']} rounds × {report['runs']} calls per "
                        f"model and batch, interleaved; inputs: {report['inputs']}")
    for col in ("model", "batch", "images/call", "median ms/batch", "ms/image", "p90 ms/batch",
                "× baseline (median of rounds)", "range over rounds"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in report["models"]:
        for b, f in m["batches"].items():
            table.add_row(m["name"], str(b), str(f["images_per_call"]), _ms(f["median_ms"]),
                          _ms(f["ms_per_image"]), _ms(f["p90_ms"]), f"{f['ratio']:.2f}",
                          f"{f['ratio_min']:.2f}-{f['ratio_max']:.2f}")
    console.print(table)


def unique_names(paths: list[Path]) -> list[str]:
    """Bundle names for the rows: the file's stem, numbered where the same stem comes again."""
    names: list[str] = []
    for path in paths:
        name, n = path.stem, 2
        while name in names:
            name, n = f"{path.stem} #{n}", n + 1
        names.append(name)
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, metavar="MODEL",
                        help="Bundles to compare with the baseline (default: the baseline against itself).")
    parser.add_argument("--baseline", type=Path, default=DEFAULT_MODEL, help="Today's shipped model.")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="Interpreter threads (default: every core, as the runtime picks).")
    parser.add_argument("--rounds", type=int, default=7, help="Interleaved rounds (the ratio's median and range).")
    parser.add_argument("--runs", type=int, default=10, help="Timed calls per model, batch and round.")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="Batch sizes (default: 1 8).")
    parser.add_argument("--samples", type=Path, default=SAMPLES, help="Folder of JPEGs to time on.")
    parser.add_argument("--json", type=Path, default=None, help="Write the figures here.")
    args = parser.parse_args(argv)
    for name in ("threads", "rounds", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if min(args.batches) < 1:
        parser.error("--batches must be at least 1")
    args.batches = sorted(set(args.batches))
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load, warm, time and summarise; the report `--json` writes."""
    paths = [args.baseline, *(args.models or [args.baseline])]
    loaded = [load_bundle(p, n, args.batches, args.threads, args.samples, args.runs)
              for p, n in zip(paths, unique_names(paths), strict=True)]
    bundles = [b for b, _ in loaded]
    measure(bundles, args.batches, args.rounds, args.runs)
    baseline = bundles[0]
    models = []
    for i, bundle in enumerate(bundles):
        entry = describe(bundle, "baseline" if i == 0 else
                         "same bundle" if bundle.clf.sha256 == baseline.clf.sha256 else "candidate")
        entry["batches"] = {b: summarise(bundle, baseline, b) for b in args.batches}
        if i:
            entry["verdict"] = verdict(entry["batches"])
        models.append(entry)
    sources = sorted({source for _, source in loaded})
    return {"cpu": cpu_model(), "threads": args.threads, "backend": baseline.clf.backend, "rounds": args.rounds,
            "runs": args.runs, "inputs": "; ".join(sources), "bound": BOUND, "baseline": baseline.name,
            "models": models}


def print_verdicts(report: dict[str, Any]) -> None:
    for m in report["models"][1:]:
        print(f"{headline(m['name'], m['batches'])} — {m['verdict']}")
        if m["role"] == "same bundle":
            worst = max(abs(f[k] - 1) for f in m["batches"].values() for k in ("ratio_min", "ratio_max"))
            ok = all(abs(f["ratio"] - 1) <= SAME_TOLERANCE for f in m["batches"].values())
            print(f"sanity check (the baseline against itself): medians {'≈ 1.0' if ok else 'NOT ≈ 1.0'} "
                  f"(±{100 * SAME_TOLERANCE:.0f} %), rounds within ±{100 * worst:.0f} %: the noise floor of this run")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except ModelError as exc:
        print(f"bench_model_latency: {exc}", file=sys.stderr)
        return 2
    print_tables(report)
    print_verdicts(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
