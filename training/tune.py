"""Hyper-parameter search scored by stratified k-fold CV, beside frozen-embedding baselines."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from training.data import DataSplits, Loaded, discover, load_split, make_dataset
from training.train import TrainConfig, build_model, fit, is_binary, next_run_dir

GRID: dict[str, list[Any]] = {"lr": [1e-3, 3e-4, 1e-4], "dropout": [0.3, 0.5], "unfreeze": [0, 30],
        "batch_size": [16, 32], "optimizer": ["adam", "sgd", "rmsprop"]}
CHOICES: dict[str, list[Any]] = {"unfreeze": [0, 10, 30, 60],
                                 "batch_size": [8, 16, 32], "optimizer": ["adam", "sgd", "rmsprop", "nadam"]}
BASELINES = ("logreg", "linear_svm")


# --- frozen embeddings and the linear baselines ---------------------------------------------


def embed(backbone, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Global-average-pooled backbone features (N, C) of uint8 RGB images, in inference mode."""
    import tensorflow as tf

    if len(images) == 0:
        return np.zeros((0, int(backbone.output_shape[-1])), np.float32)
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch).map(lambda x: tf.cast(x, tf.float32))
    feats = np.asarray(backbone.predict(ds, verbose=0), np.float32)
    return feats.mean(axis=(1, 2)) if feats.ndim == 4 else feats


def baseline_models(seed: int = 42) -> dict:
    """Standardised logistic regression and linear SVM: what a frozen backbone alone can do."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    return {"logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
            "linear_svm": make_pipeline(StandardScaler(), LinearSVC(max_iter=5000, random_state=seed))}


def baseline_scores(x_fit, y_fit, x_test, y_test, seed: int = 42) -> dict[str, dict[str, float]]:
    """Fit each baseline on one set and score it (accuracy, macro F1) on another."""
    from sklearn.metrics import accuracy_score, f1_score

    out = {}
    for name, model in baseline_models(seed).items():
        pred = model.fit(x_fit, y_fit).predict(x_test)
        out[name] = {"accuracy": float(accuracy_score(y_test, pred)),
                     "macro_f1": float(f1_score(y_test, pred, average="macro"))}
    return out


def frozen_baselines(splits: DataSplits, backbone_name: str, weights: str = "imagenet",
                     img_size: int | None = None) -> dict:
    """Baselines fitted on train(+val) and scored on test, for the model card."""
    from training.backbones import default_input_size

    size = img_size or default_input_size(backbone_name)
    return baselines_on(load_split([*splits.train, *splits.val], size), load_split(splits.test, size),
                        backbone_name, weights, size)


def baselines_on(fit_set: Loaded, test: Loaded, backbone_name: str, weights: str, size: int) -> dict:
    """The same, on splits already decoded (a training run has them in memory)."""
    from training.backbones import build_backbone

    if not len(test.labels):
        raise ValueError("frozen baselines need a non-empty test split")
    backbone = build_backbone(backbone_name, weights=weights, input_size=size)
    scores = baseline_scores(embed(backbone, fit_set.images), fit_set.labels, embed(backbone, test.images),
                             test.labels)
    return {"backbone": backbone_name, "weights": weights, "img_size": size,
            "n_train": len(fit_set.labels), "n_test": len(test.labels), **scores}


# --- the search -----------------------------------------------------------------------------


def candidates(search: str, trials: int | None, seed: int) -> list[dict]:
    """Grid: every GRID combination (first `trials` if given); random: log-uniform lr, uniform dropout."""
    if search == "grid":
        combos = [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]
        return combos[:trials] if trials else combos
    if search != "random":
        raise ValueError(f"--search must be random or grid, not '{search}'")
    rng = random.Random(seed)
    return [{"lr": float(f"{10 ** rng.uniform(-4.5, -2.5):.2g}"), "dropout": round(rng.uniform(0.1, 0.6), 2),
             **{k: rng.choice(v) for k, v in CHOICES.items()}} for _ in range(trials or 10)]


def _fold_accuracy(config: TrainConfig, images, labels, n_classes: int, train_idx, test_idx, size: int) -> float:
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    binary = is_binary(config, n_classes)
    model, backbone = build_model(config, n_classes, size)
    train_ds = make_dataset(images[train_idx], labels[train_idx], config.batch_size, training=True,
                            augment=config.augmentation(), seed=config.seed, binary=binary)
    fit(model, backbone, config, train_ds, None, binary=binary, verbose=0)  # fixed epochs: no peeking
    test_ds = make_dataset(images[test_idx], labels[test_idx], config.batch_size, training=False, binary=binary)
    probs = model.predict(test_ds, verbose=0)
    pred = (probs[:, 0] > 0.5).astype(int) if binary else probs.argmax(axis=1)
    return float(np.mean(pred == labels[test_idx]))


def trial_name(backbone: str, params: dict) -> str:
    """What a trial trains: with unfreeze 0 there is no phase 2, only the head on the frozen backbone."""
    unfreeze = int(params.get("unfreeze", 0))
    return f"{backbone} fine-tuned (top {unfreeze} layers)" if unfreeze else f"{backbone} head only (frozen)"


def recommendation(rows: list[dict]) -> str:
    """Say what won. best.json can only hold a trainable recipe, so when a frozen baseline beats every
    trial, say so rather than pass the best trial off as the winner."""
    rank, trial = next((i, r) for i, r in enumerate(rows, 1) if r["params"])
    if rank == 1:
        return f"recommended: rank 1, {trial['model']} (cv accuracy {trial['mean']:.3f}); best.json holds it"
    top = rows[0]
    return (f"no trained trial is recommended: {top['model']} scores {top['mean']:.3f}, above the best trial "
            f"(rank {rank}, {trial['model']}, {trial['mean']:.3f}); the frozen features already do better than "
            f"these trials, so train longer (--epochs), search more trials, or add data before shipping a "
            f"trained model; best.json holds the best trial's settings, not a winner")


@dataclass
class TuneResult:
    out_dir: Path
    rows: list[dict]  # ranked, best first; baselines have model "logreg (frozen)" etc.
    best: dict  # the partial TrainConfig written to best.json
    baselines_test: dict | None

    @property
    def recommendation(self) -> str:
        return recommendation(self.rows)

    def table(self) -> Table:
        """The ranked table: trained settings and the frozen baselines, same folds."""
        table = Table("rank", "model", "lr", "dropout", "unfreeze", "batch", "optimizer", "cv accuracy",
                      "folds", title="k-fold CV on train+val (best first)")
        for rank, row in enumerate(self.rows, 1):
            p = row.get("params", {})
            table.add_row(str(rank), row["model"], f"{p['lr']:.2g}" if p else "-", str(p.get("dropout", "-")),
                          str(p.get("unfreeze", "-")), str(p.get("batch_size", "-")), p.get("optimizer", "-"),
                          f"{row['mean']:.3f} ± {row['std']:.3f}", " ".join(f"{s:.2f}" for s in row["folds"]))
        return table


def _row(model: str, scores: list[float], params: dict | None = None) -> dict:
    return {"model": model, "params": params or {}, "mean": float(np.mean(scores)),
            "std": float(np.std(scores)), "folds": scores}


def tune(data: Path, *, search: str = "random", trials: int | None = None, folds: int = 3, epochs: int = 3,
         backbone: str = "resnet50", weights: str = "imagenet", img_size: int | None = None,
         out: Path = Path("runs/tune"), seed: int = 42, val_split: float = 0.2,
         test_split: float = 0.1) -> TuneResult:
    """Score every candidate by stratified k-fold CV on train+val (the test split stays unseen)."""
    from sklearn.model_selection import StratifiedKFold

    from training.backbones import build_backbone, default_input_size

    base = TrainConfig(backbone=backbone, weights=weights, img_size=img_size, epochs=epochs,
                       fine_tune_epochs=epochs, seed=seed, val_split=val_split, test_split=test_split)
    base.check()
    params = candidates(search, trials, seed)
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, not {folds}")
    splits = discover(data, seed, val_split, test_split)
    size = img_size or default_input_size(backbone)
    frozen = build_backbone(backbone, weights=weights, input_size=size)  # fails fast without weights
    pool = load_split([*splits.train, *splits.val], size)
    smallest = int(np.bincount(pool.labels, minlength=len(splits.classes)).min())
    if smallest < folds:
        raise ValueError(f"--folds {folds} needs at least {folds} readable images per class; smallest has {smallest}")
    fold_idx = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(pool.images, pool.labels))
    feats = embed(frozen, pool.images)
    per_fold = [baseline_scores(feats[a], pool.labels[a], feats[b], pool.labels[b]) for a, b in fold_idx]
    rows = [_row(f"{name} (frozen)", [fold[name]["accuracy"] for fold in per_fold]) for name in BASELINES]
    test = load_split(splits.test, size)
    baselines_test = (baseline_scores(feats, pool.labels, embed(frozen, test.images), test.labels)
                      if len(test.labels) else None)
    for p in params:
        config = dataclasses.replace(base, **p)
        scores = [_fold_accuracy(config, pool.images, pool.labels, len(splits.classes), a, b, size)
                  for a, b in fold_idx]
        rows.append(_row(trial_name(backbone, p), scores, p))
    rows.sort(key=lambda r: (-r["mean"], r["std"]))
    best_trial = next(r for r in rows if r["params"])
    best = {"backbone": backbone, "weights": weights, "img_size": size, "seed": seed,
            "val_split": val_split, "test_split": test_split, **best_trial["params"]}
    out_dir = next_run_dir(Path(out).parent, Path(out).name)
    (out_dir / "best.json").write_text(json.dumps(best, indent=2) + "\n")
    report = {"data": str(Path(data).resolve()), "fingerprint": splits.fingerprint(), "search": search,
              "folds": folds, "epochs": epochs, "rows": rows, "baselines_test": baselines_test,
              "recommended": rows[0]["model"], "recommendation": recommendation(rows)}
    (out_dir / "tune.json").write_text(json.dumps(report, indent=2) + "\n")
    return TuneResult(out_dir, rows, best, baselines_test)
