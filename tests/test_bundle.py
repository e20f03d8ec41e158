"""`sorter model install|rollback`: doctor check first, atomic `current` symlink, previous kept."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from sorter.bundle import BundleError, install, rollback
from sorter.cli import app
from sorter.model import Classifier
from tests.conftest import COLOR_FLOAT, COLOR_INT8

pytestmark = pytest.mark.timeout(60)


def test_install_swap_and_rollback(tmp_path):
    models = tmp_path / "models"
    first, _ = install(COLOR_INT8, models)
    assert (models / "current").resolve() == first and (first / "color-int8.card.json").is_file()
    assert Classifier(models / "current", num_threads=1).card.quantization == "int8"  # config points here
    second, _ = install(COLOR_FLOAT, models)
    assert (models / "current").resolve() == second and (models / "previous").resolve() == first
    assert install(COLOR_FLOAT, models)[0] == second and (models / "previous").resolve() == first  # idempotent
    assert rollback(models) == first
    assert (models / "current").resolve() == first and (models / "previous").resolve() == second
    assert not list(models.glob(".*"))  # no temporary links or partial folders left


def test_a_failing_bundle_changes_nothing(tmp_path):
    models = tmp_path / "models"
    install(COLOR_INT8, models)
    before = (models / "current").resolve()
    bad = tmp_path / "bad.tflite"
    shutil.copy(COLOR_FLOAT, bad)
    card = json.loads(COLOR_FLOAT.with_name("color-float32.card.json").read_text())
    card["input"]["height"] += 1
    (tmp_path / "bad.card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="nothing installed"):
        install(bad, models)
    assert (models / "current").resolve() == before and not (models / "previous").exists()
    result = CliRunner().invoke(app, ["model", "install", str(bad), "--dir", str(models)])
    assert result.exit_code == 1 and "failed its checks" in result.output
    result = CliRunner().invoke(app, ["model", "rollback", "--dir", str(models)])
    assert result.exit_code == 1 and "no previous model" in result.output


def test_cli_install_then_rollback(tmp_path):
    models = tmp_path / "models"
    runner = CliRunner()
    for model in (COLOR_INT8, COLOR_FLOAT):
        result = runner.invoke(app, ["model", "install", str(model), "--dir", str(models)])
        assert result.exit_code == 0, result.output
    assert "color-float32" in (models / "current").resolve().name
    result = runner.invoke(app, ["model", "rollback", "--dir", str(models)])
    assert result.exit_code == 0 and "color-int8" in (models / "current").resolve().name
