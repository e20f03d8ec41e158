"""training/decide.py (issue 15): the P(rotten) thresholds chosen for a goal, figures of a rule through
the runtime's VerdictRules, the decision table, and the energy `unknown` threshold.

Hand-made P(rotten) lists and probability rows have answers worked out by hand in the comments; the
energy score is checked on the real tiny logits model (tests/data/color-logits-*: logits 0.1 × each
channel's mean) through the real interpreter.
"""

from __future__ import annotations

import numpy as np
import pytest

from sorter.model import Classifier, Prediction, energy
from sorter.verdict import VerdictRules
from tests.conftest import DATA
from training.decide import (
    Goal,
    Thresholds,
    auroc,
    choose_ood_threshold,
    choose_thresholds,
    decision_table,
    flagged,
    judge,
    p_rotten,
    rule_figures,
    single_settings,
)

pytestmark = pytest.mark.timeout(60)
LABELS4 = ["fresh_apple", "fresh_banana", "rotten_apple", "rotten_banana"]
ROT4 = ["rotten_apple", "rotten_banana"]
SIZE = 32

# ---- choose_thresholds ----

# rotten items at P(rotten) 0.9, 0.8, 0.7, 0.45; fresh ones at 0.1, 0.2, 0.3, 0.55
P_ROT = np.array([0.9, 0.8, 0.7, 0.45, 0.1, 0.2, 0.3, 0.55])
IS_ROT = np.array([True, True, True, True, False, False, False, False])


def test_a_strict_goal_holds_the_two_overlapping_photos_at_the_thresholds_nearest_one_half():
    """No rotten passed: fresh_at < 0.45 (0.45 itself would pass it: fresh is <=); no fresh binned:
    rotten_at > 0.55. The fewest uncertain is then 0.45 and 0.55 alone (2 of 8), for fresh_at in
    0.30-0.44 and rotten_at in 0.56-0.70, all without errors; nearest 0.5 is (0.56, 0.44)."""
    got = choose_thresholds(P_ROT, IS_ROT, Goal(rotten_caught=1.0, fresh_kept=1.0))
    assert got == Thresholds(rotten_at=0.56, fresh_at=0.44, met=True, uncertain_rate=0.25,
                             rotten_caught=1.0, fresh_kept=1.0)


def test_a_goal_allowing_one_passed_rotten_decides_everything():
    """One rotten of four may pass, no fresh may be binned: rotten_at >= 0.56 and 0.45 passed. Nothing
    uncertain needs fresh_at >= 0.55 too (0.55 passed as fresh, rightly); every such pair has the one
    error, and the nearest 0.5 is (0.56, 0.55)."""
    got = choose_thresholds(P_ROT, IS_ROT, Goal(rotten_caught=0.75, fresh_kept=1.0))
    assert got == Thresholds(0.56, 0.55, True, 0.0, 0.75, 1.0)


def test_between_equally_few_uncertain_the_fewest_errors_win_before_the_nearest_one_half():
    """One error of each kind allowed: t = 0.5 decides all with two errors (0.45 passed, 0.55
    binned); (0.45, 0.45) decides all with one (0.55 binned; 0.45 is binned, >= rotten_at) and wins
    over (0.56, 0.55), also one error but further from 0.5 (0.11 against 0.10)."""
    got = choose_thresholds(P_ROT, IS_ROT, Goal(rotten_caught=0.75, fresh_kept=0.75))
    assert got == Thresholds(0.45, 0.45, True, 0.0, 1.0, 0.75)


def test_a_goal_no_pair_meets_returns_the_closest_with_met_false():
    """A rotten item at P(rotten) 0 passes as fresh at any fresh_at on the grid (>= 0.01): at most half
    the rotten are caught. The least shortfall (0.5) with nothing uncertain and no fresh binned is any
    rotten_at in 0.21-0.9 with fresh_at from 0.2 up to it; the nearest 0.5 is (0.5, 0.5)."""
    got = choose_thresholds(np.array([0.0, 0.9, 0.1, 0.2]), np.array([True, True, False, False]),
                            Goal(rotten_caught=1.0, fresh_kept=1.0))
    assert got == Thresholds(0.5, 0.5, False, 0.0, 0.5, 1.0)


def test_the_chosen_thresholds_do_what_they_said_under_the_runtimes_rule():
    got = choose_thresholds(P_ROT, IS_ROT, Goal(rotten_caught=1.0, fresh_kept=1.0))
    probs = np.c_[1 - P_ROT, P_ROT]
    labels = ["fresh", "rotten"]
    rules = VerdictRules(frozenset({"rotten"}), rotten_at=got.rotten_at, fresh_at=got.fresh_at)
    judged = judge(probs, labels, rules)
    assert [j.verdict for j in judged] == ["rotten"] * 3 + ["uncertain"] + ["fresh"] * 3 + ["uncertain"]
    fig = rule_figures(IS_ROT.astype(int), labels, ["rotten"], judged)
    assert (fig["uncertain_rate"], fig["rotten_caught"], fig["fresh_kept"]) == (
        got.uncertain_rate, got.rotten_caught, got.fresh_kept)


# ---- judge and rule_figures: the runtime's rule on hand-made rows ----

# (fresh_apple, fresh_banana, rotten_apple, rotten_banana), true class, energy; rules: rotten_at 0.6,
# fresh_at 0.3, unknown below energy 10
ROWS = [
    ((0.7, 0.2, 0.05, 0.05), 0, 20.0),  # p_rot 0.1: fresh, fresh_apple (right)
    ((0.1, 0.6, 0.2, 0.1), 1, 20.0),  # p_rot 0.3 == fresh_at: fresh, fresh_banana (right)
    ((0.4, 0.0, 0.35, 0.25), 2, 20.0),  # p_rot 0.6 == rotten_at: rotten, rotten_apple (right) over top-1 fresh
    ((0.5, 0.1, 0.25, 0.15), 3, 20.0),  # p_rot 0.4: uncertain, top-1 fresh_apple (a rotten_banana: wrong)
    ((0.1, 0.1, 0.3, 0.5), 0, 20.0),  # p_rot 0.8: rotten, rotten_banana (a fresh apple binned)
    ((0.05, 0.05, 0.1, 0.8), 3, 5.0),  # energy 5 < 10: unknown, top-1 rotten_banana (right label)
    ((0.6, 0.3, 0.05, 0.05), 2, 20.0),  # p_rot 0.1: fresh, fresh_apple (a rotten apple passed)
    ((0.05, 0.05, 0.85, 0.05), 3, 10.0),  # energy 10 is not below 10; p_rot 0.9: rotten, rotten_apple
]  # (a rotten banana: the label is wrong, its side right)
PROBS = np.array([r[0] for r in ROWS])
Y = np.array([r[1] for r in ROWS])
OOD = np.array([r[2] for r in ROWS])
RULES = VerdictRules(frozenset(ROT4), rotten_at=0.6, fresh_at=0.3, unknown_below=10.0)


def test_judge_gives_the_runtimes_verdicts_labels_and_confidences():
    judged = judge(PROBS, LABELS4, RULES, OOD)
    assert [(j.verdict, j.label, j.confidence) for j in judged] == [
        ("fresh", "fresh_apple", 0.7), ("fresh", "fresh_banana", 0.6), ("rotten", "rotten_apple", 0.35),
        ("uncertain", "fresh_apple", 0.5), ("rotten", "rotten_banana", 0.5), ("unknown", "rotten_banana", 0.8),
        ("fresh", "fresh_apple", 0.6), ("rotten", "rotten_apple", 0.85)]
    assert judge(PROBS, LABELS4, RULES)[5].verdict == "rotten"  # without energies there is no unknown


def test_rule_figures_by_hand():
    fig = rule_figures(Y, LABELS4, ROT4, judge(PROBS, LABELS4, RULES, OOD))
    assert fig == {
        "n": 8,
        "accuracy": 0.5,  # rows 0, 1, 2, 5 carry the true label
        "fresh_vs_rotten_accuracy": 0.625,  # and row 7's label is on the right side
        "uncertain_rate": 0.125, "unknown_rate": 0.125, "decided_rate": 0.75,
        "decided_accuracy": 0.5,  # decided: rows 0, 1, 2, 4, 6, 7; right: 0, 1, 2
        "decided_fresh_vs_rotten_accuracy": 0.666667,  # and 7
        "rotten_caught": 0.8,  # rotten rows 2, 3, 5, 6, 7: only 6 passed as fresh
        "rotten_binned": 0.4,  # 2 and 7
        "fresh_kept": 0.666667,  # fresh rows 0, 1, 4: 4 binned
        "per_class": {"fresh_apple": {"recall": 0.5, "support": 2}, "fresh_banana": {"recall": 1.0, "support": 1},
                      "rotten_apple": {"recall": 0.5, "support": 2},
                      "rotten_banana": {"recall": 0.333333, "support": 3}},
    }


def test_a_class_without_photos_has_no_recall_and_no_fresh_photos_no_fresh_kept():
    rows = np.array([[0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.1, 0.7]])
    fig = rule_figures(np.array([2, 3]), LABELS4, ROT4, judge(rows, LABELS4, RULES))
    assert fig["per_class"]["fresh_apple"] == {"recall": None, "support": 0}
    assert fig["fresh_kept"] is None and fig["rotten_caught"] == 1.0 and fig["accuracy"] == 1.0


def test_p_rotten_sums_the_rotten_columns():
    np.testing.assert_allclose(p_rotten(PROBS, LABELS4, ROT4), [0.1, 0.3, 0.6, 0.4, 0.8, 0.9, 0.1, 0.9], atol=1e-12)


def test_judge_rounds_as_the_runtimes_predictions_do():
    """On the line a Prediction carries the unrounded top-1 confidence and the energy rounded to 6
    digits (sorter.model.Classifier.predict); judge must decide on the same numbers."""
    labels = ["freshred", "freshgreen", "rottenblue"]
    top1 = VerdictRules(frozenset({"rottenblue"}))  # the top-1 rule: uncertain under 0.5
    row = np.array([[0.4999996, 0.4999994, 0.000001]])
    assert top1.decide(Prediction("freshred", 0.4999996, {"freshred": 0.5, "freshgreen": 0.499999,
                                                          "rottenblue": 1e-06})).verdict == "uncertain"
    assert judge(row, labels, top1)[0].verdict == "uncertain"
    rules = VerdictRules(frozenset({"rottenblue"}), rotten_at=0.6, fresh_at=0.3, unknown_below=18.0)
    assert judge(np.array([[0.1, 0.1, 0.8]]), labels, rules, np.array([17.9999996]))[0].verdict == "rotten"  # 18.0
    assert judge(np.array([[0.1, 0.1, 0.8]]), labels, rules, np.array([17.999999]))[0].verdict == "unknown"


# ---- the decision table ----

def test_single_settings_name_one_threshold_for_both_sides():
    assert single_settings() == [(f"t={t}", t, t) for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    assert single_settings([0.25]) == [("t=0.25", 0.25, 0.25)]


def test_decision_table_rows_by_hand():
    """The ROWS above (P(rotten) 0.1, 0.3, 0.6, 0.4, 0.8, 0.9, 0.1, 0.9) with one threshold and no
    unknown: rotten at P(rotten) >= t (checked first, so 0.3 is rotten at t = 0.3), else fresh.
    t=0.3: rows 1-5 and 7 rotten, labels fa fb→ra ra ra rb rb fa ra; right 0 2 5;
      sides right 0 2 3 5 7; rotten rows 2 3 5 6 7 caught but 6; fresh rows 0 1 4 kept: 0.
    t=0.5: rotten 2 4 5 7; labels fa fb ra fa rb rb fa ra; right 0 1 2 5; sides right 0 1 2 5 7;
      caught 2 5 7; kept 0 1.
    t=0.7: rotten 4 5 7; labels fa fb fa fa rb rb fa ra; right 0 1 5; sides right 0 1 5 7; caught 5 7."""
    rows = decision_table(Y, PROBS, LABELS4, ROT4, single_settings((0.3, 0.5, 0.7)))
    keys = ("setting", "rotten_at", "fresh_at", "uncertain_rate", "rotten_caught", "rotten_binned", "fresh_kept",
            "accuracy", "fresh_vs_rotten_accuracy", "decided_accuracy")
    expected = [
        ("t=0.3", 0.3, 0.3, 0.0, 0.8, 0.8, 0.333333, 0.375, 0.625, 0.375),
        ("t=0.5", 0.5, 0.5, 0.0, 0.6, 0.6, 0.666667, 0.5, 0.625, 0.5),
        ("t=0.7", 0.7, 0.7, 0.0, 0.4, 0.4, 0.666667, 0.375, 0.5, 0.375),
    ]
    assert rows == [dict(zip(keys, values, strict=True)) for values in expected]


def test_a_decision_table_row_with_an_uncertain_band():
    (row,) = decision_table(Y, PROBS, LABELS4, ROT4, [("card", 0.6, 0.3)])
    # RULES without unknown: row 5 (p_rot 0.9) is now rotten and right; only row 3 (0.4) is uncertain
    assert row == {"setting": "card", "rotten_at": 0.6, "fresh_at": 0.3, "uncertain_rate": 0.125,
                   "rotten_caught": 0.8, "rotten_binned": 0.6, "fresh_kept": 0.666667, "accuracy": 0.5,
                   "fresh_vs_rotten_accuracy": 0.625, "decided_accuracy": round(4 / 7, 6)}


# ---- the unknown threshold ----

def test_the_ood_threshold_keeps_the_stated_share_above_it():
    scores = np.random.default_rng(2).permutation(np.arange(20) * 1.5 + 3.0)  # 3.0, 4.5, ... 31.5
    cut = choose_ood_threshold(scores, 0.95)
    assert cut == 4.5 and int(np.sum(scores >= cut)) == 19
    assert flagged(scores, cut) == 0.05
    assert choose_ood_threshold(scores, 1.0) == 3.0 and flagged(scores, 3.0) == 0.0
    assert choose_ood_threshold(scores, 0.5) == 18.0 and flagged(scores, 18.0) == 0.5  # 10 of 20 pass
    ten = np.arange(10.0)
    assert flagged(ten, choose_ood_threshold(ten, 0.9)) == 0.1  # 1 - 0.9 is 0.0999...: still one flagged


def test_a_score_at_the_rounded_threshold_passes_as_on_the_line():
    """The threshold is rounded to 6 digits and so is every energy the runtime compares with it."""
    scores = np.array([1.0000006, 2.0])
    cut = choose_ood_threshold(scores, 1.0)
    assert cut == 1.000001
    assert flagged(scores, cut) == 0.0  # pass rate 1: nothing is unknown


@pytest.mark.parametrize("pass_rate", [0.0, -0.1, 1.5])
def test_a_pass_rate_outside_zero_to_one_is_an_error(pass_rate):
    with pytest.raises(ValueError, match="pass rate must be in"):
        choose_ood_threshold(np.arange(5.0), pass_rate)


def test_no_in_distribution_scores_is_an_error_and_empty_sets_have_no_figures():
    with pytest.raises(ValueError, match="no in-distribution photos"):
        choose_ood_threshold(np.array([]), 0.95)
    assert auroc(np.array([]), np.array([1.0])) is None and auroc(np.array([1.0]), np.array([])) is None
    assert flagged(np.array([]), 1.0) is None


def test_auroc_by_hand():
    # pairs (in, out): 3>1, 3<3.5, 4>1, 4>3.5: three of four ranked right
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 3.5])) == 0.75
    assert auroc(np.array([5.0, 6.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0, 2.0]), np.array([5.0, 6.0])) == 0.0


def _solid(rgb: np.ndarray) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.uint8)[:, None, None, :], (len(rgb), SIZE, SIZE, 3)).copy()


def in_and_out_photos(seed: int = 15) -> dict[str, np.ndarray]:
    """Saturated colours (one channel 200-255, the others 0-40: the produce the model knows) and three
    kinds it does not: grey (all channels equal, 96-160), uniform noise, a black-and-white checkerboard."""
    rng = np.random.default_rng(seed)
    k = 40
    rgb = rng.uniform(0, 40, (k, 3))
    rgb[np.arange(k), rng.integers(0, 3, k)] = rng.uniform(200, 255, k)
    squares = (np.indices((SIZE, SIZE)).sum(0) // 4 % 2 * 255).astype(np.uint8)
    return {"in": _solid(rgb),
            "grey": _solid(np.repeat(np.linspace(96, 160, 10)[:, None], 3, 1)),
            "noise": rng.integers(0, 256, (10, SIZE, SIZE, 3), dtype=np.uint8),
            "checker": np.repeat(np.repeat(squares[None, ..., None], 3, 3), 10, 0),
            "white": np.full((1, SIZE, SIZE, 3), 255, np.uint8)}


@pytest.fixture(scope="module", params=["float32", "int8"])
def energies(request) -> dict[str, np.ndarray]:
    clf = Classifier(DATA / f"color-logits-{request.param}.tflite", num_threads=1)
    out = {}
    for name, images in in_and_out_photos().items():
        logits = clf.outputs(images)
        out[name] = clf.ood_scores(logits)
        np.testing.assert_allclose(out[name], energy(logits), atol=1e-12)
    return out


def test_energy_ranks_known_colours_above_grey_noise_and_checkerboards(energies):
    """Saturated colours score 20-25.5 (logsumexp of 0.1 × the channel means), grey 10.7-17.1, noise and
    the checkerboard about 13.9 (every channel near 127.5)."""
    e_in = energies["in"]
    assert e_in.min() > 19.9 and e_in.max() < 25.6
    for kind in ("grey", "noise", "checker"):
        assert energies[kind].max() < 17.2
        assert auroc(e_in, energies[kind]) == 1.0
    # what the channel-mean model cannot tell: a white photo scores above every colour (its three
    # logits are all 25.5), so energy would call it the most familiar photo of all
    assert auroc(e_in, energies["white"]) == 0.0


def test_the_threshold_chosen_on_known_colours_passes_95_percent_and_flags_every_unfamiliar_photo(energies):
    e_in = energies["in"]
    cut = choose_ood_threshold(e_in, 0.95)
    assert sum(round(float(e), 6) >= cut for e in e_in) == 38  # 95% of 40, compared as the runtime stores them
    assert flagged(e_in, cut) == 0.05
    assert cut == round(float(np.sort(e_in)[2]), 6)
    for kind in ("grey", "noise", "checker"):
        assert flagged(energies[kind], cut) == 1.0
    assert flagged(energies["white"], cut) == 0.0
