"""Nightly figures: what was sorted, how sure the model was, how often audits say it was right.

Everything is read through a read-only connection (`store.open_reader`), so a report can run
while `sorter watch` or `sorter camera` writes. `build_report` returns plain JSON-ready data;
`report_html` draws the page from that same dict, so the page can never disagree with the JSON.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from sorter import item_counts, item_layout, store
from sorter.card import ModelCard
from sorter.item_counts import Group
from sorter.item_layout import ms_of
from sorter.redact import mask_url
from sorter.states import ItemState
from sorter.weighting import combined_p, weighted_figures

FORMAT = "sorter-report/1"
BINS = [round(i / 10, 1) for i in range(11)]
MAX_WRONG = 100
_DATED = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def rounded(value: float) -> float:
    """A figure as reports store it: six decimals (the fleet report rounds its merged figures alike)."""
    return round(float(value), 6)


def iso_utc(moment: datetime) -> str:
    """A time as reports and rows write it: UTC, milliseconds."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def parse_time(text: str) -> datetime:
    """ISO date or date-time; naive means UTC (the store's clock)."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def window(since: str | None = None, start: str | None = None, end: str | None = None,
           now: datetime | None = None) -> tuple[datetime, datetime]:
    """`--since 24h` (ending now) or `--from … [--to …]`; ValueError on nonsense."""
    now = now or datetime.now(UTC)
    if start:
        lo, hi = parse_time(start), parse_time(end) if end else now
    else:
        hi = parse_time(end) if end else now
        lo = hi - store.parse_age(since or "24h")
    if hi <= lo:
        raise ValueError(f"empty window: {iso_utc(lo)} .. {iso_utc(hi)}")
    return lo, hi


# ---- metrics over audited items (plain numpy: sorter/ never imports training/) ----

def confusion(true: list[str], pred: list[str], labels: list[str]) -> np.ndarray:
    """Rows = true label, columns = predicted label."""
    index = {lbl: i for i, lbl in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(true, pred, strict=True):
        cm[index[t], index[p]] += 1
    return cm


def per_class(cm: np.ndarray, labels: list[str]) -> dict[str, dict[str, float]]:
    """Precision/recall/F1/support per class from the matrix (0 where undefined)."""
    out = {}
    for i, lbl in enumerate(labels):
        tp, col, row = cm[i, i], cm[:, i].sum(), cm[i, :].sum()
        p = tp / col if col else 0.0
        r = tp / row if row else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out[lbl] = {"precision": rounded(p), "recall": rounded(r), "f1": rounded(f), "support": int(row)}
    return out


def wilson(successes: int, n: int, z: float = 1.96) -> list[float] | None:
    """95 % Wilson score interval: honest at small n and near 0 or 1, unlike p ± z·se."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [rounded(max(0.0, centre - half)), rounded(min(1.0, centre + half))]


def label_order(known: list[str] | None, seen: Iterable[str]) -> list[str]:
    """The card's labels in its order, then any other label seen, sorted (one rule for line and fleet)."""
    out = list(known or [])
    return out + [lbl for lbl in sorted(set(seen)) if lbl not in out]


def rotten_of(labels: list[str], known: list[str] | None) -> list[str]:
    """The card's rotten labels; without a card, the labels that say so in their name."""
    return list(known) if known is not None else [lbl for lbl in labels if "rotten" in lbl.lower()]


def matrix_figures(cm: np.ndarray, labels: list[str], rotten: list[str]) -> dict[str, Any]:
    """Accuracy (with its interval), fresh-vs-rotten accuracy, per-class figures from the matrix alone,
    so a fleet can sum its lines' matrices and get the same figures a single line would."""
    n, correct = int(cm.sum()), int(np.trace(cm))
    bad = [lbl in rotten for lbl in labels]
    same = sum(int(cm[i, j]) for i in range(len(labels)) for j in range(len(labels)) if bad[i] == bad[j])
    classes = per_class(cm, labels)
    present = [c for c in classes.values() if c["support"]]
    return {
        "n": n, "correct": correct,
        "accuracy": rounded(correct / n) if n else None,
        "accuracy_ci95": wilson(correct, n),
        "fresh_vs_rotten_accuracy": rounded(same / n) if n else None,
        "per_class": classes,
        "macro_f1": rounded(sum(c["f1"] for c in present) / len(present)) if present else None,
        "confusion_matrix": {"labels": labels, "rows": "true", "columns": "predicted", "matrix": cm.tolist()},
    }


def audit_figures(rows: list[dict], labels: list[str], rotten: list[str]) -> dict[str, Any]:
    """The matrix figures over audited rows, plus the items the model got wrong."""
    cm = confusion([r["true_label"] for r in rows], [r["label"] for r in rows], labels)
    return {
        **matrix_figures(cm, labels, rotten),
        "wrong": [{k: r[k] for k in ("id", "sha256", "label", "true_label", "confidence", "verdict", "destination",
                                     "auditor")} for r in rows if r["label"] != r["true_label"]][:MAX_WRONG],
    }


def weight_groups(rows: list[dict]) -> list[dict]:
    """Audited rows counted by (recorded p, true label, model label), published as `audit.weighted.groups`:
    every weighted sum follows from it (Σ n/p, over the right ones too, and the spread of the weights the
    interval rests on), so a fleet merge can weight its lines' audits together with `weighted_figures`
    without each audit travelling. p is None for an audit without a recorded draw (counted as p = 1)."""
    counts: dict[tuple[float | None, str, str], int] = {}
    for r in rows:
        key = (r["p"] or None, r["true_label"], r["label"])
        counts[key] = counts.get(key, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0] is not None, kv[0][0] or 0.0))
    return [{"p": p, "true_label": true, "label": label, "n": n} for (p, true, label), n in ordered]


# ---- accuracy per model version, over time ----

def model_version(row: dict) -> str:
    """`colour@1a2b3c4d5e6f`: the model's name and the start of its file's hash, which tells a retrained
    model under the same name apart."""
    return version_name(row.get("model_id"), row.get("model_sha256"))


def version_name(model_id: str | None, sha: str | None) -> str:
    return f"{model_id or 'unknown'}@{(sha or 'no-hash')[:12]}"


def version_figures(verdicts: dict[str, int], audited: list[dict], rotten: list[str]) -> dict[str, Any]:
    """Volume, rates and audited accuracy (plain with its Wilson interval, and weighted 1/p) of one group
    whose items' verdicts are counted in `verdicts`."""
    n = sum(verdicts.values())
    weighted = weighted_figures(audited, [], rotten)
    correct = sum(1 for a in audited if a["label"] == a["true_label"])
    return {"items": n, **rates(verdicts, n), "audited": len(audited),
            "accuracy": rounded(correct / len(audited)) if audited else None,
            "accuracy_ci95": wilson(correct, len(audited)),
            "weighted_accuracy": weighted["accuracy"], "weighted_ci95": weighted["accuracy_ci95"],
            "audits_with_p": weighted["with_p"]}


def _verdicts_by(groups: list[Group], key: Callable[[Group], tuple]) -> dict[tuple, dict[str, int]]:
    """Verdict counts of the groups, per key, keys in the order the groups come."""
    out: dict[tuple, dict[str, int]] = {}
    for g in groups:
        counts = out.setdefault(key(g), {})
        counts[str(g.verdict)] = counts.get(str(g.verdict), 0) + g.n
    return out


def _audits_by(audited: list[dict], key: Callable[[dict], tuple]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for row in audited:
        out.setdefault(key(row), []).append(row)
    return out


Span = tuple[str, str]  # a model version's first and last received_at in the window


def version_spans(conn: sqlite3.Connection, groups: list[Group], lo: datetime, hi: datetime) -> dict[tuple, Span]:
    """When each model version in the groups first and last classified an item in [lo, hi): found in its
    first and last hour only (one indexed hour of rows each), never by reading the window."""
    hours: dict[tuple, list[str]] = {}
    for g in groups:
        hours.setdefault((g.model_id, g.model_sha256), []).append(g.hour)
    start, end = ms_of(lo), ms_of(hi)
    sql = ("SELECT received_at FROM items WHERE {} AND model_id IS ? AND model_sha256 IS ? AND duplicate_of IS NULL "
           "AND label IS NOT NULL AND verdict IS NOT NULL ORDER BY received_ms {} LIMIT 1")

    def first(order: str, bounds: tuple[int, int], version: tuple) -> str:
        window, params = item_layout.in_window(conn, bounds[0], bounds[1])
        found = conn.execute(sql.format(window, order), [*params, *version]).fetchone()
        return found[0] if found else ""

    def within(hour: str) -> tuple[int, int]:
        """The window's part of that hour; all the window when a row's time is not ISO (hand-typed)."""
        try:
            begin = datetime.fromisoformat(hour + ":00+00:00")
        except ValueError:
            return start, end
        return max(start, ms_of(begin)), min(end, ms_of(begin + timedelta(hours=1)))

    out = {}
    for version, seen in hours.items():
        first_at, last_at = (first(order, within(hour), version) or first(order, (start, end), version)
                             for order, hour in (("ASC", min(seen)), ("DESC", max(seen))))
        out[version] = (first_at, last_at)
    return out


def by_model_version(groups: list[Group], audited: list[dict], rotten: list[str],
                     spans: dict[tuple, Span]) -> list[dict]:
    """One row per model version seen in the window (classified groups), in the order each first
    classified an item (`spans`)."""
    versions = _verdicts_by(groups, lambda g: (g.model_id, g.model_sha256))
    checked = _audits_by(audited, lambda r: (model_version(r),))
    out = []
    for (model_id, sha), verdicts in sorted(versions.items(), key=lambda kv: (spans[kv[0]][0], kv[0][0] or "")):
        version = version_name(model_id, sha)
        first, last = spans[(model_id, sha)]
        out.append({"version": version, "model_id": model_id, "model_sha256": sha, "first": first, "last": last,
                    **version_figures(verdicts, checked.get((version,), []), rotten)})
    return out


def model_by_day(groups: list[Group], audited: list[dict], rotten: list[str]) -> list[dict]:
    """Per UTC day (received time) and model version: `version_figures`, oldest day first."""
    days = _verdicts_by(groups, lambda g: (g.hour[:10], version_name(g.model_id, g.model_sha256)))
    checked = _audits_by(audited, lambda r: (r["received_at"][:10], model_version(r)))
    return [{"day": day, "version": version, **version_figures(verdicts, checked.get((day, version), []), rotten)}
            for (day, version), verdicts in sorted(days.items())]


# ---- operational figures ----

def _hours(lo: datetime, hi: datetime) -> list[str]:
    first = lo.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    out = []
    while first < hi:
        out.append(first.isoformat()[:13])
        first += timedelta(hours=1)
    return out


HOURLY = ("rotten", "uncertain", "unknown")  # the verdicts counted per hour beside the volume


def hourly(groups: list[Group], lo: datetime, hi: datetime) -> list[dict]:
    """Volume, rotten, uncertain and unknown counts per UTC hour (every hour, empty ones too)."""
    series: dict[str, dict[str, Any]] = {h: {"hour": h + ":00Z", "items": 0, **dict.fromkeys(HOURLY, 0)}
                                         for h in _hours(lo, hi)}
    for g in groups:
        slot = series.get(g.hour)
        if slot is not None:
            slot["items"] += g.n
            if g.verdict in HOURLY:
                slot[g.verdict] += g.n
    return list(series.values())


def rates(verdicts: dict[str, int], n: int) -> dict[str, float | None]:
    """rotten_rate and uncertain_rate among the produce (items the model knew: `unknown` ones are not
    fresh, rotten or uncertain produce, so they do not dilute these rates), unknown_rate among all
    `n` classified items. One rule for a line's report and the fleet's merge."""
    produce = n - verdicts.get("unknown", 0)
    out = {f"{v}_rate": rounded(verdicts.get(v, 0) / produce) if produce else None for v in ("rotten", "uncertain")}
    out["unknown_rate"] = rounded(verdicts.get("unknown", 0) / n) if n else None
    return out


def histograms(groups: list[Group]) -> dict[str, list[int]]:
    """Confidence counts per verdict in ten bins of 0.1 (1.0 falls in the last; no confidence, the first)."""
    out: dict[str, list[int]] = {}
    for g in groups:
        bins = out.setdefault(str(g.verdict), [0] * 10)
        bins[(g.bin or 0) * 10 // item_counts.BINS] += g.n
    return out


def reason(error: str) -> str:
    """'wrong-extension: .txt' → 'wrong-extension': group errors by kind, not by file."""
    return error.split(":", 1)[0].strip() or "unknown"


def camera_figures(conn: sqlite3.Connection, lo: datetime, hi: datetime) -> dict[str, dict]:
    """Per device: seconds online inside the window, offline/reconnect events, dropped frames."""
    start, end = iso_utc(lo), iso_utc(hi)
    devices: dict[str, dict] = {}
    state: dict[str, tuple[bool, datetime]] = {}
    for row in conn.execute("SELECT time, device, event, detail FROM camera_events WHERE time < ? ORDER BY time, id",
                            [end]):
        dev, when = mask_url(row["device"]), max(parse_time(row["time"]), lo)  # rows written before masking
        fig = devices.setdefault(dev, {"online_seconds": 0.0, "offline_events": 0, "reconnects": 0,
                                       "drop_reports": 0, "dropped_frames": 0})
        online, since = state.get(dev, (False, lo))
        if online:
            fig["online_seconds"] += (when - since).total_seconds()
        if row["event"] in ("online", "reconnect", "offline"):
            online = row["event"] != "offline"
        state[dev] = (online, when)
        if row["time"] < start:
            continue
        if row["event"] == "offline":
            fig["offline_events"] += 1
        elif row["event"] == "reconnect":
            fig["reconnects"] += 1
        elif row["event"] == "dropped":
            fig["drop_reports"] += 1
            match = re.match(r"\s*(\d+)", row["detail"] or "")
            fig["dropped_frames"] += int(match.group(1)) if match else 0
    until = min(hi, datetime.now(UTC))
    span = (hi - lo).total_seconds()
    for dev, (online, since) in state.items():
        fig = devices[dev]
        if online and until > since:
            fig["online_seconds"] += (until - since).total_seconds()
        fig["online_seconds"] = rounded(fig["online_seconds"])
        fig["online_fraction"] = rounded(fig["online_seconds"] / span)
    return devices


# ---- drift ----

def _points(fraction: float) -> str:
    """A difference of two percentages is in percentage points: 0.167 is `16.7 points`, not `16.7 %`."""
    return f"{fraction * 100:.1f} points"


def _delta(value: float | None, base: float | None) -> float | None:
    return rounded(value - base) if value is not None and base is not None else None


def compare(current: dict, baseline: dict | None, name: str, margin: float, min_audited: int,
            baseline_n: int | None, kind: str | None = None,
            against: str | None = None, figure: str = "accuracy") -> tuple[dict | None, list[dict]]:
    """Deltas of the audited figures against a baseline; a flag when accuracy fell > margin.
    `kind` and `against` (the figure as the flag message names it) default to ones made from `name`;
    `figure` is what the message calls the current accuracy (`weighted accuracy` when weights drive it)."""
    if not baseline or baseline.get("accuracy") is None:
        return None, []
    acc, base = current["accuracy"], baseline.get("accuracy")
    out = {"accuracy": base, "accuracy_delta": _delta(acc, base),
           "fresh_vs_rotten_delta": _delta(current["fresh_vs_rotten_accuracy"],
                                           baseline.get("fresh_vs_rotten_accuracy")),
           "per_class_recall_delta": {lbl: _delta(c["recall"], (baseline.get("per_class") or {}).get(lbl, {})
                                                  .get("recall")) for lbl, c in current["per_class"].items()
                                      if c["support"]}}
    enough = current["n"] >= min_audited and (baseline_n is None or baseline_n >= min_audited)
    flags = []
    if enough and acc is not None and base is not None and base - acc > margin:
        against = against or f"the {name}'s {base:.1%}"
        flags.append({"kind": kind or "accuracy-vs-" + name.replace(" ", "-"), "value": acc, "baseline": base,
                      "message": f"{figure} {acc:.1%} is {_points(base - acc)} below {against} "
                                 f"(margin {_points(margin)}, {current['n']} audited items)"})
    out["compared"] = enough
    return out, flags


# the card figure drift holds audited accuracy against: baseline → (name in the flag, flag kind, short name)
CARD_BASES = {
    "other_sources": ("model card's other-sources figure", "accuracy-vs-model-card-other-sources", "other sources"),
    "test": ("model card", "accuracy-vs-model-card", "test split"),
}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def other_sources(card: ModelCard | None) -> dict | None:
    """The card's `evaluation.other_sources` entry when it holds an accuracy, else None."""
    entry = (card.evaluation or {}).get("other_sources") if card else None
    return entry if isinstance(entry, dict) and _number(entry.get("accuracy")) is not None else None


def card_baseline(card: ModelCard | None) -> dict | None:
    """The card figure for `compare`; None without a card accuracy.

    The other-sources evaluation when the card has one: a line's photos come from its own camera, not
    from the training photos' sources, so they behave like other sources, and the test split's figure
    would flag a drift that is only the change of source. Else the test split's score (older cards)."""
    other = other_sources(card)
    if other is not None:
        classes = other.get("per_class") or {}
        return {"baseline": "other_sources", "name": other.get("name"), "n": other.get("n"),
                "accuracy": _number(other["accuracy"]),
                "fresh_vs_rotten_accuracy": _number(other.get("fresh_vs_rotten_accuracy")),
                "per_class": {k: v for k, v in classes.items() if isinstance(v, dict)}}
    if card is None or card.score.accuracy is None:
        return None
    return {"baseline": "test", "name": None, "n": card.score.n_test, "accuracy": card.score.accuracy,
            "per_class": card.score.per_class}


def _source(name: Any, n: Any) -> str:
    """`fruit_extra test share, 268 photos`: where a card figure was measured, as far as the card says."""
    return ", ".join(part for part in (str(name) if name else "", f"{n} photos" if n else "") if part)


def card_figure(vs_card: dict) -> str:
    """`card, other sources (fruit_extra test share, 268 photos): 92.0 %`: which card figure drift
    compared with, for the text output and the page (an operator reads a delta against *what*)."""
    short = CARD_BASES.get(vs_card.get("baseline") or "test", CARD_BASES["test"])[2]
    source = _source(vs_card.get("baseline_name"), vs_card.get("baseline_n"))
    return f"card, {short}{f' ({source})' if source else ''}: {vs_card['accuracy'] * 100:.1f} %"


def uses_weighted(audit: dict) -> bool:
    """Drift holds the weighted figures when at least one audit has a recorded draw probability."""
    return bool((audit.get("weighted") or {}).get("with_p"))


def driving(audit: dict) -> dict:
    """The audit figures drift compares: the weighted accuracy, fresh-vs-rotten accuracy and per-class
    recall in place of the plain ones when `uses_weighted`, else the audit itself (and a fleet's)."""
    if not uses_weighted(audit):
        return audit
    weighted = audit["weighted"]
    recall = weighted["per_class_recall"]
    return {**audit, "accuracy": weighted["accuracy"], "fresh_vs_rotten_accuracy": weighted["fresh_vs_rotten_accuracy"],
            "per_class": {lbl: {**c, "recall": recall.get(lbl, c["recall"])} for lbl, c in audit["per_class"].items()}}


def drift(audit: dict, rates: dict[str, float | None], card_base: dict | None, previous: dict | None,
          margin: float, min_audited: int) -> dict[str, Any]:
    """Against the card's figure (`card_baseline`) and the previous report; flags only accuracy falls.
    `vs_card.baseline` says which card figure it was (`other_sources` or `test`); `accuracy_used` says
    whether the weighted or the unweighted audited accuracy was held against it (`driving`)."""
    weighted = uses_weighted(audit)
    figure = "weighted accuracy" if weighted else "accuracy"
    audit = driving(audit)
    base = card_base or {}
    which = base.get("baseline") or "test"
    name, kind, _ = CARD_BASES.get(which, CARD_BASES["test"])
    source = _source(base.get("name"), base.get("n"))
    against = (f"the {name} of {base['accuracy']:.1%}{f' ({source})' if source else ''}"
               if which == "other_sources" and base.get("accuracy") is not None else None)
    vs_card, f1 = compare(audit, card_base, name, margin, min_audited, None, kind, against, figure)
    if vs_card is not None:
        vs_card.update(baseline=which, baseline_name=base.get("name"), baseline_n=base.get("n"))
    vs_prev: dict | None = None
    f2: list[dict] = []
    if previous:
        prev_audit = driving(previous.get("audit") or {})
        vs_prev, f2 = compare(audit, prev_audit, "previous report", margin, min_audited, prev_audit.get("n", 0),
                              figure=figure)
        vs_prev = {**(vs_prev or {}), "generated_at": previous.get("generated_at"),
                   **{f"{k}_delta": _delta(v, previous.get(k)) for k, v in rates.items()}}
    note = None if audit["n"] >= min_audited else f"only {audit['n']} audited items (< {min_audited}): no flag raised"
    return {"margin": margin, "min_audited": min_audited, "accuracy_used": "weighted" if weighted else "unweighted",
            "accuracy": audit["accuracy"], "vs_card": vs_card, "vs_previous": vs_prev,
            "flags": f1 + f2, "flagged": bool(f1 or f2), "note": note}


# ---- the report ----

@dataclass
class ReportOptions:
    margin: float = 0.05
    min_audited: int = 20


def _has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    """A read-only reader may meet a database from before the migration that added `column`."""
    return any(r[1] == column for r in conn.execute(f"PRAGMA table_info({table})"))


def _audited(conn: sqlite3.Connection, start: str, end: str) -> list[dict]:
    """Each audited, classified item in the window with its latest audit, and `p`, its recorded chance
    of having been audited (`weighting.combined_p`; None without a recorded draw). Found from the audits'
    item_id index over the window's id range (`store.window_ids`), so a day of unaudited rows is never read."""
    ids = store.window_ids(conn, start, end)
    if not store.has_table(conn, "audits") or ids is None:
        return []
    keep = "i.keep_p" if _has_column(conn, "items", "keep_p") else "NULL AS keep_p"
    window, params = item_layout.in_window(conn, store.ms_of_text(start), store.ms_of_text(end), "i")
    sql = ("SELECT i.id, i.sha256, i.label, i.confidence, i.verdict, i.destination, i.model_id, i.model_sha256, "
           f"i.received_at, {keep}, a.true_label, a.auditor FROM audits a CROSS JOIN items i ON i.id = a.item_id "
           f"WHERE a.item_id BETWEEN ? AND ? AND {window} "
           "AND i.label IS NOT NULL AND i.duplicate_of IS NULL AND a.id = (SELECT b.id FROM audits b "
           "WHERE b.item_id = i.id ORDER BY b.audited_at DESC, b.id DESC LIMIT 1) ORDER BY i.id")
    rows = [dict(r) for r in conn.execute(sql, [*ids, *params])]
    shares: dict[int, list[float]] = {}
    if store.has_table(conn, "audit_draws") and rows:
        for item_id, share in conn.execute("SELECT d.item_id, d.share FROM audit_draws d WHERE d.item_id IN "
                                           "(SELECT a.item_id FROM audits a WHERE a.item_id BETWEEN ? AND ?)", ids):
            shares.setdefault(item_id, []).append(share)
    for row in rows:
        row["p"] = combined_p(row.pop("keep_p"), shares.get(row["id"], []))
    return rows


def ranked(counts: dict[str, int]) -> dict[str, int]:
    """Most frequent first, ties by name: the order of every count table in the report."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def build_report(db_path: Path | str, lo: datetime, hi: datetime, card: ModelCard | None = None,
                 previous: dict | None = None, options: ReportOptions | None = None) -> dict[str, Any]:
    """Every figure of `report.json`, read through one read-only snapshot of the database: counts from
    the per-hour counters and the partial hours' rows grouped in SQL (sorter.item_counts), audits row by
    row (a small share), so the cost and the memory are the same for a quiet hour and a busy month."""
    opts = options or ReportOptions()
    start, end = iso_utc(lo), iso_utc(hi)
    conn = store.open_reader(db_path)
    try:
        conn.execute("BEGIN")  # one snapshot: counts and audits agree even while the daemon writes
        groups = [g for g in item_counts.window_groups(conn, lo, hi) if g.n]
        classified = [g for g in groups if g.classified]
        spans = version_spans(conn, classified, lo, hi)
        audited = _audited(conn, start, end)
        cameras = camera_figures(conn, lo, hi) if store.has_table(conn, "camera_events") else {}
        conn.execute("COMMIT")
    finally:
        conn.close()
    firsts = [g for g in groups if not g.dup]
    seen = sorted({str(g.label) for g in classified} | {a["true_label"] for a in audited})
    labels = label_order(card.labels if card else None, seen)
    rotten = rotten_of(labels, card.rotten_labels if card else None)
    verdicts = item_counts.tally((g.verdict, g.n) for g in classified)
    n, hours = sum(verdicts.values()), (hi - lo).total_seconds() / 3600
    audit = {**audit_figures(audited, labels, rotten),
             "weighted": {**weighted_figures(audited, labels, rotten), "groups": weight_groups(audited)}}
    audit["accuracy_used"] = "weighted" if uses_weighted(audit) else "unweighted"
    series = hourly(classified, lo, hi)
    rated = rates(verdicts, n)
    card_base = card_baseline(card)  # also in `model`: a fleet merge compares with the figure each line did
    received = sum(g.n for g in groups)
    return {
        "format": FORMAT, "generated_at": store.now_iso(), "db": str(db_path),
        "window": {"from": start, "to": end, "hours": rounded(hours)},
        "model": {"name": card.name, "labels": card.labels, "rotten_labels": card.rotten_labels,
                  "card_accuracy": card.score.accuracy, "card_baseline": card_base} if card else None,
        "items": {"received": received, "classified": n, "duplicates": received - sum(g.n for g in firsts),
                  "errors": sum(g.n for g in firsts if g.reason),
                  "dry_run": sum(g.n for g in firsts if g.state == ItemState.DRY_RUN)},
        "by_label": item_counts.tally((g.label, g.n) for g in classified),
        "by_verdict": verdicts,
        "by_model": item_counts.tally((g.model_id, g.n) for g in classified),
        "by_model_version": by_model_version(classified, audited, rotten, spans),
        "model_by_day": model_by_day(classified, audited, rotten),
        **rated,
        "throughput": {"per_hour": rounded(n / hours), "peak_per_hour": max((s["items"] for s in series), default=0),
                       "hourly": series},
        "confidence_histogram": {"bins": BINS, "by_verdict": histograms(classified)},
        "errors_by_reason": item_counts.tally((g.reason, g.n) for g in firsts if g.reason),
        "camera": cameras,
        "audit": audit,
        "drift": drift(audit, rated, card_base, previous, opts.margin, opts.min_audited),
    }


# ---- report folders: dated, previous, pruned ----

def dated_folders(root: Path) -> list[Path]:
    """ROOT/YYYY-MM-DD folders, oldest first."""
    return sorted(p for p in root.iterdir() if p.is_dir() and _DATED.match(p.name)) if root.is_dir() else []


def find_previous(out: Path, dated_root: Path | None) -> dict | None:
    """The last report before this one: the newest earlier dated sibling, else OUT's own."""
    candidates = ([p / "report.json" for p in dated_folders(dated_root) if p.name < out.name]
                  if dated_root else [out / "report.json"])
    for path in reversed(candidates):
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
    return None


def prune_reports(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` dated folders; only YYYY-MM-DD names are ever touched."""
    old = dated_folders(root)[:-keep] if keep > 0 else []
    for folder in old:
        shutil.rmtree(folder)
    return old


def write_json(report: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    return path


@dataclass
class Written:
    folder: Path
    report: dict
    pruned: list[Path]


def generate(db_path: Path, out: Path, lo: datetime, hi: datetime, card: ModelCard | None = None,
             options: ReportOptions | None = None, dated: bool = False, keep: int = 0,
             previous: Path | None = None, max_thumbnails: int = 24) -> Written:
    """`sorter report`: build, write report.json and report.html, then prune old dated folders.

    With `dated`, the report goes to OUT/<window start date>/ and the previous report is the
    newest earlier dated folder; `keep` > 0 keeps only that many dated folders.
    """
    from sorter.report_html import write_html

    folder = out / lo.astimezone(UTC).date().isoformat() if dated else out
    prior = json.loads(previous.read_text()) if previous else find_previous(folder, out if dated else None)
    report = build_report(db_path, lo, hi, card, prior, options)
    write_json(report, folder)
    write_html(report, folder, max_thumbnails)
    pruned = prune_reports(out, keep) if dated and keep else []
    return Written(folder, report, pruned)
