"""Issue 14 item 25: both error galleries read true → predicted and say so; an empty folder, or one
whose photos cannot be decoded, is a clear error with a non-zero exit, never an empty table and exit 0."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.report_html import _wrong
from tests.conftest import COLOR_INT8

needs_training = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                    reason="sorter evaluate needs TensorFlow (the train extra)")


def _colour_data(root, colour_jpeg) -> None:
    for label, colour in (("freshred", "red"), ("freshgreen", "green"), ("rottenblue", "blue")):
        colour_jpeg(root / "train" / label / f"{colour}.jpg", colour)
        colour_jpeg(root / "test" / label / f"{colour}.jpg", colour, seed=1)


def test_runtime_report_gallery_reads_true_then_predicted_and_says_so(tmp_path):
    from sorter.report_format import WrongItem

    wrong = [WrongItem(id=7, destination=str(tmp_path / "gone.jpg"), label="freshapple",
                       true_label="rottenapple", confidence=0.91)]
    html = _wrong(wrong, 4)
    assert "#7: <b>rottenapple</b> → freshapple (0.91)" in html
    assert "Each photo: true (audited) label → the model&#x27;s prediction (its confidence)" in html


@needs_training
def test_evaluate_gallery_reads_true_then_predicted_and_says_so(tmp_path, colour_jpeg):
    data = tmp_path / "data"
    _colour_data(data, colour_jpeg)
    colour_jpeg(data / "test" / "freshred" / "wrong.jpg", "blue", seed=9)  # true freshred, predicted rottenblue
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", str(COLOR_INT8), str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gallery"] == "true label → predicted label (confidence)"
    [error] = metrics["worst_errors"]
    assert (error["true"], error["predicted"]) == ("freshred", "rottenblue")
    assert "<p>Each photo: true label → predicted label (confidence).</p>" in (out / "report.html").read_text()


def test_classify_on_an_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not a photo")
    result = CliRunner().invoke(app, ["classify", "--model", str(COLOR_INT8), str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: no image files found in {tmp_path / 'empty'} (searched recursively)"]


@needs_training
def test_evaluate_on_photos_that_cannot_be_decoded_is_an_error(tmp_path, colour_jpeg):
    data = tmp_path / "data"
    _colour_data(data, colour_jpeg)
    for photo in (data / "test").rglob("*.jpg"):
        photo.write_bytes(b"not a jpeg")
    result = CliRunner().invoke(app, ["evaluate", str(COLOR_INT8), str(data), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"error: none of the 3 images in split 'test' of {data} could be decoded" in result.output
    assert not (tmp_path / "eval" / "metrics.json").exists()


@needs_training
def test_evaluate_on_an_empty_split_is_an_error(tmp_path, colour_jpeg):
    data = tmp_path / "data"
    _colour_data(data, colour_jpeg)
    for photo in (data / "test").rglob("*.jpg"):
        photo.unlink()
    result = CliRunner().invoke(app, ["evaluate", str(COLOR_INT8), str(data), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 2 and f"error: split 'test' of {data} is empty" in result.output
