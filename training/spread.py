"""Mean ± sd of the field figures over several exports of one recipe (one per seed).

A single run's figure is one draw: runs that differ only in their seed move by a point or more on a
few hundred photos. Each card records what its rule did on each test set (`evaluation.test_sets`);
this reads several cards and reports every figure as mean ± sd (sample sd, n - 1), so the README
quotes the recipe, not its best seed.

    python -m training.spread runs/exports/*/fruit-*-int8.card.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from sorter.card import load_card

FIGURES = ("top1_accuracy", "accuracy", "fresh_vs_rotten_accuracy", "uncertain_rate", "unknown_rate",
           "decided_accuracy", "rotten_caught", "fresh_kept", "ece")


def spread(cards: list[Path]) -> dict[str, dict[str, dict[str, float]]]:
    """{test set: {figure: {"mean", "sd", "n", "values"}}} over the cards that report that set."""
    values: dict[str, dict[str, list[float]]] = {}
    for path in cards:
        card = load_card(path.with_name(path.name.replace(".card.json", ".tflite")))
        for name, figures in ((card.evaluation or {}).get("test_sets") or {}).items():
            for key in FIGURES:
                if figures.get(key) is not None:
                    values.setdefault(name, {}).setdefault(key, []).append(float(figures[key]))
        for name, figures in ((card.ood.figures if card.ood else {}).get("non_produce") or {}).items():
            if figures.get("flagged") is not None:  # non-produce photos: the share called unknown
                values.setdefault(f"non-produce: {name}", {}).setdefault("unknown_rate", []).append(
                    float(figures["flagged"]))
    return {name: {key: _summary(v) for key, v in per.items()} for name, per in values.items()}


def _summary(v: list[float]) -> dict:
    return {"mean": round(statistics.fmean(v), 6), "sd": round(statistics.stdev(v), 6) if len(v) > 1 else 0.0,
            "n": len(v), "values": v}


def table(result: dict) -> str:
    lines = ["| test set | " + " | ".join(FIGURES) + " |", "|---" * (len(FIGURES) + 1) + "|"]
    for name, per in result.items():
        n = max(s["n"] for s in per.values())
        cells = [_cell(per[k], n) if k in per else "" for k in FIGURES]
        lines.append(f"| {name} ({n} runs) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(summary: dict, runs: int) -> str:
    """mean ± sd, saying how many runs it is over when fewer cards than the row's carry the figure."""
    fewer = f" (of {summary['n']})" if summary["n"] < runs else ""
    return f"{summary['mean']:.2%} ± {summary['sd']:.2%}{fewer}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cards", nargs="+", type=Path, help="model cards (.card.json) of one recipe's exports")
    print(table(spread(parser.parse_args(argv).cards)))


if __name__ == "__main__":
    main()
