"""Shared fixtures: paths to the real test models and to the shared fruit photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
FRUIT_DEV = REPO.parent / "shared" / "data" / "fruit_dev"
COLOR_INT8 = DATA / "color-int8.tflite"
COLOR_FLOAT = DATA / "color-float32.tflite"
COLOURS_BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0), "grey": (128, 128, 128)}


def write_colour_jpeg(path: Path, colour: str, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """A solid-colour JPEG with a little seeded noise, so different seeds give different bytes."""
    rng = np.random.default_rng(seed)
    img = np.empty((*size, 3), np.uint8)
    img[:] = COLOURS_BGR[colour]
    noise = rng.integers(-6, 7, img.shape)
    img = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


def import_tensorflow():
    """TensorFlow limited to two threads (CI has two cores), or skip the module where it is absent."""
    tf = pytest.importorskip("tensorflow")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(2)
        tf.config.threading.set_inter_op_parallelism_threads(2)
    except RuntimeError:  # already initialised by an earlier test module
        pass
    return tf


@pytest.fixture
def colour_jpeg():
    return write_colour_jpeg


@pytest.fixture
def color_model() -> Path:
    return COLOR_INT8


@pytest.fixture
def fruit_dev() -> Path:
    if not FRUIT_DEV.is_dir():
        pytest.skip(f"needs the shared fruit photos at {FRUIT_DEV} (absent on this machine)")
    return FRUIT_DEV


# --- synthetic class folders for training tests (owner: train helper) ---
SHAPE_COLOURS = [(40, 40, 220), (40, 200, 40), (220, 60, 40), (30, 200, 230), (200, 40, 200),
                 (230, 230, 40), (90, 90, 90), (255, 255, 255), (20, 120, 255), (120, 20, 80)]


def shape_image(index: int, seed: int, size: int = 40) -> np.ndarray:
    """A BGR image for class `index`: its own colour and shape (circle/square/triangle) on noise."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    colour = SHAPE_COLOURS[index % len(SHAPE_COLOURS)]
    c, r = size // 2 + int(rng.integers(-3, 4)), size // 3
    kind = (index // len(SHAPE_COLOURS) + index) % 3
    if kind == 0:
        cv2.circle(img, (c, c), r, colour, -1)
    elif kind == 1:
        cv2.rectangle(img, (c - r, c - r), (c + r, c + r), colour, -1)
    else:
        pts = np.array([[c, c - r], [c - r, c + r], [c + r, c + r]], np.int32)
        cv2.fillPoly(img, [pts], colour)
    return img


def write_class_folders(root: Path, classes: list[str], per_class: int | dict[str, int] = 6,
                        size: int = 40, split: str | None = None, seed: int = 0) -> Path:
    """DATA/<class>/*.png (or DATA/<split>/<class>/ when `split` is given) of synthetic shapes."""
    for i, name in enumerate(classes):
        n = per_class[name] if isinstance(per_class, dict) else per_class
        folder = root / split / name if split else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(n):
            cv2.imwrite(str(folder / f"{name}_{j}.png"), shape_image(i, seed * 1000 + i * 100 + j, size))
    return root


@pytest.fixture
def class_folders():
    return write_class_folders


# --- run folders for evaluate/export tests (owner: export helper) ---
def write_run_folder(run: Path, model, labels: list[str], rotten: list[str], data: Path | None = None,
                     backbone: str = "test", history: dict | None = None,
                     baselines: dict | None = None) -> Path:
    """The files train.py leaves in runs/NAME/: model.keras, labels/config/history/splits json."""
    import json

    run.mkdir(parents=True, exist_ok=True)
    model.save(run / "model.keras")
    (run / "labels.json").write_text(json.dumps({"labels": labels, "rotten_labels": rotten}))
    (run / "config.json").write_text(json.dumps({"backbone": backbone, "data": str(data) if data else None}))
    hist = history or {"loss": [1.0, 0.6], "accuracy": [0.5, 0.8], "val_loss": [0.9, 0.7],
                       "val_accuracy": [0.55, 0.75]}
    (run / "history.json").write_text(json.dumps(hist))
    if data is not None:
        splits = {s: sorted(str(p.relative_to(data)) for p in (data / s).rglob("*.png"))
                  for s in ("train", "val", "test") if (data / s).is_dir()}
        (run / "splits.json").write_text(json.dumps(splits))
    if baselines is not None:
        (run / "baselines.json").write_text(json.dumps(baselines))
    return run


@pytest.fixture
def run_folder():
    return write_run_folder


@pytest.fixture
def broker(tmp_path):
    """A real mosquitto on a free loopback port for one test; the test skips where mosquitto is missing."""
    from tests.mqtt_helpers import MOSQUITTO, Broker

    if MOSQUITTO is None:
        pytest.skip("the mosquitto binary is missing (apt-get install mosquitto; .ci/run does this)")
    b = Broker(tmp_path).start()
    yield b
    b.stop()


# --- two-output bundles (a distance card: logits + a one-column OOD score) ---
def write_distance_bundle(path: Path, size: int, score, name: str) -> Path:
    """A real float TFLite graph fixed at batch 1 (a reshape to a hard-coded batch, as some converted
    models have) with a distance card's two outputs: logits 0.1 × each channel mean over 3 labels, and a
    one-column OOD score `score(tf, means)`."""
    from sorter.card import InputSpec, ModelCard, OodRule, sha256_file, write_card

    tf = import_tensorflow()

    class Fixed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
        def __call__(self, x):
            means = tf.reduce_mean(tf.reshape(x, [1, size * size, 3]), axis=1)
            return {"logits": means * 0.1, "score": score(tf, means)}

    module = Fixed()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    path.write_bytes(conv.convert())
    write_card(path, ModelCard(name=name, labels=["freshred", "freshgreen", "rottenblue"],
                               rotten_labels=["rottenblue"], input=InputSpec(height=size, width=size, dtype="float32"),
                               quantization="float32", output="logits", ood=OodRule(score="distance", threshold=-3),
                               model_sha256=sha256_file(path)))
    return path
