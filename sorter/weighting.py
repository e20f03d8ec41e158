"""Audited accuracy weighted back to the whole line: each audited item counts 1/p, p being the chance it
had of being audited (camera keep share × the audit sample's stratum share; `audit.draw`).

`audit sample` draws uncertain and low-confidence items more, so the plain share of audits the model
got right describes the hard cases, not the line. The Hájek (ratio) estimator Σ w·y / Σ w with w = 1/p
undoes that. Its variance is the usual Taylor linearisation with the with-replacement approximation
(the "ultimate cluster" estimator of Hansen, Hurwitz and Madow, what R's `survey::svymean` gives for a
design with weights only): v = n/(n−1) · Σ zᵢ², zᵢ = wᵢ(yᵢ − R)/Σw. It ignores the strata and the finite
population, so it errs wide. The interval is Wilson's at the design's effective sample size
n* = R(1−R)/v (Korn and Graubard's device: honest near 0 and 1, where R ± 1.96·√v collapses); when v is 0
(every audit right, or every one wrong) n* is Kish's (Σw)²/Σw².
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

METHOD = ("Hajek ratio estimate, weights 1/p; linearised variance (with-replacement approximation); "
          "Wilson 95% interval at the effective sample size")


def wilson_at(share: float, n: float, z: float = 1.96) -> list[float]:
    """The 95 % Wilson score interval around `share` observed on `n` items (n may be fractional)."""
    denom = 1 + z * z / n
    centre = (share + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(share * (1 - share), 0.0) / n + z * z / (4 * n * n)) / denom
    return [round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)]


def combined_p(keep_p: float | None, shares: list[float]) -> float | None:
    """An item's chance of being audited: kept (keep_p, NULL = 1) and then drawn in at least one sample
    (1 − Π(1 − share)); None when no draw was recorded for it."""
    if not shares:
        return None
    missed = math.prod(1.0 - s for s in shares)
    return (1.0 if keep_p is None else float(keep_p)) * (1.0 - missed)


@dataclass
class Estimate:
    accuracy: float | None
    ci95: list[float] | None
    se: float | None
    n_effective: float | None
    population: float  # Σ 1/p: the number of items the audits stand for


def hajek(correct: list[bool], p: list[float]) -> Estimate:
    """Weighted share of `correct`, each counting 1/p, with its interval (module docstring)."""
    n = len(correct)
    if n == 0:
        return Estimate(None, None, None, None, 0.0)
    w = 1.0 / np.asarray(p, dtype=float)
    y = np.asarray(correct, dtype=float)
    total = float(w.sum())
    ratio = float((w * y).sum() / total)
    z = w * (y - ratio) / total
    var = float(n / (n - 1) * (z * z).sum()) if n > 1 else 0.0
    kish = total * total / float((w * w).sum())
    n_eff = min(float(n), ratio * (1 - ratio) / var) if var > 0 else kish
    return Estimate(round(ratio, 6), wilson_at(ratio, n_eff), round(math.sqrt(var), 6), round(n_eff, 3),
                    round(total, 3))


def weighted_figures(rows: list[dict], labels: list[str], rotten: list[str]) -> dict[str, Any]:
    """Accuracy, fresh-vs-rotten accuracy and per-class recall over audited `rows` (each with `label`,
    `true_label` and `p`, None = no recorded draw, counted as 1), and how many had a recorded p."""
    p = [r["p"] if r["p"] else 1.0 for r in rows]
    est = hajek([r["label"] == r["true_label"] for r in rows], p)
    bad = set(rotten)
    fvr = hajek([(r["label"] in bad) == (r["true_label"] in bad) for r in rows], p)
    recall: dict[str, float | None] = {}
    for lbl in labels:
        mine = [(r["label"] == lbl, q) for r, q in zip(rows, p, strict=True) if r["true_label"] == lbl]
        if mine:
            recall[lbl] = hajek([m for m, _ in mine], [q for _, q in mine]).accuracy
    with_p = sum(1 for r in rows if r["p"])
    return {"n": len(rows), "with_p": with_p, "without_p": len(rows) - with_p,
            "accuracy": est.accuracy, "accuracy_ci95": est.ci95, "se": est.se, "n_effective": est.n_effective,
            "population": est.population, "fresh_vs_rotten_accuracy": fvr.accuracy,
            "per_class_recall": recall, "method": METHOD}
