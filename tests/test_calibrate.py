"""training/calibrate.py (issue 15): temperature scaling, NLL, ECE, reliability bins and diagram.

The temperature is fitted on raw logits from a real tiny model through the real interpreter
(tests/data/color-logits-*: logits are 0.1 × each channel's mean), on coloured photos whose true
class is the channel that was raised, so the model is right about 60% of the time while its logits
differ by several units: over-confident, which one temperature above 1 fixes on other photos.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sorter.model import Classifier
from sorter.model import softmax as runtime_softmax
from tests.conftest import DATA
from training.calibrate import (
    T_BOUNDS,
    calibrate,
    ece,
    effect,
    fit_temperature,
    nll,
    plot_reliability,
    reliability_bins,
    softmax,
)

pytestmark = pytest.mark.timeout(60)
LOGITS_MODELS = [DATA / "color-logits-float32.tflite", DATA / "color-logits-int8.tflite"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def noisy_colour_photos(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, true class): every channel's mean drawn from 40..170, the true class's channel
    raised by 0..80 more, plus pixel noise; the model's top channel is often another one."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    means = rng.uniform(40, 170, (n, 3))
    means[np.arange(n), y] += rng.uniform(0, 80, n)
    images = means[:, None, None, :] + rng.normal(0, 20, (n, 32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8), y


@pytest.fixture(scope="module", params=LOGITS_MODELS, ids=["float32", "int8"])
def tiny_logits(request) -> tuple[np.ndarray, np.ndarray]:
    clf = Classifier(request.param, num_threads=1)
    images, y = noisy_colour_photos(400, seed=15)
    return clf.outputs(images).astype(np.float64), y


# ---- temperature scaling on the real tiny model ----

def test_a_temperature_fitted_on_half_lowers_nll_and_ece_on_the_other_half(tiny_logits):
    z, y = tiny_logits
    fit, held = slice(0, 200), slice(200, None)
    accuracy = float(np.mean(z.argmax(1) == y))
    assert 0.5 < accuracy < 0.75  # the model is wrong often enough for its confidence to matter
    t = fit_temperature(z[fit], y[fit])
    assert t > 2.0  # over-confident logits: softened, not sharpened (T = 1 would be no calibration)
    assert nll(z[held], y[held], t) < nll(z[held], y[held], 1.0) - 0.5
    assert ece(softmax(z[held], t), y[held]) < ece(softmax(z[held]), y[held]) - 0.1
    # it is the minimum of the NLL where it was fitted, and no top-1 answer changes
    assert nll(z[fit], y[fit], t) <= min(nll(z[fit], y[fit], t * 1.01), nll(z[fit], y[fit], t / 1.01))
    np.testing.assert_array_equal(softmax(z, t).argmax(1), z.argmax(1))


def test_calibrate_reports_the_effect_on_the_fitted_set_and_on_every_other_set(tiny_logits):
    z, y = tiny_logits
    cal = calibrate(z[:200], y[:200], "val", {"test": (z[200:], y[200:])})
    assert cal.temperature == fit_temperature(z[:200], y[:200])
    assert cal.fitted_on == "val" and set(cal.figures) == {"val", "test"}
    test = cal.figures["test"]
    assert test == effect(z[200:], y[200:], cal.temperature)
    assert test["n"] == 200
    assert test["nll_before"] == round(nll(z[200:], y[200:]), 6)
    assert test["nll_after"] < test["nll_before"] and test["ece_after"] < test["ece_before"]
    assert cal.to_dict() == {"temperature": cal.temperature, "fitted_on": "val", "figures": cal.figures}


def test_logits_three_times_too_sharp_fit_a_temperature_of_three():
    """y is drawn from softmax(z), so z is calibrated and 3z needs T = 3. Over 100 seeds at 5000
    photos the fitted T had sd 0.064 (mean 2.995); at 20000 photos the sd is about 0.032, so a
    tolerance of 0.15 is over four of them, while T = 2.5 or 3.5 would still fail."""
    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 2.0, (20000, 4))
    cdf = softmax(z).cumsum(axis=1)
    y = np.minimum((cdf < rng.random(len(z))[:, None]).sum(axis=1), 3)
    assert fit_temperature(3 * z, y) == pytest.approx(3.0, abs=0.15)
    assert fit_temperature(z, y) == pytest.approx(1.0, abs=0.05)


def test_the_temperature_scales_with_the_logits_and_stays_inside_its_bounds():
    rng = np.random.default_rng(4)
    z = rng.normal(0.0, 2.0, (2000, 3))
    y = (softmax(z).cumsum(axis=1) < rng.random(len(z))[:, None]).sum(axis=1).clip(max=2)
    # logits nine times smaller need a temperature nine times smaller (to the search's 1e-4 on log T)
    assert fit_temperature(z / 3, y) == pytest.approx(fit_temperature(3 * z, y) / 9, abs=2e-4)
    right = np.array([[1.0, 0.0], [0.0, 1.0]])  # always right: sharper is always better
    wrong = np.array([[0.0, 10.0], [10.0, 0.0]])  # always wrong: flatter is always better
    assert fit_temperature(right, np.array([0, 1])) == T_BOUNDS[0]
    assert fit_temperature(wrong, np.array([0, 1])) == pytest.approx(T_BOUNDS[1], abs=1e-2)


def test_fitting_on_no_photos_is_an_error():
    with pytest.raises(ValueError, match="no validation photos"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))


# ---- the measures, by hand ----

def test_nll_by_hand():
    z = np.array([[0.0, 0.0], [math.log(3), 0.0]])  # P(class 0) = 1/2 and 3/4
    y = np.array([0, 0])
    assert nll(z, y) == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, abs=1e-12)
    # at T = 2 the second row is sqrt(3) : 1, so P(class 0) = 1 / (1 + 1/sqrt(3))
    assert nll(z, y, 2.0) == pytest.approx((math.log(2) + math.log(1 + 3 ** -0.5)) / 2, abs=1e-12)
    assert nll(z, np.array([1, 1])) == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-12)
    assert nll(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 0.0


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 5.0])
def test_softmax_with_a_temperature_is_the_runtimes(temperature):
    z = np.random.default_rng(1).normal(0, 6, (50, 5))
    ours = softmax(z, temperature)
    np.testing.assert_allclose(ours, runtime_softmax(z, temperature), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-12)
    assert softmax(np.array([[1000.0, 0.0]]))[0, 0] == 1.0  # no overflow


# conf: 0.9 right, 0.5 wrong (a tie: argmax is class 0), 0.7 right, 0.65 wrong, 0.95 right, 0.55 wrong
HAND_PROBS = np.array([[0.9, 0.1], [0.5, 0.5], [0.3, 0.7], [0.35, 0.65], [0.95, 0.05], [0.55, 0.45]])
HAND_Y = np.array([0, 1, 1, 0, 0, 1])


def test_reliability_bins_are_closed_on_the_right():
    """A confidence of exactly 0.5 is in the bin 0.4-0.5, 0.7 in 0.6-0.7 and 0.9 in 0.8-0.9."""
    bins = reliability_bins(HAND_PROBS, HAND_Y)
    assert [(b["lo"], b["hi"]) for b in bins] == [(round(0.1 * i, 1), round(0.1 * (i + 1), 1)) for i in range(10)]
    assert [b["n"] for b in bins] == [0, 0, 0, 0, 1, 1, 2, 0, 1, 1]
    used = {b["lo"]: (b["confidence"], b["accuracy"]) for b in bins if b["n"]}
    assert used == {0.4: (0.5, 0.0), 0.5: (0.55, 0.0), 0.6: (0.675, 0.5), 0.8: (0.9, 1.0), 0.9: (0.95, 1.0)}
    assert all(b["confidence"] is None and b["accuracy"] is None for b in bins if not b["n"])
    sure = reliability_bins(np.array([[1.0, 0.0], [0.5000001, 0.4999999]]), np.array([0, 0]))
    assert sure[9]["n"] == 1 and sure[5]["n"] == 1  # 1.0 in the last bin; just over 0.5 in 0.5-0.6
    assert [b["n"] for b in reliability_bins(HAND_PROBS, HAND_Y, n_bins=2)] == [1, 5]  # 0.5 in 0-0.5


def test_ece_by_hand():
    # |0.5 - 0| + |0.55 - 0| + 2 × |0.675 - 0.5| + |0.9 - 1| + |0.95 - 1|, over 6 photos
    assert ece(HAND_PROBS, HAND_Y) == round(1.55 / 6, 6) == 0.258333
    # two bins: 0.5 alone (gap 0.5); the other five at mean conf 0.75 and accuracy 3/5 (gap 0.15)
    assert ece(HAND_PROBS, HAND_Y, n_bins=2) == round((0.5 + 5 * 0.15) / 6, 6)
    assert ece(np.array([[0.8, 0.2]] * 5), np.array([0, 0, 0, 0, 1])) == 0.0  # right four times in five
    assert ece(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 0.0


def test_plot_reliability_writes_a_png_that_shows_each_curve(tmp_path):
    before = reliability_bins(HAND_PROBS, HAND_Y)
    after = reliability_bins(softmax(np.log(HAND_PROBS), 2.0), HAND_Y)
    one = plot_reliability({"before": before}, tmp_path / "one.png")
    two = plot_reliability({"before": before, "after": after}, tmp_path / "two.png", title="T = 2")
    assert one == tmp_path / "one.png"
    assert one.read_bytes()[:8] == PNG_SIGNATURE and two.read_bytes()[:8] == PNG_SIGNATURE
    assert one.read_bytes() != two.read_bytes()
    again = plot_reliability({"before": before}, tmp_path / "again.png")
    assert again.read_bytes() == one.read_bytes()  # the same curves draw the same picture: the curve made the change
