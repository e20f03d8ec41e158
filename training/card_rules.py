"""The verdict rule an export's card carries, and the figures it makes on each test set.

Everything is chosen from the export's own outputs (its runtime interpreter's logits, so an int8
model is calibrated as int8) on validation photos only: the temperature, the P(rotten) thresholds
for the goal, the OOD score's threshold for `unknown`. Then the rule is applied once, as the runtime
applies it, to each test set apart (the training distribution's test split, and the test share of
other sources, which is what a packing house's first day looks like) and to real non-produce photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sorter.card import DecisionRule, OodRule
from sorter.model import Classifier
from sorter.verdict import VerdictRules
from training import calibrate, decide
from training.ood_photos import PhotoSet


@dataclass
class Photos:
    """Labelled photos at the model's input size: one validation or test set."""

    name: str  # what the figures are on, e.g. "fruit_dev test split"
    root: str  # the data root's folder name
    images: np.ndarray
    y: np.ndarray


@dataclass
class FieldSets:
    """The photos a card's rule is chosen on (val) and reported on (tests, first = in-distribution)."""

    val: Photos
    tests: list[Photos]
    ood: list[PhotoSet] = field(default_factory=list)


@dataclass
class CardRules:
    temperature: float
    decision: DecisionRule
    ood: OodRule
    evaluation: dict
    temperature_fit: dict


@dataclass
class Scored:
    """One set's logits and OOD scores from the export's own interpreter."""

    logits: np.ndarray
    ood: np.ndarray


def _score(clf: Classifier, images: np.ndarray) -> Scored:
    raw = clf.outputs(images)
    ood = clf.ood_scores(raw)
    if ood is None:
        raise ValueError("the export outputs no logits: it cannot carry a temperature or an unknown rule")
    return Scored(np.asarray(clf.logits(raw), dtype=np.float64), ood)


def _figures(scored: Scored, y: np.ndarray, labels: Sequence[str], rotten: Sequence[str],
             rules: VerdictRules, temperature: float) -> dict:
    probs = calibrate.softmax(scored.logits, temperature)
    judged = decide.judge(probs, labels, rules, scored.ood)
    top1 = round(float(np.mean(probs.argmax(axis=1) == y)), 6) if len(y) else None
    return {**decide.rule_figures(y, labels, rotten, judged), "top1_accuracy": top1, "ece": calibrate.ece(probs, y)}


def choose(clf: Classifier, labels: Sequence[str], rotten: Sequence[str], sets: FieldSets,
           goal: decide.Goal = decide.Goal(), ood_pass: float = 0.95) -> CardRules:
    """Fit T, the thresholds and the unknown cut-off on `sets.val`; score every test and OOD set.
    `clf` is the export under its card (whose `ood.score` says which score it outputs)."""
    val = _score(clf, sets.val.images)
    tests = {t.name: _score(clf, t.images) for t in sets.tests}
    val_logits = val.logits
    fit = calibrate.calibrate(val_logits, sets.val.y, sets.val.name,
                              {t.name: (tests[t.name].logits, t.y) for t in sets.tests})
    t = fit.temperature
    val_probs = calibrate.softmax(val_logits, t)
    p_rot = decide.p_rotten(val_probs, labels, rotten)
    is_rot = np.isin(sets.val.y, [labels.index(r) for r in rotten])
    chosen = decide.choose_thresholds(p_rot, is_rot, goal)
    val_ood = val.ood
    cut = decide.choose_ood_threshold(val_ood, ood_pass)
    rules = VerdictRules(frozenset(rotten), rotten_at=chosen.rotten_at, fresh_at=chosen.fresh_at, unknown_below=cut)
    by_set = {}
    for test in sets.tests:
        by_set[test.name] = {"name": test.name, "root": test.root,
                             **_figures(tests[test.name], test.y, labels, rotten, rules, t)}
    in_scores = np.concatenate([tests[s.name].ood for s in sets.tests]) if sets.tests else np.empty(0)  # no AUROC
    ood_figures = {"validation_flagged": decide.flagged(val_ood, cut),
                   "in_distribution_flagged": {s.name: decide.flagged(tests[s.name].ood, cut) for s in sets.tests},
                   "non_produce": {p.name: _ood_set(_score(clf, p.images).ood, cut, in_scores, p) for p in sets.ood}}
    goal_text = goal.text() if chosen.met else f"{goal.text()} (not met on validation; closest pair)"
    decision = DecisionRule(rotten_at=chosen.rotten_at, fresh_at=chosen.fresh_at, goal=goal_text,
                            chosen_on=f"{sets.val.name} ({len(sets.val.y)} photos)")
    ood = OodRule(score=clf.card.ood.score if clf.card.ood else "energy", threshold=cut, in_dist_pass=ood_pass,
                  figures=ood_figures,
                  chosen_on=f"{sets.val.name} ({len(sets.val.y)} photos)")
    evaluation = _evaluation(sets.tests, by_set)
    evaluation["validation"] = {"name": sets.val.name, "n": len(sets.val.y), "uncertain_rate": chosen.uncertain_rate,
                                "rotten_caught": chosen.rotten_caught, "fresh_kept": chosen.fresh_kept}
    return CardRules(t, decision, ood, evaluation, fit.to_dict())


def _ood_set(scores: np.ndarray, cut: float, in_scores: np.ndarray, photos: PhotoSet) -> dict:
    return {"source": photos.source, "n": len(scores), "flagged": decide.flagged(scores, cut),
            "auroc": decide.auroc(in_scores, scores)}


def _evaluation(tests: list[Photos], by_set: dict[str, dict]) -> dict:
    """`in_distribution` is the first test set (the training distribution's own test split),
    `other_sources` the first of the rest; every set is also under `test_sets` by name."""
    out: dict = {"test_sets": by_set}
    if tests:
        out["in_distribution"] = by_set[tests[0].name]
    if len(tests) > 1:
        out["other_sources"] = by_set[tests[1].name]
    return out
