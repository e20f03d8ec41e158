"""`sorter doctor`: every check an operator runs first, each a named pass/fail with its detail.

Library first: `run_checks` returns plain `Check`s that the CLI prints (or dumps as JSON), and
`check_model` is reused by `sorter model install` before a new bundle goes live.
"""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sorter import __version__
from sorter.config import Settings

PROB_TOLERANCE = 1e-2  # int8 outputs are quantised: sums land within a few 1/256 of 1


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def versions() -> Check:
    import cv2

    from sorter.model import interpreter_backend

    data = {"sorter": __version__, "python": platform.python_version(), "executable": sys.executable,
            "numpy": np.__version__, "opencv": cv2.__version__}
    try:
        data["interpreter"] = interpreter_backend()[0]
    except Exception as exc:
        return Check("versions", False, str(exc), data)
    return Check("versions", True, f"python {data['python']}, opencv {data['opencv']}, {data['interpreter']}", data)


def _sample_image(card: Any, model_path: Path, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """The card's `sample` image when it names one beside the model, else a seeded synthetic one."""
    sample = getattr(card, "sample", None) or (card.model_extra or {}).get("sample")
    if sample:
        from sorter.imaging import decode

        path = model_path.parent / str(sample)
        if path.is_file():
            return decode(path.read_bytes(), size), path.name
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8), "synthetic"


def check_model(path: Path | str | None, threads: int | None = None) -> list[Check]:
    """Load, re-hash against the card, tensor/card agreement, and one inference that must give
    finite probabilities summing to 1: a bundle that passes this is safe to swap in."""
    from sorter.model import Classifier, ModelError

    try:
        clf = Classifier(path, num_threads=threads, max_batch=1)  # refuses tensor/card disagreement
    except ModelError as exc:
        return [Check("model", False, str(exc))]
    checks = [Check("model", True, f"{clf.path} ({clf.card.name}, {clf.card.quantization}, "
                    f"{clf.num_threads} threads)",
                    {"path": str(clf.path), "name": clf.card.name, "threads": clf.num_threads,
                     "backend": clf.backend, "labels": clf.labels, "quantization": clf.card.quantization})]
    rehash = clf.sha256  # hashed as it loaded
    want = clf.card.model_sha256
    checks.append(Check("model_hash", want is None or rehash == want,
                        "card has no model_sha256" if want is None else
                        ("matches the card" if rehash == want else f"file {rehash[:12]} vs card {want[:12]}"),
                        {"sha256": rehash}))
    image, source = _sample_image(clf.card, clf.path, clf.input_size)
    probs = clf.scores(image[None])[0]
    total = float(np.sum(probs))
    ok = bool(np.all(np.isfinite(probs)) and np.all(probs >= -1e-6) and np.all(probs <= 1 + 1e-6)
              and abs(total - 1.0) <= PROB_TOLERANCE)
    checks.append(Check("inference", ok, f"{source} image: {len(probs)} scores, sum {total:.4f}",
                        {"sum": total, "scores": [round(float(p), 4) for p in probs]}))
    return checks


def check_cameras(device: str | None, indices: range = range(4)) -> Check:
    """Which local indices answer; a failure only when the configured local index does not."""
    from sorter.capture import probe

    found = [cam["index"] for cam in probe(indices)]
    if device is not None and device.isdigit() and int(device) not in found:
        return Check("cameras", False, f"configured camera {device} does not answer (found {found})",
                     {"found": found})
    return Check("cameras", True, f"answering: {found or 'none'}", {"found": found})


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def check_disk(paths: dict[str, Path], min_free_mb: int) -> Check:
    """Free space where files land and the DB grows; a full disk stops moves and commits."""
    free = {name: shutil.disk_usage(_existing(p)).free // (1 << 20) for name, p in paths.items()}
    low = [f"{name} {mb} MB" for name, mb in free.items() if mb < min_free_mb]
    detail = ", ".join(f"{n} {mb} MB" for n, mb in free.items())
    return Check("disk", not low, (f"low (< {min_free_mb} MB): " + ", ".join(low)) if low else detail,
                 {"free_mb": free})


def check_database(path: Path) -> Check:
    """`PRAGMA integrity_check` on a read-only connection; a DB not created yet is fine."""
    if not path.exists():
        return Check("database", True, f"{path} not created yet")
    try:
        conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=10)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return Check("database", False, f"{path}: {exc}")
    ok = rows == ["ok"]
    return Check("database", ok, f"{path}: " + ("integrity ok" if ok else "; ".join(rows[:5])), {"result": rows})


def run_checks(settings: Settings, model: Path | None = None, incoming: Path | None = None,
               cameras: bool = True) -> list[Check]:
    """Everything, in the order an operator reads it."""
    checks = [versions(), *check_model(model or settings.model, settings.threads)]
    if cameras:
        checks.append(check_cameras(settings.camera.device))
    folders = {"db": settings.db}
    if incoming or settings.incoming:
        folders["incoming"] = incoming or settings.incoming  # type: ignore[assignment]
    if settings.out:
        folders["out"] = settings.out
    checks.append(check_disk(folders, settings.min_free_mb))
    checks.append(check_database(settings.db))
    return checks


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks],
            "pid_threads": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None}
