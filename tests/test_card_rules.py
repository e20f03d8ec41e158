"""training.card_rules.choose on the real tiny logits model (tests/data/color-logits-float32): the rule
is chosen on validation photos alone, whatever test sets there are to report on."""

from __future__ import annotations

import numpy as np

from sorter.model import Classifier
from tests.conftest import DATA
from training import calibrate, card_rules, decide

ROTTEN = ["rottenblue"]


def _colour_photos(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten photos per class: one channel strong (the class), the others weaker, at random levels."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], 10)
    images = np.zeros((len(y), 32, 32, 3), np.uint8)
    for i, k in enumerate(y):
        images[i] = rng.integers(0, 60, 3)
        images[i, ..., k] = rng.integers(160, 256)
    return images, y


def _grey_photos():
    from training.ood_photos import PhotoSet

    grey = np.full((4, 32, 32, 3), 128, np.uint8)  # energy ≈ 13.9, below every saturated colour's
    return PhotoSet("grey", "uniform grey", grey, [f"grey-{i}" for i in range(4)])


def test_a_run_without_test_photos_still_gets_its_rule_from_validation():
    """`train --test-split 0` makes a run with no test photos (export then scores on validation):
    the unknown figures' AUROC against the test sets has nothing to compare with, and that crashed the
    export ('need at least one array to concatenate') after its bundle was written."""
    clf = Classifier(DATA / "color-logits-float32.tflite", num_threads=1)
    images, y = _colour_photos(3)
    val = card_rules.Photos("validation (colours)", "colours", images, y)
    grey = _grey_photos()
    got = card_rules.choose(clf, clf.labels, ROTTEN, card_rules.FieldSets(val, [], [grey]), decide.Goal(0.9, 0.9), 0.9)
    raw = clf.outputs(images)
    assert got.temperature == calibrate.fit_temperature(clf.logits(raw), y)
    assert got.ood.threshold == decide.choose_ood_threshold(clf.ood_scores(raw), 0.9)
    assert got.evaluation["test_sets"] == {} and "in_distribution" not in got.evaluation
    assert got.evaluation["validation"]["n"] == 30
    non_produce = got.ood.figures["non_produce"]["grey"]
    assert non_produce["n"] == 4 and non_produce["auroc"] is None and non_produce["flagged"] == 1.0
