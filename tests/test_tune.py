"""`sorter tune`: k-fold search with frozen baselines, and a best.json that `sorter train` accepts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sorter.cli import app
from tests.conftest import import_tensorflow

tf = import_tensorflow()


def test_search_ranks_trials_with_baselines_and_best_json_trains(tmp_path, class_folders):
    data = class_folders(tmp_path / "data", ["fresh", "rotten"], per_class=6)
    out = tmp_path / "tune"
    result = CliRunner().invoke(app, ["tune", str(data), "--trials", "2", "--folds", "2", "--epochs", "1",
                                      "--weights", "none", "--img-size", "32", "--out", str(out), "--seed", "3"],
                                env={"COLUMNS": "200"})  # the whole table on one line per row
    assert result.exit_code == 0, result.output
    from training.tune import recommendation, trial_name

    report = json.loads((out / "tune.json").read_text())
    trials = [row for row in report["rows"] if row["params"]]
    for word in ("rank", "cv accuracy", "logreg (frozen)", "linear_svm (frozen)",
                 *(trial_name("resnet50", row["params"]) for row in trials)):
        assert word in result.output
    assert report["recommendation"] == recommendation(report["rows"])
    assert report["recommendation"] in " ".join(result.output.split())
    means = [row["mean"] for row in report["rows"]]
    assert len(means) == 4 and means == sorted(means, reverse=True)
    assert all(len(row["folds"]) == 2 and 0 <= row["mean"] <= 1 for row in report["rows"])
    assert set(report["baselines_test"]) == {"logreg", "linear_svm"}
    best = json.loads((out / "best.json").read_text())
    assert {"lr", "dropout", "unfreeze", "batch_size", "optimizer"} <= set(best) and best["img_size"] == 32

    trained = CliRunner().invoke(app, ["train", str(data), "--config", str(out / "best.json"), "--epochs", "1",
                                       "--fine-tune-epochs", "0", "--runs-dir", str(tmp_path / "runs")])
    assert trained.exit_code == 0, trained.output
    config = json.loads((tmp_path / "runs" / "train" / "config.json").read_text())
    assert {k: config[k] for k in best} == best


def test_candidates_are_seeded_and_grid_is_complete():
    from training.tune import GRID, candidates

    assert candidates("random", 5, seed=1) == candidates("random", 5, seed=1) != candidates("random", 5, seed=2)
    assert len(candidates("grid", None, 0)) == int(np.prod([len(v) for v in GRID.values()]))
    with pytest.raises(ValueError, match="--search"):
        candidates("bayes", 2, 0)


def test_embed_and_frozen_baselines(tmp_path, class_folders):
    from training.backbones import build_backbone
    from training.data import discover
    from training.tune import embed, frozen_baselines

    backbone = build_backbone("resnet50", weights="none", input_size=32)
    feats = embed(backbone, np.zeros((5, 32, 32, 3), np.uint8), batch=2)
    assert feats.shape == (5, 2048)
    splits = discover(class_folders(tmp_path, ["a", "b", "c"], per_class=6), seed=0)
    scores = frozen_baselines(splits, "resnet50", "none", 32)
    assert scores["n_test"] == 3 and scores["n_train"] == 15
    assert 0 <= scores["logreg"]["accuracy"] <= 1 and 0 <= scores["linear_svm"]["macro_f1"] <= 1


def _rows(*models: tuple[str, float, dict | None]) -> list[dict]:
    return [{"model": m, "mean": mean, "std": 0.0, "folds": [mean], "params": p or {}} for m, mean, p in models]


def test_baseline_that_beats_every_trial_is_not_passed_off_as_a_fine_tuned_winner():
    """Issue 14 item 25: the frozen baselines won (0.70 vs 0.33) and tune still recommended a trial."""
    from training.tune import recommendation, trial_name

    head = {"lr": 1e-3, "unfreeze": 0}
    rows = _rows(("logreg (frozen)", 0.70, None), ("linear_svm (frozen)", 0.66, None),
                 (trial_name("resnet50", head), 0.33, head))
    text = recommendation(rows)
    assert text.startswith("no trained trial is recommended: logreg (frozen) scores 0.700")
    assert "rank 3, resnet50 head only (frozen), 0.330" in text and "not a winner" in text
    tuned = {"lr": 1e-4, "unfreeze": 30}
    rows = _rows((trial_name("resnet50", tuned), 0.9, tuned), ("logreg (frozen)", 0.7, None))
    assert recommendation(rows).startswith("recommended: rank 1, resnet50 fine-tuned (top 30 layers)")


def test_head_only_trials_are_not_called_fine_tuned():
    from training.tune import trial_name

    assert trial_name("resnet50", {"unfreeze": 0}) == "resnet50 head only (frozen)"
    assert trial_name("resnet50", {"unfreeze": 10}) == "resnet50 fine-tuned (top 10 layers)"
