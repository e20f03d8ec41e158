"""Export on two data roots: the card's temperature, P(rotten) thresholds and unknown threshold come from
the export's own validation logits, and its figures per test set are what the runtime does with them."""

from __future__ import annotations

import numpy as np
import pytest

from sorter.card import load_card
from sorter.classify import rules_for
from sorter.model import Classifier
from tests.conftest import write_class_folders
from training import calibrate, decide

pytest.importorskip("tensorflow")
CLASSES = ["freshapple", "freshbanana", "rottenapple"]
ROTTEN = ["rottenapple"]
SIZE = 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small CNN trained on root `dev`, exported int8 with `dev` and `extra` (both train/val/test)."""
    import json

    import keras

    from training.data import discover_many, load_split, save_splits
    from training.export import export

    base = tmp_path_factory.mktemp("roots")
    roots = [base / "dev", base / "extra"]
    for k, root in enumerate(roots):
        for j, split in enumerate(("train", "val", "test")):
            write_class_folders(root, CLASSES, {"train": 30, "val": 12, "test": 10}[split], SIZE, split, 10 * k + j)
    splits = discover_many(roots)
    train = load_split(splits.train, SIZE)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(keras.layers.Conv2D(8, 3, activation="relu")(x))
    model = keras.Model(inp, keras.layers.Dense(len(CLASSES), activation="softmax", name="probabilities")(x))
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.Adam(0.03), "sparse_categorical_crossentropy")
    model.fit(train.images.astype(np.float32), train.labels, batch_size=30, epochs=20, verbose=0)
    run = base / "run"
    run.mkdir()
    model.save(run / "model.keras")
    (run / "labels.json").write_text(json.dumps({"labels": CLASSES, "rotten_labels": ROTTEN}))
    (run / "config.json").write_text(json.dumps({"backbone": "tiny-cnn", "data": [str(r) for r in roots]}))
    save_splits(splits, run / "splits.json")
    results = export(run, None, ["float32", "int8"], base / "models", "two", calibration=60, allow_drop=True,
                     latency_runs=1, goal=decide.Goal(0.9, 0.9), ood_pass=0.9)
    return {r.format: r.path for r in results}["int8"], splits, model, train, base / "models" / "two-float32.tflite"


def _photos(splits, split: str, root: str):
    from training.data import load_split

    loaded = load_split(splits.sets(split)[root], SIZE)
    return loaded.images, loaded.labels


def test_the_card_says_logits_and_the_rule_is_chosen_on_validation_logits(exported):
    path, splits, *_ = exported
    card, clf = load_card(path), Classifier(path)
    assert card.output == "logits" and card.decision is not None and card.ood is not None
    assert card.ood.score == "distance"
    val = [_photos(splits, "val", r) for r in ("dev", "extra")]
    raw = np.concatenate([clf.outputs(images) for images, _ in val])
    logits = clf.logits(raw)
    y = np.concatenate([labels for _, labels in val])
    assert card.temperature == calibrate.fit_temperature(logits, y) and card.temperature != 1.0
    probs = calibrate.softmax(logits, card.temperature)
    chosen = decide.choose_thresholds(decide.p_rotten(probs, CLASSES, ROTTEN), y == CLASSES.index("rottenapple"),
                                      decide.Goal(0.9, 0.9))
    assert (card.decision.rotten_at, card.decision.fresh_at) == (chosen.rotten_at, chosen.fresh_at)
    assert card.ood.threshold == decide.choose_ood_threshold(clf.ood_scores(raw), 0.9)
    assert card.decision.chosen_on == "validation (dev + extra) (72 photos)"
    fit = card.temperature_fit or {}
    assert fit["fitted_on"] == "validation (dev + extra)"
    assert set(fit["figures"]) == {"validation (dev + extra)", "dev test split", "extra test split"}


def test_each_test_set_is_scored_apart_as_the_runtime_decides(exported):
    path, splits, *_ = exported
    card, clf = load_card(path), Classifier(path)
    evaluation = card.evaluation or {}
    assert evaluation["in_distribution"]["name"] == "dev test split"
    assert evaluation["other_sources"]["name"] == "extra test split"
    rules = rules_for(clf)
    for key, root in (("in_distribution", "dev"), ("other_sources", "extra")):
        images, y = _photos(splits, "test", root)
        judged = [rules.decide(p) for p in clf.predict(images)]
        expected = decide.rule_figures(y, CLASSES, ROTTEN, judged)
        got = evaluation[key]
        assert got["n"] == len(y) == 30
        for figure in ("accuracy", "fresh_vs_rotten_accuracy", "uncertain_rate", "unknown_rate", "rotten_caught"):
            assert got[figure] == expected[figure], (key, figure)


def test_the_unknown_figures_cover_the_non_produce_photos(exported):
    path, *_ = exported
    card = load_card(path)
    assert card.ood is not None
    figures = card.ood.figures
    assert {k: v["n"] for k, v in figures["non_produce"].items()} == {"photos": 22, "faces": 100, "backgrounds": 100}
    for entry in figures["non_produce"].values():
        assert 0 <= entry["flagged"] <= 1 and 0 <= entry["auroc"] <= 1
    assert set(figures["in_distribution_flagged"]) == {"dev test split", "extra test split"}
    assert figures["validation_flagged"] <= 0.1 + 1e-9


def test_the_distance_output_is_the_mahalanobis_distance_to_the_nearest_class_mean(exported):
    """The float32 export's second output against the numpy reference: fitted on the training photos'
    pooled features, minus the distance to the nearest class mean under the shared shrunk covariance."""
    import keras

    from training import distance_head

    _, splits, model, train, float_path = exported
    features = keras.Model(model.input, model.get_layer("pool").output)
    params = distance_head.fit(np.asarray(features(train.images.astype(np.float32))), train.labels, len(CLASSES))
    images, _ = _photos(splits, "test", "extra")
    want = params.score(np.asarray(features(images.astype(np.float32))))
    clf = Classifier(float_path)
    got = clf.ood_scores(clf.outputs(images))
    assert got is not None and np.allclose(got, want, rtol=5e-3, atol=5e-3)  # float32 graph vs float64 numpy
    assert clf.outputs(images).shape == (len(images), len(CLASSES) + 1)
    assert np.allclose(clf.probabilities(clf.outputs(images)).sum(axis=1), 1.0, atol=1e-5)
    far = np.full((4, SIZE, SIZE, 3), 127, np.uint8)  # grey: none of the training shapes
    assert clf.ood_scores(clf.outputs(far)).max() < np.median(got)


def test_an_export_whose_rule_cannot_be_chosen_leaves_no_bundle_behind(exported, tmp_path, monkeypatch):
    """The bundle is written with a stand-in card (T = 1, a distance threshold of 0, under which every
    photo is unknown) before its rule is chosen: a failure there (made here by a choice that raises, as
    a validation set with one class would) must not leave that loadable bundle in OUT."""
    from training import card_rules
    from training.export import ExportError, export

    def fails(*args, **kwargs):
        raise ValueError("no rotten validation photos to choose thresholds on")

    monkeypatch.setattr(card_rules, "choose", fails)
    run = exported[0].parent.parent / "run"
    with pytest.raises(ExportError, match="no rotten validation photos"):
        export(run, None, ["float32"], tmp_path / "models", "bad", latency_runs=1)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == []


@pytest.mark.parametrize(("option", "value"), [("--unknown-pass", "0"), ("--rotten-recall", "1.5"),
                                                ("--fresh-kept", "-0.1")])
def test_a_goal_or_pass_rate_out_of_range_is_one_line_before_any_conversion(tmp_path, option, value):
    from typer.testing import CliRunner

    from sorter.cli import app

    result = CliRunner().invoke(app, ["export", str(tmp_path / "no-such-run"), option, value])
    assert result.exit_code == 1 and f"{option} must be in (0, 1], not {float(value)}" in result.output
