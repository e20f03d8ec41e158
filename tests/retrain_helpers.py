"""A tiny real line for the retrain tests: base photos, a trained tiny model exported to a real int8
bundle (with its float weights), a line whose photos look different, a real results database filled by
`sorter watch --once`, and audits imported from folders as an operator gives them."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
from typer.testing import CliRunner

from sorter.audit import import_folder
from tests.conftest import SHAPE_COLOURS, shape_image, write_class_folders, write_run_folder

CLASSES = ["freshapple", "freshbanana", "rottenapple"]
ROTTEN = ["rottenapple"]
SIZE = 32


def base_data(root: Path) -> Path:
    """DATA/{train,val,test}/<class>/ synthetic shapes: each class its own colour and shape."""
    write_class_folders(root, CLASSES, 30, SIZE, split="train", seed=1)
    write_class_folders(root, CLASSES, 12, SIZE, split="val", seed=2)
    write_class_folders(root, CLASSES, 15, SIZE, split="test", seed=3)
    return root


def line_image(index: int, seed: int) -> np.ndarray:
    """The line's photo of class `index`: the class's shape in a colour halfway to the next class's, on a
    lighter belt (another camera and light), so the base model gets many of them wrong."""
    img = shape_image(index, seed, SIZE)
    base, shifted = np.array(SHAPE_COLOURS[index]), np.array(SHAPE_COLOURS[(index + 1) % len(CLASSES)])
    mask = np.all(img == base.astype(np.uint8), axis=-1)
    img[mask] = ((base + shifted) // 2).astype(np.uint8)
    img[~mask] = np.clip(img[~mask].astype(int) + 70, 0, 255).astype(np.uint8)
    return img


def line_photos(folder: Path, per_class: int, seed: int = 7, shifted: bool = True) -> dict[str, str]:
    """INCOMING/*.png of the line (`shifted`: another camera and light; else photos like the base ones);
    {file name: true label}."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, label in enumerate(CLASSES):
        for j in range(per_class):
            name = f"line_{label}_{j:03d}.png"
            at = seed * 1000 + i * 100 + j
            cv2.imwrite(str(folder / name), line_image(i, at) if shifted else shape_image(i, at, SIZE))
            truth[name] = label
    return truth


def tiny_classifier():
    """training.train's layout (a nested backbone with a residual block, then pool/dropout/softmax)."""
    import keras

    from training.train import build_classifier

    pixels = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255, name="scale")(pixels)
    x = keras.layers.Conv2D(12, 3, strides=2, padding="same", activation="relu", name="stem")(x)
    skip = x
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="block0_conv")(x)
    x = keras.layers.Add(name="block0_add")([x, skip])
    x = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="block1_conv")(x)
    x = keras.layers.Conv2D(24, 1, activation="relu", name="head_conv")(x)
    backbone = keras.Model(pixels, x, name="tiny_backbone")
    return build_classifier(backbone, len(CLASSES), SIZE, 0.1)


def train_base_model(data: Path, runs: Path):
    """Fit the tiny classifier on the base training photos; its run folder as `sorter train` leaves it."""
    import keras

    from training.evaluate import load_images

    files = [(p, i) for i, c in enumerate(CLASSES) for p in sorted((data / "train" / c).glob("*.png"))]
    images, _ = load_images([p for p, _ in files], (SIZE, SIZE))
    keras.utils.set_random_seed(0)
    model = tiny_classifier()
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images.astype(np.float32), np.array([i for _, i in files]), batch_size=30, epochs=25, verbose=0)
    return write_run_folder(runs / "base", model, CLASSES, ROTTEN, data, backbone="tiny")


def export_bundle(run: Path, data: Path, out: Path) -> Path:
    from training.export import export

    results = export(run, data, ["int8"], out, "tiny", calibration=60, latency_runs=2)
    return results[0].path


def watch_once(incoming: Path, sorted_out: Path, db: Path, model: Path) -> None:
    from sorter.cli import app

    result = CliRunner().invoke(app, ["watch", str(incoming), "--out", str(sorted_out), "--db", str(db),
                                      "--once", "--model", str(model)])
    assert result.exit_code == 0, result.output


def audit(db: Path, routed: Path, truth: dict[str, str], names: list[str], folder: Path,
          given: dict[str, str] | None = None) -> int:
    """Copy the routed files of `names` into FOLDER/<label>/ (an operator's sorting: the true label, or
    the one `given` for that name) and import them."""
    by_name = {p.name: p for p in routed.rglob("*.png")}
    for name in names:
        label = (given or {}).get(name, truth[name])
        (folder / label).mkdir(parents=True, exist_ok=True)
        shutil.copy2(by_name[name], folder / label / name)
    result = import_folder(db, folder, CLASSES, auditor="test")
    assert not result.errors, result.errors
    return result.inserted


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
