"""The whole audit loop on a simulated new line, through the real commands (issue 16, "Done when").

A base model that knows `fruit_dev` only (Kaggle screenshots) meets a line whose camera output is the
FruitNet apple phone photos in `fruit_extra` (MANIFEST source `crabbbb/ImageProcessing`):
  1. base model: `--base-bundle B` (an int8 bundle with its float weights, trained on fruit_dev only),
     else trained here: `--base-recipe full` is the shipped model's recipe (models/fruit-lite1-run) on
     fruit_dev alone (hours on 2 CPU cores), `--base-recipe head` a head-only fit on frozen ImageNet
     EfficientNet-Lite1 features (minutes; for timing the loop, not for its accuracy);
  2. `sorter watch --once` sorts the line's photos into a results database;
  3. `sorter audit sample --n N --controls C --control-data fruit_dev/test` draws items and shuffles in C
     control photos of known label (the base data's test split); their true labels come from the photos'
     folder names, as an operator would give them, sorted into the sample's label folders; `sorter audit
     folder` imports them and scores the controls;
  4. `sorter retrain --install` (the same again with fresh and rotten swapped in the audits, on a copy of the
     database and models folder: the auditor swaps by true label, so the control photos too, and the retrain
     refuses those audits on their control score before it trains anything);
  5. the line's photos nobody audited are classified by the base model and by the installed one, and
     fruit_dev/test by both. A table of the figures and the times.

Run: python benchmarks/bench_retrain_loop.py [--base-bundle B] [--base-recipe head|full] [--audit 300]
     [--controls 30] [--work DIR] [--until watch|audit|retrain]
Measured on this project's 2-core machine (shared with a training run): step 1 with `head` 4.5 min
(1.5 min fit on cached features, 3 min int8 export), steps 2-3 15 s, one retrain --quick 3-4 min. Expected:
`full` about 20 min more (20 epochs of ~45 s on 1,020 photos, as the shipped recipe ran on this machine,
then the export), the whole loop with `head` about 11 min (one retrain trains: the swapped audits are refused
on their controls in seconds; then step 5 ~1 min).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
FRUIT_DEV, FRUIT_EXTRA = SHARED / "fruit_dev", SHARED / "fruit_extra"
DEV_SPLIT = ROOT / "training" / "splits" / "fruit_dev.tsv"
CONTROL_DATA = FRUIT_DEV / "test"  # the base data's test split (training/splits/fruit_dev.tsv's test rows)
LINE_SOURCE = "crabbbb/ImageProcessing"
SORTER = Path(sys.executable).parent / "sorter"
TIMES: dict[str, float] = {}


def run(step: str, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """One real command, timed; its output shown; an exit code outside `ok` stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run([str(SORTER), *args], capture_output=True, text=True)
    TIMES[step] = TIMES.get(step, 0.0) + time.perf_counter() - start
    print(f"$ sorter {' '.join(args)}  [{TIMES[step]:.0f} s, exit {done.returncode}]\n{done.stdout[-3000:]}",
          flush=True)
    if done.returncode not in ok:
        sys.exit(f"{step} failed:\n{done.stderr[-3000:]}")
    return done


def line_photos(incoming: Path) -> dict[str, str]:
    """Copy the FruitNet apple photos into INCOMING (names without their class); {sha256: true label}."""
    from sorter.card import sha256_file

    incoming.mkdir(parents=True, exist_ok=True)
    truth = {}
    with open(FRUIT_EXTRA / "MANIFEST.tsv", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["source_repo"] == LINE_SOURCE:
                src = FRUIT_EXTRA / row["file"]
                dst = incoming / f"line_{len(truth):04d}{src.suffix.lower()}"
                shutil.copyfile(src, dst)
                truth[sha256_file(dst)] = row["class"]
    return truth


def head_base(work: Path) -> Path:
    """A fruit_dev-only bundle fast: frozen ImageNet EfficientNet-Lite1, its top layer and head fitted on
    cached features (training.finetune.quick), exported int8 with its float weights."""
    import numpy as np

    from sorter.card import guess_rotten
    from training import finetune
    from training.data import discover_many, load_split, save_splits
    from training.train import TrainConfig, build_model

    splits = discover_many([FRUIT_DEV], split_files=[DEV_SPLIT])
    model, _ = build_model(TrainConfig(backbone="efficientnet-lite1", weights="imagenet"), len(splits.classes), 240)
    train = load_split(splits.train, 240)
    start = time.perf_counter()
    finetune.quick(model, finetune.Weighted(train.images, train.labels, np.ones(len(train.labels), np.float32)),
                   epochs=15, lr=3e-3, layers_above=0)
    TIMES["base head fit"] = time.perf_counter() - start
    run_dir = work / "base-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model.keras")
    (run_dir / "labels.json").write_text(json.dumps({"labels": splits.classes,
                                                     "rotten_labels": guess_rotten(splits.classes)}))
    save_splits(splits, run_dir / "splits.json")
    (run_dir / "config.json").write_text(json.dumps({"data": str(FRUIT_DEV), "backbone": "efficientnet-lite1"}))
    run("base export", "export", str(run_dir), "--formats", "int8", "--out", str(work / "base"), "--name", "base",
        "--latency-runs", "5")
    return work / "base" / "base-int8.tflite"


def full_base(work: Path) -> Path:
    """The shipped model's recipe on fruit_dev alone, then its int8 export."""
    recipe = json.loads((ROOT / "models" / "fruit-lite1-run" / "config.json").read_text())
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in recipe.items()
             if k not in ("data", "name", "runs_dir", "split_files", "oversample", "augment", "flip", "vflip",
                          "class_weights", "binary_sigmoid", "baselines")]
    done = run("base train", "train", str(FRUIT_DEV), "--split-file", str(DEV_SPLIT), *flags,
               "--runs-dir", str(work / "runs"), "--name", "base")
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    run("base export", "export", str(run_dir), "--formats", "int8", "--out", str(work / "base"), "--name", "base")
    return work / "base" / "base-int8.tflite"


def swapped(label: str) -> str:
    """Fresh for rotten and rotten for fresh, on any fruit: the auditor who inverts them."""
    for a, b in (("fresh", "rotten"), ("rotten", "fresh")):
        if label.startswith(a):
            return b + label.removeprefix(a)
    return label


def control_truth() -> dict[str, str]:
    """{sha256: class} of the control photos: the operator sees what a photo shows, controls included."""
    from sorter.card import sha256_file

    return {sha256_file(p): p.parent.name for p in CONTROL_DATA.glob("*/*") if p.is_file()}


def audit(db: Path, work: Path, truth: dict[str, str], n: int, swap: bool, models: Path, controls: int) -> int:
    """Draw a sample with control photos, sort its copies into SAMPLE/<true label>/ by the photos' folder
    names (controls by theirs), import; the count of line photos sorted."""
    sample = work / ("sample-swapped" if swap else "sample")
    shutil.rmtree(sample, ignore_errors=True)
    run("audit", "audit", "sample", "--db", str(db), "--n", str(n), "--since", "30d", "--out", str(sample),
        "--seed", "1", "--model", str(next((models / "current").glob("*.tflite"))),
        "--controls", str(controls), "--control-data", str(CONTROL_DATA))
    from sorter.card import sha256_file

    known = {**control_truth(), **truth}
    sorted_in = 0
    for photo in [p for p in sample.iterdir() if p.is_file() and p.suffix != ".csv"]:
        label = known.get(sha256_file(photo))
        if label is None:
            continue
        sorted_in += sha256_file(photo) in truth
        label = swapped(label) if swap else label
        (sample / label).mkdir(exist_ok=True)
        photo.rename(sample / label / photo.name)
    run("audit", "audit", "folder", str(sample), "--db", str(db), "--model",
        str(next((models / "current").glob("*.tflite"))))
    return sorted_in


def accuracy(model: Path, files: list[Path], labels: list[str]) -> float:
    """Accuracy under the runtime's rule, as `sorter evaluate` and the card report it: the recorded label
    is the true one (an uncertain or unknown item keeps its label)."""
    from sorter.classify import classify_files, rules_for
    from sorter.model import Classifier

    clf = Classifier(model)
    results = list(classify_files(files, clf, rules_for(clf)))
    right = sum(r.label == t for r, t in zip(results, labels, strict=True))
    return right / len(files) if files else 0.0


def never_audited(db: Path, truth: dict[str, str]) -> tuple[list[Path], list[str]]:
    import sqlite3

    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT sha256, destination FROM items WHERE id NOT IN (SELECT item_id FROM audits) "
                        "AND destination IS NOT NULL").fetchall()
    conn.close()
    kept = [(Path(d), truth[s]) for s, d in rows if s in truth and Path(d).is_file()]
    return [p for p, _ in kept], [t for _, t in kept]


def dev_test() -> tuple[list[Path], list[str]]:
    from training.data import discover_many

    splits = discover_many([FRUIT_DEV], split_files=[DEV_SPLIT])
    return [p for p, _ in splits.test], [splits.classes[i] for _, i in splits.test]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base-bundle", type=Path)
    parser.add_argument("--base-recipe", choices=("head", "full"), default="head")
    parser.add_argument("--audit", type=int, default=300, help="items drawn for people to label")
    parser.add_argument("--controls", type=int, default=30, help="control photos of known label per sample")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_retrain_loop"))
    parser.add_argument("--until", choices=("base", "watch", "audit", "retrain"), default=None)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    base = args.base_bundle or (head_base(work) if args.base_recipe == "head" else full_base(work))
    if args.until == "base":
        return
    models = work / "models"
    shutil.rmtree(models, ignore_errors=True)
    from sorter.bundle import install

    install(base, models)
    truth = line_photos(work / "incoming")
    db = work / "line.db"
    db.unlink(missing_ok=True)
    shutil.rmtree(work / "sorted", ignore_errors=True)
    run("watch", "watch", str(work / "incoming"), "--out", str(work / "sorted"), "--db", str(db), "--once",
        "--model", str(base))
    if args.until == "watch":
        return
    bad_db, bad_models = work / "line-swapped.db", work / "models-swapped"
    shutil.copyfile(db, bad_db)
    shutil.rmtree(bad_models, ignore_errors=True)
    shutil.copytree(models, bad_models, symlinks=True)
    audited = audit(db, work, truth, args.audit, False, models, args.controls)
    audit(bad_db, work, truth, args.audit, True, bad_models, args.controls)
    if args.until == "audit":
        return
    retrain = ["retrain", "--base-data", str(FRUIT_DEV), "--split-file", str(DEV_SPLIT), "--install", "--quick"]
    for path in (work / "retrain", work / "retrain-swapped"):
        shutil.rmtree(path, ignore_errors=True)
    good = run("retrain", *retrain, "--db", str(db), "--dir", str(models), "--out", str(work / "retrain"),
               ok=(0, 1))
    bad = run("retrain (swapped audits)", *retrain, "--db", str(bad_db), "--dir", str(bad_models),
              "--out", str(work / "retrain-swapped"), ok=(0, 1))
    if args.until == "retrain":
        return
    installed = next((models / "current").glob("*.tflite"))
    files, labels = never_audited(db, truth)
    dev_files, dev_labels = dev_test()
    report(base, installed, (files, labels), (dev_files, dev_labels), audited, good.returncode, bad.returncode)


def report(base: Path, installed: Path, line: tuple[list[Path], list[str]], dev: tuple[list[Path], list[str]],
           audited: int, good: int, bad: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("photos", "n", "base model", "after retrain --install", title="the simulated new line")
    for name, (files, labels) in (("line photos never audited", line), ("fruit_dev/test", dev)):
        table.add_row(name, str(len(files)), f"{accuracy(base, files, labels):.1%}",
                      f"{accuracy(installed, files, labels):.1%}")
    console = Console()
    console.print(table)
    console.print(f"audited {audited} items; retrain exit {good} (0 = installed), with swapped audits exit {bad} "
                  f"(1 = refused); installed: {installed.name}", highlight=False)
    times = Table("step", "seconds", title="times")
    for step, seconds in TIMES.items():
        times.add_row(step, f"{seconds:.0f}")
    console.print(times)


if __name__ == "__main__":
    main()
