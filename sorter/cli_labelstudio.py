"""`sorter audit export-labelstudio` / `audit import-labelstudio`: thin commands over sorter.labelstudio.

`register(audit_app)` adds them to the `audit` group.
"""

from __future__ import annotations

from pathlib import Path

import typer

from sorter.cli_options import ConfigOpt, DbOpt, command_settings
from sorter.console import card_or_none, err, fail, report_import

ROOT_ENV = ["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "LOCAL_FILES_DOCUMENT_ROOT"]  # Label Studio's own names


def register(audit_app: typer.Typer) -> None:
    """Add the Label Studio commands to `sorter audit`."""
    audit_app.command("export-labelstudio")(export_labelstudio)
    audit_app.command("import-labelstudio")(import_labelstudio)


def export_labelstudio(ctx: typer.Context,
                       sample_dir: Path = typer.Argument(..., help="A folder made by `sorter audit sample --out`."),
                       document_root: Path = typer.Option(..., "--document-root", envvar=ROOT_ENV,
                                                          help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT; "
                                                               "SAMPLE_DIR must be under it."),
                       db: Path | None = DbOpt,
                       model: Path | None = typer.Option(None, "--model", "-m", help="Model bundle (its card's "
                                                         "labels are the choices); default: the shipped one."),
                       config: Path | None = ConfigOpt
                       ) -> None:
    """Turn an audit sample into Label Studio tasks and a labeling config.

    Writes SAMPLE_DIR/labelstudio-tasks.json (local-files image URLs, the model's label as a pre-annotation,
    each photo's sha256) and SAMPLE_DIR/labelstudio-config.xml (Image + Choices with the card's labels)."""
    from sorter.labelstudio import LabelStudioError, export_sample

    try:
        settings = command_settings(ctx, config, model=model, db=db)
        result = export_sample(settings.db, sample_dir, document_root, card_or_none(settings.model, True).labels)
    except (LabelStudioError, OSError) as exc:
        fail(str(exc))
    for line in result.errors:
        err.print(line, highlight=False, markup=False, soft_wrap=True)
    if result.errors:
        typer.echo(f"nothing written: {len(result.errors)} errors")
        raise typer.Exit(1)
    typer.echo(f"wrote {result.tasks} tasks ({result.pre_annotated} pre-annotated) to {result.files[0]} and the "
               f"labeling config to {result.files[1]}; in the project use that config, add a Local files source "
               f"storage at {sample_dir.resolve()} (no sync), import the tasks; after labelling export as JSON "
               "and run `sorter audit import-labelstudio EXPORT.json`")


def import_labelstudio(ctx: typer.Context,
                       export: Path = typer.Argument(..., help="Label Studio's JSON export (a list of tasks)."),
                       document_root: Path | None = typer.Option(None, "--document-root", envvar=ROOT_ENV,
                                                                 help="Find tasks without data.sha256 by hashing "
                                                                      "their local file under this root."),
                       db: Path | None = DbOpt,
                       model: Path | None = typer.Option(None, "--model", "-m", help="Model bundle (its card's "
                                                         "labels are the valid choices); default: the shipped one."),
                       config: Path | None = ConfigOpt,
                       partial: bool = typer.Option(False, "--partial",
                                                    help="Import the valid annotations even when others are wrong.")
                       ) -> None:
    """Import a Label Studio JSON export as audits, matched by content hash.

    One audit per item and annotator; skipped, empty and superseded annotations are listed, one line each."""
    from sorter.labelstudio import LabelStudioError, import_export

    try:
        settings = command_settings(ctx, config, model=model, db=db)
        result = import_export(settings.db, export, card_or_none(settings.model, True).labels, document_root,
                               partial)
    except (LabelStudioError, OSError) as exc:
        fail(str(exc))
    for line in result.notes:
        err.print(line, highlight=False, markup=False, soft_wrap=True)
    report_import(result)
