"""The retrain loop's parts that need no TensorFlow: the install rule with exact figures, the field
split, the card's new keys (and that crafted ones are still refused), the float-weights hash check."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sorter.card import CardError, FloatWeights, ModelCard, load_card, sha256_file, write_card
from training import field_split
from training.float_weights import WeightsMissing, locate
from training.install_rule import Paired, decide


def _pair(n: int, both: int, gained: int, lost: int) -> Paired:
    """n photos: `both` right for both models, `gained` only the challenger, `lost` only the current."""
    cur = np.zeros(n, bool)
    new = np.zeros(n, bool)
    cur[:both] = new[:both] = True
    new[both:both + gained] = True
    cur[both + gained:both + gained + lost] = True
    return Paired.of(cur, new)


def test_paired_counts():
    p = _pair(30, 20, 3, 1)
    assert (p.n, p.current_right, p.challenger_right, p.gained, p.lost) == (30, 21, 23, 3, 1)
    assert p.points == pytest.approx(200 / 30)


def test_a_significant_field_win_installs():
    d = decide(_pair(30, 20, 5, 0), _pair(100, 95, 0, 0))
    assert d.install and d.field_p_value == pytest.approx(1 / 32)  # 5 of 5 discordant: 0.5 ** 5
    assert d.reason.startswith("the challenger wins") and "p = 0.0312" in d.reason


def test_eight_gained_one_lost_installs_at_the_exact_binomial_tail():
    d = decide(_pair(30, 15, 8, 1), None)
    assert d.install and d.field_p_value == pytest.approx(10 / 512)  # P(X >= 8 | n = 9, p = 0.5)
    assert "no base test set" in d.reason


def test_a_one_photo_win_on_thirty_photos_does_not_install():
    d = decide(_pair(30, 25, 1, 0), _pair(100, 95, 0, 0))
    assert not d.install and d.field_p_value == pytest.approx(0.5)
    assert "not better beyond chance" in d.reason


def test_four_of_four_is_not_yet_enough():
    d = decide(_pair(30, 20, 4, 0), None)
    assert not d.install and d.field_p_value == pytest.approx(1 / 16)


def test_a_base_regression_beyond_the_tolerance_does_not_install():
    base = _pair(200, 180, 1, 4)  # 3 photos net of 200: 1.5 points lost
    d = decide(_pair(30, 20, 6, 0), base)
    assert not d.install and d.base_points == pytest.approx(-1.5)
    assert "loses 1.5 points on the base test set" in d.reason and "not better" not in d.reason
    assert decide(_pair(30, 20, 6, 0), base, base_tolerance=2.0).install


def test_a_regression_within_the_tolerance_installs():
    d = decide(_pair(30, 20, 6, 0), _pair(200, 180, 1, 3))  # exactly 1.0 point: allowed
    assert d.install and d.base_points == pytest.approx(-1.0)


def test_both_failures_are_named():
    d = decide(_pair(30, 25, 1, 1), _pair(100, 80, 0, 10))
    assert not d.install and "not better beyond chance" in d.reason and "loses 10.0 points" in d.reason


def test_no_field_photos_never_installs():
    assert not decide(Paired(0, 0, 0, 0, 0), None).install


@dataclass(frozen=True)
class Photo:
    sha256: str
    true_label: str


def test_field_split_is_stratified_whole_and_seeded(tmp_path):
    photos = [Photo(f"{i:064x}", "a") for i in range(20)] + [Photo(f"{100 + i:064x}", "b") for i in range(7)] \
        + [Photo(f"{200:064x}", "c")]
    train, test = field_split.split(photos, 0.3, seed=1)
    assert sorted(p.true_label for p in test) == ["a"] * 6 + ["b"] * 2  # round(20 * .3), round(7 * .3); c trains
    assert {p.sha256 for p in train} | {p.sha256 for p in test} == {p.sha256 for p in photos}
    assert not {p.sha256 for p in train} & {p.sha256 for p in test}
    assert field_split.split(list(reversed(photos)), 0.3, seed=1)[1] == test  # the listing order does not matter
    assert field_split.split(photos, 0.3, seed=2)[1] != test
    files = {p.sha256: tmp_path / p.true_label / f"{p.sha256[:16]}.jpg" for p in photos}
    rows = field_split.read(field_split.write(tmp_path / "split.tsv", {"train": train, "test": test}, files))
    assert len(rows) == 28 and sum(r["split"] == "test" for r in rows) == 8
    assert rows[0].keys() == {"sha256", "true_label", "split", "file"}


@dataclass(frozen=True)
class Labelled:
    sha256: str
    true_label: str
    pseudo: bool


def test_pseudo_labelled_photos_only_ever_train():
    photos = [Labelled(f"{i:064x}", "a", i >= 10) for i in range(30)]  # 10 audited, 20 pseudo
    parts = field_split.partition(photos, 0.3, 0.15, seed=1)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [26, 1, 3]  # test round(10 * .3); val round(7 * .15)
    assert not any(p.pseudo for p in parts["test"] + parts["val"])
    assert sum(p.pseudo for p in parts["train"]) == 20


def _card(**extra) -> dict:
    return {"name": "m", "labels": ["freshapple", "rottenapple"], "rotten_labels": ["rottenapple"],
            "input": {"height": 8, "width": 8, "dtype": "uint8"}, "quantization": "int8", **extra}


SHA = "ab" * 32


def test_card_declares_parent_field_data_and_float_weights(tmp_path):
    doc = _card(parent={"name": "base-int8", "sha256": SHA},
                field_data={"fingerprint": "f" * 64, "counts": {"freshapple": 3}, "train": 2, "test": 1},
                float_weights={"file": "base.float.keras", "sha256": SHA},
                comparison={"summary": "the challenger wins", "install": True})
    (tmp_path / "m.card.json").write_text(json.dumps(doc))
    card = load_card(tmp_path / "m.tflite")
    assert card.parent is not None and card.parent.sha256 == SHA
    assert card.field_data is not None and card.field_data.counts == {"freshapple": 3}
    assert card.float_weights is not None and card.float_weights.file == "base.float.keras"


@pytest.mark.parametrize("extra, where", [
    ({"float_weights": {"file": "../../etc/passwd", "sha256": SHA}}, "float_weights.file"),
    ({"float_weights": {"file": "w.keras", "sha256": "not-a-hash"}}, "float_weights.sha256"),
    ({"parent": {"name": "p", "sha256": SHA, "extra": 1}}, "parent.extra"),
    ({"field_data": {"fingerprint": "f", "train": -1}}, "field_data.train"),
])
def test_crafted_new_keys_are_refused(tmp_path, extra, where):
    (tmp_path / "m.card.json").write_text(json.dumps(_card(**extra)))
    with pytest.raises(CardError, match=where.replace(".", r"\.")):
        load_card(tmp_path / "m.tflite")


def _bundle(tmp_path: Path, weights: bytes | None) -> Path:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"tflite")
    card = ModelCard.model_validate(_card())
    if weights is not None:
        (tmp_path / "m.float.keras").write_bytes(weights)
        card.float_weights = FloatWeights(file="m.float.keras", sha256=sha256_file(tmp_path / "m.float.keras"))
    write_card(model, card)
    return model


def test_float_weights_are_found_when_their_hash_matches(tmp_path):
    model = _bundle(tmp_path, b"weights")
    assert locate(model, load_card(model)) == tmp_path / "m.float.keras"


def test_float_weights_with_other_bytes_are_refused(tmp_path):
    model = _bundle(tmp_path, b"weights")
    (tmp_path / "m.float.keras").write_bytes(b"other weights")
    with pytest.raises(WeightsMissing, match="not the weights this bundle was made from"):
        locate(model, load_card(model))


def test_float_weights_missing_or_unnamed_are_refused(tmp_path):
    model = _bundle(tmp_path, b"weights")
    (tmp_path / "m.float.keras").unlink()
    with pytest.raises(WeightsMissing, match="missing"):
        locate(model, load_card(model))
    (tmp_path / "plain").mkdir()
    plain = _bundle(tmp_path / "plain", None)
    with pytest.raises(WeightsMissing, match="names no float weights"):
        locate(plain, load_card(plain))


def test_the_comparison_counts_the_recorded_label_as_sorter_evaluate_does():
    """An unknown or uncertain item whose label is right is right (the card's accuracy under the rule);
    it is counted apart as a verdict, so the install rule's points are the points the card shows."""
    from sorter.classify import FileResult
    from training.retrain import scored

    results = [FileResult("a", "freshapples", 0.9, "fresh", {"freshapples": 0.9, "rottenapples": 0.1}),
               FileResult("b", "rottenapples", 0.6, "unknown", {"freshapples": 0.4, "rottenapples": 0.6}),
               FileResult("c", "freshapples", 0.5, "uncertain", {"freshapples": 0.5, "rottenapples": 0.5}),
               FileResult("d", "freshapples", 0.7, "fresh", {"freshapples": 0.3, "rottenapples": 0.7}),
               FileResult("e", error="not an image")]
    got = scored(results, ["freshapples", "rottenapples", "freshapples", "rottenapples", "freshapples"])
    assert got.right.tolist() == [True, True, True, False, False]
    assert got.top1.tolist() == [True, True, True, True, False]
    assert got.verdicts == {"fresh": 2, "unknown": 1, "uncertain": 1, "error": 1}
