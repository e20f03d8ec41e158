"""Scores → verdict: which labels are rotten comes from the card, thresholds from config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["fresh", "rotten", "uncertain"]


@dataclass(frozen=True)
class VerdictRules:
    rotten_labels: frozenset[str]
    default_min_confidence: float = 0.5
    min_confidence: Mapping[str, float] | None = None

    def threshold(self, label: str) -> float:
        return (self.min_confidence or {}).get(label, self.default_min_confidence)

    def decide(self, label: str, confidence: float) -> Verdict:
        """Below the label's own threshold an item is `uncertain`: kept for a person, not routed."""
        if confidence < self.threshold(label):
            return "uncertain"
        return "rotten" if label in self.rotten_labels else "fresh"
