"""`sorter retrain`: the line's audits → a challenger fine-tuned from the model in use → installed only
when it is better on the line's own held-out photos beyond chance and no worse on the base test set.

Steps: the field data set (`sorter.dataset.build_dataset`) → a stratified field test share held back
(training.field_split) → the model in use's float weights (training.float_weights, hash-checked) →
fine-tuned on the base data's training split plus the field training share, field photos weighted
(training.finetune) → exported int8 through `sorter export`'s gate with `parent` and `field_data` in
its card → both models scored through the runtime (decoder, interpreter, the card's verdict rule) on
the field test and the base test set → the paired decision (training.install_rule) → with `install`,
`sorter model install`'s checks and swap (sorter.bundle.install).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from sorter.card import FieldData, ModelCard, ParentModel, load_card, sha256_file, write_card
from sorter.classify import FileResult
from training import control_gate, field_split, install_rule
from training.data import SPLITS, DataSplits, discover_many, load_split, save_splits

log = logging.getLogger(__name__)
FIELD_ROOT = "field"  # the field photos' data root name in the run's splits and the card's figures
FIELD_SHARE = 0.3


class RetrainError(RuntimeError):
    """Nothing to retrain from, or on: bad database, no audits, missing weights. One line."""


@dataclass
class RetrainConfig:
    """Every option of `sorter retrain`.

    `field_share`: the share of every training epoch the field photos make up (their weight is set so).
    A few hundred field photos beside thousands of base photos would otherwise be a rounding error in
    the loss (178 FruitNet apple photos beside 1,020 fruit_dev photos: 15 %); the model in use already
    knows the base photos, so a third lets the line's photos drive the change while two thirds keep what
    the model knew (the base-test tolerance checks it). On that line a half moved the base test more
    (-8.3 points under the card's rule, against -3.1 at a third; training/README.md has the runs)."""

    db: Path
    base_data: list[Path]
    out: Path
    model: Path | None = None  # default: the .tflite `current` points at under models_dir
    models_dir: Path = Path("/var/lib/sorter/models")
    install: bool = False
    quick: bool | None = None  # None: quick when TensorFlow sees no GPU
    field_test: float = 0.3
    field_val: float = 0.15  # of the rest: the line's photos the card's rule (T, thresholds, unknown) is fitted on
    field_share: float = FIELD_SHARE
    since: timedelta | None = None
    include_unaudited_confident: float | None = None
    split_files: list[Path] = field(default_factory=list)
    val_split: float = 0.15
    test_split: float = 0.1
    seed: int = 42
    alpha: float = install_rule.ALPHA
    base_tolerance: float = install_rule.BASE_TOLERANCE
    quick_epochs: int = 6
    quick_lr: float = 1e-3
    quick_layers: int = 20
    keep_base: float = 0.3  # quick: share of a base photo's target that is the model's own answer (finetune.targets)
    batch_size: int = 32
    calibration: int = 300
    max_drop: float = 1.0
    min_control_accuracy: float = 0.9  # the audits' control photos (training.control_gate)
    name: str | None = None
    command: str = "sorter retrain"

    def check(self) -> None:
        problems = []
        if not 0 < self.field_test < 1:
            problems.append(f"--field-test must be in (0, 1), not {self.field_test}")
        if not 0 <= self.field_val < 1:
            problems.append(f"--field-val must be in [0, 1), not {self.field_val}")
        if not 0 < self.field_share < 1:
            problems.append(f"--field-share must be in (0, 1), not {self.field_share}")
        if not 0 < self.alpha < 1 or self.base_tolerance < 0:
            problems.append("--alpha must be in (0, 1) and --base-tolerance >= 0")
        if not 0 <= self.keep_base < 1:
            problems.append(f"--keep-base must be in [0, 1), not {self.keep_base}")
        if self.quick_epochs < 1 or self.quick_layers < 0 or self.batch_size < 1:
            problems.append("--quick-epochs and --batch-size must be >= 1, --quick-layers >= 0")
        if not self.base_data:
            problems.append("--base-data: at least one data folder")
        if not 0 <= self.min_control_accuracy <= 1:
            problems.append(f"--min-control-accuracy must be in [0, 1], not {self.min_control_accuracy}")
        if problems:
            raise RetrainError("; ".join(problems))


@dataclass
class Scored:
    """One model's results on one test set: right under the runtime's rule, and top-1 right."""

    right: np.ndarray
    top1: np.ndarray
    verdicts: dict[str, int]


@dataclass
class RetrainResult:
    out: Path
    current: Path
    challenger: Path | None
    decision: install_rule.Decision
    comparison: dict[str, Any]
    installed: Path | None = None


# --- the model in use ----------------------------------------------------------------------------

def current_model(config: RetrainConfig) -> Path:
    """--model, else the one bundle `current` points at in the models folder."""
    from sorter.model import ModelError, resolve_model

    if config.model is None:
        link = config.models_dir / "current"
        if not link.is_dir():
            raise RetrainError(f"no --model and no installed model at {link}")
        where: Path = link
    else:
        where = config.model
    try:
        path = resolve_model(where)
    except ModelError as exc:
        raise RetrainError(str(exc)) from None
    if not path.is_file():
        raise RetrainError(f"model {path} not found")
    return path


def parent_card(path: Path) -> ModelCard:
    """The model's card, its `source_run` made absolute: a shipped bundle names its run folder relative
    to the card's own folder (`fruit-lite1-run`), since the exporter's absolute path exists only there."""
    from sorter.card import CardError

    try:
        card = load_card(path)
    except (CardError, FileNotFoundError) as exc:
        raise RetrainError(f"{path}: {exc}") from None
    if card.source_run and not Path(card.source_run).is_absolute():
        card.source_run = str(path.parent / card.source_run)
    return card


# --- the field data ----------------------------------------------------------------------------

def field_photos(config: RetrainConfig, labels: list[str], console: Console):
    """The field data set, limited to labels the model has; RetrainError when nothing is left."""
    from sorter.dataset import build_dataset

    if not config.db.is_file():
        raise RetrainError(f"database {config.db} not found")
    try:
        dataset = build_dataset(config.db, config.out / FIELD_ROOT, since=config.since,
                                include_unaudited_confident=config.include_unaudited_confident)
    except (sqlite3.Error, ValueError, OSError) as exc:
        raise RetrainError(f"{config.db}: {exc}") from None
    known = [p for p in dataset.photos if p.true_label in labels]
    if dropped := len(dataset.photos) - len(known):
        console.print(f"[yellow]warning:[/yellow] {dropped} field photos have labels the model does not know "
                      f"and are left out", highlight=False)
    if not known:
        raise RetrainError(f"{config.db}: no audited items with labels the model knows "
                           f"({len(dataset.photos)} in the field data set): audit some first")
    return dataset, known


def photo_file(dataset, photo) -> Path:
    """Where the data set placed the photo (inside its folder; a relative name is relative to it)."""
    path = Path(photo.file)
    return path if path.is_relative_to(dataset.out) else dataset.out / path


def field_weight(n_base: int, n_field: int, share: float) -> float:
    """The weight that makes `n_field` photos `share` of an epoch beside `n_base` (at least 1)."""
    if not n_field:
        return 1.0
    return max(1.0, share / (1 - share) * n_base / n_field)


# --- data splits -------------------------------------------------------------------------------

def remap(part: list[tuple[Path, int]], classes: list[str], labels: list[str]) -> list[tuple[Path, int]]:
    return [(p, labels.index(classes[i])) for p, i in part]


def run_splits(config: RetrainConfig, labels: list[str], field_root: Path, field: dict[str, list[Path]],
               field_labels: dict[Path, str]) -> DataSplits:
    """Base roots (as `sorter train` merges them) plus the field root, split train/val/test as given.
    Field validation photos matter: the export fits the card's temperature, P(rotten) thresholds and
    unknown threshold on validation photos, and from base photos alone the unknown threshold flags most
    of the line's photos (they lie farther from the base classes than base photos do)."""
    try:
        base = discover_many(config.base_data, config.seed, config.val_split, config.test_split,
                             config.split_files)
    except (FileNotFoundError, ValueError) as exc:
        raise RetrainError(str(exc)) from None
    if FIELD_ROOT in {r.name for r in base.roots}:
        raise RetrainError(f"a base data folder is named '{FIELD_ROOT}', the name the field photos take")
    if unknown := sorted(set(base.classes) - set(labels)):
        raise RetrainError(f"base data classes {unknown} are not labels of the model in use {labels}")
    splits = DataSplits(base.roots[0], list(labels), roots=[*base.roots, field_root])
    for split in SPLITS:
        setattr(splits, split, remap(getattr(base, split), base.classes, labels))
    for split in SPLITS:
        getattr(splits, split).extend((p, labels.index(field_labels[p])) for p in field.get(split, []))
    return splits


# --- fine-tuning -------------------------------------------------------------------------------

def use_quick(config: RetrainConfig) -> bool:
    if config.quick is not None:
        return config.quick
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def recipe_values(card: ModelCard) -> dict[str, Any]:
    """The training options in the model's own run config (card `source_run`); {} without one. A
    retrained run writes them forward, so a retrain of a retrained model keeps the first recipe."""
    from training.train import TrainConfig

    config = Path(card.source_run or "") / "config.json"
    doc = json.loads(config.read_text()) if config.is_file() else {}
    return {k: v for k, v in doc.items() if k in TrainConfig.__dataclass_fields__}


def parent_recipe(card: ModelCard):
    """The full recipe: the model's own run config, sorter train's defaults where it has none."""
    from training.train import TrainConfig

    values = recipe_values(card)
    if not values:
        log.warning("no run config.json at %s: the full recipe uses sorter train's defaults", card.source_run)
    return TrainConfig.from_dict(values)


def fine_tune(model, splits: DataSplits, config: RetrainConfig, card: ModelCard, console: Console) -> dict:
    """Train the float model on base train + field train (weighted); returns what was done."""
    from training import finetune
    from training.evaluate import keras_input_size

    size = keras_input_size(model)
    train = load_split(splits.train, size)
    for path, reason in train.skipped:
        console.print(f"[yellow]skipped[/yellow] {path}: {reason}", highlight=False, soft_wrap=True)
    is_field = np.array([splits.root_of(p).name == FIELD_ROOT for p in train.paths], bool)
    weight = field_weight(int((~is_field).sum()), int(is_field.sum()), config.field_share)
    data = finetune.Weighted(train.images, train.labels, np.where(is_field, weight, 1.0).astype(np.float32),
                             known=~is_field)
    quick = use_quick(config)
    console.print(f"fine-tuning ({'quick: head and top layers on cached features' if quick else 'full recipe'}) "
                  f"on {int((~is_field).sum())} base and {int(is_field.sum())} field photos, field weight "
                  f"{weight:.2f}", highlight=False)
    if quick:
        history = finetune.quick(model, data, epochs=config.quick_epochs, lr=config.quick_lr,
                                 batch_size=config.batch_size, layers_above=config.quick_layers, seed=config.seed,
                                 keep=config.keep_base)
    else:
        val = load_split(splits.val, size)
        recipe = parent_recipe(card)
        history = finetune.full(model, recipe, data, (val.images, val.labels))
    return {"mode": "quick" if quick else "full", "field_weight": round(weight, 4), "history": history,
            "base_photos": int((~is_field).sum()), "field_photos": int(is_field.sum())}


def write_run(run_dir: Path, model, splits: DataSplits, card: ModelCard, done: dict, config: RetrainConfig) -> None:
    """A run folder `sorter export` reads: model.keras, labels, splits, config (with the retrain's facts)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model.keras")
    (run_dir / "labels.json").write_text(json.dumps({"labels": card.labels, "rotten_labels": card.rotten_labels}))
    save_splits(splits, run_dir / "splits.json")
    (run_dir / "config.json").write_text(json.dumps({
        **recipe_values(card), "data": [str(r.resolve()) for r in splits.roots], "backbone": card.backbone,
        "retrain": {**{k: v for k, v in done.items() if k != "history"}, "parent": card.name,
                    "field_share": config.field_share, "seed": config.seed}}, indent=2) + "\n")
    (run_dir / "history.json").write_text(json.dumps(done["history"]) + "\n")


def bundle_name(parent: str) -> str:
    """PARENT-rYYYYMMDDHHMM (an earlier retrain's stamp and the format suffix dropped)."""
    stem = re.sub(r"(-r\d{12})?(-(int8|float32|float16|dynamic))?$", "", parent)
    return f"{stem}-r{datetime.datetime.now(datetime.UTC):%Y%m%d%H%M}"


def export_challenger(run_dir: Path, config: RetrainConfig, name: str) -> Path:
    """int8 through `sorter export`'s gate; the gate's refusal is the challenger's loss (ChallengerRefused)."""
    from training.export import ExportError
    from training.export import export as run_export

    try:
        results = run_export(run_dir, None, ["int8"], config.out, name, config.calibration,
                             max_drop=config.max_drop, command=config.command, latency_runs=5)
    except ExportError as exc:
        raise ChallengerRefused(f"kept the current model: the challenger's int8 export was refused: {exc}") from None
    return results[0].path


class ChallengerRefused(RuntimeError):
    """The challenger could not be made installable (its export gate, its install checks)."""


# --- scoring -----------------------------------------------------------------------------------

def score(model_path: Path, files: list[Path], truth: list[str]) -> Scored:
    """Through the runtime: decoder, interpreter, the card's verdict rule. Right = the label the runtime
    records is the true one: the figure `sorter evaluate` and the card call accuracy under the rule, so
    the install rule's points are the points a user reads there. Uncertain and unknown items keep their
    label here; how many go to a person (`verdicts`) is reported beside, not mixed into accuracy."""
    from sorter.classify import classify_files, rules_for
    from sorter.model import Classifier, default_threads

    clf = Classifier(model_path, num_threads=default_threads())
    rules = rules_for(clf)
    results = list(classify_files(files, clf, rules))
    return scored(results, truth)


def scored(results: list[FileResult], truth: list[str]) -> Scored:
    """Right (the recorded label is the true one, whatever the verdict), top-1 right, verdict counts."""
    right = np.array([r.label == t for r, t in zip(results, truth, strict=True)])
    top1 = np.array([_top(r.scores) == t for r, t in zip(results, truth, strict=True)])
    verdicts: dict[str, int] = {}
    for r in results:
        verdicts[r.verdict or "error"] = verdicts.get(r.verdict or "error", 0) + 1
    return Scored(right, top1, verdicts)


def _top(scores: dict[str, float] | None) -> str | None:
    return max(scores, key=lambda label: scores[label]) if scores else None


def held_out_sets(splits: DataSplits) -> dict[str, tuple[list[Path], list[str]]]:
    """The field test and the base test set (every base root's test split together)."""
    field_files = [(p, i) for p, i in splits.test if splits.root_of(p).name == FIELD_ROOT]
    base_files = [(p, i) for p, i in splits.test if splits.root_of(p).name != FIELD_ROOT]
    return {name: ([p for p, _ in files], [splits.classes[i] for _, i in files])
            for name, files in (("field_test", field_files), ("base_test", base_files))}


def compare(current: Path, challenger: Path, splits: DataSplits) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (files, truth) in held_out_sets(splits).items():
        cur, new = score(current, files, truth), score(challenger, files, truth)
        pair = install_rule.Paired.of(cur.right, new.right)
        out[name] = {**pair.as_dict(), "top1": {"current": round(float(cur.top1.mean()), 6) if len(files) else None,
                                                "challenger": round(float(new.top1.mean()), 6) if len(files) else None},
                     "verdicts": {"current": cur.verdicts, "challenger": new.verdicts}}
    return out


def pair_of(figures: dict[str, Any]) -> install_rule.Paired:
    return install_rule.Paired(figures["n"], figures["current_right"], figures["challenger_right"],
                               figures["gained"], figures["lost"])


def comparison_table(comparison: dict[str, Any]) -> Table:
    table = Table("test set", "photos", "current", "challenger", "points", "gained", "lost", "p (one-sided)",
                  title="current model vs challenger (right = the label recorded under each card's rule)")
    for name in ("field_test", "base_test"):
        f = comparison["test_sets"].get(name)
        if f:
            table.add_row(name.replace("_", " "), str(f["n"]), f"{f['current_accuracy']:.1%}",
                          f"{f['challenger_accuracy']:.1%}", f"{f['points']:+.1f}", str(f["gained"]),
                          str(f["lost"]), f"{f['win_p_value']:.3g}")
    return table


# --- the whole loop ----------------------------------------------------------------------------

def retrain(config: RetrainConfig, console: Console | None = None) -> RetrainResult:
    """Build, hold out, fine-tune, export, compare, and (with `install`) install the challenger.
    RetrainError for what stops it before a challenger exists; a refused challenger is a result."""
    from training import float_weights
    from training.evaluate import load_keras

    console = console or Console(stderr=True)
    config.check()
    config.out = config.out.resolve()  # the field root and its files compare as paths: one form for all
    current = current_model(config)
    card = parent_card(current)
    controls = control_gate.check(config.db, config.since, config.min_control_accuracy, console)
    if controls.refusal:  # audits that fail their control photos: refused before anything is built or trained
        config.out.mkdir(parents=True, exist_ok=True)
        return finish(config, current, None, install_rule.Decision(False, controls.refusal, 1.0, None), {},
                      ParentModel(name=card.name, sha256=sha256_file(current)),
                      FieldData(fingerprint="", controls=controls.figures), console)
    try:
        weights = float_weights.locate(current, card)
    except float_weights.WeightsMissing as exc:
        raise RetrainError(str(exc)) from None
    config.out.mkdir(parents=True, exist_ok=True)
    dataset, photos = field_photos(config, card.labels, console)
    parts = field_split.partition(photos, config.field_test, config.field_val, config.seed)
    train, val, test = parts["train"], parts["val"], parts["test"]
    files = {p.sha256: photo_file(dataset, p) for p in photos}
    field_split.write(config.out / "field_split.tsv", parts, files)
    labels_of = {files[p.sha256]: p.true_label for p in photos}
    splits = run_splits(config, card.labels, dataset.out,
                        {k: [files[p.sha256] for p in v] for k, v in parts.items()}, labels_of)
    model = load_keras(weights)
    done = fine_tune(model, splits, config, card, console)
    write_run(config.out / "run", model, splits, card, done, config)
    field_data = FieldData(fingerprint=dataset.fingerprint(), counts=dataset.counts(), train=len(train),
                           val=len(val), test=len(test), pseudo=sum(1 for p in photos if p.pseudo),
                           weight=done["field_weight"], controls=controls.figures)
    parent = ParentModel(name=card.name, sha256=sha256_file(current))
    try:
        challenger = export_challenger(config.out / "run", config, config.name or bundle_name(card.name))
    except ChallengerRefused as exc:
        decision = install_rule.Decision(False, str(exc), 1.0, None)
        return finish(config, current, None, decision, {}, parent, field_data, console)
    figures = compare(current, challenger, splits)
    decision = install_rule.decide(pair_of(figures["field_test"]),
                                   pair_of(figures["base_test"]) if figures["base_test"]["n"] else None,
                                   config.alpha, config.base_tolerance)
    return finish(config, current, challenger, decision, figures, parent, field_data, console)


def finish(config: RetrainConfig, current: Path, challenger: Path | None, decision: install_rule.Decision,
           figures: dict, parent: ParentModel, field_data: FieldData, console: Console) -> RetrainResult:
    """The challenger's card (parent, field data, the comparison line), the table, the install when it
    won and was asked for, and comparison.json."""
    comparison: dict[str, Any] = {
        "current": {"path": str(current), "name": parent.name, "sha256": parent.sha256},
        "challenger": {"path": str(challenger), "sha256": sha256_file(challenger)} if challenger else None,
        "rule": {"test": "one-sided exact McNemar on the field test", "alpha": config.alpha,
                 "base_tolerance_points": config.base_tolerance},
        "test_sets": figures, "field_data": field_data.model_dump()}
    result = RetrainResult(config.out, current, challenger, decision, comparison)
    if challenger is not None:
        stamp_card(challenger, parent, field_data, decision, figures)
        console.print(comparison_table(comparison))
        if decision.install and config.install:
            result.installed, result.decision = try_install(challenger, config.models_dir, decision)
            if result.installed is None:
                stamp_card(challenger, parent, field_data, result.decision, figures)
    comparison["decision"] = result.decision.as_dict()
    comparison["installed"] = str(result.installed) if result.installed else None
    (config.out / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n")
    return result


def stamp_card(challenger: Path, parent: ParentModel, field_data: FieldData, decision: install_rule.Decision,
               figures: dict) -> None:
    """What the challenger came from and how it compared, in its card (before an install copies it)."""
    card = load_card(challenger)
    card.parent, card.field_data = parent, field_data
    card.comparison = {"summary": decision.reason, "install": decision.install, "file": "comparison.json",
                       **{k: {"n": v["n"], "current": v["current_accuracy"], "challenger": v["challenger_accuracy"]}
                          for k, v in figures.items()}}
    write_card(challenger, card)


def try_install(challenger: Path, models: Path,
                decision: install_rule.Decision) -> tuple[Path | None, install_rule.Decision]:
    """`sorter model install`'s checks and swap; a refusal keeps the current model, with the reason."""
    from sorter.bundle import BundleError, install

    try:
        folder, _ = install(challenger, models)
    except (BundleError, OSError, ValueError) as exc:
        return None, install_rule.Decision(False, f"kept the current model: the challenger failed "
                                                  f"`sorter model install`'s checks: {exc}",
                                           decision.field_p_value, decision.base_points)
    return folder, decision
