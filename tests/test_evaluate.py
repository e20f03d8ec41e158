"""Evaluation: metric figures against hand-computed values, and `sorter evaluate` on a real .tflite."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.metrics import compute_metrics, worst_errors

LABELS = ["fresh_a", "fresh_b", "rotten_c"]
Y = [0, 0, 0, 1, 1, 2]
PROBS = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1],
                  [0.1, 0.8, 0.1], [0.3, 0.2, 0.5], [0.1, 0.2, 0.7]])


@pytest.fixture(scope="module")
def metrics() -> dict:
    return compute_metrics(Y, PROBS, LABELS, ["rotten_c"], thresholds=(0.1, 0.5, 0.6, 0.8))


def test_accuracy_and_confusion(metrics):
    assert metrics["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert metrics["n"] == 6 and metrics["predicted_classes"] == 3


def test_per_class(metrics):
    pc = metrics["per_class"]
    assert pc["fresh_a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}, abs=1e-6)
    assert pc["fresh_b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}, abs=1e-6)
    assert pc["rotten_c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1},
                                           abs=1e-6)


def test_averages(metrics):
    assert metrics["macro"] == pytest.approx({"precision": 2 / 3, "recall": 13 / 18, "f1": (0.8 + 0.5 + 2 / 3) / 3},
                                             abs=1e-6)
    assert metrics["weighted"] == pytest.approx(
        {"precision": 0.75, "recall": 4 / 6, "f1": (2.4 + 1 + 2 / 3) / 6}, abs=1e-6)


def test_threshold_table(metrics):
    rows = {r["threshold"]: r for r in metrics["threshold_table"]}
    assert rows[0.1] == pytest.approx({"threshold": 0.1, "binned": 6, "precision": 1 / 6, "recall": 1.0,
                                       "fresh_binned": 5, "fresh_binned_rate": 1.0}, abs=1e-6)
    assert rows[0.5] == pytest.approx({"threshold": 0.5, "binned": 2, "precision": 0.5, "recall": 1.0,
                                       "fresh_binned": 1, "fresh_binned_rate": 0.2}, abs=1e-6)
    assert rows[0.6]["precision"] == 1.0 and rows[0.6]["fresh_binned"] == 0
    assert rows[0.8] == pytest.approx({"threshold": 0.8, "binned": 0, "precision": 0.0, "recall": 0.0,
                                       "fresh_binned": 0, "fresh_binned_rate": 0.0}, abs=1e-6)


def test_worst_errors_most_confident_first():
    assert worst_errors(np.array(Y), PROBS) == [2, 4]
    assert worst_errors(np.array(Y), PROBS, k=1) == [2]


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="does not match"):
        compute_metrics([0, 1], PROBS, LABELS)


def test_evaluate_tflite_through_runtime(tmp_path, color_model, colour_jpeg):
    """The colour model: red→freshred, green→freshgreen, blue→rottenblue; one mislabelled image."""
    from typer.testing import CliRunner

    from sorter.cli import app

    data = tmp_path / "data"
    for label, colour in (("freshred", "red"), ("freshgreen", "green"), ("rottenblue", "blue")):
        for i in range(4):
            colour_jpeg(data / "test" / label / f"{colour}{i}.jpg", colour, seed=i)
        colour_jpeg(data / "train" / label / f"{colour}.jpg", colour)
    colour_jpeg(data / "test" / "freshred" / "wrong.jpg", "blue", seed=9)  # predicted rottenblue
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", str(color_model), str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "tflite" and metrics["n"] == 13
    assert metrics["accuracy"] == pytest.approx(12 / 13, abs=1e-6)
    assert metrics["per_class"]["freshred"]["recall"] == pytest.approx(0.8)
    assert metrics["per_class"]["rottenblue"]["precision"] == pytest.approx(0.8)
    assert [e["path"].endswith("wrong.jpg") for e in metrics["worst_errors"]] == [True]
    rows = {r["threshold"]: r for r in metrics["threshold_table"]}
    assert rows[0.5]["recall"] == 1.0 and rows[0.5]["fresh_binned"] == 1
    for png in ("confusion.png", "pr_curves.png", "thresholds.png", "worst_errors.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "0.9231" in page and "src='http" not in page
