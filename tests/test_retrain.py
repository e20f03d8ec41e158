"""`sorter retrain` end to end on a tiny real line: a real int8 bundle with its float weights, a real
database written by `sorter watch --once`, audits imported from folders, the challenger fine-tuned,
exported through the gate, compared through the runtime and installed only when it wins."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sorter.bundle import current, install
from sorter.card import load_card, sha256_file
from sorter.classify import classify_files, rules_for
from sorter.model import Classifier
from tests.conftest import import_tensorflow
from tests.retrain_helpers import CLASSES, audit, base_data, export_bundle, line_photos, train_base_model, watch_once

import_tensorflow()
SWAP = {"freshapple": "rottenapple", "rottenapple": "freshapple"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Base data and the base model's real int8 bundle (float weights beside it)."""
    root = tmp_path_factory.mktemp("base")
    data = base_data(root / "data")
    return data, export_bundle(train_base_model(data, root / "runs"), data, root / "bundle")


def _line(base, root: Path, shifted: bool):
    """The line's photos routed by `sorter watch --once` into a real results database."""
    data, bundle = base
    truth = line_photos(root / "incoming", 40, shifted=shifted)
    watch_once(root / "incoming", root / "sorted", root / "line.db", bundle)
    return root, data, bundle, truth


@pytest.fixture(scope="module")
def line(base, tmp_path_factory):
    """A line whose camera and light differ from the base photos: the base model misses its rotten apples."""
    return _line(base, tmp_path_factory.mktemp("line"), shifted=True)


@pytest.fixture(scope="module")
def same_line(base, tmp_path_factory):
    """A line whose photos look like the base photos."""
    return _line(base, tmp_path_factory.mktemp("same"), shifted=False)


def _setup(line, tmp_path: Path, given: dict[str, str] | None = None):
    """A copy of the line's database, the base model installed, two thirds of the photos audited."""
    import shutil

    root, data, bundle, truth = line
    db = tmp_path / "line.db"
    shutil.copy2(root / "line.db", db)
    models = tmp_path / "models"
    install(bundle, models)
    names = sorted(truth)
    audited = [n for i, n in enumerate(names) if i % 3 != 0]
    assert audit(db, root / "sorted", truth, audited, tmp_path / "audit", given) == len(audited)
    never = [n for n in names if n not in set(audited)]
    return db, models, data, never


def _accuracy(model: Path, root: Path, truth: dict[str, str], names: list[str]) -> float:
    by_name = {p.name: p for p in (root / "sorted").rglob("*.png")}
    clf = Classifier(model)
    results = list(classify_files([by_name[n] for n in names], clf, rules_for(clf)))
    return float(np.mean([r.label == truth[n] and r.verdict in ("fresh", "rotten")
                          for r, n in zip(results, names, strict=True)]))


def _retrain(db: Path, data: Path, models: Path, out: Path, *extra: str):
    from sorter.cli import app

    return CliRunner().invoke(app, ["retrain", "--db", str(db), "--base-data", str(data), "--out", str(out),
                                    "--dir", str(models), "--quick", "--quick-epochs", "30", "--quick-lr", "0.001",
                                    "--field-share", "0.5", *extra])


def test_retrain_installs_a_challenger_that_sorts_the_line_better(line, tmp_path):
    root, _, bundle, truth = line
    db, models, data, never = _setup(line, tmp_path)
    before = current(models)
    assert before is not None
    result = _retrain(db, data, models, tmp_path / "out", "--install")
    assert result.exit_code == 0, result.output
    after = current(models)
    assert after is not None and after != before
    installed = next(after.glob("*.tflite"))
    old_acc, new_acc = _accuracy(bundle, root, truth, never), _accuracy(installed, root, truth, never)
    assert new_acc >= old_acc + 0.3 and new_acc >= 0.9, (old_acc, new_acc)
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert comparison["decision"]["install"] is True and comparison["installed"] == str(after)
    field = comparison["test_sets"]["field_test"]
    assert field["n"] == 24 and field["gained"] > field["lost"] and field["win_p_value"] < 0.05
    card = load_card(installed)
    assert card.parent is not None and card.parent.sha256 == sha256_file(bundle)
    assert card.parent.name == "tiny-int8"
    assert card.field_data is not None and card.field_data.counts == dict(zip(CLASSES, (26, 27, 27), strict=True))
    assert (card.field_data.train, card.field_data.val, card.field_data.test) == (47, 9, 24)
    assert card.comparison is not None and card.comparison["install"] is True
    assert card.float_weights is not None and (after / card.float_weights.file).is_file()
    split = (tmp_path / "out" / "field_split.tsv").read_text().splitlines()
    assert split[0].split("\t") == ["sha256", "true_label", "split", "file"] and len(split) == 81


def _refused(line, tmp_path: Path, given: dict[str, str]) -> dict:
    """Retrain --install on audits labelled as `given`: exit 1, `current` and its files untouched."""
    db, models, data, _ = _setup(line, tmp_path, given)
    before = current(models)
    assert before is not None
    bytes_before = {p.name: p.read_bytes() for p in before.iterdir()}
    result = _retrain(db, data, models, tmp_path / "out", "--install")
    assert result.exit_code == 1, result.output
    assert "kept the current model" in result.output
    assert current(models) == before and {p.name: p.read_bytes() for p in before.iterdir()} == bytes_before
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert comparison["decision"]["install"] is False and comparison["installed"] is None
    return comparison


def test_swapped_audits_are_refused_by_the_base_test(same_line, tmp_path):
    """fresh and rotten apples swapped by the auditor on photos like the base ones: the challenger learns
    the swap (it "wins" on the field test, whose labels are the same wrong audits), and the base test
    set, labelled independently, shows what it forgot."""
    truth = same_line[3]
    given = {n: SWAP.get(label, label) for n, label in truth.items()}
    comparison = _refused(same_line, tmp_path, given)
    base = comparison["test_sets"]["base_test"]
    assert base["points"] < -1.0 and "base test set" in comparison["decision"]["reason"]


def test_random_audits_are_refused_by_the_field_test(line, tmp_path):
    """Labels that say nothing (drawn at random): the challenger is not better beyond chance on the field test."""
    rng = np.random.default_rng(3)
    given = {n: CLASSES[int(rng.integers(len(CLASSES)))] for n in sorted(line[3])}
    comparison = _refused(line, tmp_path, given)
    assert comparison["test_sets"]["field_test"]["win_p_value"] >= 0.05
    assert "not better beyond chance" in comparison["decision"]["reason"]


def test_retrain_errors_are_one_line_exit_2(line, tmp_path):
    db, models, data, _ = _setup(line, tmp_path)
    missing = _retrain(tmp_path / "nope.db", data, models, tmp_path / "o1")
    assert missing.exit_code == 2 and "nope.db not found" in missing.output
    empty = tmp_path / "empty.db"
    from sorter import store

    store.open_writer(empty).close()
    none = _retrain(empty, data, models, tmp_path / "o2")
    assert none.exit_code == 2 and "no audited items" in none.output
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    bad = _retrain(garbage, data, models, tmp_path / "o5")
    assert bad.exit_code == 2 and "garbage.db" in bad.output and "Traceback" not in bad.output
    share = _retrain(db, data, models, tmp_path / "o6", "--field-test", "1.5")
    assert share.exit_code == 2 and "--field-test must be in (0, 1)" in share.output
    weights = next(current(models).glob("*.float.keras"))  # type: ignore[union-attr]
    weights.write_bytes(weights.read_bytes() + b"x")
    changed = _retrain(db, data, models, tmp_path / "o3")
    assert changed.exit_code == 2 and "not the weights this bundle was made from" in changed.output
    weights.unlink()
    gone = _retrain(db, data, models, tmp_path / "o4")
    assert gone.exit_code == 2 and "float weights" in gone.output and "missing" in gone.output


def test_export_writes_the_float_model_beside_the_bundle_with_its_hash(base):
    from training.evaluate import keras_scores, load_keras
    from training.float_weights import locate

    _, bundle = base
    card = load_card(bundle)
    assert card.float_weights is not None and card.float_weights.file == "tiny.float.keras"
    weights = locate(bundle, card)
    assert card.float_weights.sha256 == sha256_file(weights)
    images = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (30, 120, 250)])
    run_model = bundle.parent.parent / "runs" / "base" / "model.keras"
    np.testing.assert_allclose(keras_scores(load_keras(weights), images), keras_scores(load_keras(run_model), images))


def test_full_recipe_fine_tunes_from_the_parent_run_config(line, tmp_path):
    """--full: the parent run's own two-phase recipe (here sorter train's defaults: its config.json
    holds no recipe), field photos repeated; the challenger still goes through export and the comparison."""
    from sorter.cli import app

    db, models, data, _ = _setup(line, tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["retrain", "--db", str(db), "--base-data", str(data), "--out", str(out),
                                      "--dir", str(models), "--full"])
    assert result.exit_code in (0, 1), result.output
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["retrain"]["mode"] == "full" and config["retrain"]["field_photos"] == 47
    history = json.loads((out / "run" / "history.json").read_text())
    assert set(history["phase"]) == {1, 2}
    assert json.loads((out / "comparison.json").read_text())["test_sets"]["field_test"]["n"] == 24


def test_quick_cut_lies_at_a_block_boundary_and_reproduces_the_model():
    """The cached part ends where the graph narrows to one tensor: never inside a residual block."""
    from tests.retrain_helpers import tiny_classifier
    from training import finetune

    model = tiny_classifier()
    backbone = finetune.find_backbone(model)
    assert [backbone.layers[i].name for i in finetune.cut_points(backbone)] == [
        "pixels", "scale", "stem", "block0_add", "block1_conv"]  # not block0_conv: the add still reads stem
    bottom, top, above = finetune.split_model(model, 2)
    assert [layer.name for layer in above] == ["block1_conv", "head_conv"]
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(top(bottom(images))), np.asarray(model(images)), atol=1e-6)


def test_a_winner_the_install_refuses_keeps_the_current_model(line, tmp_path):
    """The challenger wins, but `sorter model install` cannot put it in (the models folder is a file):
    exit 1, the reason in one line, and the challenger's card says it was not installed."""
    db, _, data, _ = _setup(line, tmp_path)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")
    result = _retrain(db, data, blocked, tmp_path / "out", "--install", "--model", str(line[2]))
    assert result.exit_code == 1, result.output
    assert "failed `sorter model install`'s checks" in " ".join(result.output.split())
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert comparison["installed"] is None and comparison["test_sets"]["field_test"]["win_p_value"] < 0.05
    card = load_card(Path(comparison["challenger"]["path"]))
    assert card.comparison is not None and card.comparison["install"] is False


def test_the_shipped_bundle_can_be_retrained():
    """Its float weights travel with it (hash-checked) and its run folder is found beside its card, so
    `sorter retrain` on the bundle `make demo` uses reaches the fine-tune instead of exiting 2."""
    from training import float_weights
    from training.retrain import parent_card, recipe_values

    shipped = Path(__file__).resolve().parent.parent / "models" / "fruit-lite1-int8.tflite"
    card = parent_card(shipped)
    assert Path(card.source_run) == shipped.parent / "fruit-lite1-run"
    assert recipe_values(card)["backbone"] == card.backbone == "efficientnet-lite1"
    assert float_weights.locate(shipped, card) == shipped.parent / "fruit-lite1.float.keras"
