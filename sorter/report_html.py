"""The report as one self-contained HTML page: plots and thumbnails embedded, readable on a phone.

Drawn only from the `report.json` contents, read typed (`report_format.Report`), plus the audited
images on disk for thumbnails, so the page and the JSON cannot disagree. matplotlib (Agg) is
imported here only.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import cv2

from sorter.report import card_figure
from sorter.report_format import (
    Audit,
    ClassFigures,
    ConfusionMatrix,
    CountersOnly,
    Counts,
    DayFigures,
    Drift,
    Histogram,
    Hour,
    LineRow,
    Live,
    Rates,
    Report,
    VersionFigures,
    WrongItem,
)
from sorter.verdict import VERDICTS

CSS = """
body{font-family:system-ui,-apple-system,sans-serif;margin:0 auto;padding:12px;max-width:980px;color:#222}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin-top:1.4em;border-bottom:1px solid #ddd}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:8px}
.card{background:#f4f6f8;border-radius:8px;padding:10px}.card b{display:block;font-size:1.5em}
.card small{color:#555}.flag{background:#fde2e1;border-left:4px solid #c62828;padding:8px;margin:6px 0}
.ok{background:#e3f4e6;border-left:4px solid #2e7d32;padding:8px}img.plot{width:100%;height:auto}
table{border-collapse:collapse;width:100%;font-size:.9em;overflow-x:auto;display:block}
td,th{border:1px solid #ddd;padding:4px 6px;text-align:right}th{background:#f4f6f8}
.thumbs{display:grid;grid-template-columns:repeat(auto-fill,minmax(110px,1fr));gap:8px}
.thumbs figure{margin:0;font-size:.8em}.thumbs img{width:100%;height:auto;border-radius:4px}
@media (max-width:600px){body{padding:8px}.card b{font-size:1.25em}}
"""
# Reports a broken embedded image to the console (a test watches for console errors).
CHECK_JS = """addEventListener('load',()=>{const bad=[...document.images].filter(i=>!i.naturalWidth);
document.body.dataset.brokenImages=bad.length;if(bad.length)console.error('broken images: '+bad.length)});"""


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(width: float = 6.0, height: float = 3.2):
    """A figure of its own (matplotlib's object API, not pyplot: no global state, no GUI backend to pick,
    and half the import), laid out by the constrained engine when drawn: `bbox_inches="tight"` would draw
    every plot twice, a third of the report's time on a line's box."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def plot_confusion(cm: ConfusionMatrix) -> str:
    labels, matrix = cm.labels, cm.matrix
    fig, ax = _figure(1.2 + 0.7 * len(labels), 1.0 + 0.6 * len(labels))
    ax.imshow(matrix, cmap="Blues")
    top = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (audit)")
    return _png(fig)


def plot_per_class(per_class: dict[str, ClassFigures]) -> str:
    fig, ax = _figure()
    names = list(per_class)
    for k, metric in enumerate(("precision", "recall", "f1")):
        ax.bar([i + (k - 1) * 0.27 for i in range(len(names))], [getattr(per_class[n], metric) for n in names],
               0.27, label=metric)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_confidence(hist: Histogram) -> str:
    fig, ax = _figure()
    centres = [b + 0.05 for b in hist.bins[:-1]]
    for verdict, counts in sorted(hist.by_verdict.items()):
        ax.step(centres, counts, where="mid", label=verdict)
    ax.set_xlabel("confidence")
    ax.set_ylabel("items")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_over_time(hourly: list[Hour]) -> str:
    fig, ax = _figure()
    xs = range(len(hourly))
    ax.bar(xs, [h.items for h in hourly], color="#90a4ae", label="items")
    ax.set_ylabel("items per hour")
    twin = ax.twinx()
    produce = [h.items - h.unknown for h in hourly]  # the rotten rate is among the produce
    twin.plot(xs, [h.rotten / n if n else float("nan") for h, n in zip(hourly, produce, strict=True)],
              color="#c62828", marker=".", label="rotten rate")
    twin.set_ylim(0, 1)
    twin.set_ylabel("rotten rate")
    step = max(1, len(hourly) // 8)
    ax.set_xticks(list(xs)[::step], [h.hour[5:13].replace("T", " ") for h in hourly][::step], rotation=30,
                  ha="right", fontsize=8)
    return _png(fig)


def _plot(draw, data: Any, alt: str) -> str:
    """An embedded plot, or a note where matplotlib is absent (the [report] extra)."""
    try:
        return f'<img class="plot" src="{draw(data)}" alt="{alt}">'
    except ImportError:
        return "<p>(plots need matplotlib: pip install 'sorter[report]')</p>"


def thumbnail(path: str | None, size: int = 160) -> str | None:
    """A small embedded JPEG of an audited image; None when the file is gone or unreadable."""
    if not path or not Path(path).is_file():
        return None
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        return None
    scale = size / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode() if ok else None


def _card(title: str, value: str, note: str = "", ident: str = "", data: Any = None) -> str:
    attrs = (f' id="{ident}"' if ident else "") + (f' data-value="{escape(str(data))}"' if ident else "")
    return (f'<div class="card"><small>{escape(title)}</small><b{attrs}>{escape(value)}</b>'
            f"<small>{escape(note)}</small></div>")


def _interval(ci: list[float] | None) -> str:
    return f"{_pct(ci[0])}–{_pct(ci[1])}" if ci else "—"


def _weighted_card(a: Audit) -> list[str]:
    """The weighted (1/p) accuracy beside the plain one, when any audit has a recorded draw probability."""
    w = a.weighted
    if w is None or not w.with_p:
        return []
    return [_card("accuracy (audited, weighted 1/p)", _pct(w.accuracy),
                  f"95% CI {_interval(w.accuracy_ci95)}, drives drift", "headline-weighted", w.accuracy)]


def _headline(r: Report) -> str:
    a = r.audit
    plain = "accuracy (audited, unweighted)" if a.weighted and a.weighted.with_p else "accuracy (audited)"
    return '<div class="cards">' + "".join([
        *_weighted_card(a),
        _card(plain, _pct(a.accuracy),
              f"95% CI {_interval(a.accuracy_ci95)}, n={a.n}" if a.accuracy_ci95 else "no audits",
              "headline-accuracy", a.accuracy),
        _card("fresh vs rotten", _pct(a.fresh_vs_rotten_accuracy)),
        _card("items classified", str(r.items.classified), f"{r.throughput.per_hour:.1f}/h"),
        _card("rotten rate", _pct(r.rotten_rate)),
        _card("uncertain rate", _pct(r.uncertain_rate)),
        _card("unknown rate", _pct(r.unknown_rate), "not produce the model knows", "headline-unknown",
              r.unknown_rate),
        _card("errors", str(r.items.errors), f"duplicates {r.items.duplicates}"),
    ]) + "</div>"


def _drift(d: Drift) -> str:
    parts = [f'<div class="flag">{escape(f.message)}</div>' for f in d.flags]
    if not parts:
        parts.append(f'<div class="ok">no drift flag (margin {d.margin * 100:.1f} points)</div>')
    if d.accuracy_used:
        parts.append(f'<p id="drift-uses">drift holds the {escape(d.accuracy_used)} audited accuracy</p>')
    if d.vs_card:
        parts.append(f'<p id="drift-card">compared with {escape(card_figure(d.vs_card))}</p>')
    if d.note:
        parts.append(f"<p>{escape(d.note)}</p>")
    return '<div id="drift">' + "".join(parts) + "</div>"


def _table(head: list[str], rows: Sequence[Sequence[Any]]) -> str:
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + f"</tr>{body}</table>"


GALLERY_DIRECTION = "true (audited) label → the model's prediction (its confidence)"


def _wrong(wrong: list[WrongItem], limit: int) -> str:
    figures = []
    for w in wrong[:limit]:
        src = thumbnail(w.destination)
        img = f'<img src="{src}" alt="item {w.id}">' if src else "<div>(image gone)</div>"
        where = escape(f"{w.line} ") if w.line else ""
        confidence = f" ({w.confidence:.2f})" if w.confidence is not None else ""
        figures.append(f'<figure>{img}<figcaption>{where}#{w.id}: <b>{escape(w.true_label)}</b> → '
                       f'{escape(w.label or "?")}{confidence}</figcaption></figure>')
    more = f"<p>and {len(wrong) - limit} more in report.json</p>" if len(wrong) > limit else ""
    legend = f"<p class=\"legend\">Each photo: {escape(GALLERY_DIRECTION)}, as in the evaluate report.</p>"
    return (legend + '<div class="thumbs">' + "".join(figures) + "</div>" + more) if figures else "<p>none</p>"


def _page(title: str, sections: list[str]) -> str:
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(sections)}<script>{CHECK_JS}</script></body></html>")


def render(report: dict | Report, max_thumbnails: int = 24) -> str:
    """The whole page as one string; a fleet report (one with `lines`) adds its per-line and live tables."""
    r = report if isinstance(report, Report) else Report.read(report)
    a = r.audit
    name = "Fleet report" if r.lines is not None else "Sorter report"
    heading = f"{name} ({len(r.lines)} lines)" if r.lines is not None else name
    sections = [f"<h1>{escape(heading)}</h1><p>{escape(r.window.start[:16])} → {escape(r.window.to[:16])} "
                f"UTC · model {escape(r.model.name if r.model else 'unknown')}</p>", _headline(r),
                "<h2>Drift</h2>", _drift(r.drift)]
    if r.lines is not None:
        sections += ["<h2>Lines</h2>", _lines(r.lines)]
    if a.n:
        sections += ["<h2>Confusion matrix (audited)</h2>",
                     _plot(plot_confusion, a.confusion_matrix, "confusion matrix"),
                     "<h2>Per class</h2>",
                     _plot(plot_per_class, a.per_class, "per-class bars"),
                     _table(["label", "precision", "recall", "F1", "support"],
                            [[k, f"{v.precision:.3f}", f"{v.recall:.3f}", f"{v.f1:.3f}", v.support]
                             for k, v in a.per_class.items()])]
    if a.n and a.weighted:
        sections += ["<h2>Weighted audited accuracy</h2>", _weighting(a)]
    if r.by_model_version:
        sections += ["<h2>Model versions</h2>", _versions(r.by_model_version, r.model_by_day)]
    if r.items.classified:
        sections += ["<h2>Confidence by verdict</h2>",
                     _plot(plot_confidence, r.confidence_histogram, "confidence"),
                     "<h2>Volume and rotten rate</h2>",
                     _plot(plot_over_time, r.throughput.hourly, "over time")]
    sections += ["<h2>Counts</h2>", _table(["label", "items"], list(r.by_label.items())),
                 _table(["verdict", "items"], list(r.by_verdict.items()))]
    if r.errors_by_reason:
        sections += ["<h2>Errors</h2>", _table(["reason", "items"], list(r.errors_by_reason.items()))]
    if r.camera:
        sections += ["<h2>Cameras</h2>", _table(["device", "online", "offline events", "dropped frames"],
                                                [[k, _pct(v.online_fraction), v.offline_events, v.dropped_frames]
                                                 for k, v in r.camera.items()])]
    sections += ["<h2>Audited items the model got wrong</h2>", _wrong(a.wrong, max_thumbnails)]
    if r.lines is not None and r.live:
        sections += _live(r.live)
    return _page(f"{name} {r.window.start[:10]}", sections)


def _weighting(a: Audit) -> str:
    """What the weighted figure is, how many audits it rests on, and which figure drift uses."""
    w = a.weighted
    assert w is not None
    rows = [["weighted (1/p)", _pct(w.accuracy), _interval(w.accuracy_ci95), _pct(w.fresh_vs_rotten_accuracy)],
            ["unweighted", _pct(a.accuracy), _interval(a.accuracy_ci95), _pct(a.fresh_vs_rotten_accuracy)]]
    note = (f"{w.with_p} of {w.n} audits have a recorded draw probability p and count 1/p each "
            f"(standing for {w.population:.0f} items); {w.without_p} without one count as p = 1. "
            f"Drift holds the {a.accuracy_used} figure. {w.method}.")
    return (_table(["estimate", "accuracy", "95% CI", "fresh vs rotten"], rows)
            + f'<p id="weighting">{escape(note)}</p>')


def _shown_accuracy(x: Rates) -> float | None:
    """Weighted where the day's audits carry p, else plain; None (a gap) without audits."""
    if not x.audited:
        return None
    return x.weighted_accuracy if x.audits_with_p else x.accuracy


def plot_versions(days: list[DayFigures]) -> str:
    """Audited accuracy per UTC day, one line per model version (weighted where audits carry p)."""
    fig, ax = _figure()
    dates = sorted({d.day for d in days})
    for version in dict.fromkeys(d.version for d in days):
        mine = {d.day: d for d in days if d.version == version}
        ys = [_shown_accuracy(mine[x]) if x in mine else None for x in dates]
        ax.plot(range(len(dates)), [float("nan") if y is None else y for y in ys], marker="o", label=version)
    ax.set_xticks(range(len(dates)), [x[5:] for x in dates], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("audited accuracy")
    ax.legend(fontsize=8)
    return _png(fig)


def _versions(versions: list[VersionFigures], days: list[DayFigures]) -> str:
    """Per model version, then per day and version: the step a retrained model makes."""
    def acc(x: Rates) -> str:
        return _pct(x.accuracy) if x.audited else "—"

    def wacc(x: Rates) -> str:
        return _pct(x.weighted_accuracy) if x.audits_with_p else "—"

    head = ["items", "rotten rate", "uncertain rate", "audited", "accuracy", "weighted accuracy"]
    overall = _table(["model version", "first", "last", *head],
                     [[v.version, v.first[:16], v.last[:16], v.items, _pct(v.rotten_rate),
                       _pct(v.uncertain_rate), v.audited, acc(v), wacc(v)] for v in versions])
    daily = _table(["day", "model version", *head],
                   [[d.day, d.version, d.items, _pct(d.rotten_rate), _pct(d.uncertain_rate),
                     d.audited, acc(d), wacc(d)] for d in days])
    plot = _plot(plot_versions, days, "accuracy per model version") if any(d.audited for d in days) else ""
    return f'<div id="model-versions">{overall}{plot}{daily}</div>'


def _lines(lines: dict[str, LineRow]) -> str:
    """One row per line of a fleet report: its volume, rates, audited accuracy and whether it drifted."""
    return _table(["line", "items", "rotten rate", "uncertain rate", "unknown rate", "audited", "accuracy", "95% CI",
                   "drift", "card figure", "model", "window"],
                  [[name, x.items, _pct(x.rotten_rate), _pct(x.uncertain_rate), _pct(x.unknown_rate), x.audit_n,
                    _pct(x.accuracy), _interval(x.accuracy_ci95), "FLAG" if x.drift_flagged else "ok",
                    x.card_figure or "—", x.model or "—", f"{x.window.start[:16]} → {x.window.to[:16]}"]
                   for name, x in lines.items()])


def _rate(counts: Counts, verdict: str) -> float | None:
    """A verdict's share of the counted items; rotten and uncertain among the produce (report.rates)."""
    n = counts.items
    if verdict != "unknown":
        n -= counts.by_verdict.get("unknown", 0)
    return counts.by_verdict.get(verdict, 0) / n if n else None


def _live(live: Live) -> list[str]:
    """The hourly-counter view: every retained hour each line published, per line and for the fleet."""
    total, lines = live.total, live.lines
    cards = '<div class="cards">' + "".join([
        _card("items counted", str(total.items), f"{len(lines)} lines", "fleet-items", total.items),
        _card("rotten rate", _pct(_rate(total, "rotten"))),
        _card("uncertain rate", _pct(_rate(total, "uncertain"))),
        _card("unknown rate", _pct(_rate(total, "unknown"))),
    ]) + "</div>"
    rows = [[name, c.items, *(c.by_verdict.get(v, 0) for v in VERDICTS), _pct(_rate(c, "rotten")), len(c.runs)]
            for name, c in lines.items()]
    return ["<h2>Live hourly counters</h2>", cards,
            _table(["line", "items", *VERDICTS, "rotten rate", "runs"], rows),
            _table(["label", "items"], list(total.by_label.items())),
            _table(["verdict", "items"], list(total.by_verdict.items()))]


def render_fleet(report: dict | CountersOnly) -> str:
    """The counters-only fleet page, for a day no line published a report for."""
    r = report if isinstance(report, CountersOnly) else CountersOnly.model_validate(report)
    sections = [f"<h1>Fleet report</h1><p>{escape(r.generated_at)}</p>",
                f"<p id=\"note\">{escape(r.note or '')}</p>", *_live(r.live)]
    return _page("Fleet report", sections)


def write_html(report: dict, out: Path, max_thumbnails: int = 24) -> Path:
    """report.html beside report.json: the full page, or the counters-only fleet page."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    tmp = path.with_suffix(".html.tmp")
    page = render(report, max_thumbnails) if "audit" in report else render_fleet(report)
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
