"""Two-phase fine-tuning (frozen backbone → top layers unfrozen), callbacks and run folders."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from sorter.card import guess_rotten
from training.backbone_table import BACKBONES
from training.data import (
    FILLS,
    SPLITS,
    Augment,
    DataSplits,
    Loaded,
    class_weights,
    discover_many,
    imbalance_warning,
    load_split,
    make_dataset,
    save_splits,
)

OPTIMIZERS = ("adam", "sgd", "rmsprop", "nadam", "adadelta")
META_KEYS = ("data",)  # recorded in config.json beside the options, ignored when it is reused


@dataclass
class TrainConfig:
    """Every option of a run; `config.json` is this, so `--config` reproduces a run."""

    backbone: str = "resnet50"
    weights: str = "imagenet"
    img_size: int | None = None
    epochs: int = 10
    fine_tune_epochs: int = 10
    unfreeze: int = 30
    lr: float = 1e-3
    fine_tune_lr: float = 1e-5
    batch_size: int = 32
    optimizer: str = "adam"
    dropout: float = 0.5
    seed: int = 42
    name: str = "train"
    runs_dir: str = "runs"
    val_split: float = 0.2
    test_split: float = 0.1
    class_weights: bool = False
    augment: bool = True
    rotation: float = Augment.rotation  # augmentation defaults live in one place: training.data.Augment
    width_shift: float = Augment.width_shift
    height_shift: float = Augment.height_shift
    shear: float = Augment.shear
    zoom: float = Augment.zoom
    flip: bool = Augment.flip
    fill: str = Augment.fill
    vflip: bool = Augment.vflip
    brightness: float = Augment.brightness
    contrast: float = Augment.contrast
    patience: int = 5
    binary_sigmoid: bool = False
    baselines: bool = False
    label_smoothing: float = 0.0
    ema: float = 0.0
    split_files: list[str] = dataclasses.field(default_factory=list)  # `sorter split` files for some roots
    oversample: list[str] = dataclasses.field(default_factory=list)  # "ROOT=N": that root's train photos N times

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from JSON (tune's best.json or an earlier config.json); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names - set(META_KEYS))
        if unknown:
            raise ValueError(f"unknown configuration key(s): {', '.join(unknown)}")
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Reject impossible settings with one clear sentence each, before any work starts."""
        problems = []
        if self.backbone not in BACKBONES:
            problems.append(f"--backbone must be one of {', '.join(BACKBONES)}, not '{self.backbone}'")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not '{self.optimizer}'")
        if self.img_size is not None and self.img_size < 32:
            problems.append(f"--img-size must be at least 32, not {self.img_size}")
        if self.epochs < 1 or self.fine_tune_epochs < 0 or self.unfreeze < 0 or self.patience < 1:
            problems.append("--epochs and --patience must be ≥1; --fine-tune-epochs and --unfreeze ≥0")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be ≥1, not {self.batch_size}")
        if self.lr <= 0 or self.fine_tune_lr <= 0:
            problems.append("--lr and --fine-tune-lr must be positive")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"--label-smoothing must be in [0, 1), not {self.label_smoothing}")
        if self.fill not in FILLS:
            problems.append(f"--fill must be one of {', '.join(FILLS)}, not '{self.fill}'")
        if not (0 <= self.brightness < 1 and 0 <= self.contrast < 1):
            problems.append("--brightness and --contrast must be in [0, 1)")
        if not 0 <= self.ema < 1:
            problems.append(f"--ema must be in [0, 1), not {self.ema}")
        if not 0 <= self.dropout < 1:
            problems.append(f"--dropout must be in [0, 1), not {self.dropout}")
        if not (0 <= self.val_split < 1 and 0 <= self.test_split < 1 and self.val_split + self.test_split < 1):
            problems.append("--val-split and --test-split must be in [0, 1) and sum below 1")
        try:
            self.repeats()
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))

    def repeats(self) -> dict[str, int]:
        """`oversample` as {root folder name: times}; one clear error for a malformed entry."""
        out = {}
        for item in self.oversample:
            root, _, times = item.partition("=")
            if not root or not times.isdigit() or int(times) < 1:
                raise ValueError(f"--oversample takes ROOT=N with N a whole number >= 1, not '{item}'")
            out[root] = int(times)
        return out

    def augmentation(self) -> Augment | None:
        if not self.augment:
            return None
        return Augment(self.rotation, self.width_shift, self.height_shift, self.shear, self.zoom, self.flip,
                       self.fill, self.vflip, self.brightness, self.contrast)


@dataclass
class TrainResult:
    run_dir: Path
    labels: list[str]
    history: dict[str, list]
    counts: dict[str, dict[str, int]]
    skipped: list[tuple[Path, str]]


# --- model ----------------------------------------------------------------------------------


def pick_strategy():
    """MultiWorkerMirrored when TF_CONFIG names a cluster, Mirrored over all local GPUs (with mixed
    precision), else the default CPU strategy."""
    import keras
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_classifier(backbone, n_classes: int, size: int, dropout: float, binary_sigmoid: bool = False):
    """float32 0..255 RGB → class probabilities; the backbone always runs with BatchNorm in inference
    mode, so unfreezing layers later never disturbs the pretrained statistics."""
    import keras

    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    x = backbone(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    sigmoid = binary_sigmoid and n_classes == 2
    outputs = keras.layers.Dense(1 if sigmoid else n_classes, activation="sigmoid" if sigmoid else "softmax",
                                 dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="classifier")


def _leaves(layer) -> list:
    """Innermost layers in order, looking through nested models (a backbone may wrap its own)."""
    inner = getattr(layer, "layers", None)
    return [leaf for sub in inner for leaf in _leaves(sub)] if inner else [layer]


def set_trainable(backbone, unfreeze: int) -> int:
    """Freeze the backbone except its top `unfreeze` layers; BatchNorm stays frozen. Returns the count."""
    import keras

    backbone.trainable = unfreeze > 0
    leaves = _leaves(backbone)
    for leaf in leaves:
        leaf.trainable = False
    if unfreeze <= 0:
        return 0
    opened = 0
    for leaf in reversed(leaves[-unfreeze:]):
        if not isinstance(leaf, keras.layers.BatchNormalization):
            leaf.trainable = True
            opened += 1
    return opened


def make_optimizer(name: str, lr: float, ema: float = 0.0):
    """`ema` > 0 keeps a moving average of the weights that replaces them when fit() ends: an average of
    the last few hundred steps generalises better than the last step on a small data set."""
    import keras

    opt = keras.optimizers
    extra = {"use_ema": True, "ema_momentum": ema} if ema else {}
    factories = {"adam": lambda: opt.Adam(lr, **extra), "sgd": lambda: opt.SGD(lr, momentum=0.9, **extra),
                 "rmsprop": lambda: opt.RMSprop(lr, **extra), "nadam": lambda: opt.Nadam(lr, **extra),
                 "adadelta": lambda: opt.Adadelta(lr, **extra)}
    return factories[name]()


def smoothed_sparse_ce(n_classes: int, smoothing: float):
    """Sparse labels with label smoothing: softer targets keep a small data set from overconfident heads."""
    import keras

    def loss(y_true, y_pred):
        target = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), n_classes)
        return keras.losses.categorical_crossentropy(target, y_pred, label_smoothing=smoothing)

    return loss


def _compile(model, config: TrainConfig, lr: float, binary: bool, ema: float = 0.0) -> None:
    if binary:
        loss = "binary_crossentropy"
    elif config.label_smoothing:
        loss = smoothed_sparse_ce(int(model.output_shape[-1]), config.label_smoothing)
    else:
        loss = "sparse_categorical_crossentropy"
    model.compile(optimizer=make_optimizer(config.optimizer, lr, ema), loss=loss, metrics=["accuracy"])


def is_binary(config: TrainConfig, n_classes: int) -> bool:
    return config.binary_sigmoid and n_classes == 2


# --- fitting --------------------------------------------------------------------------------


def _callbacks(config: TrainConfig, run_dir: Path | None, has_val: bool, averaged: bool = False) -> list:
    """`averaged`: the optimizer's weight average is the result, so early stopping must not restore a
    single epoch's weights over it (Keras restores them after the average is written)."""
    import keras

    monitor = "val_loss" if has_val else "loss"
    out = [keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience,
                                         restore_best_weights=not averaged)]
    if run_dir is not None:
        out.append(keras.callbacks.ModelCheckpoint(run_dir / "checkpoint.weights.h5", monitor=monitor,
                                                   save_best_only=True, save_weights_only=True))
    return out


def _merge(history: dict[str, list], phase: dict[str, list], number: int) -> None:
    size = len(next(iter(phase.values()), []))
    for key, values in phase.items():
        history.setdefault(key, []).extend(float(v) for v in values)
    history.setdefault("phase", []).extend([number] * size)


def fit(model, backbone, config: TrainConfig, train_ds, val_ds=None, *, strategy=None, binary: bool = False,
        weights: dict[int, float] | None = None, run_dir: Path | None = None, verbose: int = 1) -> dict:
    """Phase 1 trains the head on the frozen backbone; phase 2 unfreezes the top layers at the lower
    learning rate. Returns both phases' history merged, with a `phase` column."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    history: dict[str, list] = {}
    with strategy.scope():
        set_trainable(backbone, 0)
        _compile(model, config, config.lr, binary)
    done = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, class_weight=weights, shuffle=False,
                     callbacks=_callbacks(config, run_dir, val_ds is not None), verbose=verbose)
    _merge(history, done.history, 1)
    if config.fine_tune_epochs and config.unfreeze:
        with strategy.scope():
            set_trainable(backbone, config.unfreeze)
            _compile(model, config, config.fine_tune_lr, binary, config.ema)
        start = len(history["phase"])
        done = model.fit(train_ds, validation_data=val_ds, epochs=start + config.fine_tune_epochs,
                         initial_epoch=start, class_weight=weights, shuffle=False,
                         callbacks=_callbacks(config, run_dir, val_ds is not None, bool(config.ema)),
                         verbose=verbose)
        _merge(history, done.history, 2)
    return history


def build_model(config: TrainConfig, n_classes: int, size: int, strategy=None):
    """(classifier, backbone) built under the strategy; raises backbones.WeightsUnavailable."""
    import tensorflow as tf

    from training.backbones import build_backbone

    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        backbone = build_backbone(config.backbone, weights=config.weights, input_size=size)
        model = build_classifier(backbone, n_classes, size, config.dropout, is_binary(config, n_classes))
    return model, backbone


# --- run folders ----------------------------------------------------------------------------


def next_run_dir(runs_dir: Path, name: str) -> Path:
    """runs/NAME, then NAME2, NAME3…: created atomically, so concurrent runs never share a folder."""
    base = Path(runs_dir)
    base.mkdir(parents=True, exist_ok=True)
    for i in itertools.count(1):
        path = base / (name if i == 1 else f"{name}{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


def counts_table(counts: dict[str, dict[str, int]]) -> Table:
    classes = list(next(iter(counts.values())))
    table = Table("class", *counts, title="images per split")
    for cls in classes:
        table.add_row(cls, *(str(counts[s][cls]) for s in counts))
    return table


def _counts(classes: list[str], loaded: dict[str, Loaded]) -> dict[str, dict[str, int]]:
    return {s: {c: int(np.sum(ld.labels == i)) for i, c in enumerate(classes)} for s, ld in loaded.items()}


def write_run_files(run_dir: Path, config: TrainConfig, splits: DataSplits, size: int,
                    counts: dict, skipped: list[tuple[Path, str]]) -> None:
    """Everything that says what a run was, written before training so even a crashed run explains itself.
    `data` is one folder, or the list of folders a merged run read (their counts apart in data.json)."""
    roots = [str(r.resolve()) for r in splits.roots]
    _write_json(run_dir / "config.json", {"data": roots[0] if len(roots) == 1 else roots,
                                          **config.to_dict(), "img_size": size})
    _write_json(run_dir / "labels.json", {"labels": splits.classes, "rotten_labels": guess_rotten(splits.classes)})
    save_splits(splits, run_dir / "splits.json")
    _write_json(run_dir / "data.json", {
        "fingerprint": splits.fingerprint(), "counts": counts,
        "counts_by_root": {s: splits.counts_by_root(s) for s in SPLITS},
        "skipped": [[str(p.relative_to(splits.root_of(p))), reason] for p, reason in skipped]})


# --- the whole run --------------------------------------------------------------------------


def _baselines(loaded: dict[str, Loaded], config: TrainConfig, size: int, console: Console) -> dict:
    """Linear heads on frozen features: the bar fine-tuning has to clear, recorded for the card.
    Fitted on train+val, scored on test, from the pixels the run already decoded."""
    from training.tune import baselines_on

    tr, va = loaded["train"], loaded["val"]
    fit_set = Loaded(np.concatenate([tr.images, va.images]), np.concatenate([tr.labels, va.labels]),
                     [*tr.paths, *va.paths], [])
    result = baselines_on(fit_set, loaded["test"], config.backbone, config.weights, size)
    console.print(f"frozen-feature baselines on test: logreg {result['logreg']['accuracy']:.4f}, "
                  f"linear SVM {result['linear_svm']['accuracy']:.4f}", highlight=False)
    return result


def by_root_table(splits: DataSplits) -> Table:
    """Images per data root and class, each split's counts side by side: what a merged run read."""
    table = Table("root", "class", *SPLITS, title="images per data root")
    counts = {s: splits.counts_by_root(s) for s in SPLITS}
    for root in splits.roots:
        for cls in splits.classes:
            row = [counts[s].get(root.name, {}).get(cls, 0) for s in SPLITS]
            if any(row):
                table.add_row(root.name, cls, *map(str, row))
    return table


def check_oversample(splits: DataSplits, config: TrainConfig) -> None:
    names = {r.name for r in splits.roots}
    if unknown := sorted(set(config.repeats()) - names):
        raise ValueError(f"--oversample names {unknown}, not among the data roots {sorted(names)}")


def oversampled(loaded: Loaded, splits: DataSplits, config: TrainConfig) -> Loaded:
    """The training photos with each `--oversample` root's photos repeated: the photos most like the
    field weigh more in every epoch without copying a file. Unknown root names are an error."""
    repeats = config.repeats()
    check_oversample(splits, config)
    if not repeats:
        return loaded
    times = np.array([repeats.get(splits.root_of(p).name, 1) for p in loaded.paths], dtype=int)
    index = np.repeat(np.arange(len(loaded.paths)), times)
    return Loaded(loaded.images[index], loaded.labels[index], [loaded.paths[i] for i in index], loaded.skipped)


def train(data: Path | list[Path], config: TrainConfig, console: Console | None = None,
          verbose: int = 1) -> TrainResult:
    """Discover, decode, fine-tune and save one run under `runs_dir/name[N]`. Several data folders
    are merged by class name; a folder with a split file takes its splits from it."""
    import keras

    from training.backbones import default_input_size

    console = console or Console(stderr=True)
    config.check()
    roots = [Path(d) for d in data] if isinstance(data, list) else [Path(data)]
    splits = discover_many(roots, config.seed, config.val_split, config.test_split,
                           [Path(f) for f in config.split_files])
    check_oversample(splits, config)
    size = config.img_size or default_input_size(config.backbone)
    keras.utils.set_random_seed(config.seed)
    strategy = pick_strategy()
    model, backbone = build_model(config, len(splits.classes), size, strategy)  # fails fast without weights
    loaded = {s: load_split(getattr(splits, s), size) for s in SPLITS}
    skipped = [item for s in SPLITS for item in loaded[s].skipped]
    for path, reason in skipped:
        console.print(f"[yellow]skipped[/yellow] {path}: {reason}", highlight=False, soft_wrap=True)
    counts = _counts(splits.classes, loaded)
    console.print(counts_table(counts))
    if len(splits.roots) > 1:
        console.print(by_root_table(splits))
    if warning := imbalance_warning(counts["train"]):
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    if len(set(loaded["train"].labels.tolist())) < 2:
        raise ValueError("the training split needs readable images of at least two classes")
    run_dir = next_run_dir(Path(config.runs_dir), config.name)
    write_run_files(run_dir, config, splits, size, counts, skipped)
    binary, tr, va = is_binary(config, len(splits.classes)), oversampled(loaded["train"], splits, config), loaded["val"]
    train_ds = make_dataset(tr.images, tr.labels, config.batch_size, training=True,
                            augment=config.augmentation(), seed=config.seed, binary=binary)
    val_ds = (make_dataset(va.images, va.labels, config.batch_size, training=False, binary=binary)
              if len(va.labels) else None)
    weights = class_weights(tr.labels, len(splits.classes)) if config.class_weights else None
    history = fit(model, backbone, config, train_ds, val_ds, strategy=strategy, binary=binary,
                  weights=weights, run_dir=run_dir, verbose=verbose)
    _write_json(run_dir / "history.json", history)
    if config.label_smoothing and not binary:  # the closure loss would make model.keras unloadable elsewhere
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(run_dir / "model.keras")
    console.print(f"saved {run_dir / 'model.keras'}", highlight=False, soft_wrap=True)
    if config.baselines:
        _write_json(run_dir / "baselines.json", _baselines(loaded, config, size, console))
    return TrainResult(run_dir, splits.classes, history, counts, skipped)
