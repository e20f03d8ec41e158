"""Classify files on disk: the library behind `sorter classify`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from sorter.config import Settings
from sorter.imaging import ImageError, decode, is_image_name
from sorter.model import Classifier
from sorter.verdict import VerdictRules


@dataclass
class FileResult:
    path: str
    label: str | None = None
    confidence: float | None = None
    verdict: str | None = None
    scores: dict[str, float] | None = None
    error: str | None = None

    def as_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def collect(paths: Iterable[Path]) -> list[Path]:
    """Files as given, plus image files found recursively in folders, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name)))
        else:
            found.append(path)
    return found


def rules_for(classifier: Classifier, settings: Settings | None = None) -> VerdictRules:
    """The card says which labels are rotten unless config `rotten_labels` maps them otherwise."""
    settings = settings or Settings()
    rotten = settings.rotten_labels if settings.rotten_labels is not None else classifier.card.rotten_labels
    return VerdictRules(frozenset(rotten), settings.default_min_confidence, settings.min_confidence)


def classify_files(files: list[Path], classifier: Classifier, rules: VerdictRules,
                   batch_size: int = 8, max_pixels: int | None = None) -> Iterator[FileResult]:
    """Decode and score in batches; an unreadable file yields an error result and the rest go on."""
    size = classifier.input_size
    for start in range(0, len(files), batch_size):
        results: list[FileResult] = []
        images = []
        for path in files[start : start + batch_size]:
            result = FileResult(str(path))
            try:
                kwargs = {"max_pixels": max_pixels} if max_pixels else {}
                images.append(decode(path.read_bytes(), size, **kwargs))
            except ImageError as exc:
                result.error = str(exc)
            except OSError as exc:
                result.error = f"unreadable: {exc.strerror or exc}"
            results.append(result)
        ok = [r for r in results if r.error is None]
        if images:
            import numpy as np

            for result, pred in zip(ok, classifier.predict(np.stack(images)), strict=True):
                result.label, result.confidence, result.scores = pred.label, round(pred.confidence, 6), pred.scores
                result.verdict = rules.decide(pred.label, pred.confidence)
        yield from results
