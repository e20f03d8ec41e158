"""Hostile model cards (issue 14, item 7): labels become folder names under OUT and the card's
`sample` is read by the doctor, so a card must never lead a write or a read outside its place.
Real interpreter, real bundles copied into tmp_path with crafted cards, the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter import route
from sorter.card import load_card
from sorter.cli import app
from sorter.doctor import check_model
from sorter.model import Classifier, ModelError
from tests.conftest import COLOR_INT8, write_colour_jpeg

pytestmark = pytest.mark.timeout(60)
runner = CliRunner()


def bundle(folder: Path, **changes) -> Path:
    """A copy of the real colour model whose card has `changes` applied (None removes a key)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "hostile.tflite"
    shutil.copy(COLOR_INT8, model)
    card = json.loads(COLOR_INT8.with_name("color-int8.card.json").read_text())
    for key, value in changes.items():
        if value is None:
            card.pop(key, None)
        else:
            card[key] = value
    (folder / "hostile.card.json").write_text(json.dumps(card))
    return model


def one_line_refusal(result, code: int, *words: str) -> None:
    """A refusal is one line on stderr naming the problem, a non-zero exit, no traceback."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and not isinstance(result.exception, (KeyError, TypeError))
    for word in words:
        assert word in lines[0], lines[0]


UNSAFE_LABELS = {
    "parent": ["../../ESCAPED", "freshgreen", "rottenblue"],
    "absolute": ["/tmp/sorter-escaped", "freshgreen", "rottenblue"],
    "backslash": ["..\\..\\x", "freshgreen", "rottenblue"],
    "dotdot": ["..", "freshgreen", "rottenblue"],
    "dot": [".", "freshgreen", "rottenblue"],
    "hidden": [".git", "freshgreen", "rottenblue"],
    "empty": ["", "freshgreen", "rottenblue"],
    "blank": ["   ", "freshgreen", "rottenblue"],
    "newline": ["fresh\nFAKE LOG LINE", "freshgreen", "rottenblue"],
    "nul": ["fresh\x00red", "freshgreen", "rottenblue"],
    "escape": ["fresh\x1b[31mred", "freshgreen", "rottenblue"],
    "duplicate": ["freshred", "freshred", "rottenblue"],
    "case-duplicate": ["freshred", "FreshRed", "rottenblue"],
    "too-long": ["x" * 256, "freshgreen", "rottenblue"],
}


@pytest.mark.parametrize("labels", UNSAFE_LABELS.values(), ids=UNSAFE_LABELS.keys())
def test_unsafe_labels_are_refused_when_the_card_loads(tmp_path, labels):
    model = bundle(tmp_path / "b", labels=labels, rotten_labels=["rottenblue"])
    with pytest.raises(ModelError, match="labels") as caught:
        Classifier(model, num_threads=1)
    assert "\n" not in str(caught.value)  # one line: the label is shown escaped
    with pytest.raises(ValueError, match="label"):
        load_card(model)
    installed = runner.invoke(app, ["model", "install", str(model), "--dir", str(tmp_path / "models")])
    one_line_refusal(installed, 1, "nothing installed", "labels")
    assert not (tmp_path / "models" / "current").exists()


def test_a_label_that_escapes_out_never_reaches_the_file_system(tmp_path):
    """The attack of the issue: `../../ESCAPED` as a label; watch --once refuses to start and moves nothing."""
    model = bundle(tmp_path / "b", labels=["../../ESCAPED", "freshgreen", "rottenblue"])
    incoming, out = tmp_path / "work" / "in", tmp_path / "work" / "out"
    write_colour_jpeg(incoming / "a.jpg", "red")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = runner.invoke(app, ["watch", str(incoming), "--out", str(out), "--once", "-m", str(model),
                                 "--db", str(tmp_path / "work" / "db.sqlite")])
    one_line_refusal(result, 2, "ESCAPED", "labels")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "ESCAPED").exists() and (incoming / "a.jpg").is_file()


def test_routing_refuses_a_destination_outside_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert route.target_dir(out, "rotten", "rottenblue", None, False) == out / "rotten" / "rottenblue"
    for label in ("../../ESCAPED", "/etc", "../../out2", "../../../.."):
        with pytest.raises(ValueError, match="outside"):
            route.target_dir(out, "rotten", label, None, False)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (out / "fresh").symlink_to(outside)  # a planted link inside OUT leads outside it
    with pytest.raises(ValueError, match="outside"):
        route.target_dir(out, "fresh", "freshred", None, False)
    assert route.inside(out, out / "rotten" / "x") and not route.inside(out, out / "fresh" / "x")
    assert route.inside(out, out / "rotten" / ".." / "fresh2") and not route.inside(out, out / "..")


@pytest.mark.parametrize("sample", ["/etc/passwd", "../outside.jpg", "sub/inside.jpg", "..", ""])
def test_a_sample_path_that_leaves_the_bundle_is_refused(tmp_path, sample):
    write_colour_jpeg(tmp_path / "outside.jpg", "blue")
    model = bundle(tmp_path / "b", sample=sample)
    with pytest.raises(ValueError, match="sample"):
        load_card(model)
    checks = check_model(model, threads=1)
    assert [c.ok for c in checks] == [False] and "sample" in checks[0].detail
    installed = runner.invoke(app, ["model", "install", str(model), "--dir", str(tmp_path / "models")])
    one_line_refusal(installed, 1, "sample", "nothing installed")


def test_a_sample_link_or_non_image_inside_the_bundle_is_a_failed_check(tmp_path):
    outside = write_colour_jpeg(tmp_path / "outside.jpg", "blue", (32, 32))
    model = bundle(tmp_path / "b", sample="link.jpg")
    (model.parent / "link.jpg").symlink_to(outside)
    inference = {c.name: c for c in check_model(model, threads=1)}["inference"]
    assert not inference.ok and "not a plain file" in inference.detail
    installed = runner.invoke(app, ["model", "install", str(model), "--dir", str(tmp_path / "models")])
    one_line_refusal(installed, 1, "inference", "not a plain file")

    (model.parent / "link.jpg").unlink()
    (model.parent / "link.jpg").write_text("root:x:0:0:root:/root:/bin/bash\n")  # what /etc/passwd gave
    inference = {c.name: c for c in check_model(model, threads=1)}["inference"]
    assert not inference.ok and "link.jpg" in inference.detail and "not-an-image" in inference.detail
    installed = runner.invoke(app, ["model", "install", str(model), "--dir", str(tmp_path / "models")])
    one_line_refusal(installed, 1, "inference", "link.jpg")


def test_a_sample_beside_the_model_is_used_and_installed_with_it(tmp_path):
    model = bundle(tmp_path / "b", sample="blue.jpg")
    write_colour_jpeg(model.parent / "blue.jpg", "blue", (32, 32))
    inference = {c.name: c for c in check_model(model, threads=1)}["inference"]
    assert inference.ok and inference.detail.startswith("blue.jpg image")
    assert max(inference.data["scores"]) == inference.data["scores"][2]  # rottenblue
    installed = runner.invoke(app, ["model", "install", str(model), "--dir", str(tmp_path / "models")])
    assert installed.exit_code == 0, installed.output
    current = tmp_path / "models" / "current"
    assert (current / "blue.jpg").is_file()
    assert {c.name: c for c in check_model(current, threads=1)}["inference"].detail.startswith("blue.jpg")


LYING_CARDS = {
    "no rotten labels": ({"rotten_labels": []}, "no label is rotten"),
    "every label rotten": ({"rotten_labels": ["freshred", "freshgreen", "rottenblue"]}, "every label is rotten"),
    "rotten label not a label": ({"rotten_labels": ["rottenblue", "mouldy"]}, "'mouldy' are not among"),
    "accuracy 1.0 without a hash": ({"model_sha256": None, "score": {"accuracy": 1.0, "n_test": 30}},
                                    "no model_sha256"),
    "accuracy without a test set": ({"score": {"accuracy": 0.97}}, "without a test-set size"),
    "accuracy not a whole number of images": ({"score": {"accuracy": 0.95, "n_test": 7}}, "not a whole number"),
    "accuracy above one": ({"score": {"accuracy": 1.5, "n_test": 2}}, "outside 0..1"),
    "per-class figures for other labels": ({"score": {"per_class": {"banana": {"recall": 1.0}}}}, "'banana'"),
    "supports that do not add up": ({"score": {"accuracy": 1.0, "n_test": 30, "per_class": {
        "freshred": {"support": 10.0}, "freshgreen": {"support": 10.0}, "rottenblue": {"support": 5.0}}}},
        "sum to 25"),
    "wrong file size": ({"file_size_bytes": 999}, "file_size_bytes 999"),
    "unknown format": ({"format": "sorter-card/9"}, "sorter-card/9"),
}


@pytest.mark.parametrize(("changes", "why"), LYING_CARDS.values(), ids=LYING_CARDS.keys())
def test_the_doctor_fails_a_lying_card(tmp_path, changes, why):
    model = bundle(tmp_path / "b", **changes)
    card = {c.name: c for c in check_model(model, threads=1)}["card"]
    assert not card.ok and why in card.detail, card.detail
    cfg = tmp_path / "s.toml"
    cfg.write_text(f"db = '{tmp_path / 'db.sqlite'}'\nthreads = 1\n")
    result = runner.invoke(app, ["doctor", "--no-cameras", "-m", str(model), "-c", str(cfg)])
    assert result.exit_code == 1 and "FAIL       card: " in result.output and why in result.output
    installed = runner.invoke(app, ["model", "install", str(model), "--dir", str(tmp_path / "models")])
    one_line_refusal(installed, 1, "card:", why)


def test_an_honest_card_and_a_configured_rotten_list_pass(tmp_path):
    honest = {c.name: c for c in check_model(COLOR_INT8, threads=1)}["card"]
    assert honest.ok and "rotten: rottenblue" in honest.detail
    model = bundle(tmp_path / "b", rotten_labels=[])
    assert {c.name: c for c in check_model(model, threads=1, rotten=["rottenblue"])}["card"].ok
    cfg = tmp_path / "s.toml"
    cfg.write_text(f"db = '{tmp_path / 'db.sqlite'}'\nthreads = 1\nrotten_labels = ['rottenblue']\n")
    result = runner.invoke(app, ["doctor", "--no-cameras", "-m", str(model), "-c", str(cfg)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("changes, where", [
    ({"rotten_threshold": 0.2}, "rotten_threshold"),  # a rule this sorter does not know: never ignored
    ({"gate": {"passed": True, "waived": "by me"}}, "gate.waived"),
    ({"latency_ms": {"median": "fast"}}, "latency_ms.median"),
    ({"exports": [{"format": "int8"}]}, "exports.0.path"),
], ids=["unknown-field", "unknown-gate-key", "mistyped-latency", "export-row-without-path"])
def test_a_card_field_this_sorter_does_not_declare_is_refused(tmp_path, changes, where):
    """Every card field is declared: an unknown or mistyped one stops the load with one line naming
    it, instead of riding along unread (a newer exporter's rule ignored would sort otherwise)."""
    model = bundle(tmp_path / "b", **changes)
    with pytest.raises(ValueError, match=where.replace(".", r"\.")):
        load_card(model)
    installed = runner.invoke(app, ["model", "install", str(model), "--dir", str(tmp_path / "models")])
    one_line_refusal(installed, 1, "nothing installed", where)


def test_the_gate_is_read_typed_from_old_and_new_cards(tmp_path):
    failed = load_card(bundle(tmp_path / "new", gate={"passed": False, "problem": "int8 lost 5 points"}))
    assert failed.gate_recorded() and failed.gate_problem() == "int8 lost 5 points" and failed.gate_accepted() is None
    row = {"format": "int8", "path": "color-int8.tflite", "problem": "int8 lost 6 points"}  # the card's name
    old = load_card(bundle(tmp_path / "old", gate=None, exports=[row]))  # before `gate`: the export row says it
    assert old.gate_recorded() and old.gate_problem() == "int8 lost 6 points"
