"""Many lines' nightly reports → one report of the same format (`sorter-report/1`), plus `lines`.

Counts add up; every ratio (rates, accuracy and its interval, per-class figures) is recomputed
from the summed counts and the summed confusion matrix, never averaged, so a fleet of one line
gives exactly that line's figures. The figures come from the functions `sorter report` uses.

The weighted (1/p) audited accuracy is merged the same way: each line publishes its audits counted by
(p, true label, model label) (`audit.weighted.groups`), the fleet pools them and runs the line's own
`weighting.weighted_figures` on the pool, so the estimate is Σ over lines of the weights of right audits
over Σ of all weights, with the interval from the pooled weights. A line whose report has no groups
(older code) can only be counted plain; then the fleet has no weighted figure and drift holds the
plain one, and `audit.weighting` says which lines fell back.

Each line's report is read through `report_format.Report`: one that is not the format (hand-edited,
truncated, another publisher's on the fleet topic) is left out of the merge and named, with why, in
`refused_lines`, so one bad line neither stops the fleet report nor poisons its sums.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from pydantic import ValidationError

from sorter import report as rp
from sorter.report_format import CardBaseline, ModelInfo, Report, WeightGroup
from sorter.store import now_iso
from sorter.weighting import weighted_figures

Reports = dict[str, Report]  # line → its report, read typed


def _sum(tables: list[dict[str, int]]) -> dict[str, int]:
    """Count tables added up, name by name."""
    out: dict[str, int] = {}
    for table in tables:
        for name, n in table.items():
            out[name] = out.get(name, 0) + n
    return out


def _window(reports: Reports) -> tuple[datetime, datetime]:
    """From the earliest line's start to the latest line's end."""
    return (min(rp.parse_time(r.window.start) for r in reports.values()),
            max(rp.parse_time(r.window.to) for r in reports.values()))


def _throughput(reports: Reports, lo: datetime, hi: datetime, classified: int) -> dict[str, Any]:
    """Every hour of the fleet's window, each line's counts added to its UTC hour."""
    hours = (hi - lo).total_seconds() / 3600
    series = {slot["hour"]: slot for slot in rp.hourly([], lo, hi)}
    for r in reports.values():
        for h in r.throughput.hourly:
            slot = series.setdefault(h.hour, {"hour": h.hour, "items": 0, **dict.fromkeys(rp.HOURLY, 0)})
            for key in ("items", *rp.HOURLY):
                slot[key] += getattr(h, key)
    hourly = [series[h] for h in sorted(series)]
    return {"per_hour": rp.rounded(classified / hours) if hours else 0.0,
            "peak_per_hour": max((s["items"] for s in hourly), default=0), "hourly": hourly}


def _histograms(reports: Reports) -> dict[str, Any]:
    out: dict[str, list[int]] = {}
    for r in reports.values():
        for verdict, counts in r.confidence_histogram.by_verdict.items():
            bins = out.setdefault(verdict, [0] * len(counts))
            out[verdict] = [a + b for a, b in zip(bins, counts, strict=True)]
    return {"bins": rp.BINS, "by_verdict": out}


def _models(reports: Reports) -> list[ModelInfo]:
    return [r.model for r in reports.values() if r.model is not None]


def _labels(reports: Reports) -> tuple[list[str], list[str], list[str] | None]:
    """The lines' card labels, then any other label in their matrices (report.label_order, as for one line);
    the cards' rotten labels when every line has a card, else the name rule; and the card labels alone."""
    models = _models(reports)
    known = list(dict.fromkeys(lbl for m in models for lbl in m.labels or [])) if models else None
    seen = {lbl for r in reports.values() for lbl in r.audit.confusion_matrix.labels}
    labels = rp.label_order(known, seen)
    every_card = len(models) == len(reports)
    rotten = list(dict.fromkeys(lbl for m in models for lbl in m.rotten_labels)) if every_card else None
    return labels, rp.rotten_of(labels, rotten), known


def _matrix(reports: Reports, labels: list[str]) -> np.ndarray:
    """Each line's confusion matrix added cell by cell under the fleet's label order."""
    index = {lbl: i for i, lbl in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=int)
    for r in reports.values():
        own = r.audit.confusion_matrix
        for i, row in enumerate(own.matrix):
            for j, n in enumerate(row):
                cm[index[own.labels[i]], index[own.labels[j]]] += n
    return cm


def _plain_rows(r: Report) -> list[dict]:
    """A line's audits from its confusion matrix alone, each without a recorded draw (p = 1)."""
    own = r.audit.confusion_matrix
    return [{"true_label": own.labels[i], "label": own.labels[j], "p": None}
            for i, row in enumerate(own.matrix) for j, n in enumerate(row) for _ in range(n)]


def _weight_rows(r: Report) -> tuple[list[dict] | None, str | None]:
    """A line's audits as `weighted_figures` rows from its `audit.weighted.groups`, or None and why not:
    a report from before the groups were published, groups that are not (p in (0, 1], true_label, label,
    n) entries, or groups that do not add up to its audits."""
    groups = r.audit.weighted.groups if r.audit.weighted else None
    if groups is None:
        return None, "its report has no audit.weighted.groups (an older sorter)"
    try:
        typed = [WeightGroup.model_validate(g) for g in groups]
    except ValidationError as exc:
        if any(e["type"] in ("greater_than", "less_than_equal") and e["loc"] == ("p",) for e in exc.errors()):
            return None, "its audit.weighted.groups hold a p outside (0, 1]"
        return None, "its audit.weighted.groups are not (p, true_label, label, n) entries"
    rows = [{"true_label": g.true_label, "label": g.label, "p": g.p} for g in typed for _ in range(g.n)]
    if len(rows) != r.audit.n:
        return None, f"its audit.weighted.groups count {len(rows)} audits, its audit {r.audit.n}"
    return rows, None


def _weighting(reports: Reports, labels: list[str], rotten: list[str]) -> tuple[dict[str, Any] | None, dict]:
    """The fleet's `audit.weighted` from every line's pooled groups (None when a line with audits has none)
    and `audit.weighting`: which lines were weighted, which fell back to plain counts and why."""
    rows: list[dict] = []
    weighted: list[str] = []
    plain: dict[str, str] = {}
    for line, r in reports.items():
        own, why = _weight_rows(r)
        if own is not None:
            weighted.append(line)
        elif r.audit.n:  # a line without audits has nothing to weight
            plain[line] = why or ""
        rows += own if own is not None else _plain_rows(r)
    note = None
    if plain:
        note = ("no fleet weighted accuracy: " + "; ".join(f"{line}: {why}" for line, why in plain.items())
                + "; those lines count plain, and the fleet's drift holds the unweighted accuracy")
    info = {"weighted_lines": weighted, "plain_lines": plain, "note": note}
    if plain:
        return None, info
    return {**weighted_figures(rows, labels, rotten), "groups": rp.weight_groups(rows)}, info


BASE_DETAILS = ("name", "n", "fresh_vs_rotten_accuracy", "per_class")  # card_baseline beyond its figure


def line_baseline(model: ModelInfo) -> dict[str, Any] | None:
    """The card figure a line's drift compared with: its published `card_baseline`, or, from a line still
    on code that publishes only `card_accuracy`, that (the card's test-split score, as it compared with)."""
    if model.card_baseline is not None and model.card_baseline.accuracy is not None:
        return model.card_baseline.model_dump(exclude_unset=True)  # as the line published it
    acc = model.card_accuracy
    old = CardBaseline(baseline="test", name=None, n=None, accuracy=acc)
    return old.model_dump(exclude_unset=True) if acc is not None else None


def fleet_baseline(models: list[ModelInfo], lines: int) -> dict[str, Any] | None:
    """The card figure for the fleet's drift: the one every line compared with, when all `lines` have a card
    and agree on which figure (`other_sources` or `test`) and its accuracy (as before for mixed models:
    equal figures compare, whatever the model names); else None. A detail (name, n, fresh-vs-rotten,
    per class) the lines disagree on is left out rather than taken from one line."""
    bases = [line_baseline(m) for m in models]
    known = [b for b in bases if b is not None]
    if len(known) != lines or len({(b.get("baseline") or "test", b["accuracy"]) for b in known}) != 1:
        return None
    if all(b == known[0] for b in known):
        return known[0]
    out = {"baseline": known[0].get("baseline") or "test", "accuracy": known[0]["accuracy"]}
    for key in BASE_DETAILS:
        values = [b[key] for b in known if b.get(key) is not None]
        out[key] = values[0] if values and all(v == values[0] for v in values) else None
    return out


def _model(reports: Reports, known: list[str] | None, rotten: list[str]) -> dict[str, Any] | None:
    models = _models(reports)
    if not models:
        return None
    accuracies = {m.card_accuracy for m in models}
    return {"name": ", ".join(sorted({m.name for m in models})), "labels": known, "rotten_labels": rotten,
            "card_accuracy": accuracies.pop() if len(accuracies) == 1 and len(models) == len(reports) else None,
            "card_baseline": fleet_baseline(models, len(reports))}


def _drift(audit: dict, rates: dict[str, float | None], reports: Reports, model: dict | None,
           options: rp.ReportOptions) -> dict[str, Any]:
    """The fleet against the card figure every line compared with (`fleet_baseline`), then each line's flags."""
    base = model["card_baseline"] if model else None
    out = rp.drift(audit, rates, base, None, options.margin, options.min_audited)
    if base is None:
        out["note"] = "; ".join(filter(None, [out["note"], "lines differ in the card figure their drift compares "
                                                          "with (or have no card): no fleet comparison with a card"]))
    out["note"] = "; ".join(filter(None, [out["note"], audit["weighting"]["note"]])) or None
    for line, r in reports.items():
        out["flags"] += [{**flag.model_dump(exclude_none=True), "line": line, "message": f"{line}: {flag.message}"}
                         for flag in r.drift.flags]
    out["flagged"] = bool(out["flags"])
    return out


def _line_figure(vs_card: dict | None) -> str | None:
    """`other sources 92.0 %`: the card figure a line's own drift compared with, so the per-line table shows
    why lines on different figures get no fleet comparison (a line on older code: its test split)."""
    if not vs_card or vs_card.get("accuracy") is None:
        return None
    short = rp.CARD_BASES.get(vs_card.get("baseline") or "test", rp.CARD_BASES["test"])[2]
    return f"{short} {vs_card['accuracy'] * 100:.1f} %"


def _line(r: Report) -> dict[str, Any]:
    """The row of the per-line table."""
    a, w = r.audit, r.audit.weighted
    return {"items": r.items.classified, "rotten_rate": r.rotten_rate, "uncertain_rate": r.uncertain_rate,
            "unknown_rate": r.unknown_rate, "audit_n": a.n, "accuracy": a.accuracy, "accuracy_ci95": a.accuracy_ci95,
            "weighted_accuracy": w.accuracy if w else None, "weighted_ci95": w.accuracy_ci95 if w else None,
            "accuracy_used": r.drift.accuracy_used or "unweighted",
            "drift_flagged": r.drift.flagged, "card_figure": _line_figure(r.drift.vs_card),
            "window": r.window.model_dump(by_alias=True),
            "model": r.model.name if r.model else None, "db": r.db, "generated_at": r.generated_at}


def read_lines(reports: dict[str, Any]) -> tuple[Reports, dict[str, str]]:
    """Each line's report read typed, and the lines whose report is not the format, with why."""
    good: Reports = {}
    refused: dict[str, str] = {}
    for line, data in sorted(reports.items()):
        try:
            good[line] = data if isinstance(data, Report) else Report.read(data, f"{line}'s report")
        except ValueError as exc:
            refused[line] = str(exc)
    return good, refused


def merge(reports: dict[str, Any], options: rp.ReportOptions | None = None) -> dict[str, Any]:
    """One `sorter-report/1` report for the fleet from each line's report; `lines` holds one row per line,
    `refused_lines` the lines whose report was not the format (left out, with why)."""
    opts = options or rp.ReportOptions()
    lines, refused = read_lines(reports)
    if not lines:
        raise ValueError("no line reports to merge" + (f": {'; '.join(refused.values())}" if refused else ""))
    labels, rotten, known = _labels(lines)
    items = _sum([r.items.model_dump() for r in lines.values()])
    verdicts = rp.ranked(_sum([r.by_verdict for r in lines.values()]))
    n = items["classified"]
    rates = rp.rates(verdicts, n)
    lo, hi = _window(lines)
    audit = {**rp.matrix_figures(_matrix(lines, labels), labels, rotten),
             "wrong": [{**w.model_dump(exclude_none=True), "line": line}
                       for line, r in lines.items() for w in r.audit.wrong]}
    weighted, audit["weighting"] = _weighting(lines, labels, rotten)
    if weighted is not None:
        audit["weighted"] = weighted
    audit["accuracy_used"] = "weighted" if rp.uses_weighted(audit) else "unweighted"
    model = _model(lines, known, rotten)
    return {
        "format": rp.FORMAT, "generated_at": now_iso(), "db": None, "model": model,
        "window": {"from": rp.iso_utc(lo), "to": rp.iso_utc(hi), "hours": rp.rounded((hi - lo).total_seconds() / 3600)},
        "items": items, "by_label": rp.ranked(_sum([r.by_label for r in lines.values()])), "by_verdict": verdicts,
        "by_model": rp.ranked(_sum([r.by_model for r in lines.values()])), **rates,
        "throughput": _throughput(lines, lo, hi, n),
        "confidence_histogram": _histograms(lines),
        "errors_by_reason": rp.ranked(_sum([r.errors_by_reason for r in lines.values()])),
        "camera": {f"{line}/{dev}": fig.model_dump() for line, r in lines.items() for dev, fig in r.camera.items()},
        "audit": audit,
        "drift": _drift(audit, rates, lines, model, opts),
        "lines": {line: _line(r) for line, r in lines.items()},
        "refused_lines": refused,
    }
