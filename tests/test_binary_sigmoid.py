"""`--binary-sigmoid` runs, the whole path: train → evaluate → export → the runtime classifying with
the exported bundle (issue 14 item 16), and their errors as one line (item 20)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.model import Classifier
from tests.conftest import import_tensorflow, write_class_folders, write_run_folder

tf = import_tensorflow()
LABELS = ["fresh", "rotten"]
SIZE = 32


def sorter(*args) -> object:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def sigmoid_cnn(data: Path):
    """A small one-unit sigmoid classifier (the --binary-sigmoid head), trained on the shapes in a second."""
    import keras

    from training.evaluate import load_images

    files = [(p, i) for i, c in enumerate(LABELS) for p in sorted((data / "train" / c).glob("*.png"))]
    x, _ = load_images([p for p, _ in files], (SIZE, SIZE))
    y = np.array([i for _, i in files], np.float32)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inp))
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(h)))
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.Adam(0.03), "binary_crossentropy")
    model.fit(x.astype(np.float32), y, batch_size=20, epochs=60, verbose=0)
    return model


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("binary")
    write_class_folders(root, LABELS, 20, SIZE, split="train", seed=1)
    write_class_folders(root, LABELS, 8, SIZE, split="test", seed=2)
    write_class_folders(root, LABELS, 4, SIZE, split="val", seed=3)
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    return write_run_folder(tmp_path_factory.mktemp("runs") / "sig", sigmoid_cnn(data), LABELS, ["rotten"], data,
                            backbone="tiny-cnn")


def test_evaluate_a_sigmoid_run_scores_both_labels(run, data, tmp_path):
    from training.evaluate import keras_scores, load_keras

    out = tmp_path / "eval"
    result = sorter("evaluate", run, data, "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 16 and metrics["labels"] == LABELS and metrics["accuracy"] >= 0.9
    model = load_keras(run / "model.keras")
    probs = keras_scores(model, np.full((3, SIZE, SIZE, 3), 90, np.uint8))
    assert probs.shape == (3, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)


def test_validation_split_by_either_name_and_a_wrong_one_is_one_line(run, data, tmp_path):
    for name in ("validation", "val"):
        result = sorter("evaluate", run, data, "--split", name, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / name / "metrics.json").read_text())["n"] == 8
    bad = sorter("evaluate", run, data, "--split", "holdout", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert bad.output.strip().splitlines() == ["error: --split must be train, val (or validation) or test, "
                                               "not 'holdout'"]


def test_export_a_sigmoid_run_and_classify_with_the_bundle(run, data, tmp_path, capfd):
    from training.evaluate import keras_scores, load_images, load_keras

    out = tmp_path / "models"
    result = sorter("export", run, "--out", out, "--formats", "float32,int8", "--calibration", "40",
                    "--latency-runs", "1")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "TensorSpec" not in result.output  # item 24: the endpoint dump
    native = capfd.readouterr().err
    assert "Ignored output_format" not in native and "Assets written to" not in native
    images, _ = load_images(sorted((data / "test" / "rotten").glob("*.png")), (SIZE, SIZE))
    want = keras_scores(load_keras(run / "model.keras"), images)
    for fmt in ("float32", "int8"):
        clf = Classifier(out / f"sig-{fmt}.tflite")
        assert clf.labels == LABELS and clf.card.score.n_test == 16 and clf.card.score.accuracy >= 0.9
        got = clf.scores(images)
        assert got.shape == (len(images), 2) and np.allclose(got.sum(axis=1), 1, atol=0.02)
        if fmt == "float32":
            np.testing.assert_allclose(got, want, atol=1e-4)
    photo = sorted((data / "test" / "rotten").glob("*.png"))[0]
    classified = sorter("classify", "--model", out / "sig-int8.tflite", "--json", photo)
    assert classified.exit_code == 0, classified.output
    row = json.loads(classified.stdout.strip().splitlines()[-1])
    assert row["label"] == "rotten" and row["verdict"] == "rotten"


def test_trained_binary_sigmoid_run_goes_the_whole_way(tmp_path, data):
    """`sorter train --binary-sigmoid` itself, then evaluate and an int8 export the runtime loads."""
    runs = tmp_path / "runs"
    trained = sorter("train", data, "--weights", "none", "--img-size", "32", "--epochs", "1", "--batch-size", "8",
                     "--fine-tune-epochs", "0", "--binary-sigmoid", "--runs-dir", runs, "--name", "bin")
    assert trained.exit_code == 0, trained.output
    evaluated = sorter("evaluate", runs / "bin", data, "--out", tmp_path / "eval")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == 16
    exported = sorter("export", runs / "bin", "--out", tmp_path / "models", "--formats", "int8", "--calibration",
                      "8", "--latency-runs", "1", "--allow-drop")
    assert exported.exit_code == 0, exported.output
    clf = Classifier(tmp_path / "models" / "bin-int8.tflite")
    assert clf.labels == LABELS and clf.scores(np.zeros((1, SIZE, SIZE, 3), np.uint8)).shape == (1, 2)
