"""Pure metric functions (numpy + scikit-learn): what `evaluate` and `export` report.

Kept free of I/O and plotting so tests can check every figure against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_curve, precision_recall_fscore_support

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _r(value: float) -> float:
    return round(float(value), 6)


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict:
    """Precision/recall/F1/support per class plus macro and weighted averages (0 where undefined)."""
    idx = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    per_class = {lbl: {"precision": _r(p[i]), "recall": _r(r[i]), "f1": _r(f[i]), "support": int(s[i])}
                 for i, lbl in enumerate(labels)}
    out: dict = {"per_class": per_class}
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, labels=idx, average=avg,
                                                        zero_division=0)
        out[avg] = {"precision": _r(ap), "recall": _r(ar), "f1": _r(af)}
    return out


def rotten_probability(probs: np.ndarray, labels: Sequence[str], rotten_labels: Sequence[str]) -> np.ndarray:
    """P(rotten) = sum of the rotten labels' probabilities; the sorter bins on this."""
    cols = [i for i, lbl in enumerate(labels) if lbl in set(rotten_labels)]
    return probs[:, cols].sum(axis=1) if cols else np.zeros(len(probs))


def threshold_table(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str],
                    rotten_labels: Sequence[str], thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[dict]:
    """For each threshold t, items with P(rotten) >= t are binned: precision/recall of "rotten"
    and how many fresh items would be thrown away with them."""
    rotten_idx = [i for i, lbl in enumerate(labels) if lbl in set(rotten_labels)]
    is_rotten = np.isin(y_true, rotten_idx)
    p_rot = rotten_probability(probs, labels, rotten_labels)
    rows = []
    for t in thresholds:
        binned = p_rot >= t
        tp = int(np.sum(binned & is_rotten))
        fp = int(np.sum(binned & ~is_rotten))
        fn = int(np.sum(~binned & is_rotten))
        n_fresh = int(np.sum(~is_rotten))
        rows.append({"threshold": _r(t), "binned": int(binned.sum()),
                     "precision": _r(tp / (tp + fp)) if tp + fp else 0.0,
                     "recall": _r(tp / (tp + fn)) if tp + fn else 0.0,
                     "fresh_binned": fp, "fresh_binned_rate": _r(fp / n_fresh) if n_fresh else 0.0})
    return rows


def pr_curves(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> dict[str, dict]:
    """One-vs-rest precision-recall curves per class (for plots; not written to metrics.json)."""
    curves = {}
    for i, lbl in enumerate(labels):
        positives = (y_true == i).astype(int)
        if positives.sum() == 0:
            continue
        precision, recall, _ = precision_recall_curve(positives, probs[:, i])
        curves[lbl] = {"precision": precision, "recall": recall}
    return curves


def worst_errors(y_true: np.ndarray, probs: np.ndarray, k: int = 16) -> list[int]:
    """Indices of the most confident wrong predictions, most confident first."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_true)
    conf = probs[wrong, pred[wrong]]
    return [int(i) for i in wrong[np.argsort(-conf, kind="stable")][:k]]


def compute_metrics(y_true: Sequence[int] | np.ndarray, probs: np.ndarray, labels: Sequence[str],
                    rotten_labels: Sequence[str] = (),
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict:
    """Everything `metrics.json` holds, from true class indices and (N, C) probabilities."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(y_true), len(labels)):
        raise ValueError(f"probs shape {probs.shape} does not match {len(y_true)} items × {len(labels)} labels")
    y_pred = probs.argmax(axis=1)
    report = per_class_report(y_true, y_pred, labels)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    return {
        "n": len(y_true),
        "labels": list(labels),
        "rotten_labels": [lbl for lbl in labels if lbl in set(rotten_labels)],
        "accuracy": _r(np.mean(y_pred == y_true)) if len(y_true) else 0.0,
        **report,
        "confusion_matrix": cm.tolist(),
        "predicted_classes": len(set(y_pred.tolist())),
        "threshold_table": threshold_table(y_true, probs, labels, rotten_labels, thresholds)
        if rotten_labels else [],
    }


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Top-1 agreement between two score arrays (the export vs the float model)."""
    return _r(np.mean(np.asarray(a).argmax(axis=1) == np.asarray(b).argmax(axis=1))) if len(a) else 0.0


def drop_p_value(lost: int, gained: int) -> float:
    """Exact one-sided McNemar test: how likely, if the export were no worse than the float model, is
    it to lose at least `lost` of the `lost + gained` images the two disagree on (each a coin flip)."""
    from scipy.stats import binomtest

    return float(binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue) if lost + gained else 1.0
