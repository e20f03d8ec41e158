"""`sorter retrain --keep-base`: the base photos' targets keep part of the model's own answers before
training (Learning without Forgetting), so a quick fine-tune on a new line moves the base answers less."""

from __future__ import annotations

import numpy as np

from tests.conftest import import_tensorflow, shape_image
from tests.retrain_helpers import CLASSES, SIZE, line_image, tiny_classifier
from training import finetune

import_tensorflow()


def test_targets_mix_the_models_answer_into_known_photos_only():
    before = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], np.float32)
    got = finetune.targets(np.array([0, 1]), np.array([True, False]), before, keep=0.5)
    np.testing.assert_allclose(got, [[0.75, 0.15, 0.10], [0.0, 1.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(finetune.targets(np.array([2]), np.array([True]), before[:1], keep=0.0),
                               [[0, 0, 1]])
    np.testing.assert_allclose(finetune.targets(np.array([2]), None, before[:1], keep=0.9), [[0, 0, 1]])


def _run(keep: float) -> tuple[np.ndarray, np.ndarray]:
    """The same start, the same photos: base answers before and after a quick fine-tune with `keep`."""
    import keras

    keras.utils.set_random_seed(3)
    model = tiny_classifier()
    n = len(CLASSES)
    base = np.stack([shape_image(i % n, 100 + i, SIZE) for i in range(8 * n)])
    field = np.stack([line_image(i % n, 500 + i) for i in range(8 * n)])
    images = np.concatenate([base, field]).astype(np.uint8)
    labels = np.array([i % n for i in range(8 * n)] * 2)
    known = np.arange(len(labels)) < len(base)
    before = np.asarray(model(base.astype(np.float32)))
    data = finetune.Weighted(images, labels, np.ones(len(labels), np.float32), known=known)
    finetune.quick(model, data, epochs=15, lr=3e-3, layers_above=2, seed=3, keep=keep)
    return before, np.asarray(model(base.astype(np.float32)))


def test_keeping_the_models_answers_moves_the_base_answers_less():
    before, plain = _run(0.0)
    before_kept, kept = _run(0.9)
    np.testing.assert_allclose(before, before_kept, atol=1e-6)  # the same start
    moved_plain = np.abs(plain - before).sum(axis=1).mean()
    moved_kept = np.abs(kept - before).sum(axis=1).mean()
    assert moved_kept < 0.5 * moved_plain, (moved_kept, moved_plain)
