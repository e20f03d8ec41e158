"""`sorter doctor`: real model parity checks, DB integrity on a read-only connection, disk, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter import store
from sorter.cli import app
from sorter.config import Settings
from sorter.doctor import check_database, check_model, run_checks
from sorter.model import DEFAULT_MODEL

pytestmark = pytest.mark.timeout(60)
runner = CliRunner()


def doctor(tmp_path: Path, model: Path, *extra: str):
    cfg = tmp_path / "s.toml"
    if not cfg.exists():
        cfg.write_text(f"db = '{tmp_path / 'db.sqlite'}'\nthreads = 1\n")
    result = runner.invoke(app, ["doctor", "--json", "--no-cameras", "-m", str(model), "-c", str(cfg), *extra])
    return result.exit_code, json.loads(result.stdout)


def by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def test_healthy_box_passes_every_check(tmp_path, color_model):
    store.open_writer(tmp_path / "db.sqlite").close()
    code, report = doctor(tmp_path, color_model)
    checks = by_name(report)
    assert code == 0 and report["ok"], report
    assert {"versions", "model", "model_hash", "inference", "disk", "database"} <= set(checks)
    assert checks["versions"]["data"]["interpreter"] and checks["versions"]["data"]["opencv"]
    assert abs(checks["inference"]["data"]["sum"] - 1) < 0.01 and checks["model"]["data"]["threads"] == 1
    assert "integrity ok" in checks["database"]["detail"]


def test_corrupt_database_fails_the_doctor(tmp_path, color_model):
    db = tmp_path / "db.sqlite"
    store.open_writer(db).close()
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # wreck the schema page after the header
    db.write_bytes(bytes(data))
    assert not check_database(db).ok
    code, report = doctor(tmp_path, color_model)
    assert code == 1 and not by_name(report)["database"]["ok"]


def test_bundle_disagreeing_with_its_card_fails(tmp_path, color_model):
    bad = tmp_path / "bad.tflite"
    shutil.copy(color_model, bad)
    card = json.loads(color_model.with_name("color-int8.card.json").read_text())
    card["model_sha256"] = "0" * 64
    (tmp_path / "bad.card.json").write_text(json.dumps(card))
    assert [c.ok for c in check_model(bad)] == [False]  # the loader refuses it outright
    card["labels"] = card["labels"][:-1]
    card.pop("model_sha256")
    (tmp_path / "bad.card.json").write_text(json.dumps(card))
    checks = check_model(bad)
    assert not checks[0].ok and "labels" in checks[0].detail
    code, report = doctor(tmp_path, bad)
    assert code == 1 and not report["ok"]


def test_low_disk_is_a_failure(tmp_path, color_model):
    checks = {c.name: c for c in run_checks(Settings(db=tmp_path / "x.db", min_free_mb=10**12), color_model,
                                            cameras=False)}
    assert not checks["disk"].ok and "low" in checks["disk"].detail


def _nan_score_bundle(path):
    """A real two-output TFLite graph whose distance score is NaN (sqrt of a negative number)."""
    from tests.conftest import write_distance_bundle

    return write_distance_bundle(path, 16, lambda tf, means: tf.sqrt(-1.0 - tf.reduce_sum(means, axis=1,
                                                                                          keepdims=True)), "broken")


def test_a_nan_ood_score_fails_the_inference_check(tmp_path):
    """NaN is never below the threshold, so such a model would never say unknown: the doctor says so."""
    from sorter.doctor import check_model

    checks = {c.name: c for c in check_model(_nan_score_bundle(tmp_path / "broken.tflite"), threads=1)}
    assert not checks["inference"].ok and "distance score nan (not finite)" in checks["inference"].detail
    shipped = {c.name: c for c in check_model(DEFAULT_MODEL, threads=1)}
    assert shipped["inference"].ok and "; distance score -" in shipped["inference"].detail
