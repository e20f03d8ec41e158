"""Temperature scaling: make a confidence of 0.9 mean right nine times in ten.

A fine-tuned network with label smoothing is under-confident, one without it over-confident; either
way the probabilities the sorter stores and thresholds are off. One scalar T, fitted on validation
logits by minimising the negative log-likelihood of softmax(logits / T), fixes that without changing
any top-1 answer (Guo et al., 2017). The exporter stores T in the card (`temperature`) and the runtime
divides the logits by it. Expected calibration error (ECE) and a reliability diagram show the effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

T_BOUNDS = (0.05, 20.0)  # a temperature outside this is a broken model, not a calibration
N_BINS = 10


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(log_softmax(logits, temperature))


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes: what temperature scaling minimises."""
    y = np.asarray(y, dtype=int)
    if not len(y):
        return 0.0
    return float(-log_softmax(logits, temperature)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T in T_BOUNDS minimising the NLL, searched on log T (the loss is smooth and unimodal there)."""
    from scipy.optimize import minimize_scalar

    if not len(y):
        raise ValueError("no validation photos to fit a temperature on")
    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    found = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))), bounds=(lo, hi),
                            method="bounded", options={"xatol": 1e-4})
    return round(float(np.exp(found.x)), 4)


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Photos binned by top-1 confidence: each bin's count, mean confidence and accuracy."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=int)
    conf, right = probs.max(axis=1), probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        inside = which == b
        n = int(inside.sum())
        bins.append({"lo": round(float(edges[b]), 4), "hi": round(float(edges[b + 1]), 4), "n": n,
                     "confidence": round(float(conf[inside].mean()), 6) if n else None,
                     "accuracy": round(float(right[inside].mean()), 6) if n else None})
    return bins


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error: the count-weighted gap between confidence and accuracy per bin."""
    bins = reliability_bins(probs, y, n_bins)
    total = sum(b["n"] for b in bins)
    if not total:
        return 0.0
    return round(sum(b["n"] * abs(b["confidence"] - b["accuracy"]) for b in bins if b["n"]) / total, 6)


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it did, on the photos it was fitted on and on others."""

    temperature: float
    fitted_on: str
    figures: dict[str, dict]  # photos → {"n", "nll_before", "nll_after", "ece_before", "ece_after"}

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "fitted_on": self.fitted_on, "figures": self.figures}


def effect(logits: np.ndarray, y: np.ndarray, temperature: float) -> dict:
    """NLL and ECE before (T = 1) and after scaling, on one set of photos."""
    return {"n": len(y), "nll_before": round(nll(logits, y), 6), "nll_after": round(nll(logits, y, temperature), 6),
            "ece_before": ece(softmax(logits), y), "ece_after": ece(softmax(logits, temperature), y)}


def calibrate(val_logits: np.ndarray, val_y: np.ndarray, fitted_on: str,
              others: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> Calibration:
    """Fit T on validation; report its effect there and on every other named set (the test sets)."""
    t = fit_temperature(val_logits, val_y)
    figures = {fitted_on: effect(val_logits, val_y, t)}
    for name, (logits, y) in (others or {}).items():
        figures[name] = effect(logits, y, t)
    return Calibration(t, fitted_on, figures)


def plot_reliability(curves: dict[str, list[dict]], path: Path, title: str = "reliability") -> Path:
    """Accuracy against confidence per bin, one line per curve (e.g. before / after scaling);
    the diagonal is perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for name, bins in curves.items():
        used = [b for b in bins if b["n"]]
        ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], marker="o", label=name)
    ax.set(xlabel="top-1 confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
