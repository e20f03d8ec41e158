"""`sorter evaluate` as issue 15 asks: both test sets apart, the runtime's verdict rule (card + --config),
calibration at T = 1 and at the card's T, the threshold settings a config can hold, and `unknown`.

Real parts: the tiny logits bundle tests/data/color-logits-int8 (logits 0.1 × each channel's mean,
card T 5, rotten_at 0.6, fresh_at 0.3, unknown below energy 18) through the real interpreter, solid
colour JPEGs in two data roots, the real non-produce photos of scikit-image and scikit-learn.
Every expected figure is computed here again from the bundle's own outputs, apart from the command.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from sorter.card import ModelCard, load_card, write_card
from sorter.cli import app
from sorter.imaging import decode
from sorter.model import Classifier
from sorter.verdict import VerdictRules
from tests.conftest import COLOR_INT8, DATA
from training import calibrate, decide

pytestmark = pytest.mark.timeout(60)
LOGITS = DATA / "color-logits-int8.tflite"
LABELS = ["freshred", "freshgreen", "rottenblue"]
# RGB of solid photos, and the class each is filed under in the data folders
RED, GREEN, BLUE = (250, 10, 10), (10, 250, 10), (10, 10, 250)
PURPLE = (195, 0, 205)  # logits (19.5, 0, 20.5): P(rotten) 0.55 at T = 5, between fresh_at 0.3 and rotten_at 0.6
GREY = (128, 128, 128)  # energy 13.9, below the card's 18: unknown
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_env_settings(monkeypatch):
    for name in ("SORTER_MODEL", "SORTER_CONFIG", "SORTER_ROTTEN_AT", "SORTER_FRESH_AT"):
        monkeypatch.delenv(name, raising=False)


def solid(path: Path, rgb: tuple[int, int, int], shade: int = 0) -> Path:
    img = np.zeros((40, 40, 3), np.uint8)
    img[:] = np.clip(np.array(rgb[::-1]) + shade, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


def data_root(root: Path, per_class: int, extra: dict[str, list[tuple[int, int, int]]]) -> Path:
    """ROOT/{train,test}/<class>/: `per_class` right photos per class in test, plus `extra` ones."""
    for label, rgb in zip(LABELS, (RED, GREEN, BLUE), strict=True):
        solid(root / "train" / label / "a.jpg", rgb)
        for i in range(per_class):
            solid(root / "test" / label / f"{i}.jpg", rgb, shade=3 * i)
        for j, other in enumerate(extra.get(label, [])):
            solid(root / "test" / label / f"x{j}.jpg", other)
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("data")
    dev = data_root(base / "dev", 4, {"freshred": [BLUE], "rottenblue": [PURPLE]})  # 14 photos, 1 wrong
    other = data_root(base / "other", 2, {"freshred": [BLUE, BLUE], "freshgreen": [GREY]})  # 9 photos
    return dev, other


def evaluate(tmp: Path, model: Path, *data: Path, config: str | None = None) -> tuple[dict, str, str]:
    args = ["evaluate", str(model), *map(str, data), "--out", str(tmp)]
    if config is not None:
        (tmp.parent / f"{tmp.name}.toml").write_text(config)
        args += ["--config", str(tmp.parent / f"{tmp.name}.toml")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((tmp / "metrics.json").read_text()), (tmp / "report.html").read_text(), result.output


@pytest.fixture(scope="module")
def both(tmp_path_factory, roots) -> tuple[dict, str, str]:
    return evaluate(tmp_path_factory.mktemp("both") / "eval", LOGITS, *roots)


def outputs(root: Path, model: Path = LOGITS) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's raw logits and the labels of ROOT's test photos, in evaluate's order."""
    clf = Classifier(model)
    files = [(p, LABELS.index(label)) for label in sorted(LABELS)
             for p in sorted((root / "test" / label).glob("*.jpg"))]
    images = np.stack([decode(p.read_bytes(), clf.input_size) for p, _ in files])
    return clf.outputs(images), np.array([y for _, y in files])


def card_copy(tmp: Path, **fields) -> Path:
    """The logits bundle copied with its card's fields replaced (None removes one)."""
    model = tmp / LOGITS.name
    shutil.copy(LOGITS, model)
    card = load_card(LOGITS).model_dump()
    card.update(fields)
    write_card(model, ModelCard.model_validate(card))
    return model


# ---- both test sets apart ----


def test_two_roots_are_each_scored_as_alone(both, roots, tmp_path):
    metrics, _, output = both
    assert list(metrics["by_root"]) == ["dev", "other"]
    assert [metrics["by_root"][r]["n"] for r in ("dev", "other")] == [14, 9] and metrics["n"] == 23
    # dev: the blue photo filed as freshred is wrong; the purple rottenblue is uncertain but keeps its label
    assert metrics["by_root"]["dev"]["accuracy"] == pytest.approx(13 / 14, abs=1e-6)
    assert metrics["by_root"]["dev"]["uncertain_rate"] == pytest.approx(1 / 14, abs=1e-6)
    assert metrics["by_root"]["other"]["unknown_rate"] == pytest.approx(1 / 9, abs=1e-6)
    for root in roots:
        alone, _, _ = evaluate(tmp_path / root.name, LOGITS, root)
        assert list(alone["by_root"]) == [root.name]
        assert metrics["by_root"][root.name] == alone["by_root"][root.name]
    assert "dev test: accuracy 0.9286, fresh/rotten 0.9286, uncertain 7.1 %, unknown 0.0 % (14 photos)" in output
    assert re.search(r"other test: accuracy 0\.\d{4}, fresh/rotten 0\.\d{4}, uncertain 0\.0 %, "
                     r"unknown 11\.1 % \(9 photos\)", output)


def test_by_root_figures_are_the_runtime_rule_on_each_root(both, roots):
    metrics, _, _ = both
    rules = VerdictRules(frozenset({"rottenblue"}), rotten_at=0.6, fresh_at=0.3, unknown_below=18.0)
    clf = Classifier(LOGITS)
    for root in roots:
        raw, y = outputs(root)
        judged = decide.judge(clf.probabilities(raw), LABELS, rules, clf.ood_scores(raw))
        expected = decide.rule_figures(y, LABELS, ["rottenblue"], judged)
        got = {k: v for k, v in metrics["by_root"][root.name].items() if k not in ("name", "root", "path")}
        assert got == expected
        assert metrics["by_root"][root.name]["name"] == f"{root.name}/test"
    assert metrics["rule"] == {"by": "P(rotten)", "rotten_at": 0.6, "fresh_at": 0.3, "thresholds_from": "card",
                               "unknown_below": 18.0, "unknown_from": "card", "unknown_score": "energy"}


# ---- the threshold table: settings a config can hold ----


def test_card_row_is_the_cards_rule_and_the_applied_one(both, roots):
    metrics, page, _ = both
    table = metrics["decision_table"]
    assert [(r["setting"], r["rotten_at"], r["fresh_at"]) for r in table] == [
        ("card", 0.6, 0.3), *[(f"t={t:g}", t, t) for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]]
    assert [r["setting"] for r in table if r["applied"]] == ["card"]
    clf = Classifier(LOGITS)
    raws, ys = zip(*(outputs(root) for root in roots), strict=True)
    raw, y = np.concatenate(raws), np.concatenate(ys)
    rule = VerdictRules(frozenset({"rottenblue"}), rotten_at=0.6, fresh_at=0.3)
    expected = decide.rule_figures(y, LABELS, ["rottenblue"], decide.judge(clf.probabilities(raw), LABELS, rule))
    card = table[0]
    assert {k: card[k] for k in ("uncertain_rate", "rotten_caught", "rotten_binned", "fresh_kept", "accuracy")} == {
        k: expected[k] for k in ("uncertain_rate", "rotten_caught", "rotten_binned", "fresh_kept", "accuracy")}
    assert card["uncertain_rate"] == pytest.approx(2 / 23, abs=1e-6)  # purple and grey (no unknown here)
    assert all(r["uncertain_rate"] == 0 for r in table[1:])  # rotten_at = fresh_at decides every photo
    assert "<tr class=mark><td>card</td><td>0.6</td><td>0.3</td>" in page
    assert "Fresh vs rotten thresholds" not in page and "<h2>Verdict thresholds</h2>" in page
    assert metrics["threshold_table"][4]["threshold"] == 0.5  # the old key stays for its readers


def test_config_thresholds_add_the_applied_config_row(tmp_path, roots, both):
    metrics, page, output = evaluate(tmp_path / "cfg", LOGITS, *roots, config="rotten_at = 0.45\nfresh_at = 0.2\n")
    rows = {r["setting"]: r for r in metrics["decision_table"]}
    assert (rows["config"]["rotten_at"], rows["config"]["fresh_at"]) == (0.45, 0.2)
    assert [r["setting"] for r in metrics["decision_table"] if r["applied"]] == ["config"]
    assert metrics["rule"]["thresholds_from"] == "config"
    # purple (P(rotten) 0.5) is binned now: dev has no uncertain photo left, and is all right
    assert metrics["by_root"]["dev"]["uncertain_rate"] == 0 < both[0]["by_root"]["dev"]["uncertain_rate"]
    assert "<tr class=mark><td>config</td><td>0.45</td><td>0.2</td>" in page
    assert "rotten at >= 0.45, fresh at <= 0.2 (config)" in output
    half, _, _ = evaluate(tmp_path / "half", LOGITS, roots[0], config="rotten_at = 0.5\n")
    assert [(r["rotten_at"], r["fresh_at"]) for r in half["decision_table"] if r["applied"]] == [(0.5, 0.3)]


def test_a_config_the_card_cannot_take_is_one_line_and_exit_2(tmp_path, roots):
    (tmp_path / "bad.toml").write_text("fresh_at = 0.7\n")
    result = runner.invoke(app, ["evaluate", str(LOGITS), str(roots[0]), "--out", str(tmp_path / "e"),
                                 "--config", str(tmp_path / "bad.toml")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: fresh_at 0.7 (config) is above rotten_at 0.6 (card)" in result.output


# ---- calibration ----


def test_calibration_at_the_cards_temperature_and_the_reliability_diagram(both, roots):
    metrics, page, _ = both
    cal = metrics["calibration"]
    raws, ys = zip(*(outputs(root) for root in roots), strict=True)
    raw, y = np.concatenate(raws), np.concatenate(ys)
    assert cal["from"] == "logits" and cal["temperature"] == 5.0
    assert cal["overall"] == calibrate.effect(raw, y, 5.0)
    assert cal["by_root"]["other"] == calibrate.effect(raws[1], ys[1], 5.0)
    assert cal["overall"]["ece_after"] != cal["overall"]["ece_before"]
    assert cal["overall"]["nll_after"] < cal["overall"]["nll_before"]  # T = 5 tames the overconfident logits
    assert list(cal["reliability"]) == ["T = 1", "T = 5"]
    assert metrics["plots"]["Reliability"] == "reliability.png"
    assert "<h2>Calibration</h2>" in page and "<img alt='reliability diagram' src='data:image/png;base64," in page


def test_temperature_one_and_a_probabilities_model(tmp_path, roots):
    flat = card_copy(tmp_path, temperature=1.0)
    metrics, _, _ = evaluate(tmp_path / "t1", flat, roots[0])
    cal = metrics["calibration"]
    assert cal["overall"]["ece_after"] == cal["overall"]["ece_before"] and list(cal["reliability"]) == ["T = 1"]
    assert (tmp_path / "t1" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    probs_model, _, _ = evaluate(tmp_path / "p", COLOR_INT8, roots[0])
    cal = probs_model["calibration"]
    assert cal["from"] == "log(probabilities)" and "stands in" in cal["note"]
    clf = Classifier(COLOR_INT8)
    probs, y = outputs(roots[0], COLOR_INT8)
    # softmax(log p) is p renormalised: an int8 model's probabilities sum to 1 only within its steps
    assert cal["overall"]["ece_before"] == calibrate.ece(probs / probs.sum(axis=1, keepdims=True), y)
    assert cal["overall"]["ece_before"] == pytest.approx(calibrate.ece(probs, y), abs=0.01)
    assert "ood" not in probs_model and not (tmp_path / "p" / "reliability.png").exists()
    assert probs_model["rule"]["by"] == "top-1" and not any(r["applied"] for r in probs_model["decision_table"])
    assert clf.card.output == "probabilities"


# ---- unknown ----


def test_unknown_flagged_per_root_and_on_non_produce_photos(both, roots):
    from training.ood_photos import photo_sets

    metrics, page, output = both
    ood = metrics["ood"]
    clf = Classifier(LOGITS)
    energies = [clf.ood_scores(outputs(root)[0]) for root in roots]
    assert ood["threshold"] == 18.0 and ood["applied_threshold"] == 18.0
    for root, energy in zip(roots, energies, strict=True):
        assert ood["by_root"][root.name] == {"n": len(energy), "flagged": decide.flagged(energy, 18.0)}
    assert ood["by_root"]["other"]["flagged"] == pytest.approx(1 / 9, abs=1e-6)  # the grey photo
    in_dist = np.concatenate(energies)
    for photos in photo_sets(clf.input_size):
        energy = clf.ood_scores(clf.outputs(photos.images))
        got = ood["non_produce"][photos.name]
        assert (got["n"], got["flagged"], got["auroc"]) == (
            len(photos.images), decide.flagged(energy, 18.0), decide.auroc(in_dist, energy))
    assert [ood["non_produce"][n]["n"] for n in ("photos", "faces", "backgrounds")] == [22, 100, 100]
    assert "<h2>Unknown (not produce)</h2>" in page and "unknown below 18:" in output


def test_no_ood_rule_no_unknown_section_and_unknown_off(tmp_path, roots):
    bare = card_copy(tmp_path, ood=None)
    metrics, page, _ = evaluate(tmp_path / "bare", bare, roots[1])
    assert "ood" not in metrics and "<h2>Unknown" not in page and metrics["by_root"]["other"]["unknown_rate"] == 0
    off, _, _ = evaluate(tmp_path / "off", LOGITS, roots[1], config="unknown = false\n")
    assert off["ood"]["applied_threshold"] is None and off["by_root"]["other"]["unknown_rate"] == 0
    assert off["ood"]["by_root"]["other"]["flagged"] == pytest.approx(1 / 9, abs=1e-6)  # at the card's threshold


def test_without_scikit_image_one_warning_not_a_crash(tmp_path, roots, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    result = runner.invoke(app, ["evaluate", str(LOGITS), str(roots[1]), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "pip install scikit-image" in warnings[0]
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["ood"]["non_produce"] == {} and metrics["ood"]["by_root"]["other"]["n"] == 9


# ---- the page ----


def test_report_shows_both_roots_and_the_cards_recorded_figures(tmp_path, roots):
    recorded = {"in_distribution": {"name": "dev/test", "root": "dev", "n": 360, "accuracy": 0.9722,
                                    "fresh_vs_rotten_accuracy": 0.98, "uncertain_rate": 0.021, "unknown_rate": 0.003},
                "other_sources": {"name": "other/test", "root": "other", "n": 120, "accuracy": 0.81,
                                  "fresh_vs_rotten_accuracy": 0.9, "uncertain_rate": 0.1, "unknown_rate": 0.02}}
    model = card_copy(tmp_path, evaluation=recorded)
    metrics, page, _ = evaluate(tmp_path / "e", model, *roots)
    assert "<h2>Test sets</h2>" in page and "<h2>Recorded on the model card</h2>" in page
    assert "<td>at export: dev/test</td><td>360</td><td>0.9722</td><td>0.9800</td><td>2.1 %</td><td>0.3 %</td>" in page
    assert "<td>at export: other/test</td><td>120</td><td>0.8100</td>" in page
    dev = metrics["by_root"]["dev"]
    assert (f"<tr class=mark><td>this run: dev/test</td><td>14</td><td>{dev['accuracy']:.4f}</td>") in page
    assert "<tr class=mark><td>this run: other/test</td><td>9</td>" in page
    assert "<td>all (test)</td><td>23</td>" in page


def test_no_recorded_evaluation_no_card_section(both):
    _, page, _ = both
    assert "Recorded on the model card" not in page
    assert "<td>dev/test</td><td>14</td>" in page and "<td>other/test</td><td>9</td>" in page


# ---- which photos: --split-file, and a Keras run's own splits.json ----


def split_file(path: Path, root: Path, test: set[str]) -> Path:
    """A `sorter split` file for a flat ROOT/<class>/: the named files in test, the rest in train."""
    lines = ["root\tfile\tclass\tsource\tgroup\tsplit"]
    for i, photo in enumerate(sorted(root.rglob("*.jpg"))):
        rel = photo.relative_to(root).as_posix()
        lines.append(f"{root.name}\t{rel}\t{photo.parent.name}\tcam\t{i}\t{'test' if rel in test else 'train'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def flat_root(root: Path) -> Path:
    for label, rgb in zip(LABELS, (RED, GREEN, BLUE), strict=True):
        for i in range(3):
            solid(root / label / f"{i}.jpg", rgb, shade=2 * i)
    return root


def test_a_split_file_decides_which_photos_of_its_root_are_tested(tmp_path, roots):
    extra = flat_root(tmp_path / "extra")
    tested = {"freshred/0.jpg", "freshgreen/1.jpg", "rottenblue/2.jpg", "rottenblue/0.jpg"}
    tsv = split_file(tmp_path / "extra.tsv", extra, tested)
    result = runner.invoke(app, ["evaluate", str(LOGITS), str(roots[0]), str(extra), "--split-file", str(tsv),
                                 "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert {r: f["n"] for r, f in metrics["by_root"].items()} == {"dev": 14, "extra": 4}
    assert metrics["by_root"]["extra"]["per_class"]["rottenblue"]["support"] == 2
    line = "extra test: accuracy 1.0000, fresh/rotten 1.0000, uncertain 0.0 %, unknown 0.0 % (4 photos)"
    assert line in result.output.splitlines()


def test_a_runs_splits_json_keeps_its_roots_and_others_are_discovered(tmp_path, roots):
    from training.evaluate import resolve_data

    dev = roots[0]
    run_split = tmp_path / "splits.json"  # an old one-root run's file: paths relative to the data folder
    run_split.write_text(json.dumps({"train": ["train/freshred/a.jpg"],
                                     "test": ["test/freshred/0.jpg", "test/rottenblue/1.jpg"]}))
    extra = flat_root(tmp_path / "extra")
    tsv = split_file(tmp_path / "extra.tsv", extra, {"freshgreen/2.jpg"})
    splits = resolve_data([dev, extra], run_split, [tsv])
    sets = splits.sets("test")
    assert sorted(p.relative_to(dev).as_posix() for p, _ in sets["dev"]) == ["test/freshred/0.jpg",
                                                                             "test/rottenblue/1.jpg"]
    assert [(p.relative_to(extra).as_posix(), splits.classes[i]) for p, i in sets["extra"]] == [
        ("freshgreen/2.jpg", "freshgreen")]
    # the run knew two classes, the merge three: its indices are remapped onto the union
    assert [splits.classes[i] for p, i in sets["dev"]] == [p.parent.name for p, _ in sets["dev"]]
    assert [r.name for r in splits.roots] == ["dev", "extra"]


def test_a_root_without_photos_in_the_split_is_a_warning(tmp_path, roots):
    empty = tmp_path / "empty"
    for label in LABELS:
        solid(empty / "train" / label / "a.jpg", RED)
        (empty / "test" / label).mkdir(parents=True)
    result = runner.invoke(app, ["evaluate", str(LOGITS), str(roots[0]), str(empty), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert list(metrics["by_root"]) == ["dev"]
    assert f"warning: no test photos from data folder {empty} (none listed, or none decoded)" in result.output


def test_temperature_one_is_said_once(tmp_path, roots):
    metrics, page, output = evaluate(tmp_path / "p", COLOR_INT8, roots[0])
    overall = metrics["calibration"]["overall"]
    assert (f"calibration (log(probabilities)): ECE {overall['ece_before']:.4f}, NLL {overall['nll_before']:.4f} "
            f"at T = 1 (the card has no other temperature)") in output.splitlines()
    assert "<th>ECE T = 1</th></tr>" in page and "NLL T = 1</th><th>NLL T = 1" not in page
