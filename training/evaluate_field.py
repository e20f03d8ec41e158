"""What `sorter evaluate` reports beyond accuracy: figures per test set under the runtime's own verdict
rule, calibration at T = 1 and at the card's temperature, the thresholds a config can hold, and the
`unknown` verdict on real non-produce photos.

Every data root is a test set of its own (fruit_dev is the training distribution, fruit_extra what
a packing house's first day looks like), so its figures are kept apart as well as merged. The rule
is `sorter.classify.rules_for` on the bundle's card and the config, so a figure here is what
`sorter watch` will do with the same photos.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sorter.config import Settings
from sorter.verdict import VerdictRules
from training import calibrate, decide
from training.data import DataSplits

log = logging.getLogger(__name__)
TINY = 1e-12  # log(0) of a quantised probability: a stand-in logit far below the others, not -inf


@dataclass
class Scored:
    """One split as the model scored it, each array in the photos' order."""

    y: np.ndarray
    probs: np.ndarray  # what the runtime thresholds: softmax(logits / card T), or the model's probabilities
    logits: np.ndarray  # the logits, or log(probabilities) standing in for them
    logits_from: str  # "logits" | "log(probabilities)"
    energy: np.ndarray | None  # the OOD score (logits bundles only)
    labels: list[str]
    rotten: list[str]
    roots: dict[str, np.ndarray]  # data root name → indices of its photos
    split: str


def stand_in_logits(probs: np.ndarray) -> np.ndarray:
    """log(p): softmax(log p / T) is p at T = 1, so temperature scaling means the same on it."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), TINY, None))


def root_indices(splits: DataSplits, paths: Sequence[Path]) -> dict[str, np.ndarray]:
    """The photos of each data root (in the roots' order), among those that decoded."""
    names = [splits.root_of(Path(p)).name for p in paths]
    order = [r.name for r in splits.roots]
    return {name: np.flatnonzero(np.array(names) == name) for name in order if name in names}


# --- the rule ------------------------------------------------------------------------------------


def config_pair(card, settings: Settings) -> tuple[float, float] | None:
    """The (rotten_at, fresh_at) a config makes when it sets either key (the card's `decision` fills
    the other, as at runtime), or None when it sets neither."""
    if settings.rotten_at is None and settings.fresh_at is None:
        return None
    if card is not None:
        from sorter.classify import decision_thresholds

        pair = decision_thresholds(card, settings)
    else:
        pair = (settings.rotten_at, settings.fresh_at)
    if pair[0] is None or pair[1] is None:
        raise ValueError("rotten_at and fresh_at: a Keras model has no card to take the other one from; "
                         "set both in the config")
    return float(pair[0]), float(pair[1])


def describe_rule(rules: VerdictRules, card, settings: Settings) -> dict:
    """Which rule the runtime applies and where each part of it comes from."""
    by_config = settings.rotten_at is not None or settings.fresh_at is not None
    out: dict[str, Any] = {"by": "P(rotten)" if rules.by_p_rotten else "top-1",
                           "rotten_at": rules.rotten_at, "fresh_at": rules.fresh_at,
                           "thresholds_from": ("config" if by_config else "card") if rules.by_p_rotten else None,
                           "unknown_below": rules.unknown_below,
                           "unknown_score": card.ood.score if card is not None and card.ood is not None else "energy",
                           "unknown_from": None if rules.unknown_below is None else
                           ("config" if settings.unknown_below is not None else "card")}
    if card is None:
        out["note"] = "a Keras model has no card: the top-1 rule of the runtime's defaults"
    return out


def rule_text(rule: dict) -> str:
    parts = ([f"P(rotten) rule: rotten at >= {rule['rotten_at']:g}, fresh at <= {rule['fresh_at']:g} "
              f"({rule['thresholds_from']})"] if rule["by"] == "P(rotten)" else ["top-1 rule (min_confidence)"])
    if rule["unknown_below"] is not None:
        score = "feature distance" if rule.get("unknown_score") == "distance" else "energy"
        parts.append(f"unknown below {score} {rule['unknown_below']:g} ({rule['unknown_from']})")
    return "; ".join(parts)


# --- figures -------------------------------------------------------------------------------------


def figures_by_root(scored: Scored, rules: VerdictRules, data: dict[str, str]) -> tuple[dict, dict]:
    """`decide.rule_figures` under the runtime's rule, per data root and over all photos."""
    judged = decide.judge(scored.probs, scored.labels, rules, scored.energy)
    out = {}
    for name, idx in scored.roots.items():
        fig = decide.rule_figures(scored.y[idx], scored.labels, scored.rotten, [judged[i] for i in idx])
        out[name] = {"name": f"{name}/{scored.split}", "root": name, "path": data.get(name), **fig}
    return out, decide.rule_figures(scored.y, scored.labels, scored.rotten, judged)


def calibration_figures(scored: Scored, temperature: float) -> dict:
    """NLL and ECE at T = 1 (`*_before`) and at the card's T (`*_after`), overall and per root, and
    the reliability bins of both (the diagram's curves)."""
    def effect(idx: np.ndarray) -> dict:
        return calibrate.effect(scored.logits[idx], scored.y[idx], temperature)

    everything = np.arange(len(scored.y))
    curves = {"T = 1": calibrate.reliability_bins(calibrate.softmax(scored.logits), scored.y)}
    if temperature != 1.0:
        curves[f"T = {temperature:g}"] = calibrate.reliability_bins(
            calibrate.softmax(scored.logits, temperature), scored.y)
    note = ("" if scored.logits_from == "logits" else
            "The model outputs probabilities: log(probabilities) stands in for the logits "
            "(softmax of them is the same probabilities, so temperature scaling means the same)")
    return {"from": scored.logits_from, "note": note, "temperature": temperature,
            "overall": effect(everything), "by_root": {n: effect(i) for n, i in scored.roots.items()},
            "reliability": curves}


def decision_settings(card, settings: Settings) -> list[tuple[str, float, float]]:
    """The rows of the threshold table: the card's `decision`, the config's pair, then rotten_at =
    fresh_at = t; each is a pair `sorter.toml` can hold."""
    rows = []
    if card is not None and card.decision is not None:
        rows.append(("card", card.decision.rotten_at, card.decision.fresh_at))
    pair = config_pair(card, settings)
    if pair is not None:
        rows.append(("config", *pair))
    return rows + decide.single_settings()


def decision_rows(scored: Scored, card, settings: Settings, rules: VerdictRules) -> list[dict]:
    """`decide.decision_table` on the split; `applied` marks the row the runtime's rule is (the
    config's when it sets a threshold, else the card's; none under the top-1 rule)."""
    rows = decide.decision_table(scored.y, scored.probs, scored.labels, scored.rotten,
                                 decision_settings(card, settings))
    applied = None
    if rules.by_p_rotten:
        applied = "config" if settings.rotten_at is not None or settings.fresh_at is not None else "card"
    for row in rows:
        row["applied"] = row["setting"] == applied
    return rows


def unknown_figures(scored: Scored, threshold: float, applied: float | None, outputs, size: tuple[int, int],
                    rules: VerdictRules, score: str = "energy") -> tuple[dict, str | None]:
    """The share of each root's photos flagged unknown at the card's threshold, and on real
    non-produce photos: how many, the share flagged, the AUROC of the energy against the split's."""
    from training.ood_photos import PhotosUnavailable, photo_sets

    assert scored.energy is not None
    out: dict[str, Any] = {"score": score, "threshold": threshold, "applied_threshold": applied,
                           "by_root": {n: {"n": len(i), "flagged": decide.flagged(scored.energy[i], threshold)}
                                       for n, i in scored.roots.items()},
                           "in_distribution_flagged": decide.flagged(scored.energy, threshold),
                           "non_produce": {}}
    try:
        sets = photo_sets(size)
    except (PhotosUnavailable, OSError) as exc:
        return out, f"no non-produce photos to measure the unknown verdict on: {exc}"
    for photos in sets:
        energy, probs = outputs(photos.images)
        verdicts = [j.verdict for j in decide.judge(probs, scored.labels, rules, energy)]
        out["non_produce"][photos.name] = {
            "source": photos.source, "n": len(energy), "flagged": decide.flagged(energy, threshold),
            "auroc": decide.auroc(scored.energy, energy),
            "verdicts": {v: round(verdicts.count(v) / len(verdicts), 6) for v in sorted(set(verdicts))}}
    return out, None


# --- the command's lines -------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def summary_lines(metrics: dict) -> list[str]:
    """One line per data root (what `sorter evaluate` prints), then calibration and unknown."""
    lines = []
    for name, fig in metrics.get("by_root", {}).items():
        lines.append(f"{name} {metrics['split']}: accuracy {fig['accuracy']:.4f}, fresh/rotten "
                     f"{fig['fresh_vs_rotten_accuracy']:.4f}, uncertain {_pct(fig['uncertain_rate'])}, "
                     f"unknown {_pct(fig['unknown_rate'])} ({fig['n']} photos)")
    if "rule" in metrics:
        lines.append(f"rule: {rule_text(metrics['rule'])}")
    cal = metrics.get("calibration")
    if cal:
        t, overall = cal["temperature"], cal["overall"]
        if t == 1.0:
            lines.append(f"calibration ({cal['from']}): ECE {overall['ece_before']:.4f}, NLL "
                         f"{overall['nll_before']:.4f} at T = 1 (the card has no other temperature)")
        else:
            lines.append(f"calibration ({cal['from']}): ECE {overall['ece_before']:.4f} at T = 1, "
                         f"{overall['ece_after']:.4f} at T = {t:g}; NLL {overall['nll_before']:.4f} → "
                         f"{overall['nll_after']:.4f}")
    ood = metrics.get("ood")
    if ood:
        sets = ", ".join(f"{name} {_pct(f['flagged'])} of {f['n']} (AUROC {f['auroc']:.3f})"
                         for name, f in ood["non_produce"].items() if f["auroc"] is not None)
        lines.append(f"unknown below {ood['threshold']:g}: {_pct(ood['in_distribution_flagged'])} of the "
                     f"{metrics['split']} photos flagged" + (f"; non-produce {sets}" if sets else ""))
    return lines
