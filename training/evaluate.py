"""Score a Keras model (run folder or .keras) or a .tflite export on a split; write plots,
metrics.json and a self-contained report.html.

A .tflite goes through `sorter.model.Classifier` + `sorter.imaging.decode`, exactly the runtime
path, so the figures are the ones the sorter will see on the line.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sorter.card import guess_rotten
from sorter.config import Settings
from sorter.verdict import VerdictRules
from training import evaluate_field as field_figs
from training import evaluate_sections as sections
from training.calibrate import plot_reliability
from training.data import SPLITS, DataSplits, class_folders, discover, discover_many, load_split, load_splits
from training.metrics import compute_metrics, pr_curves, worst_errors

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """What a run folder (or a lone model.keras) tells us besides the weights."""

    model_path: Path
    run_dir: Path | None = None
    labels: list[str] | None = None
    rotten_labels: list[str] | None = None
    config: dict = field(default_factory=dict)
    history: dict | None = None
    baselines: dict | None = None
    splits_file: Path | None = None

    @property
    def name(self) -> str:
        return self.run_dir.name if self.run_dir else self.model_path.stem


@dataclass
class Scorer:
    """A model behind one function: (N, H, W, 3) uint8 → (N, C) probabilities. A .tflite also
    keeps its runtime `classifier` (card, raw outputs, temperature, energy)."""

    name: str
    kind: str
    labels: list[str]
    rotten_labels: list[str]
    input_size: tuple[int, int]
    score: Callable[[np.ndarray], np.ndarray]
    run: RunInfo | None = None
    classifier: Any = None  # sorter.model.Classifier for a .tflite

    @property
    def card(self):
        return self.classifier.card if self.classifier is not None else None

    def raw(self, images: np.ndarray) -> np.ndarray:
        """What the model outputs: logits for a logits card, else probabilities."""
        return self.classifier.outputs(images) if self.classifier is not None else self.score(images)

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """The probabilities the runtime thresholds (softmax(logits / card T) for a logits card)."""
        return self.classifier.probabilities(raw) if self.classifier is not None else raw

    def energy(self, raw: np.ndarray) -> np.ndarray | None:
        """The card's OOD score (energy, or the graph's feature distance): what `ood.threshold` is on."""
        return self.classifier.ood_scores(raw) if self.classifier is not None else None

    def logits(self, raw: np.ndarray) -> np.ndarray:
        """The class columns of `raw` (a `distance` card's bundle outputs its OOD score as one more)."""
        return self.classifier.logits(raw) if self.classifier is not None else raw


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_run(path: Path) -> RunInfo:
    """A run folder holds model.keras, labels.json, history.json, config.json, splits.json."""
    path = Path(path)
    model = path / "model.keras" if path.is_dir() else path
    if not model.is_file():
        raise FileNotFoundError(f"no Keras model at {model}")
    run_dir = model.parent
    labels = _json(run_dir / "labels.json") or {}
    return RunInfo(model, run_dir, labels.get("labels"), labels.get("rotten_labels"),
                   _json(run_dir / "config.json") or {}, _json(run_dir / "history.json"),
                   _json(run_dir / "baselines.json"),
                   run_dir / "splits.json" if (run_dir / "splits.json").is_file() else None)


SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
GALLERY_DIRECTION = "true label → predicted label (confidence)"


def split_name(text: str) -> str:
    """The split a user means ("validation" is "val"), or one clear error naming the choices."""
    name = SPLIT_NAMES.get(text.strip().lower())
    if name is None:
        raise ValueError(f"--split must be train, val (or validation) or test, not '{text}'")
    return name


def load_keras(path: Path):
    """Load without compiling; importing backbones first registers any custom layers."""
    from training.tf_quiet import import_tensorflow

    import_tensorflow()
    import keras

    with contextlib.suppress(ImportError):
        import training.backbones  # noqa: F401
    return two_class_outputs(keras.models.load_model(path, compile=False))


def two_class_outputs(model):
    """A `--binary-sigmoid` head has one unit, P(second label); wrap it so it gives one probability
    per label, [1 - p, p], as every other model, the metrics and the runtime's card expect."""
    if int(model.output_shape[-1]) != 1:
        return model
    import keras

    p = model.output
    return keras.Model(model.input, keras.layers.Concatenate(name="two_class")([1.0 - p, p]), name=model.name)


def keras_scores(model, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Probabilities from the float model on raw 0..255 pixels (preprocessing is in the graph)."""
    parts = [np.asarray(model(images[i : i + batch].astype(np.float32), training=False))
             for i in range(0, len(images), batch)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, model.output_shape[-1]))


def keras_input_size(model) -> tuple[int, int]:
    height, width = model.input_shape[1:3]
    if not height or not width:
        raise ValueError("the Keras model has no fixed input size; rebuild it with one")
    return int(height), int(width)


def open_scorer(model_path: Path, data_classes: list[str] | None = None) -> Scorer:
    """A .tflite bundle through the runtime, or a Keras model with labels from its run folder."""
    model_path = Path(model_path)
    if model_path.suffix == ".tflite":
        from sorter.model import Classifier

        clf = Classifier(model_path)
        return Scorer(clf.card.name, "tflite", clf.labels, clf.card.rotten_labels, clf.input_size, clf.scores,
                      classifier=clf)
    run = read_run(model_path)
    model = load_keras(run.model_path)
    labels = run.labels or data_classes
    if not labels:
        raise ValueError(f"no labels.json beside {run.model_path}; pass a data set to take its classes")
    rotten = run.rotten_labels if run.rotten_labels is not None else guess_rotten(labels)
    return Scorer(run.name, "keras", list(labels), list(rotten), keras_input_size(model),
                  lambda images: keras_scores(model, images), run)


def _entry(item, data: Path, classes: list[str] | None) -> tuple[Path, str]:
    """One splits.json entry: "cls/x.jpg", ["cls/x.jpg", idx|label] or {"path":..,"label":..}."""
    if isinstance(item, dict):
        path, label = item["path"], item.get("label", item.get("class"))
    elif isinstance(item, list | tuple):
        path, label = item[0], item[1]
    else:
        path, label = item, None
    full = data / path
    if isinstance(label, int) and classes:
        label = classes[label]
    return full, str(label) if label is not None else full.parent.name


def splits_from_json(path: Path, data: Path) -> DataSplits | None:
    """The exact split the run trained on; None (use discover) when files moved or vanished.
    A run on several data roots (`roots` in the file) is read where its roots were."""
    raw = json.loads(path.read_text())
    if raw.get("roots"):
        found = load_splits(path)
        if all(p.is_file() for s in SPLITS for p, _ in getattr(found, s)):
            return found
        log.warning("splits.json in %s names files missing under %s", path.parent, ", ".join(raw["roots"]))
        return None
    lists = raw.get("splits", raw)
    classes = raw.get("classes") or raw.get("labels")
    entries = {s: [_entry(i, data, classes) for i in lists.get(s, [])] for s in SPLITS}
    names = classes or sorted({lbl for items in entries.values() for _, lbl in items})
    if not all(p.is_file() and lbl in names for items in entries.values() for p, lbl in items):
        log.warning("splits.json in %s names files missing under %s; re-discovering", path.parent, data)
        return None
    index = {c: i for i, c in enumerate(names)}
    train, val, test = ([(p, index[lbl]) for p, lbl in entries[s]] for s in SPLITS)
    return DataSplits(data, list(names), train, val, test)


def resolve_splits(data: Path, splits_file: Path | None = None) -> DataSplits:
    data = Path(data)
    found = splits_from_json(splits_file, data) if splits_file else None
    return found or discover(data)


def _merge(first: DataSplits, second: DataSplits) -> DataSplits:
    """Two sets of roots as one, class indices remapped onto the union of their classes."""
    classes = sorted(set(first.classes) | set(second.classes))
    merged = DataSplits(first.root, classes, roots=[*first.roots, *second.roots])
    for part in (first, second):
        for split in SPLITS:
            getattr(merged, split).extend((p, classes.index(part.classes[i])) for p, i in getattr(part, split))
    return merged


def _files_for(split_files: Sequence[Path], names: set[str]) -> list[Path]:
    """The split files that name only these roots."""
    from training.groups import read_split

    return [f for f in split_files if {row["root"] for row in read_split(f)} <= names]


def resolve_data(roots: Sequence[Path], run_splits: Path | None = None,
                 split_files: Sequence[Path] = ()) -> DataSplits:
    """Several data roots merged by class name as `sorter train` takes them. A Keras run's own
    splits.json keeps deciding the files of the roots it covers; other roots are discovered (or
    taken from their `sorter split` file). One root and no split file: exactly as before."""
    roots, split_files = [Path(r) for r in roots], [Path(f) for f in split_files]
    if len(roots) == 1 and not split_files:
        return resolve_splits(roots[0], run_splits)
    found = splits_from_json(run_splits, roots[0]) if run_splits else None
    if found is None:
        return discover_many(roots, split_files=split_files)
    covered = {r.name for r in found.roots}
    rest = [r for r in roots if r.name not in covered]
    if not rest:
        return found
    log.info("%s: the run's splits.json for %s; discovered for %s", run_splits.parent if run_splits else "",
             ", ".join(sorted(covered)), ", ".join(r.name for r in rest))
    return _merge(found, discover_many(rest, split_files=_files_for(split_files, {r.name for r in rest})))


def data_classes(roots: Sequence[Path]) -> list[str] | None:
    """The class folders of every root (a Keras model without labels.json takes its labels from them)."""
    names = sorted({c for r in roots if Path(r).is_dir() for c in class_folders(Path(r))})
    return names or None


def load_images(files: list[Path], size: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    """Decode with the runtime's decoder (training's threaded loader); unreadable files are skipped
    and logged, not fatal. Returns the pixels and the indices of the files kept."""
    loaded = load_split([(path, i) for i, path in enumerate(files)], size)
    for path, reason in loaded.skipped:
        log.warning("skipping %s: %s", path, reason)
    return loaded.images, loaded.labels.tolist()


@dataclass
class SplitImages:
    images: np.ndarray
    y: np.ndarray
    paths: list[Path]


def split_images(splits: DataSplits, split: str, labels: list[str], size: tuple[int, int]) -> SplitImages:
    """A split decoded at the model's size, with class indices mapped to the model's label order."""
    files = getattr(splits, split_name(split))
    if not files:
        raise ValueError(f"split '{split}' of {splits.root} is empty")
    unknown = sorted({splits.classes[i] for _, i in files} - set(labels))
    if unknown:
        raise ValueError(f"data classes {unknown} are not among the model's labels {labels}")
    images, kept = load_images([p for p, _ in files], size)
    if not kept:
        raise ValueError(f"none of the {len(files)} images in split '{split}' of {splits.root} could be decoded")
    y = np.array([labels.index(splits.classes[files[i][1]]) for i in kept], dtype=int)
    return SplitImages(images, y, [files[i][0] for i in kept])


# --- plots -------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: list[list[int]], labels: list[str], path: Path) -> Path:
    plt = _plt()
    arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(labels), 1 + 0.6 * len(labels)))
    ax.imshow(arr, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (r, c), v in np.ndenumerate(arr):
        ax.text(c, r, str(v), ha="center", va="center", color="white" if v > arr.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_pr(curves: dict[str, dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for lbl, c in curves.items():
        ax.plot(c["recall"], c["precision"], label=lbl)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="one-vs-rest PR")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_thresholds(rows: list[dict], path: Path) -> Path:
    plt = _plt()
    t = [r["threshold"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("precision", "recall", "fresh_binned_rate"):
        ax.plot(t, [r[key] for r in rows], marker="o", label=key)
    ax.set(xlabel="threshold on P(rotten)", ylim=(0, 1.02), title="fresh vs rotten")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_history(history: dict, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for name in (key, f"val_{key}"):
            if history.get(name):
                ax.plot(range(1, len(history[name]) + 1), history[name], label=name)
        ax.set(xlabel="epoch", title=key)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_gallery(items: list[dict], images: np.ndarray, path: Path, cols: int = 4) -> Path:
    """Thumbnails of the most confident mistakes, titled true → predicted (confidence), as the
    runtime report's gallery is: both say so above the pictures."""
    plt = _plt()
    rows = max(1, -(-len(items) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items, strict=False):
        ax.imshow(images[item["index"]])
        ax.set_title(f"{item['true']} → {item['predicted']}\n{item['confidence']:.2f}", fontsize=8)
    if not items:
        axes[0, 0].text(0.5, 0.5, "no errors", ha="center", va="center")
    fig.suptitle(f"each photo: {GALLERY_DIRECTION}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- report ------------------------------------------------------------------------------------

def _table(rows: list[dict], keys: list[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(k, '')))}</td>" for k in keys) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _caption(title: str) -> str:
    return f"<p>Each photo: {html.escape(GALLERY_DIRECTION)}.</p>" if title == ERRORS_TITLE else ""


def _warnings(metrics: dict) -> str:
    return "".join(f"<p class='warning'><b>warning:</b> {html.escape(w)}</p>" for w in metrics.get("warnings", []))


def render_report(metrics: dict, images: dict[str, Path], card_evaluation: dict | None = None,
                  reliability: Path | None = None) -> str:
    """One self-contained page: headline, the test sets under the runtime's rule, what the card
    recorded, per-class table, the threshold settings, calibration, unknown, embedded PNGs."""
    per_class = [{"class": k, **v} for k, v in metrics["per_class"].items()]
    per_class += [{"class": avg, **metrics[avg]} for avg in ("macro", "weighted")]
    figs = "".join(
        f"<h2>{html.escape(title)}</h2>{_caption(title)}<img alt='{html.escape(title)}' src='data:image/png;base64,"
        f"{base64.b64encode(p.read_bytes()).decode()}'>" for title, p in images.items())
    sets = sections.sets_section(metrics) + sections.recorded(metrics, card_evaluation)
    later = sections.decision(metrics) + sections.calibration(metrics, reliability) + sections.unknown(metrics)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(metrics["model"])} — evaluation</title><style>
body{{font-family:sans-serif;max-width:1000px;margin:auto}}table{{border-collapse:collapse;margin:8px 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}img{{max-width:100%}}
tr.mark{{font-weight:bold;background:#eef6ee}}</style></head><body>
<h1>{html.escape(metrics["model"])}</h1>
<p>{html.escape(metrics["kind"])} model on split <b>{html.escape(metrics["split"])}</b> of
{html.escape(metrics["data"])}: <b>accuracy {metrics["accuracy"]:.4f}</b> on {metrics["n"]} images.</p>
{_warnings(metrics)}{sets}
<h2>Per class</h2>{_table(per_class, ["class", "precision", "recall", "f1", "support"])}
{later}{figs}</body></html>"""


def _error_items(sample: SplitImages, probs: np.ndarray, labels: list[str], k: int) -> list[dict]:
    pred = probs.argmax(axis=1)
    return [{"index": i, "path": str(sample.paths[i]), "true": labels[sample.y[i]],
             "predicted": labels[pred[i]], "confidence": round(float(probs[i, pred[i]]), 6)}
            for i in worst_errors(sample.y, probs, k)]


ERRORS_TITLE = "Most confident errors"
SWEEP_TITLE = "Binned at P(rotten) >= t (the t= rows, every photo decided)"


def one_class_warning(metrics: dict, y: np.ndarray) -> str | None:
    """A model that gives every image the same label has learnt nothing, whatever its accuracy says."""
    if metrics["predicted_classes"] != 1 or len(set(y.tolist())) < 2:
        return None
    label = metrics["labels"][int(np.argmax(np.asarray(metrics["confusion_matrix"]).sum(axis=0)))]
    return (f"the model predicts '{label}' for all {metrics['n']} images, though they hold "
            f"{len(set(y.tolist()))} classes: it has not learnt to tell them apart")


def runtime_rules(scorer: Scorer, settings: Settings) -> VerdictRules:
    """The verdict rule the runtime applies: `rules_for` on a bundle's card and the config; a Keras
    model (no card) gets the top-1 rule of a default `VerdictRules`."""
    if scorer.classifier is None:
        return VerdictRules(frozenset(scorer.rotten_labels))
    from sorter.classify import rules_for

    return rules_for(scorer.classifier, settings)  # ConfigError is a ValueError: one line, exit 2


def field_metrics(scorer: Scorer, splits: DataSplits, sample: SplitImages, raw: np.ndarray, probs: np.ndarray,
                  split: str, settings: Settings) -> tuple[dict, list[str]]:
    """by_root, the rule and its overall figures, the decision table, calibration and unknown."""
    card, rules = scorer.card, runtime_rules(scorer, settings)
    logits_out = card is not None and card.output == "logits"
    scored = field_figs.Scored(sample.y, np.asarray(probs, dtype=np.float64),
                               np.asarray(scorer.logits(raw), dtype=np.float64) if logits_out
                               else field_figs.stand_in_logits(probs),
                               "logits" if logits_out else "log(probabilities)",
                               scorer.energy(raw) if logits_out else None, scorer.labels, scorer.rotten_labels,
                               field_figs.root_indices(splits, sample.paths), split)
    by_root, overall = field_figs.figures_by_root(scored, rules, {r.name: str(r) for r in splits.roots})
    out = {"by_root": by_root, "rule": field_figs.describe_rule(rules, card, settings), "rule_figures": overall,
           "decision_table": field_figs.decision_rows(scored, card, settings, rules),
           "calibration": field_figs.calibration_figures(scored, card.temperature if card is not None else 1.0)}
    warnings = [f"no {split} photos from data folder {r} (none listed, or none decoded): it has no figures here"
                for r in splits.roots if r.name not in by_root]
    if card is not None and card.ood is not None and scored.energy is not None:
        def outputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            got = scorer.raw(images)
            energy = scorer.energy(got)
            assert energy is not None  # a logits card: the classifier computes the energy
            return energy, scorer.probabilities(got)

        out["ood"], warning = field_figs.unknown_figures(scored, card.ood.threshold, rules.unknown_below, outputs,
                                                         scorer.input_size, rules, card.ood.score)
        warnings += [warning] if warning else []
    return out, warnings


def evaluate(model: Path, data: Path | Sequence[Path], out: Path, split: str = "test", worst: int = 16,
             split_files: Sequence[Path] = (), settings: Settings | None = None) -> dict:
    """Score MODEL on a split of DATA (one root, or several merged by class name) and write PNGs,
    metrics.json and report.html into OUT; `settings` is the config the runtime would read."""
    roots = [Path(data)] if isinstance(data, str | Path) else [Path(d) for d in data]
    out, split, settings = Path(out), split_name(split), settings or Settings()
    out.mkdir(parents=True, exist_ok=True)
    scorer = open_scorer(Path(model), data_classes(roots))
    splits = resolve_data(roots, scorer.run.splits_file if scorer.run else None, split_files)
    sample = split_images(splits, split, scorer.labels, scorer.input_size)
    raw = scorer.raw(sample.images)
    probs = scorer.probabilities(raw)
    metrics = compute_metrics(sample.y, probs, scorer.labels, scorer.rotten_labels)
    errors = _error_items(sample, probs, scorer.labels, worst)
    warning = one_class_warning(metrics, sample.y)  # the command prints it; library callers read metrics
    extra, field_warnings = field_metrics(scorer, splits, sample, raw, probs, split, settings)
    metrics.update(model=scorer.name, kind=scorer.kind, model_path=str(model),
                   data=", ".join(map(str, roots)), data_roots=[str(r) for r in splits.roots], split=split,
                   warnings=([warning] if warning else []) + field_warnings, gallery=GALLERY_DIRECTION,
                   worst_errors=[{k: v for k, v in e.items() if k != "index"} for e in errors], **extra)
    pngs = {"Confusion matrix": plot_confusion(metrics["confusion_matrix"], scorer.labels, out / "confusion.png"),
            "Precision-recall (one vs rest)": plot_pr(pr_curves(sample.y, probs, scorer.labels),
                                                      out / "pr_curves.png")}
    if metrics["threshold_table"]:
        pngs[SWEEP_TITLE] = plot_thresholds(metrics["threshold_table"], out / "thresholds.png")
    if scorer.run and scorer.run.history:
        pngs["Training curves"] = plot_history(scorer.run.history, out / "training_curves.png")
    pngs[ERRORS_TITLE] = plot_gallery(errors, sample.images, out / "worst_errors.png")
    metrics["plots"] = {title: p.name for title, p in pngs.items()}
    reliability = None
    if extra["calibration"]["from"] == "logits":  # T = 1 against the card's T: the point of the diagram
        reliability = plot_reliability(extra["calibration"]["reliability"], out / "reliability.png",
                                       f"reliability on {split} ({metrics['n']} photos)")
        metrics["plots"]["Reliability"] = reliability.name
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    card = scorer.card
    (out / "report.html").write_text(render_report(metrics, pngs, card.evaluation if card else None, reliability))
    return metrics
