"""The `sorter-report/1` format as Pydantic models: what report.json holds, read back typed.

`sorter.report` writes the format; the page (`report_html`) and the fleet merge (`fleet_merge`) read it
through `Report.read`, so a field they use is named once here, and a line's report that is not the
format (hand-edited, truncated, from a foreign publisher on the fleet topic) is one clear error instead
of a KeyError deep in a merge. Fields added by later versions have defaults, so reports from older
lines still read; fields this version does not know are ignored (a report is figures, not a rule).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sorter.card import one_line


class Part(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


Interval = list[float] | None  # a 95 % interval [low, high]; None without data


class Window(Part):
    start: str = Field(alias="from")
    to: str
    hours: float | None = None


class CardBaseline(Part):
    """The card figure drift compared with: `other_sources` (field-like photos) or the `test` split."""

    baseline: str | None = "test"
    name: str | None = None
    n: int | None = None
    accuracy: float | None = None
    fresh_vs_rotten_accuracy: float | None = None
    per_class: dict[str, dict[str, float | None]] = Field(default_factory=dict)


class ModelInfo(Part):
    name: str = "unknown"
    labels: list[str] | None = None
    rotten_labels: list[str] = Field(default_factory=list)
    card_accuracy: float | None = None
    card_baseline: CardBaseline | None = None


class ItemCounts(Part):
    received: int = 0
    classified: int = 0
    duplicates: int = 0
    errors: int = 0
    dry_run: int = 0


class Rates(Part):
    items: int = 0
    rotten_rate: float | None = None
    uncertain_rate: float | None = None
    unknown_rate: float | None = None
    audited: int = 0
    accuracy: float | None = None
    accuracy_ci95: Interval = None
    weighted_accuracy: float | None = None
    weighted_ci95: Interval = None
    audits_with_p: int = 0


class VersionFigures(Rates):
    """One model version's items and audited accuracy over the window."""

    version: str
    model_id: str | None = None
    model_sha256: str | None = None
    first: str = ""
    last: str = ""


class DayFigures(Rates):
    day: str
    version: str


class Hour(Part):
    hour: str  # 2026-01-10T00:00Z
    items: int = 0
    rotten: int = 0
    uncertain: int = 0
    unknown: int = 0  # reports from before `unknown` have none


class Throughput(Part):
    per_hour: float = 0.0
    peak_per_hour: int = 0
    hourly: list[Hour] = Field(default_factory=list)


class Histogram(Part):
    bins: list[float] = Field(default_factory=list)
    by_verdict: dict[str, list[int]] = Field(default_factory=dict)


class CameraFigures(Part):
    online_seconds: float = 0.0
    offline_events: int = 0
    reconnects: int = 0
    drop_reports: int = 0
    dropped_frames: int = 0
    online_fraction: float | None = None


class ClassFigures(Part):
    precision: float = 0.0
    recall: float = 0.0
    f1: float = 0.0
    support: int = 0


class ConfusionMatrix(Part):
    labels: list[str] = Field(default_factory=list)
    matrix: list[list[int]] = Field(default_factory=list)  # rows: the audited label, columns: the model's


class WrongItem(Part):
    """An audited item the model got wrong (`line`: which line, in a fleet report)."""

    id: int
    label: str | None = None
    true_label: str
    confidence: float | None = None
    verdict: str | None = None
    destination: str | None = None
    sha256: str | None = None
    auditor: str | None = None
    line: str | None = None


class WeightGroup(Part):
    """Audits counted by (draw probability p, true label, model label): what a fleet pools."""

    p: float | None = Field(default=None, gt=0, le=1)
    true_label: str
    label: str
    n: int = Field(ge=0)


class Weighted(Part):
    """The inverse-probability (1/p) audited accuracy."""

    n: int = 0
    with_p: int = 0
    without_p: int = 0
    accuracy: float | None = None
    accuracy_ci95: Interval = None
    population: float = 0.0
    fresh_vs_rotten_accuracy: float | None = None
    per_class_recall: dict[str, float | None] = Field(default_factory=dict)
    method: str = ""
    # WeightGroup entries, read one by one by the fleet merge: a line whose groups are broken is counted
    # plain (with why), not refused whole. None: a report from before they were published.
    groups: list[Any] | None = None


class Audit(Part):
    n: int = 0
    correct: int = 0
    accuracy: float | None = None
    accuracy_ci95: Interval = None
    fresh_vs_rotten_accuracy: float | None = None
    per_class: dict[str, ClassFigures] = Field(default_factory=dict)
    macro_f1: float | None = None
    confusion_matrix: ConfusionMatrix = Field(default_factory=ConfusionMatrix)
    wrong: list[WrongItem] = Field(default_factory=list)
    weighted: Weighted | None = None
    accuracy_used: str = "unweighted"


class Flag(Part):
    """A drift flag: the figure fell more than the margin below a baseline."""

    kind: str = ""
    value: float | None = None  # the audited accuracy
    baseline: float | None = None  # the figure it fell below
    message: str
    line: str | None = None  # which line raised it, in a fleet report


class Drift(Part):
    margin: float = 0.05
    min_audited: int = 20
    accuracy_used: str | None = None
    accuracy: float | None = None
    vs_card: dict[str, Any] | None = None  # report.card_figure reads it
    vs_previous: dict[str, Any] | None = None
    flags: list[Flag] = Field(default_factory=list)
    flagged: bool = False
    note: str | None = None


class LineRow(Part):
    """A fleet report's row for one line."""

    items: int = 0
    rotten_rate: float | None = None
    uncertain_rate: float | None = None
    unknown_rate: float | None = None
    audit_n: int = 0
    accuracy: float | None = None
    accuracy_ci95: Interval = None
    drift_flagged: bool = False
    card_figure: str | None = None
    model: str | None = None
    window: Window


class Counts(Part):
    """Hourly counters summed: for one line, or the fleet."""

    items: int = 0
    by_verdict: dict[str, int] = Field(default_factory=dict)
    by_label: dict[str, int] = Field(default_factory=dict)
    runs: list[Any] = Field(default_factory=list)


class Live(Part):
    total: Counts = Field(default_factory=Counts)
    lines: dict[str, Counts] = Field(default_factory=dict)


class Report(Part):
    """One line's nightly report, or a fleet's (with `lines`, and `live` from the counters)."""

    format: str = "sorter-report/1"
    generated_at: str | None = None
    db: str | None = None
    window: Window
    model: ModelInfo | None = None
    items: ItemCounts = Field(default_factory=ItemCounts)
    by_label: dict[str, int] = Field(default_factory=dict)
    by_verdict: dict[str, int] = Field(default_factory=dict)
    by_model: dict[str, int] = Field(default_factory=dict)
    by_model_version: list[VersionFigures] = Field(default_factory=list)
    model_by_day: list[DayFigures] = Field(default_factory=list)
    rotten_rate: float | None = None
    uncertain_rate: float | None = None
    unknown_rate: float | None = None
    throughput: Throughput = Field(default_factory=Throughput)
    confidence_histogram: Histogram = Field(default_factory=Histogram)
    errors_by_reason: dict[str, int] = Field(default_factory=dict)
    camera: dict[str, CameraFigures] = Field(default_factory=dict)
    audit: Audit
    drift: Drift = Field(default_factory=Drift)
    lines: dict[str, LineRow] | None = None
    live: Live | None = None

    @classmethod
    def read(cls, data: Any, where: str = "report") -> Report:
        """Validate a report.json dict; ValueError in one line naming the first fields that are wrong."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"{where} is not a sorter-report/1: {one_line(exc)}") from None


class CountersOnly(Part):
    """A fleet page for a day no line published a report for: the hourly counters alone."""

    generated_at: str = ""
    note: str | None = None
    live: Live
