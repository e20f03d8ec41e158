"""Issue 14, item 17: an export that failed its accuracy gate is refused by `sorter model install`
unless the operator accepts it explicitly, `sorter doctor` reports it, and the doctor's parity check
reproduces the predictions the card recorded at export. Real interpreter, real bundles, real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.doctor import check_model
from sorter.model import Classifier
from tests.conftest import COLOR_INT8

pytestmark = pytest.mark.timeout(120)
runner = CliRunner()
PROBLEM = "int8 export scores 60.00%, 30.0 points below the float model's 90.00% (max drop 1.0)"


def bundle(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "color-int8.tflite"
    shutil.copy(COLOR_INT8, model)
    card = json.loads(COLOR_INT8.with_name("color-int8.card.json").read_text())
    card.update(changes)
    (folder / "color-int8.card.json").write_text(json.dumps(card))
    return model


def colour_images() -> np.ndarray:
    images = np.zeros((3, 32, 32, 3), np.uint8)
    for i in range(3):
        images[i, ..., i] = 200
        images[i, ..., (i + 1) % 3] = 40
    return images


def doctor(tmp_path: Path, model: Path) -> tuple[int, dict]:
    cfg = tmp_path / "s.toml"
    cfg.write_text(f"db = '{tmp_path / 'db.sqlite'}'\nthreads = 1\n")
    result = runner.invoke(app, ["doctor", "--json", "--no-cameras", "-m", str(model), "-c", str(cfg)])
    return result.exit_code, {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def install(model: Path, models: Path, *extra: str):
    return runner.invoke(app, ["model", "install", str(model), "--dir", str(models), *extra])


@pytest.mark.parametrize("record", ["gate", "exports-row"])
def test_a_failed_gate_is_refused_unless_accepted(tmp_path, record):
    if record == "gate":
        model = bundle(tmp_path / "b", gate={"passed": False, "problem": PROBLEM})
    else:  # cards written before `gate`: the bundle's own row of the exports table
        model = bundle(tmp_path / "b", exports=[{"format": "float32", "path": "color-float32.tflite", "problem": None},
                                                {"format": "int8", "path": "color-int8.tflite", "problem": PROBLEM}])
    code, checks = doctor(tmp_path, model)
    assert code == 1 and not checks["gate"]["ok"] and PROBLEM in checks["gate"]["detail"]
    models = tmp_path / "models"
    refused = install(model, models)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert [line for line in refused.stderr.splitlines() if line.strip()] == [
        f"error: {model} failed its export gate ({PROBLEM}), nothing installed; "
        "pass --accept-failed-gate to install it anyway"]
    assert not models.exists() or not list(models.iterdir())

    accepted = install(model, models, "--accept-failed-gate")
    assert accepted.exit_code == 0, accepted.output
    assert "warning: installed although failed its export gate" in accepted.stderr
    card = json.loads((models / "current" / "color-int8.card.json").read_text())
    assert card["gate"]["passed"] is False and card["gate"]["problem"] == PROBLEM
    assert "--accept-failed-gate" in card["gate"]["accepted"]
    code, checks = doctor(tmp_path, models / "current")
    assert code == 0 and checks["gate"]["ok"]
    assert PROBLEM in checks["gate"]["detail"] and "accepted by sorter model install" in checks["gate"]["detail"]
    assert json.loads(model.with_name("color-int8.card.json").read_text()).get("gate", {}).get("accepted") is None
    again = install(model, models, "--accept-failed-gate")  # idempotent: the acceptance is kept, not restamped
    assert again.exit_code == 0 and json.loads((models / "current" / "color-int8.card.json").read_text()) == card


def test_a_passed_gate_installs_without_a_flag(tmp_path):
    model = bundle(tmp_path / "b", gate={"passed": True, "problem": None})
    assert install(model, tmp_path / "models").exit_code == 0
    code, checks = doctor(tmp_path, tmp_path / "models" / "current")
    assert code == 0 and checks["gate"]["detail"] == "passed its export gate"


def recorded(tmp_path: Path) -> tuple[Path, list[dict]]:
    """The colour model with sample predictions recorded by the runtime, as the export does."""
    from sorter.doctor import record_samples

    samples = record_samples(Classifier(COLOR_INT8, num_threads=1), colour_images(),
                             ["freshred", "freshgreen", "rottenblue"])
    rows = [s.model_dump(mode="json") for s in samples]
    return bundle(tmp_path / "b", samples=rows), rows


def test_recorded_sample_predictions_are_reproduced(tmp_path):
    model, rows = recorded(tmp_path)
    assert [r["label"] for r in rows] == ["freshred", "freshgreen", "rottenblue"]
    assert all(max(r["scores"]) > 0.9 for r in rows)
    code, checks = doctor(tmp_path, model)
    assert code == 0 and checks["parity"]["ok"] and checks["parity"]["data"]["samples"] == 3
    assert checks["parity"]["data"]["max_diff"] <= 0.01
    assert install(model, tmp_path / "models").exit_code == 0  # samples travel inside the card


@pytest.mark.parametrize("lie", ["label", "scores", "image"])
def test_a_bundle_that_does_not_reproduce_its_card_fails(tmp_path, lie):
    model, rows = recorded(tmp_path)
    if lie == "label":  # the card says the red sample is green: the bundle does not compute that
        rows[0]["label"] = "freshgreen"
        rows[0]["scores"] = [0.02, 0.96, 0.02]
        why = "sample 0: predicts freshred"
    elif lie == "scores":
        rows[1]["scores"] = [0.2, 0.78, 0.02]
        why = "sample 1: scores differ"
    else:
        rows[2]["jpeg"] = "bm90IGFuIGltYWdl"  # base64 of "not an image"
        why = "sample 2 is not a decodable image"
    card = json.loads(model.with_name("color-int8.card.json").read_text())
    model.with_name("color-int8.card.json").write_text(json.dumps({**card, "samples": rows}))
    parity = {c.name: c for c in check_model(model, threads=1)}["parity"]
    assert not parity.ok and why in parity.detail, parity.detail
    code, checks = doctor(tmp_path, model)
    assert code == 1 and why in checks["parity"]["detail"]
    refused = install(model, tmp_path / "models")
    assert refused.exit_code == 1 and "parity:" in refused.stderr and "Traceback" not in refused.output


def test_a_card_without_samples_says_parity_was_not_checked(tmp_path):
    parity = {c.name: c for c in check_model(COLOR_INT8, threads=1)}["parity"]
    assert parity.ok and "records no sample predictions" in parity.detail


def test_the_shipped_bundle_reproduces_its_recorded_predictions():
    from sorter.model import DEFAULT_MODEL

    checks = {c.name: c for c in check_model(DEFAULT_MODEL, threads=1)}
    assert checks["parity"].ok and checks["parity"].data["samples"] == 6, checks["parity"].detail
    assert checks["gate"].ok and checks["card"].ok and checks["model_hash"].detail == "matches the card"


def test_an_export_kept_with_allow_drop_records_its_gate_and_samples(tmp_path):
    """End to end: `sorter export --allow-drop` of a one-class model → install refused → accepted."""
    pytest.importorskip("tensorflow")
    from tests.conftest import write_class_folders, write_run_folder
    from tests.test_export import CLASSES, ROTTEN, SIZE, one_class_model

    data = tmp_path / "data"
    write_class_folders(data, CLASSES, 6, SIZE, split="train", seed=1)
    write_class_folders(data, CLASSES, 4, SIZE, split="test", seed=2)
    run = write_run_folder(tmp_path / "flat", one_class_model(), CLASSES, ROTTEN, data)
    out = tmp_path / "exported"
    exported = runner.invoke(app, ["export", str(run), "--data", str(data), "--out", str(out), "--formats", "float32",
                                   "--latency-runs", "1", "--allow-drop"])
    assert exported.exit_code == 0, exported.output
    model = out / "flat-float32.tflite"
    card = json.loads(model.with_name("flat-float32.card.json").read_text())
    assert card["gate"]["passed"] is False and "single class" in card["gate"]["problem"]
    assert [s["true_label"] for s in card["samples"]] == CLASSES
    assert {s["label"] for s in card["samples"]} == {"freshapple"}  # what the one-class model says
    code, checks = doctor(tmp_path, model)
    assert code == 1 and not checks["gate"]["ok"] and checks["parity"]["ok"] and checks["card"]["ok"]
    models = tmp_path / "models"
    refused = install(model, models)
    assert refused.exit_code == 1 and "failed its export gate" in refused.stderr and not models.exists()
    assert install(model, models, "--accept-failed-gate").exit_code == 0
    assert doctor(tmp_path, models / "current")[0] == 0
