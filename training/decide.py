"""Choose the card's verdict rule on validation photos, and score any rule the way the runtime applies it.

Two choices are made here, both on validation, never on a test split:
- the P(rotten) thresholds: `rotten` at P(rotten) >= rotten_at, `fresh` at <= fresh_at, `uncertain`
  between, for a stated goal (how many rotten items may pass as fresh, how many fresh ones may be
  binned) at the lowest uncertain rate, because every uncertain item costs a person's look;
- the `unknown` threshold on the energy score (logsumexp of the logits): the value a stated share of
  in-distribution photos stays above.
Figures for a rule come from `sorter.verdict.VerdictRules` itself, so what the card and `sorter
evaluate` report is what `sorter watch` will do with the same scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sorter.verdict import Judgement, VerdictRules
from training.metrics import rotten_probability

GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))
SINGLE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Goal:
    """What the thresholds must achieve: `rotten_caught` of the rotten items not passed as fresh
    (binned, or held as uncertain for a person) and `fresh_kept` of the fresh items not binned."""

    rotten_caught: float = 0.98
    fresh_kept: float = 0.95

    def text(self) -> str:
        return (f"rotten recall >= {self.rotten_caught:.0%} (rotten items not passed as fresh) and fresh kept "
                f">= {self.fresh_kept:.0%} (fresh items not binned), at the lowest uncertain rate")


@dataclass(frozen=True)
class Thresholds:
    rotten_at: float
    fresh_at: float
    met: bool  # False: no pair on the grid meets the goal; the closest one is returned
    uncertain_rate: float
    rotten_caught: float
    fresh_kept: float


def _rates(p_rot: np.ndarray, is_rotten: np.ndarray, rotten_at: np.ndarray, fresh_at: np.ndarray):
    """For every (rotten_at, fresh_at) pair at once: uncertain share, rotten caught, fresh kept."""
    p = p_rot[None, :]
    binned, passed = p >= rotten_at[:, None], (p <= fresh_at[:, None]) & (p < rotten_at[:, None])
    n_rot, n_fresh = max(int(is_rotten.sum()), 1), max(int((~is_rotten).sum()), 1)
    uncertain = (~binned & ~passed).mean(axis=1)
    caught = 1 - (passed & is_rotten).sum(axis=1) / n_rot
    kept = 1 - (binned & ~is_rotten).sum(axis=1) / n_fresh
    return uncertain, caught, kept


def choose_thresholds(p_rot: np.ndarray, is_rotten: np.ndarray, goal: Goal = Goal(),
                      grid: Sequence[float] = GRID) -> Thresholds:
    """The grid pair meeting `goal` with the fewest uncertain photos; ties go to the fewest errors,
    then to the pair nearest 0.5 (the least extreme). Without a pair meeting it, the pair that
    misses it least (summed shortfall) is returned with `met=False`."""
    p_rot, is_rotten = np.asarray(p_rot, dtype=np.float64), np.asarray(is_rotten, dtype=bool)
    g = np.asarray(grid, dtype=np.float64)
    r, f = np.meshgrid(g, g, indexing="ij")
    keep = f <= r
    r, f = r[keep], f[keep]
    uncertain, caught, kept = _rates(p_rot, is_rotten, r, f)
    shortfall = np.maximum(goal.rotten_caught - caught, 0) + np.maximum(goal.fresh_kept - kept, 0)
    met = shortfall <= 1e-12
    errors = (1 - caught) + (1 - kept)
    centre = np.abs(r - 0.5) + np.abs(f - 0.5)
    order = (np.lexsort((centre, errors, uncertain)) if met.any()
             else np.lexsort((centre, uncertain, shortfall)))
    best = int(order[0] if not met.any() else order[met[order]][0])
    return Thresholds(float(r[best]), float(f[best]), bool(met.any()), round(float(uncertain[best]), 6),
                      round(float(caught[best]), 6), round(float(kept[best]), 6))


# --- the runtime's rule on arrays ---------------------------------------------------------------


@dataclass(frozen=True)
class _Scored:
    label: str
    confidence: float
    scores: Mapping[str, float]
    ood_score: float | None


def judge(probs: np.ndarray, labels: Sequence[str], rules: VerdictRules,
          ood: np.ndarray | None = None) -> list[Judgement]:
    """Each photo's verdict and label through `VerdictRules.decide`, on the numbers the runtime's
    Prediction carries (sorter.model.Classifier.predict: scores and energy rounded to 6 digits, the
    top-1 confidence not), so a threshold means here what it means on the line."""
    out = []
    for i, row in enumerate(np.asarray(probs, dtype=np.float64)):
        scores = {lbl: round(float(p), 6) for lbl, p in zip(labels, row, strict=True)}
        top = int(np.argmax(row))
        out.append(rules.decide(_Scored(labels[top], float(row[top]), scores,
                                        None if ood is None else _stored(ood[i]))))
    return out


def _stored(score: float) -> float:
    """An energy as the runtime stores and compares it (sorter.model.Prediction.ood_score)."""
    return round(float(score), 6)


def _share(mask: np.ndarray, of: np.ndarray | None = None) -> float | None:
    of = np.ones_like(mask, dtype=bool) if of is None else of
    return round(float(mask[of].mean()), 6) if of.any() else None


def rule_figures(y: np.ndarray, labels: Sequence[str], rotten_labels: Sequence[str],
                 judged: Sequence[Judgement]) -> dict:
    """Figures of one rule on labelled photos, every one over all photos unless it says otherwise:
    accuracy (the label the runtime records is the true class), fresh/rotten right (its side is),
    the uncertain and unknown shares, and among the decided (fresh or rotten) photos the same two;
    rotten caught (not passed as fresh), rotten binned (strict recall), fresh kept, per-class recall."""
    y = np.asarray(y, dtype=int)
    rotten = set(rotten_labels)
    true_rot = np.array([labels[i] in rotten for i in y], dtype=bool)
    got = np.array([labels.index(j.label) for j in judged], dtype=int)
    verdict = np.array([j.verdict for j in judged])
    side_rot = np.array([labels[i] in rotten for i in got], dtype=bool)
    decided = np.isin(verdict, ["fresh", "rotten"])
    right, side_right = got == y, side_rot == true_rot
    per_class = {lbl: {"recall": _share(right, y == i), "support": int(np.sum(y == i))}
                 for i, lbl in enumerate(labels)}
    return {"n": len(y), "accuracy": _share(right), "fresh_vs_rotten_accuracy": _share(side_right),
            "uncertain_rate": _share(verdict == "uncertain"), "unknown_rate": _share(verdict == "unknown"),
            "decided_rate": _share(decided), "decided_accuracy": _share(right, decided),
            "decided_fresh_vs_rotten_accuracy": _share(side_right, decided),
            "rotten_caught": _share(verdict != "fresh", true_rot),
            "rotten_binned": _share(verdict == "rotten", true_rot),
            "fresh_kept": _share(verdict != "rotten", ~true_rot),
            "per_class": per_class}


def decision_table(y: np.ndarray, probs: np.ndarray, labels: Sequence[str], rotten_labels: Sequence[str],
                   settings: Sequence[tuple[str, float, float]]) -> list[dict]:
    """One row per (name, rotten_at, fresh_at) setting, each one a pair `sorter.toml` can hold, with
    what it does to these photos under the runtime's own rule (no unknown verdict: the table is about
    the fresh/rotten thresholds alone)."""
    rows = []
    for name, rotten_at, fresh_at in settings:
        rules = VerdictRules(frozenset(rotten_labels), rotten_at=rotten_at, fresh_at=fresh_at)
        fig = rule_figures(y, labels, rotten_labels, judge(probs, labels, rules))
        rows.append({"setting": name, "rotten_at": rotten_at, "fresh_at": fresh_at,
                     **{k: fig[k] for k in ("uncertain_rate", "rotten_caught", "rotten_binned", "fresh_kept",
                                            "accuracy", "fresh_vs_rotten_accuracy", "decided_accuracy")}})
    return rows


def single_settings(thresholds: Sequence[float] = SINGLE_THRESHOLDS) -> list[tuple[str, float, float]]:
    """rotten_at = fresh_at = t: every photo decided, binned when P(rotten) >= t (the old table's rows)."""
    return [(f"t={t:g}", float(t), float(t)) for t in thresholds]


def p_rotten(probs: np.ndarray, labels: Sequence[str], rotten_labels: Sequence[str]) -> np.ndarray:
    return rotten_probability(np.asarray(probs, dtype=np.float64), labels, rotten_labels)


# --- unknown ------------------------------------------------------------------------------------


def choose_ood_threshold(in_scores: np.ndarray, pass_rate: float = 0.95) -> float:
    """The highest energy that at least `pass_rate` of in-distribution photos score at or above (20
    photos at 0.95: the second lowest, 19 pass); below it is `unknown`."""
    scores = np.sort(np.asarray(in_scores, dtype=np.float64))
    if not len(scores):
        raise ValueError("no in-distribution photos to choose an unknown threshold on")
    if not 0 < pass_rate <= 1:
        raise ValueError(f"pass rate must be in (0, 1], not {pass_rate}")
    below = min(int(np.floor(len(scores) * (1 - pass_rate) + 1e-9)), len(scores) - 1)  # 1 - 0.9 is 0.0999...
    return round(float(scores[below]), 6)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float | None:
    """How well the score ranks in-distribution above out-of-distribution photos (1 = always, 0.5 = chance)."""
    from sklearn.metrics import roc_auc_score

    if not len(in_scores) or not len(out_scores):
        return None
    y = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    return round(float(roc_auc_score(y, np.r_[in_scores, out_scores])), 6)


def flagged(scores: np.ndarray, threshold: float) -> float | None:
    """The share of photos the rule calls unknown (energy, rounded as the runtime stores it, below
    the threshold)."""
    stored = np.array([_stored(s) for s in np.asarray(scores, dtype=np.float64)])
    return round(float(np.mean(stored < threshold)), 6) if len(stored) else None
