"""training/backbones.py: the Keras EfficientNet-Lite0 port matches the PyTorch reference's
ImageNet logits (tests/data/lite0_reference.npz, from tools/make_lite0_reference.py); ResNet50
builds offline and says what to do when its weights cannot be had."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest

from training.backbones import (
    WeightsUnavailable,
    build_backbone,
    build_lite_classifier,
    default_input_size,
)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests/data/lite0_reference.npz"
FRUIT_TEST = REPO.parent / "shared/data/fruit_dev/test"
TOLERANCE = 1e-3  # float32 logits differ only by summation order (measured ~1e-5)


def _tool():
    spec = importlib.util.spec_from_file_location("make_lite0_reference", REPO / "tools/make_lite0_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    return np.load(REFERENCE)


@pytest.fixture(scope="module")
def classifier():
    return build_lite_classifier("efficientnet-lite0")


def _assert_parity(logits: np.ndarray, expected: np.ndarray, what: str) -> None:
    diff = float(np.abs(logits - expected).max())
    print(f"\n{what}: largest |keras - torch| logit difference {diff:.3g}")
    assert diff < TOLERANCE, f"{what}: logits differ by {diff}"
    np.testing.assert_array_equal(logits.argmax(1), expected.argmax(1))


def test_lite0_matches_reference_on_synthetic(classifier, reference):
    logits = classifier.predict_on_batch(_tool().synthetic_images().astype(np.float32))
    _assert_parity(logits, reference["synthetic_logits"], "synthetic")


@pytest.mark.shared
@pytest.mark.skipif(not FRUIT_TEST.is_dir(), reason=f"{FRUIT_TEST} absent: real-photo parity needs ../shared")
def test_lite0_matches_reference_on_photos(classifier, reference):
    tool = _tool()
    names = [str(n) for n in reference["photo_names"]]
    photos = np.stack([tool.load_photo(FRUIT_TEST / n) for n in names])
    sums = photos.reshape(len(names), -1).sum(1, dtype=np.int64)
    np.testing.assert_array_equal(sums, reference["photo_pixel_sums"], err_msg="decoded pixels differ from reference")
    logits = classifier.predict_on_batch(photos.astype(np.float32))
    _assert_parity(logits, reference["photo_logits"], "photos")


def test_lite0_backbone_shape_names_and_keras_roundtrip(tmp_path):
    model = build_backbone("efficientnet-lite0")
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 7, 7, 1280)
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["pixels", "preprocess", "stem_conv"] and names[-1] == "head_relu"
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    path = tmp_path / "lite0.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _tool().synthetic_images().astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_on_batch(x), model.predict_on_batch(x))


def test_lite0_refuses_wrong_weights_file(tmp_path):
    with pytest.raises(WeightsUnavailable, match="not found"):
        build_backbone("efficientnet-lite0", weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(WeightsUnavailable, match=r"legacy \.pth"):
        build_backbone("efficientnet-lite0", weights=str(bad))


def test_resnet50_no_weights_builds_small():
    model = build_backbone("resnet50", weights="none", input_size=32)
    assert model.output_shape == (None, 1, 1, 2048)
    assert model.layers[1].name == "preprocess"
    assert model.predict_on_batch(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 1, 1, 2048)


def test_resnet50_local_weights_fold_caffe_preprocessing(tmp_path):
    """Our RGB model on raw pixels == Keras' ResNet50 on preprocess_input (BGR, mean-subtracted)."""
    keras.utils.set_random_seed(0)
    plain = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "r50.weights.h5"
    plain.save_weights(path)
    ours = build_backbone("resnet50", weights=str(path), input_size=32)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    expected = plain.predict_on_batch(keras.applications.resnet50.preprocess_input(x.copy()))
    np.testing.assert_allclose(ours.predict_on_batch(x), expected, rtol=1e-4, atol=1e-4)


def test_resnet50_offline_message(tmp_path, monkeypatch):
    from keras.src.applications import resnet

    monkeypatch.setattr(resnet, "BASE_WEIGHTS_PATH", "http://127.0.0.1:9/")  # closed port: fails at once
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as info:
        build_backbone("resnet50", weights="imagenet", input_size=32)
    message = str(info.value)
    assert "--weights PATH" in message and "--backbone efficientnet-lite0" in message
    assert "\n" not in message


def test_resnet50_bad_local_file(tmp_path):
    with pytest.raises(WeightsUnavailable, match="not found") as info:
        build_backbone("resnet50", weights=str(tmp_path / "nope.h5"), input_size=32)
    assert "\n" not in str(info.value)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"junk")
    with pytest.raises(WeightsUnavailable, match="not a Keras resnet50 no-top") as info:
        build_backbone("resnet50", weights=str(junk), input_size=32)
    assert "\n" not in str(info.value)


def test_names_and_sizes():
    assert [default_input_size(n) for n in ("resnet50", "efficientnet-lite0", "efficientnet-lite1")] == [224, 224, 240]
    assert default_input_size("efficientnet-lite2") == 260
    with pytest.raises(ValueError, match="resnet50, efficientnet-lite0"):
        build_backbone("mobilenet")
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        default_input_size("efficientnet-lite4")


def tiny_builder(row, weights, size):
    """A builder a test row names: a one-layer backbone, enough to show the table alone decides."""
    import keras

    pixels = keras.Input((size, size, 3), name="pixels")
    return keras.Model(pixels, keras.layers.Conv2D(4, 3, name=f"{row.name}_conv")(pixels), name=row.name)


def test_a_new_backbone_is_one_table_row(monkeypatch):
    """Adding a row is all it takes: build_backbone, the default size, the config check and the
    CLI help all read the same table."""
    from training import backbone_table
    from training.train import TrainConfig

    row = backbone_table.Backbone("tiny-net", "tests.test_backbones:tiny_builder", 40, "none needed")
    monkeypatch.setitem(backbone_table.BACKBONES, row.name, row)
    model = build_backbone("tiny-net", weights="none")
    assert model.input_shape == (None, 40, 40, 3) and model.get_layer("tiny-net_conv").filters == 4
    assert default_input_size("tiny-net") == 40
    TrainConfig(backbone="tiny-net").check()  # no error: the table knows it
    assert "tiny-net (40 px)" in backbone_table.backbone_help()
    with pytest.raises(ValueError, match="tiny-net"):
        backbone_table.backbone("tiny-nett")


def test_cli_help_lists_every_backbone_without_keras():
    """The --backbone help comes from the table, and reading the table loads no TensorFlow."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from training.backbone_table import BACKBONES, backbone_help; "
            "print(backbone_help()); print('keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    from training.backbone_table import BACKBONES

    assert out[1] == "False"
    assert all(f"{name} (" in out[0] for name in BACKBONES)
    sorter = Path(sys.executable).parent / "sorter"
    shown = subprocess.run([str(sorter), "train", "--help"], capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "300"}).stdout
    assert all(f"{row.name} ({row.input_size} px)" in shown for row in BACKBONES.values())
