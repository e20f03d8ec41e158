"""The verdict rule an export's card carries, and the figures it makes on each test set.

Everything is chosen from the export's own outputs (its runtime interpreter's logits, so an int8
model is calibrated as int8) on validation photos only: the temperature, the P(rotten) thresholds
for the goal, the energy threshold for `unknown`. Then the rule is applied once, as the runtime
applies it, to each test set apart (the training distribution's test split, and the test share of
other sources, which is what a packing house's first day looks like) and to real non-produce photos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sorter.card import DecisionRule, OodRule
from sorter.model import energy
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


def _figures(logits: np.ndarray, y: np.ndarray, labels: Sequence[str], rotten: Sequence[str],
             rules: VerdictRules, temperature: float) -> dict:
    probs = calibrate.softmax(logits, temperature)
    judged = decide.judge(probs, labels, rules, energy(logits))
    return {**decide.rule_figures(y, labels, rotten, judged), "ece": calibrate.ece(probs, y)}


def choose(outputs: Callable[[np.ndarray], np.ndarray], labels: Sequence[str], rotten: Sequence[str],
           sets: FieldSets, goal: decide.Goal = decide.Goal(), ood_pass: float = 0.95) -> CardRules:
    """Fit T, the thresholds and the unknown cut-off on `sets.val`; score every test and OOD set."""
    val_logits = outputs(sets.val.images)
    tests = {t.name: (outputs(t.images), t.y) for t in sets.tests}
    fit = calibrate.calibrate(val_logits, sets.val.y, sets.val.name, tests)
    t = fit.temperature
    val_probs = calibrate.softmax(val_logits, t)
    p_rot = decide.p_rotten(val_probs, labels, rotten)
    is_rot = np.isin(sets.val.y, [labels.index(r) for r in rotten])
    chosen = decide.choose_thresholds(p_rot, is_rot, goal)
    val_energy = energy(val_logits)
    cut = decide.choose_ood_threshold(val_energy, ood_pass)
    rules = VerdictRules(frozenset(rotten), rotten_at=chosen.rotten_at, fresh_at=chosen.fresh_at, unknown_below=cut)
    by_set = {}
    for test in sets.tests:
        logits, y = tests[test.name]
        by_set[test.name] = {"name": test.name, "root": test.root, **_figures(logits, y, labels, rotten, rules, t)}
    in_energy = np.concatenate([energy(tests[s.name][0]) for s in sets.tests])
    ood_figures = {"threshold_pass_on_validation": decide.flagged(val_energy, cut),
                   "in_distribution_flagged": {s.name: decide.flagged(energy(tests[s.name][0]), cut)
                                               for s in sets.tests},
                   "non_produce": {p.name: _ood_set(outputs(p.images), cut, in_energy, p) for p in sets.ood}}
    goal_text = goal.text() if chosen.met else f"{goal.text()} (not met on validation; closest pair)"
    decision = DecisionRule(rotten_at=chosen.rotten_at, fresh_at=chosen.fresh_at, goal=goal_text,
                            chosen_on=f"{sets.val.name} ({len(sets.val.y)} photos)")
    ood = OodRule(threshold=cut, in_dist_pass=ood_pass, figures=ood_figures,
                  chosen_on=f"{sets.val.name} ({len(sets.val.y)} photos)")
    evaluation = _evaluation(sets.tests, by_set)
    evaluation["validation"] = {"name": sets.val.name, "n": len(sets.val.y), "uncertain_rate": chosen.uncertain_rate,
                                "rotten_caught": chosen.rotten_caught, "fresh_kept": chosen.fresh_kept}
    return CardRules(t, decision, ood, evaluation, fit.to_dict())


def _ood_set(logits: np.ndarray, cut: float, in_energy: np.ndarray, photos: PhotoSet) -> dict:
    scores = energy(logits)
    return {"source": photos.source, "n": len(scores), "flagged": decide.flagged(scores, cut),
            "auroc": decide.auroc(in_energy, scores)}


def _evaluation(tests: list[Photos], by_set: dict[str, dict]) -> dict:
    """`in_distribution` is the first test set (the training distribution's own test split),
    `other_sources` the first of the rest; every set is also under `test_sets` by name."""
    out: dict = {"test_sets": by_set}
    if tests:
        out["in_distribution"] = by_set[tests[0].name]
    if len(tests) > 1:
        out["other_sources"] = by_set[tests[1].name]
    return out
