"""The report.html sections of training/evaluate_field.py's figures: the test sets, what the card
recorded at export beside what this run measured, the threshold settings, calibration and unknown.

Every figure sits beside its photo count and the set it is on, so a reader never compares a figure
on 360 photos of one source with one on 40 of another without seeing it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from training.evaluate_field import rule_text


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def _num(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _table(head: list[str], rows: list[list[str]], marked: set[int] | None = None) -> str:
    top = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(f"<tr{' class=mark' if marked and i in marked else ''}>"
                   + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for i, row in enumerate(rows))
    return f"<table><tr>{top}</tr>{body}</table>"


def _png(path: Path, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"


SET_HEAD = ["test set", "photos", "accuracy", "fresh/rotten", "uncertain", "unknown", "decided accuracy",
            "rotten caught", "fresh kept"]


def _set_row(name: str, fig: dict) -> list[str]:
    return [name, str(fig.get("n", "")), _num(fig.get("accuracy")), _num(fig.get("fresh_vs_rotten_accuracy")),
            _pct(fig.get("uncertain_rate")), _pct(fig.get("unknown_rate")), _num(fig.get("decided_accuracy")),
            _pct(fig.get("rotten_caught")), _pct(fig.get("fresh_kept"))]


def sets_section(metrics: dict) -> str:
    """One row per data root and one over all photos, under the rule the runtime applies."""
    rows = [_set_row(fig["name"], fig) for fig in metrics["by_root"].values()]
    if len(rows) > 1:
        rows.append(_set_row(f"all ({metrics['split']})", metrics["rule_figures"]))
    return (f"<h2>Test sets</h2><p>Verdicts as the runtime gives them: {html.escape(rule_text(metrics['rule']))}."
            f" Each data root is a test set of its own.</p>{_table(SET_HEAD, rows)}")


def _card_sets(evaluation: dict) -> list[dict]:
    named = evaluation.get("test_sets")
    if isinstance(named, dict) and named:
        return [f for f in named.values() if isinstance(f, dict)]
    return [evaluation[k] for k in ("in_distribution", "other_sources") if isinstance(evaluation.get(k), dict)]


def recorded(metrics: dict, evaluation: dict | None) -> str:
    """The card's `evaluation` (measured at export) beside this run's figures on the same root."""
    if not evaluation:
        return ""
    rows, marked = [], set()
    for fig in _card_sets(evaluation):
        rows.append(["at export: " + str(fig.get("name", "")), *_set_row("", fig)[1:]])
        mine = metrics["by_root"].get(str(fig.get("root", "")))
        if mine is not None:
            marked.add(len(rows))
            rows.append(["this run: " + mine["name"], *_set_row("", mine)[1:]])
    return ("<h2>Recorded on the model card</h2><p>What the export measured on each test set (the card's "
            "<code>evaluation</code>), and below each the same figures from this run on that data root: "
            "compare the photo counts before the figures.</p>" + _table(SET_HEAD, rows, marked))


DECISION_HEAD = ["setting", "rotten_at", "fresh_at", "uncertain", "rotten caught", "rotten binned",
                 "fresh kept", "accuracy", "applied"]


def decision(metrics: dict) -> str:
    rows = [[r["setting"], f"{r['rotten_at']:g}", f"{r['fresh_at']:g}", _pct(r["uncertain_rate"]),
             _pct(r["rotten_caught"]), _pct(r["rotten_binned"]), _pct(r["fresh_kept"]), _num(r["accuracy"]),
             "◀ runtime" if r["applied"] else ""] for r in metrics["decision_table"]]
    applied = {i for i, r in enumerate(metrics["decision_table"]) if r["applied"]}
    note = ("" if applied else " The runtime applies none of these rows to this model: "
            f"{html.escape(rule_text(metrics['rule']))}.")
    return ("<h2>Verdict thresholds</h2><p>Each row is a <code>rotten_at</code> / <code>fresh_at</code> pair "
            "sorter.toml can hold (card: the model card's <code>decision</code>; config: --config; t=…: both at t), "
            f"on all {metrics['n']} photos, without the unknown verdict or confidence floors.{note}</p>"
            + _table(DECISION_HEAD, rows, applied))


def calibration(metrics: dict, reliability: Path | None) -> str:
    cal = metrics["calibration"]
    t = cal["temperature"]
    scaled = t != 1.0  # T = 1 twice says nothing: one pair of columns
    head = ["photos on", "photos", "NLL T = 1", *([f"NLL T = {t:g}"] if scaled else []), "ECE T = 1",
            *([f"ECE T = {t:g}"] if scaled else [])]
    sets = [(f"{name}/{metrics['split']}", fig) for name, fig in cal["by_root"].items()]
    if len(sets) > 1:
        sets.append((f"all ({metrics['split']})", cal["overall"]))
    rows = [[name, str(f["n"]), _num(f["nll_before"]), *([_num(f["nll_after"])] if scaled else []),
             _num(f["ece_before"]), *([_num(f["ece_after"])] if scaled else [])] for name, f in sets]
    note = f" {html.escape(cal['note'])}." if cal["note"] else ""
    figure = _png(reliability, "reliability diagram") if reliability else ""
    said = (f"at T = 1 and at the card's temperature T = {t:g} (what the runtime divides the logits by)"
            if scaled else "at T = 1 (the card records no other temperature)")
    return (f"<h2>Calibration</h2><p>Negative log-likelihood and expected calibration error {said}.{note}</p>"
            + _table(head, rows) + figure)


def unknown(metrics: dict) -> str:
    ood = metrics.get("ood")
    if not ood:
        return ""
    applied = ood["applied_threshold"]
    said = ("the runtime applies the same" if applied == ood["threshold"] else
            "the unknown verdict is off in this config" if applied is None else
            f"the runtime applies {applied:g} (config unknown_below)")
    rows = [[f"{name}/{metrics['split']} (produce)", str(f["n"]), _pct(f["flagged"]), ""]
            for name, f in ood["by_root"].items()]
    rows += [[f"{name}: {f['source']}", str(f["n"]), _pct(f["flagged"]), _num(f["auroc"])]
             for name, f in ood["non_produce"].items()]
    return (f"<h2>Unknown (not produce)</h2><p>Share of photos whose energy is below the card's threshold "
            f"{ood['threshold']:g} ({said}); AUROC of the energy between each non-produce set and the "
            f"{metrics['n']} {html.escape(metrics['split'])} photos (1 = always told apart).</p>"
            + _table(["photos", "n", "flagged unknown", "AUROC"], rows))
