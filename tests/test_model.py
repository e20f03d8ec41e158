"""The runtime model: a real TFLite interpreter on real (tiny) bundles, checked against their cards."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sorter.card import card_path, load_card
from sorter.model import Classifier, ModelError, default_threads, warm_up_all
from tests.conftest import COLOR_FLOAT, COLOR_INT8


def _solid(rgb, n=1, size=32):
    img = np.zeros((n, size, size, 3), np.uint8)
    img[:] = rgb
    return img


@pytest.mark.parametrize("path", [COLOR_INT8, COLOR_FLOAT])
def test_predictions_follow_the_dominant_colour(path):
    clf = Classifier(path)
    preds = clf.predict(np.concatenate([_solid((250, 0, 0)), _solid((0, 250, 0)), _solid((0, 0, 250))]))
    assert [p.label for p in preds] == ["freshred", "freshgreen", "rottenblue"]
    assert all(p.confidence > 0.98 for p in preds)
    assert set(preds[0].scores) == {"freshred", "freshgreen", "rottenblue"}
    tie = clf.predict(_solid((128, 128, 128)))[0]
    assert abs(tie.confidence - 1 / 3) < 0.01


def test_batches_give_the_same_scores_as_single_images():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    batched = Classifier(COLOR_FLOAT, max_batch=4).scores(images)
    single = np.concatenate([Classifier(COLOR_FLOAT, max_batch=1).scores(img) for img in images])
    np.testing.assert_allclose(batched, single, atol=1e-6)
    assert batched.shape == (11, 3)


def test_threads_default_to_the_core_count():
    assert Classifier(COLOR_INT8).num_threads == default_threads() >= 1
    assert Classifier(COLOR_INT8, num_threads=1).num_threads == 1


def _copy_bundle(tmp_path, src=COLOR_INT8):
    tmp_path.mkdir(parents=True, exist_ok=True)
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    shutil.copy(card_path(src), card_path(dst))
    return dst


@pytest.mark.parametrize(("field", "value", "message"), [
    ("labels", ["a", "b"], "2 labels"),
    ("input", {"height": 64, "width": 64, "channels": 3, "dtype": "uint8"}, "input shape"),
    ("input", {"height": 32, "width": 32, "channels": 3, "dtype": "float32"}, "input dtype"),
    ("model_sha256", "0" * 64, "hash"),
])
def test_card_that_disagrees_with_the_tensors_is_refused(tmp_path, field, value, message):
    model = _copy_bundle(tmp_path)
    card = json.loads(card_path(model).read_text())
    card[field] = value
    card_path(model).write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message) as info:
        Classifier(model)
    assert "\n" not in str(info.value)


def test_missing_model_card_and_garbage_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Classifier(tmp_path / "nope.tflite")
    model = _copy_bundle(tmp_path)
    card_path(model).unlink()
    with pytest.raises(ModelError, match="card"):
        Classifier(model)
    garbage = _copy_bundle(tmp_path / "g")
    garbage.write_bytes(b"definitely not a flatbuffer" * 10)
    card = load_card(garbage).model_copy(update={"model_sha256": None})
    card_path(garbage).write_text(card.model_dump_json())
    with pytest.raises(ModelError, match="not a loadable"):
        Classifier(garbage)


@pytest.mark.parametrize(("interpreters", "threads", "cores", "expected"), [
    (None, None, 4, (4, 1)),   # default: whole batches side by side, one per core
    (None, 2, 4, (2, 2)),      # threads given: as many interpreters as fit
    (2, None, 4, (2, 2)),      # interpreters given: the cores shared among them
    (1, None, 2, (1, 2)),      # the old layout, one interpreter on every core
    (None, 8, 2, (1, 8)),      # more threads than cores: still one interpreter
])
def test_inference_layout_fills_the_cores(interpreters, threads, cores, expected):
    from sorter.model import inference_layout

    assert inference_layout(interpreters, threads, cores) == expected


def test_a_replica_is_a_second_interpreter_with_the_same_answers():
    clf = Classifier(COLOR_INT8, num_threads=1, max_batch=4)
    twin = clf.replica()
    assert twin._interp is not clf._interp and twin._lock is not clf._lock
    assert (twin.sha256, twin.labels, twin.num_threads) == (clf.sha256, clf.labels, 1)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(twin.scores(images[:2]), clf.scores(images[:2]))
    np.testing.assert_array_equal(twin.scores(images), clf.scores(images))


def test_a_model_that_refuses_batches_is_scored_one_image_at_a_time(monkeypatch):
    """Some converted models have a fixed batch of 1: the first batch falls back, same scores."""
    clf = Classifier(COLOR_FLOAT, max_batch=4)
    images = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    expected = Classifier(COLOR_FLOAT, max_batch=1).scores(images)
    real = clf._interp.resize_tensor_input
    refused: list[int] = []

    def fixed_batch(index, shape, strict=False):
        if shape[0] != 1:
            refused.append(int(shape[0]))
            raise ValueError("this model's batch dimension is fixed")
        return real(index, shape, strict=strict)

    monkeypatch.setattr(clf._interp, "resize_tensor_input", fixed_batch)
    np.testing.assert_allclose(clf.scores(images), expected, atol=1e-6)
    assert not clf.batch_capable
    np.testing.assert_allclose(clf.scores(images[:3]), expected[:3], atol=1e-6)
    assert refused == [4]  # asked once: later batches go one by one without trying the refused size again


@pytest.mark.parametrize(("batch", "allocated"), [(2, 2), (3, 3), (16, 4)])
def test_warm_up_allocates_the_batch_and_leaves_the_answers_alone(batch, allocated):
    """The daemons warm each interpreter before 'ready': tensors sized for a full batch (at most
    max_batch), and the first real batch scored exactly as by an interpreter that was never warmed."""
    clf = Classifier(COLOR_INT8, num_threads=1, max_batch=4)
    clf.warm_up(batch)
    assert clf._inp["shape"][0] == allocated
    images = np.random.default_rng(4).integers(0, 256, (allocated, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(clf.scores(images), Classifier(COLOR_INT8, num_threads=1, max_batch=4).scores(images))


def test_warm_up_all_warms_each_interpreter_and_only_logs_a_failure(monkeypatch, caplog):
    """A daemon must still start (and record each item's failure) when one interpreter cannot run."""
    good = Classifier(COLOR_INT8, num_threads=1, max_batch=4)
    bad = good.replica()

    def broken() -> None:
        raise RuntimeError("delegate refused the graph")

    monkeypatch.setattr(bad._interp, "invoke", broken)
    warm_up_all([good, bad], 4)
    assert good._inp["shape"][0] == 4
    assert [r.getMessage() for r in caplog.records if r.name == "sorter.model"] == [
        "interpreter 1: warm-up failed (delegate refused the graph); the first items will show why"]


_OVERWRITE = """
import os, sys
import numpy as np
from sorter.model import Classifier
path, mode = sys.argv[1], sys.argv[2]
clf = Classifier(path, num_threads=1, max_batch=4)
twin = clf.replica()
images = np.random.default_rng(5).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
before = clf.scores(images[:1])
size = os.path.getsize(path)
with open(path, "r+b") as fh:  # in place, as `cp new.tflite model.tflite` or a bad disk does
    if mode == "truncate":
        fh.truncate(0)
    else:
        fh.write(np.random.default_rng(6).integers(0, 256, size, dtype=np.uint8).tobytes())
after = [c.scores(images)[0] for c in (clf, twin)] + [clf.scores(images[:1])[0]]
print(all(np.array_equal(a, before[0]) for a in after), clf.sha256 == twin.sha256)
"""


@pytest.mark.parametrize("mode", ["truncate", "random"])
def test_a_loaded_model_survives_its_file_being_overwritten_in_place(tmp_path, mode):
    """Item 9: the interpreter used to map the file: truncated in place, the next batch died of
    SIGBUS; other bytes of the same size gave verdicts from a corrupted model."""
    import subprocess
    import sys

    from tests.conftest import REPO

    model = _copy_bundle(tmp_path)
    out = subprocess.run([sys.executable, "-c", _OVERWRITE, str(model), mode], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-500:]}"
    assert out.stdout.split() == ["True", "True"]


def test_the_hash_is_of_the_bytes_that_were_loaded(tmp_path):
    import hashlib

    model = _copy_bundle(tmp_path)
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    clf = Classifier(model)
    model.write_bytes(b"replaced after loading")
    assert clf.sha256 == clf.replica().sha256 == expected


def _fixed_batch_distance_bundle(path):
    """Allocates only at batch 1; a distance card's two outputs: logits 0.1 × each channel mean, and a
    one-column score −0.01 × their sum."""
    from tests.conftest import write_distance_bundle

    return write_distance_bundle(path, 32, lambda tf, means: -0.01 * tf.reduce_sum(means, axis=1, keepdims=True),
                                 "fixed")


def test_a_model_that_cannot_allocate_a_batch_scores_every_later_batch_one_by_one(tmp_path):
    """Resizing such a model's input succeeds and allocating it fails: the input was left at the
    refused batch size, so every batch after the first (here the second chunk of one call) died
    with 'Dimension mismatch'. Both outputs, one image at a time, as a batch-1 interpreter gives them."""
    clf = Classifier(_fixed_batch_distance_bundle(tmp_path / "fixed.tflite"), num_threads=1, max_batch=4)
    images = np.random.default_rng(7).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    means = images.reshape(6, -1, 3).mean(axis=1)
    want = np.concatenate([means * 0.1, -0.01 * means.sum(axis=1, keepdims=True)], axis=1)
    np.testing.assert_allclose(clf.outputs(images), want, rtol=1e-5)
    assert not clf.batch_capable
    np.testing.assert_allclose(clf.outputs(images[:3]), want[:3], rtol=1e-5)
    np.testing.assert_allclose(clf.ood_scores(clf.outputs(images)), want[:, 3], rtol=1e-5)
    assert [p.ood_score for p in clf.predict(images[:2])] == [round(float(s), 6) for s in clf.ood_scores(
        clf.outputs(images[:2]))]
