"""training.spread: mean ± sd of each test set's figures over one recipe's exports (one card per seed)."""

from __future__ import annotations

import json
from pathlib import Path

from training.spread import main, spread


def _card(folder: Path, name: str, accuracy: float, uncertain: float) -> Path:
    card = {"name": name, "labels": ["freshapples", "rottenapples"], "rotten_labels": ["rottenapples"],
            "input": {"height": 8, "width": 8, "dtype": "uint8"}, "quantization": "int8", "output": "logits",
            "ood": {"score": "distance", "threshold": -60.0,
                    "figures": {"non_produce": {"faces": {"flagged": accuracy}}}},
            "evaluation": {"test_sets": {"fruit_extra test split": {"accuracy": accuracy, "uncertain_rate": uncertain},
                                         "fruit_dev test split": {"accuracy": 0.97}}}}
    path = folder / f"{name}.card.json"
    path.write_text(json.dumps(card))
    return path


def test_mean_and_sample_sd_per_test_set_and_figure(tmp_path, capsys):
    cards = [_card(tmp_path, f"s{i}", acc, unc) for i, (acc, unc) in enumerate([(0.90, 0.10), (0.92, 0.06),
                                                                                   (0.94, 0.08)])]
    got = spread(cards)
    extra = got["fruit_extra test split"]
    assert extra["accuracy"]["mean"] == 0.92 and extra["accuracy"]["sd"] == 0.02 and extra["accuracy"]["n"] == 3
    assert extra["uncertain_rate"]["mean"] == 0.08 and extra["uncertain_rate"]["sd"] == 0.02
    assert got["fruit_dev test split"]["accuracy"] == {"mean": 0.97, "sd": 0.0, "n": 3, "values": [0.97] * 3}
    assert "uncertain_rate" not in got["fruit_dev test split"]
    assert got["non-produce: faces"]["unknown_rate"]["values"] == [0.90, 0.92, 0.94]
    main([str(c) for c in cards])
    out = capsys.readouterr().out
    assert "| fruit_extra test split (3 runs) |  | 92.00% ± 2.00% |" in out
    _card(tmp_path, "s0", 0.90, 0.10)  # a figure only some cards carry says over how many runs it is
    extra = json.loads((tmp_path / "s0.card.json").read_text())
    extra["evaluation"]["test_sets"]["fruit_extra test split"]["top1_accuracy"] = 0.95
    (tmp_path / "s0.card.json").write_text(json.dumps(extra))
    main([str(c) for c in cards])
    assert "| fruit_extra test split (3 runs) | 95.00% ± 0.00% (of 1) | 92.00% ± 2.00% |" in capsys.readouterr().out
