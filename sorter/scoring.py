"""Score, then decide: the one step every source shares (`sorter watch`'s batches, `sorter classify`'s
files, `sorter camera`'s frames), so a verdict is reached the same way whatever brought the image.

    score(classifier, rules, images) -> list[Judged]    one interpreter call for the batch
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sorter.model import Classifier
from sorter.verdict import DIGITS, Verdict, VerdictRules


@dataclass(frozen=True)
class Judged:
    """What the model said of one image and what the rules made of it: the label it files under, that
    label's probability (rounded as stored), the verdict, every label's probability and the OOD score."""

    label: str
    confidence: float
    verdict: Verdict
    scores: dict[str, float]
    ood_score: float | None


def score(classifier: Classifier, rules: VerdictRules, images: np.ndarray) -> list[Judged]:
    """(N, H, W, 3) images at the model's input size → one judgement each, in order."""
    out = []
    for pred in classifier.predict(images):
        judged = rules.decide(pred)
        out.append(Judged(judged.label, round(judged.confidence, DIGITS), judged.verdict, pred.scores,
                          pred.ood_score))
    return out
