"""Classify files on disk: the library behind `sorter classify`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from sorter.card import ModelCard
from sorter.config import ConfigError, Settings
from sorter.files import RefusedFile, read_guarded
from sorter.imaging import ImageError, decode, is_image_name
from sorter.model import Classifier
from sorter.scoring import score
from sorter.verdict import Verdict, VerdictRules


@dataclass
class FileResult:
    path: str
    label: str | None = None
    confidence: float | None = None
    verdict: Verdict | None = None
    scores: dict[str, float] | None = None
    ood_score: float | None = None  # logits models: the OOD score (energy or feature distance) `unknown` is decided on
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
    """The card's rules with the config's over them: which labels are rotten (`rotten_labels`), the
    P(rotten) thresholds (`rotten_at`, `fresh_at` over the card's `decision`), the OOD threshold
    (`unknown_below` over `ood.threshold`, `unknown = false` for none) and the confidence floors.
    ConfigError (one line) when the two cannot make one rule."""
    settings = settings or Settings()
    card = classifier.card
    rotten = settings.rotten_labels if settings.rotten_labels is not None else card.rotten_labels
    rotten_at, fresh_at = decision_thresholds(card, settings)
    return VerdictRules(frozenset(rotten), settings.default_min_confidence, settings.min_confidence,
                        rotten_at, fresh_at, unknown_threshold(card, settings))


def decision_thresholds(card: ModelCard, settings: Settings) -> tuple[float | None, float | None]:
    """(rotten_at, fresh_at): each from the config when set, else from the card's `decision`."""
    rule = card.decision
    rotten_at = settings.rotten_at if settings.rotten_at is not None else (rule.rotten_at if rule else None)
    fresh_at = settings.fresh_at if settings.fresh_at is not None else (rule.fresh_at if rule else None)
    if (rotten_at is None) != (fresh_at is None):
        given, missing = ("rotten_at", "fresh_at") if fresh_at is None else ("fresh_at", "rotten_at")
        raise ConfigError(f"{given} is set but model card {card.name} has no decision rule to take {missing} "
                          f"from: set both to use the P(rotten) rule")
    if rotten_at is not None and fresh_at is not None and fresh_at > rotten_at:
        where = {"rotten_at": "config" if settings.rotten_at is not None else "card",
                 "fresh_at": "config" if settings.fresh_at is not None else "card"}
        raise ConfigError(f"fresh_at {fresh_at} ({where['fresh_at']}) is above rotten_at {rotten_at} "
                          f"({where['rotten_at']}): fresh_at must be at most rotten_at")
    return rotten_at, fresh_at


def unknown_threshold(card: ModelCard, settings: Settings) -> float | None:
    """The energy under which an image is `unknown`: config `unknown_below`, else the card's."""
    if not settings.unknown:
        return None
    if settings.unknown_below is not None:
        if card.output != "logits":
            raise ConfigError(f"unknown_below needs a model that outputs logits (the energy score); model card "
                              f"{card.name} says output: {card.output}")
        return settings.unknown_below
    return card.ood.threshold if card.ood else None


def classify_files(files: list[Path], classifier: Classifier, rules: VerdictRules,
                   batch_size: int = 8, max_pixels: int | None = None,
                   max_bytes: int | None = None) -> Iterator[FileResult]:
    """Decode and score in batches; an unreadable, oversized or symlinked file yields an error result
    (`sorter.files.read_guarded`, the rules `sorter watch` reads by) and the rest go on."""
    size = classifier.input_size
    limit = max_bytes or Settings.model_fields["max_file_bytes"].default
    for start in range(0, len(files), batch_size):
        results: list[FileResult] = []
        images = []
        for path in files[start : start + batch_size]:
            result = FileResult(str(path))
            try:
                kwargs = {"max_pixels": max_pixels} if max_pixels else {}
                images.append(decode(read_guarded(path, limit), size, **kwargs))
            except (ImageError, RefusedFile) as exc:
                result.error = str(exc)
            except OSError as exc:
                result.error = f"unreadable: {exc.strerror or exc}"
            results.append(result)
        ok = [r for r in results if r.error is None]
        if images:
            import numpy as np

            for result, j in zip(ok, score(classifier, rules, np.stack(images)), strict=True):
                result.label, result.verdict, result.confidence = j.label, j.verdict, j.confidence
                result.scores, result.ood_score = j.scores, j.ood_score
        yield from results
