"""Scores → verdict: which labels are rotten comes from the card, thresholds from the card and config.

Three rules, in this order (sorter.classify.rules_for picks the thresholds):
1. unknown: with an OOD threshold (card `ood.threshold`, config `unknown_below`), an image whose
   energy score is below it is not produce the model knows, whatever its probabilities say;
2. P(rotten): with thresholds (card `decision`, config `rotten_at`/`fresh_at`), the summed
   probability of the rotten labels decides: `rotten` at or above `rotten_at`, `fresh` at or below
   `fresh_at`, `uncertain` between. The label is the top class of the chosen side, so a photo
   whose three rotten classes share 0.7 is rotten even when a fresh class is the single top-1;
3. top-1 (cards without a decision rule, as before): `uncertain` when the top class's confidence
   is under its `min_confidence`.
An explicit `min_confidence`/`default_min_confidence` stays a floor under rule 2: the chosen label's
own probability below it makes the item `uncertain`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Verdict(StrEnum):
    """What the sorter does with an item (a str: stored, logged and compared as its value)."""

    FRESH = "fresh"  # passes
    ROTTEN = "rotten"  # to the reject chute
    UNCERTAIN = "uncertain"  # the model cannot tell: kept for a person
    UNKNOWN = "unknown"  # not produce the model knows (energy below the OOD threshold)


VERDICTS: tuple[Verdict, ...] = tuple(Verdict)
LEGACY_MIN_CONFIDENCE = 0.5  # the top-1 rule's floor when no one set one
DIGITS = 6  # scores are stored rounded to this: P(rotten) is summed from them, so a replay agrees


class Scored(Protocol):
    """What the model said of one image (sorter.model.Prediction is one)."""

    @property
    def label(self) -> str: ...  # the top-1 class

    @property
    def confidence(self) -> float: ...  # its probability

    @property
    def scores(self) -> Mapping[str, float]: ...  # every label's probability, in the card's order

    @property
    def ood_score(self) -> float | None: ...  # energy; None for a probability-output model


@dataclass(frozen=True)
class Judgement:
    """The verdict, the label it files under and that label's own probability."""

    label: str
    verdict: Verdict
    confidence: float


@dataclass(frozen=True)
class VerdictRules:
    rotten_labels: frozenset[str]
    default_min_confidence: float | None = None  # None: 0.5 under the top-1 rule, no floor under P(rotten)
    min_confidence: Mapping[str, float] | None = None
    rotten_at: float | None = None  # both or neither: the P(rotten) rule
    fresh_at: float | None = None
    unknown_below: float | None = None  # energy threshold; None: no unknown verdict

    def __post_init__(self) -> None:
        if (self.rotten_at is None) != (self.fresh_at is None):
            raise ValueError("the P(rotten) rule needs both rotten_at and fresh_at")
        if self.rotten_at is not None and self.fresh_at is not None and self.fresh_at > self.rotten_at:
            raise ValueError(f"fresh_at {self.fresh_at} is above rotten_at {self.rotten_at}")

    @property
    def by_p_rotten(self) -> bool:
        return self.rotten_at is not None

    def threshold(self, label: str) -> float | None:
        """The confidence floor for `label`: its own, else the default; under the P(rotten) rule
        only one someone set (the top-1 rule's 0.5 would otherwise undo the chosen thresholds)."""
        own = (self.min_confidence or {}).get(label)
        if own is not None:
            return own
        if self.default_min_confidence is not None:
            return self.default_min_confidence
        return None if self.by_p_rotten else LEGACY_MIN_CONFIDENCE

    def p_rotten(self, scores: Mapping[str, float]) -> float:
        """The summed probability of the rotten labels, rounded as the scores are (0.1 + 0.2 is 0.3)."""
        return round(sum(p for label, p in scores.items() if label in self.rotten_labels), DIGITS)

    def decide(self, pred: Scored) -> Judgement:
        if self.unknown_below is not None and pred.ood_score is not None and pred.ood_score < self.unknown_below:
            return Judgement(pred.label, Verdict.UNKNOWN, pred.confidence)  # the top class, kept for the record
        if not self.by_p_rotten:
            return self._top1(pred)
        return self._by_p_rotten(pred)

    def _top1(self, pred: Scored) -> Judgement:
        """Below the label's own threshold an item is `uncertain`: kept for a person, not routed."""
        floor = self.threshold(pred.label)
        if floor is not None and pred.confidence < floor:
            return Judgement(pred.label, Verdict.UNCERTAIN, pred.confidence)
        rotten = pred.label in self.rotten_labels
        return Judgement(pred.label, Verdict.ROTTEN if rotten else Verdict.FRESH, pred.confidence)

    def _by_p_rotten(self, pred: Scored) -> Judgement:
        p = self.p_rotten(pred.scores)
        verdict: Verdict
        if self.rotten_at is not None and p >= self.rotten_at:
            verdict, side = Verdict.ROTTEN, [lbl for lbl in pred.scores if lbl in self.rotten_labels]
        elif self.fresh_at is not None and p <= self.fresh_at:
            verdict, side = Verdict.FRESH, [lbl for lbl in pred.scores if lbl not in self.rotten_labels]
        else:
            verdict, side = Verdict.UNCERTAIN, []
        if not side:  # between the thresholds, or a side with no labels (all rotten, or none)
            return Judgement(pred.label, Verdict.UNCERTAIN, pred.confidence)
        label = max(side, key=lambda lbl: pred.scores[lbl])  # ties: the first in the card's order
        confidence = pred.scores[label]
        floor = self.threshold(label)
        if floor is not None and confidence < floor:
            return Judgement(pred.label, Verdict.UNCERTAIN, pred.confidence)
        return Judgement(label, verdict, confidence)
