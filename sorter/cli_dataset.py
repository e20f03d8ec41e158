"""`sorter dataset build`: the line's audited photos as a training data set (thin CLI over sorter.dataset)."""

from __future__ import annotations

from pathlib import Path

import typer

from sorter.cli_options import ConfigOpt, DbOpt, command_settings
from sorter.console import cell, err, fail, print_table

dataset_app = typer.Typer(help="Turn audited items into training data (class folders with a manifest).",
                          no_args_is_help=True, rich_markup_mode=None)


@dataset_app.command("build")
def dataset_build(ctx: typer.Context,
                  out: Path = typer.Option(..., "--out", "-o", help="Folder for OUT/<true label>/ and MANIFEST.tsv "
                                                                    "(new, empty, or an earlier build)."),
                  db: Path | None = DbOpt,
                  since: str | None = typer.Option(None, "--since",
                                                   help="Only items received this recently: 30d, 12h, 2w."),
                  include_unaudited_confident: float | None = typer.Option(
                      None, "--include-unaudited-confident", min=0.0, max=1.0,
                      help="Also unaudited fresh/rotten items with confidence >= P, under their model label "
                           "(pseudo_label=1)."),
                  config: Path | None = ConfigOpt) -> None:
    """Audited items → OUT/<true label>/ (hard links where possible), one photo per content hash; the latest
    audit wins when auditors disagree. Prints a table per label and one line per photo left out."""
    from sorter.dataset import build_dataset
    from sorter.store import parse_age

    try:
        settings = command_settings(ctx, config, db=db)
        age = parse_age(since) if since else None
        ds = build_dataset(settings.db, out, since=age, include_unaudited_confident=include_unaudited_confident,
                           line=settings.line)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    _summary(ds)


def _summary(ds) -> None:
    """Per label: audited photos, pseudo-labelled ones, audited ones the model got wrong; then what was left out."""
    from rich.table import Table


    table = Table("label", "audited", "pseudo", "model disagreed")
    rows: dict[str, list[int]] = {}
    for p in ds.photos:
        counts = rows.setdefault(p.true_label, [0, 0, 0])
        counts[1 if p.pseudo else 0] += 1
        counts[2] += not p.pseudo and p.model_label != p.true_label
    for label, (audited, pseudo, wrong) in sorted(rows.items()):
        table.add_row(cell(label), str(audited), str(pseudo), str(wrong))
    table.add_row("total", *(str(sum(r[i] for r in rows.values())) for i in range(3)))
    print_table(table)
    for sha, reason in ds.conflicts:
        err.print(f"conflict {sha[:12]}: {reason}", highlight=False, markup=False, soft_wrap=True)
    for name, reason in ds.skipped:
        err.print(f"skipped {name[:12]}: {reason}", highlight=False, markup=False, soft_wrap=True)
    typer.echo(f"wrote {len(ds.photos)} photos ({ds.linked} hard-linked, {ds.copied} copied) and MANIFEST.tsv to "
               f"{ds.out}; {len(ds.skipped)} left out, {len(ds.conflicts)} with disagreeing auditors; "
               f"fingerprint {ds.fingerprint()[:16]}")
