"""Before `sorter retrain` builds or trains anything: do the audits' control photos say they can be trusted?

An auditor who swaps fresh and rotten on every photo of a line swaps the field test with the training
share (both come from the same audits), so the challenger "wins" there, and the base test set (another
domain) does not move: the comparison cannot see it. The control photos `sorter audit sample
--control-data` shuffled in among the items can (`sorter.controls`): their labels are known. Audits whose
samples' controls were answered below `--min-control-accuracy` are refused; audits with no answered
controls (a database from before them, a sample drawn without them) are used with a one-line warning.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from rich.console import Console

from sorter import controls, store
from sorter.card import ControlFigures


@dataclass
class Gate:
    figures: ControlFigures
    refusal: str | None = None  # one line: why the audits are not trained on


def check(db: Path, since: timedelta | None, min_accuracy: float, console: Console) -> Gate:
    """The control figures of the audits a retrain would use; a refusal when they score below the bar."""
    try:
        conn = store.open_reader(db)
        try:
            figures = controls.figures(conn, since)
        finally:
            conn.close()
    except (sqlite3.Error, OSError):
        return Gate(ControlFigures())  # no database, not a database: the data set step says so, in its words
    figures.min_accuracy = min_accuracy
    if figures.accuracy is None:
        placed = f"their samples hold {figures.placed} control photos but no answers on them" if figures.placed \
            else "no audited item was drawn in a sample with control photos"
        console.print(f"[yellow]warning:[/yellow] {placed} (`sorter audit sample --control-data`): audits that "
                      "swap labels cannot be caught; going on", highlight=False, soft_wrap=True)
        return Gate(figures)
    if figures.accuracy < min_accuracy:
        return Gate(figures, f"kept the current model, nothing trained: the auditors gave {figures.right} of "
                             f"{figures.answered} control photos of known label their label ({figures.accuracy:.0%}, "
                             f"below --min-control-accuracy {min_accuracy:.0%}): the audits disagree with known "
                             "labels (swapped or careless?); check them and import them again")
    return Gate(figures)
