"""What every command prints: one-line errors and warnings on stderr, whole table cells, the model card
an audit needs. Shared by sorter.cli, its sub-apps and training.cli, none of which imports another."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr and a non-zero exit: the user sees what happened, not a traceback."""
    from sorter.redact import mask_text

    message = mask_text(message)  # an error may quote a camera or webhook URL: never its password
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """One yellow warning line on stderr; the message prints as written (paths may hold [brackets])."""
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def cell(value: object) -> str:
    """A table cell as written: Rich reads cells as markup, and a path or label may hold [brackets]."""
    return escape(str(value))


def print_table(table: Table) -> None:
    """Whole cells, always. On a terminal a long path folds inside its column; in a pipe or a CI log
    the table is as wide as its widest row, so each path stays whole on one line (grep finds it)."""
    console = Console()
    for column in table.columns:
        column.overflow = "fold"
    if not console.is_terminal:
        console.width = max(console.width, Measurement.get(console, console.options.update_width(10**6),
                                                           table).maximum)
    console.print(table)


def card_or_none(model: Path | None, required: bool):
    """The model card (labels, rotten labels, test-set figures); audits cannot go without one."""
    from sorter.card import load_card
    from sorter.model import resolve_model

    try:
        return load_card(resolve_model(model))
    except (OSError, ValueError) as exc:
        if required:
            fail(f"{exc} (the card's labels are needed: pass --model)")
        warn(f"no model card ({exc}); no drift against test-set figures")
        return None


def report_import(result) -> NoReturn:
    """An import's error lines, its one-line count and its exit code (1 with errors)."""
    for line in result.errors:
        err.print(line, highlight=False, markup=False, soft_wrap=True)
    verb = "imported" if result.written else "nothing imported"
    typer.echo(f"{verb}: {result.inserted} new, {result.updated} changed, {result.unchanged} unchanged, "
               f"{result.skipped} skipped, {len(result.errors)} errors")
    if result.controls is not None:  # answers on photos of known label (`audit sample --control-data`)
        typer.echo(result.controls.line())
    raise typer.Exit(1 if result.errors else 0)
