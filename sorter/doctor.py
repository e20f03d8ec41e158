"""`sorter doctor`: every check an operator runs first, each a named pass/fail with its detail.

Library first: `run_checks` returns plain `Check`s that the CLI prints (or dumps as JSON), and
`check_model` is reused by `sorter model install` before a new bundle goes live.
"""

from __future__ import annotations

import base64
import os
import platform
import shutil
import sqlite3
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sorter import __version__
from sorter.card import CARD_FORMAT, ModelCard, SamplePrediction
from sorter.config import Settings

if TYPE_CHECKING:
    from sorter.model import Classifier

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


SAMPLE_TOLERANCE = 0.03  # int8 scores move in 1/256 steps; a few steps between kernels and decoders
SAMPLE_MAX_BYTES = 32 << 20
SAMPLE_JPEG_QUALITY = 90


class SampleError(ValueError):
    """The card's `sample` cannot be read from inside the bundle."""


def _sample_image(card: ModelCard, model_path: Path, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """The card's `sample` image, read only from inside the bundle's folder, else a seeded synthetic
    one. A sample that is missing, a link, outside the bundle or not an image is a SampleError."""
    if not card.sample:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (*size, 3), dtype=np.uint8), "synthetic"
    from sorter.imaging import ImageError, decode

    folder = Path(os.path.realpath(model_path.parent))
    path = folder / card.sample  # the card refuses names with separators or `..`
    if path.is_symlink() or not path.is_file() or Path(os.path.realpath(path)).parent != folder:
        raise SampleError(f"sample {card.sample!r} is not a plain file inside {folder}")
    if path.stat().st_size > SAMPLE_MAX_BYTES:
        raise SampleError(f"sample {card.sample!r} is larger than {SAMPLE_MAX_BYTES >> 20} MB")
    try:
        return decode(path.read_bytes(), size), path.name
    except (ImageError, OSError) as exc:
        raise SampleError(f"sample {card.sample!r}: {exc}") from None


def _inference(clf: Classifier) -> Check:
    """One image through the interpreter: finite probabilities in 0..1 that sum to 1, and a finite
    OOD score where the card has one (a NaN score is never below the threshold: `unknown` would
    silently never happen)."""
    try:
        image, source = _sample_image(clf.card, clf.path, clf.input_size)
    except SampleError as exc:
        return Check("inference", False, str(exc))
    outputs = clf.outputs(image[None])
    probs = clf.probabilities(outputs)[0]
    ood = clf.ood_scores(outputs)
    total = float(np.sum(probs))
    ok = bool(np.all(np.isfinite(probs)) and np.all(probs >= -1e-6) and np.all(probs <= 1 + 1e-6)
              and abs(total - 1.0) <= PROB_TOLERANCE)
    detail = f"{source} image: {len(probs)} scores, sum {total:.4f}"
    extra: dict = {"sum": total, "scores": [round(float(p), 4) for p in probs]}
    if ood is not None and clf.card.ood is not None:
        score = float(ood[0])
        ok = ok and bool(np.isfinite(score))
        detail += f"; {clf.card.ood.score} score {score:.4g}" + ("" if np.isfinite(score) else " (not finite)")
        extra["ood_score"] = score
    return Check("inference", ok, detail, extra)


def card_problems(card: ModelCard, model_path: Path, rotten: list[str] | None = None) -> list[str]:
    """What a card claims that cannot be true of this bundle. `rotten`: the configured rotten labels,
    when the config overrides the card's."""
    problems = []
    if card.format != CARD_FORMAT:
        problems.append(f"format {card.format!r} is not {CARD_FORMAT}")
    stray = [lbl for lbl in card.rotten_labels if lbl not in card.labels]
    if stray:
        problems.append(f"rotten labels {', '.join(map(repr, stray))} are not among its labels")
    effective = [lbl for lbl in (card.rotten_labels if rotten is None else rotten) if lbl in card.labels]
    if not effective:
        problems.append("no label is rotten: nothing would ever be routed rotten")
    elif len(set(effective)) == len(card.labels):
        problems.append("every label is rotten: nothing would ever be routed fresh")
    size = model_path.stat().st_size
    if card.file_size_bytes is not None and card.file_size_bytes != size:
        problems.append(f"file_size_bytes {card.file_size_bytes} but the file has {size}")
    problems += score_problems(card)
    return problems


def score_problems(card: ModelCard) -> list[str]:
    """A score must be a plausible fraction of a stated test set, and tied to this file by its hash."""
    score, problems = card.score, []
    for name in ("accuracy", "agreement_with_float"):
        value = getattr(score, name)
        if value is not None and not 0.0 <= value <= 1.0:
            problems.append(f"{name} {value} is outside 0..1")
    claims = score.accuracy is not None or bool(score.per_class)
    if claims and not card.model_sha256:
        problems.append("claims test-set figures but has no model_sha256 tying them to this file")
    if score.accuracy is not None:
        n = score.n_test
        if not n or n <= 0:
            problems.append(f"claims accuracy {score.accuracy} without a test-set size (n_test)")
        elif abs(score.accuracy * n - round(score.accuracy * n)) > max(1e-6 * n, 1e-4):
            problems.append(f"accuracy {score.accuracy} is not a whole number of its {n} test images")
    unknown = [lbl for lbl in score.per_class if lbl not in card.labels]
    if unknown:
        problems.append(f"per-class figures for {', '.join(map(repr, unknown))}, which are not labels")
    support = [row["support"] for row in score.per_class.values() if "support" in row]
    if score.n_test and support and len(support) == len(score.per_class) and round(sum(support)) != score.n_test:
        problems.append(f"per-class supports sum to {round(sum(support))}, not n_test {score.n_test}")
    return problems


def check_card(card: ModelCard, model_path: Path, rotten: list[str] | None = None) -> Check:
    problems = card_problems(card, model_path, rotten)
    return Check("card", not problems, "; ".join(problems) if problems else
                 f"{len(card.labels)} labels, rotten: {', '.join(rotten or card.rotten_labels)}",
                 {"problems": problems})


def check_gate(card: ModelCard) -> Check:
    """An export that failed its accuracy gate ships only when the operator accepted it at install."""
    problem = card.gate_problem()
    if problem is None:
        return Check("gate", True, "passed its export gate" if card.gate_recorded() else
                     "card records no export gate", {"problem": None})
    accepted = card.gate_accepted()
    if accepted:
        return Check("gate", True, f"FAILED its export gate ({problem}); accepted {accepted}",
                     {"problem": problem, "accepted": accepted})
    return Check("gate", False, f"failed its export gate: {problem}", {"problem": problem})


def record_samples(clf: Classifier, images: np.ndarray, true_labels: list[str] | None = None
                   ) -> list[SamplePrediction]:
    """What this bundle predicts for each (H, W, 3) RGB image, stored as the JPEG it decoded: the
    doctor later decodes the same bytes on the target box and must get the same answer."""
    import cv2

    from sorter.imaging import decode

    samples = []
    for i, image in enumerate(images):
        rgb = np.clip(image, 0, 255).astype(np.uint8)  # training hands float arrays of 0..255 pixels
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, SAMPLE_JPEG_QUALITY])
        if not ok:
            raise ValueError(f"sample {i} could not be encoded as JPEG")
        data = buf.tobytes()
        scores = clf.scores(decode(data, clf.input_size)[None])[0]
        samples.append(SamplePrediction(
            jpeg=base64.b64encode(data).decode("ascii"), label=clf.labels[int(np.argmax(scores))],
            scores=[round(float(p), 6) for p in scores],
            true_label=true_labels[i] if true_labels else None))
    return samples


def check_parity(clf: Classifier, tolerance: float = SAMPLE_TOLERANCE) -> Check:
    """The bundle, here, reproduces the predictions its card recorded at export: same top label and
    every score within `tolerance`. A hash match says the file is the same; this says it still works."""
    from sorter.imaging import ImageError, decode

    samples = clf.card.samples
    if not samples:
        return Check("parity", True, "card records no sample predictions (re-export to record them)",
                     {"samples": 0})
    problems, worst = [], 0.0
    for i, sample in enumerate(samples):
        try:
            image = decode(sample.image_bytes(), clf.input_size)
        except (ImageError, ValueError) as exc:
            problems.append(f"sample {i} is not a decodable image ({exc})")
            continue
        scores = clf.scores(image[None])[0]
        label = clf.labels[int(np.argmax(scores))]
        diff = float(np.max(np.abs(scores - np.asarray(sample.scores, np.float32))))
        worst = max(worst, diff)
        if label != sample.label:
            problems.append(f"sample {i}: predicts {label} ({float(np.max(scores)):.3f}), the card recorded "
                            f"{sample.label} ({max(sample.scores):.3f})")
        elif diff > tolerance:
            problems.append(f"sample {i}: scores differ from the card's by {diff:.3f} (> {tolerance})")
    detail = "; ".join(problems) if problems else (
        f"{len(samples)} recorded predictions reproduced (largest score difference {worst:.4f})")
    return Check("parity", not problems, detail, {"samples": len(samples), "max_diff": round(worst, 6)})


def check_model(path: Path | str | None, threads: int | None = None,
                rotten: list[str] | None = None, settings: Settings | None = None) -> list[Check]:
    """Load, re-hash against the card, tensor/card agreement, what the card claims, its export gate,
    one inference that must give finite probabilities summing to 1, and the card's recorded sample
    predictions reproduced: a bundle that passes this is safe to swap in."""
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
    checks += [check_card(clf.card, clf.path, rotten), check_gate(clf.card), _inference(clf), check_parity(clf)]
    if settings is not None:
        checks.append(check_decision(clf, settings))
    return checks


def check_decision(clf: Any, settings: Settings) -> Check:
    """The verdict rule this card and config make (sorter.classify.rules_for), or why they make none:
    `watch` and `camera` would refuse to start on it."""
    from sorter.classify import rules_for
    from sorter.config import ConfigError
    from sorter.verdict import LEGACY_MIN_CONFIDENCE

    try:
        rules = rules_for(clf, settings)
    except ConfigError as exc:
        return Check("decision", False, str(exc))
    floor = LEGACY_MIN_CONFIDENCE if rules.default_min_confidence is None else rules.default_min_confidence
    rule = (f"P(rotten): rotten at >= {rules.rotten_at}, fresh at <= {rules.fresh_at}" if rules.by_p_rotten
            else f"top-1 confidence under {floor} is uncertain")
    score = "feature distance" if clf.card.ood is not None and clf.card.ood.score == "distance" else "energy"
    unknown = f"unknown below {score} {rules.unknown_below}" if rules.unknown_below is not None else "no unknown"
    return Check("decision", True, f"{rule}; {unknown}",
                 {"rotten_at": rules.rotten_at, "fresh_at": rules.fresh_at, "unknown_below": rules.unknown_below,
                  "temperature": clf.card.temperature})


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
    checks = [versions(), *check_model(model or settings.model, settings.threads, settings.rotten_labels, settings)]
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
