"""`sorter train` through the real CLI: run folders, labels, NAME2, --config round trip, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sorter.cli import app
from tests.conftest import import_tensorflow

tf = import_tensorflow()

FAST = ["--weights", "none", "--img-size", "32", "--epochs", "1", "--batch-size", "8"]
RUN_FILES = {"config.json", "history.json", "labels.json", "splits.json", "data.json", "model.keras",
             "checkpoint.weights.h5"}


def sorter(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_binary_run_second_run_and_config_round_trip(tmp_path, class_folders):
    import keras

    data = class_folders(tmp_path / "data", ["fresh", "rotten"], per_class=6)
    runs = tmp_path / "runs"
    first = sorter("train", data, *FAST, "--fine-tune-epochs", "1", "--unfreeze", "4", "--seed", "7",
                   "--runs-dir", runs, "--name", "bin", "--baselines")
    assert first.exit_code == 0, first.output
    run = runs / "bin"
    assert {p.name for p in run.iterdir()} == RUN_FILES | {"baselines.json"}
    baselines = _json(run / "baselines.json")
    assert baselines["n_test"] == len(_json(run / "splits.json")["test"]) and baselines["img_size"] == 32
    assert all(0 <= baselines[k]["accuracy"] <= 1 for k in ("logreg", "linear_svm"))
    assert _json(run / "labels.json") == {"labels": ["fresh", "rotten"], "rotten_labels": ["rotten"]}
    history = _json(run / "history.json")
    assert history["phase"] == [1, 2] and len(history["val_loss"]) == 2
    splits = _json(run / "splits.json")
    assert sum(len(splits[s]) for s in ("train", "val", "test")) == 12 and splits["test"]
    assert all(not Path(rel).is_absolute() for rel, _ in splits["test"])
    assert _json(run / "data.json")["counts"]["train"] == {"fresh": 4, "rotten": 4}
    model = keras.models.load_model(run / "model.keras")
    probs = model.predict(np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32"), verbose=0)
    assert probs.shape == (3, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)

    second = sorter("train", data, "--config", run / "config.json", "--fine-tune-epochs", "0",
                    "--binary-sigmoid")
    assert second.exit_code == 0, second.output
    again = _json(runs / "bin2" / "config.json")
    assert again == {**_json(run / "config.json"), "fine_tune_epochs": 0, "binary_sigmoid": True}
    assert _json(runs / "bin2" / "history.json")["phase"] == [1]
    assert _json(runs / "bin2" / "data.json")["fingerprint"] == _json(run / "data.json")["fingerprint"]


@pytest.mark.parametrize("n_classes, source_px", [(10, 32), (13, 20)])
def test_many_classes_imbalance_and_bad_files(tmp_path, class_folders, n_classes, source_px):
    import keras

    names = [f"class{i:02d}" for i in range(n_classes)]
    data = class_folders(tmp_path / "data", names, per_class={n: 12 if n == "class00" else 3 for n in names},
                         size=source_px)
    (data / "class01" / "zero.jpg").write_bytes(b"")
    result = sorter("train", data, *FAST, "--fine-tune-epochs", "0", "--class-weights", "--label-smoothing", "0.1",
                    "--runs-dir", tmp_path / "runs", "--name", "multi")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "multi"
    assert _json(run / "labels.json")["labels"] == names
    assert "imbalanced" in result.output and "zero.jpg" in result.output
    info = _json(run / "data.json")
    assert [Path(p).name for p, _ in info["skipped"]] == ["zero.jpg"]
    assert sum(sum(c.values()) for c in info["counts"].values()) == 12 + 3 * (n_classes - 1)
    assert len(_json(run / "history.json")["loss"]) == 1
    assert _json(run / "config.json")["label_smoothing"] == 0.1
    model = keras.models.load_model(run / "model.keras")  # loads anywhere: no custom loss saved with it
    assert model.output_shape == (None, n_classes)


def test_no_network_ends_with_one_line(tmp_path, class_folders, monkeypatch):
    from keras.src.applications import resnet

    monkeypatch.setattr(resnet, "BASE_WEIGHTS_PATH", "http://127.0.0.1:9/")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    data = class_folders(tmp_path / "data", ["a", "b"], per_class=3)
    result = sorter("train", data, "--img-size", "32", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()  # stdout may carry Keras's "Downloading data from …"
    assert len(lines) == 1 and lines[0].startswith("error:") and "weights" in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("args, words", [
    (["--optimizer", "lbfgs"], "--optimizer must be one of"),
    (["--dropout", "1.5"], "--dropout"),
    (["--backbone", "vgg"], "--backbone must be one of"),
])
def test_bad_options_are_one_line_errors(tmp_path, class_folders, args, words):
    data = class_folders(tmp_path / "data", ["a", "b"], per_class=2)
    result = sorter("train", data, *args, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and words in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_config_and_missing_data(tmp_path, class_folders):
    data = class_folders(tmp_path / "data", ["a", "b"], per_class=2)
    (tmp_path / "c.json").write_text('{"lr": 0.1, "learning_rate": 3}')
    result = sorter("train", data, "--config", tmp_path / "c.json")
    assert result.exit_code == 2 and "unknown configuration key(s): learning_rate" in result.output
    result = sorter("train", tmp_path / "nowhere")
    assert result.exit_code == 2 and "not found" in result.output


def test_cli_defaults_match_train_config():
    import typer

    from training.cli import app as training_app
    from training.train import TrainConfig

    params = {p.name: p.default for p in typer.main.get_command(training_app).commands["train"].params}
    for key, value in TrainConfig().to_dict().items():
        if key == "augment":
            assert params["no_augment"] is (not value)
        else:
            assert params[key] == value, key


def test_ema_finishes_on_the_weight_average_not_a_restored_epoch():
    """With --ema, fit() ends on the optimizer's moving average; early stopping must not put one epoch's
    raw weights back over it (Keras restores after the average is written)."""
    import keras

    from training.train import TrainConfig, _callbacks, make_optimizer

    ema = 0.8
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=make_optimizer("sgd", 0.5, ema), loss="sparse_categorical_crossentropy")
    raw = []
    remember = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: raw.append(model.get_weights()))
    model.fit(x, y, batch_size=8, epochs=4, verbose=0,
              callbacks=[remember, *_callbacks(TrainConfig(patience=10), None, False, averaged=True)])
    final = model.get_weights()
    matches_an_epoch = any(all(np.allclose(a, b) for a, b in zip(final, w, strict=True)) for w in raw)
    average = [np.asarray(v) for v in model.optimizer._model_variables_moving_average]
    assert all(np.allclose(a, b) for a, b in zip(final, average, strict=True)) and not matches_an_epoch


def test_oversample_repeats_one_roots_training_photos_and_names_bad_entries(tmp_path):
    """`--oversample fruit_extra=3`: that root's photos three times per epoch, the other root's once."""
    from training.data import DataSplits, Loaded
    from training.train import TrainConfig, check_oversample, oversampled

    dev, extra = tmp_path / "fruit_dev", tmp_path / "fruit_extra"
    paths = [dev / "a" / "1.png", extra / "a" / "2.png", dev / "b" / "3.png"]
    splits = DataSplits(dev, ["a", "b"], train=[(p, 0) for p in paths], roots=[dev, extra])
    loaded = Loaded(np.arange(3, dtype=np.uint8).reshape(3, 1, 1, 1), np.array([0, 0, 1]), paths, [])
    out = oversampled(loaded, splits, TrainConfig(oversample=["fruit_extra=3"]))
    assert out.images.ravel().tolist() == [0, 1, 1, 1, 2] and out.labels.tolist() == [0, 0, 0, 0, 1]
    assert out.paths == [paths[0], paths[1], paths[1], paths[1], paths[2]]
    assert oversampled(loaded, splits, TrainConfig()) is loaded
    with pytest.raises(ValueError, match=r"--oversample names \['fruit_other'\], not among the data roots"):
        check_oversample(splits, TrainConfig(oversample=["fruit_other=2"]))
    for bad in ("fruit_extra", "fruit_extra=0", "=2", "fruit_extra=x"):
        with pytest.raises(ValueError, match="--oversample takes ROOT=N"):
            TrainConfig(backbone="efficientnet-lite0", oversample=[bad]).check()
