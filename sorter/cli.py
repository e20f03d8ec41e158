"""The `sorter` command: thin Typer commands over the library modules."""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sorter import __version__

app = typer.Typer(help="Edge-device batch sorter for produce.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
err = Console(stderr=True)
ModelOpt = typer.Option(None, "--model", "-m",
                        help="Model bundle (.tflite with its .card.json); default: the shipped one.")
ConfigOpt = typer.Option(None, "--config", "-c", help="TOML configuration file.")


def fail(message: str, code: int = 2) -> None:
    """One line on stderr and a non-zero exit: the user sees what happened, not a traceback."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from sorter.model import interpreter_backend

        backend = interpreter_backend()[0]
        typer.echo(f"sorter {__version__} (interpreter: {backend}, python {platform.python_version()})")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and the interpreter in use.")) -> None:
    """Classify produce with a TFLite model, log results in SQLite and route rotten items."""


def load_classifier(model: Path | None, config: Path | None = None):
    """Settings and a ready classifier, or one clear line and exit 2."""
    from sorter.config import ConfigError, load_settings
    from sorter.model import Classifier, ModelError

    try:
        settings = load_settings(config, model=model)
        return settings, Classifier(settings.model, num_threads=settings.threads,
                                    max_batch=settings.batch_size)
    except (ConfigError, ModelError) as exc:
        fail(str(exc))
    raise AssertionError("unreachable")


@app.command()
def classify(paths: list[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
             model: Path | None = ModelOpt, config: Path | None = ConfigOpt,
             as_json: bool = typer.Option(False, "--json", help="One JSON object per line on stdout."),
             silent: bool = typer.Option(False, "--silent", help="No progress bar.")) -> None:
    """Classify image files; exit 1 if any file could not be classified."""
    from rich.progress import Progress

    from sorter.classify import classify_files, collect, rules_for

    settings, clf = load_classifier(model, config)
    files = collect(paths)
    rules = rules_for(clf, settings.default_min_confidence, settings.min_confidence)
    table = Table("path", "label", "confidence", "verdict")
    failed = 0
    with Progress(console=err, disable=silent or len(files) < 20, transient=True) as progress:
        task = progress.add_task("classifying", total=len(files))
        for result in classify_files(files, clf, rules, settings.batch_size, settings.max_pixels):
            progress.advance(task)
            failed += result.error is not None
            if as_json:
                sys.stdout.write(json.dumps(result.as_json()) + "\n")
            elif result.error:
                table.add_row(result.path, "[red]error[/red]", "", result.error)
            else:
                table.add_row(result.path, result.label, f"{result.confidence:.3f}", result.verdict)
    if not as_json:
        Console().print(table)
    raise typer.Exit(1 if failed else 0)


@app.command()
def doctor(model: Path | None = ModelOpt,
           as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Print versions, the interpreter in use and its threads, and check the model loads."""
    import cv2
    import numpy as np

    from sorter.model import Classifier, ModelError, interpreter_backend

    checks: dict[str, object] = {"sorter": __version__, "python": platform.python_version(),
                                 "numpy": np.__version__, "opencv": cv2.__version__}
    ok = True
    try:
        checks["interpreter"] = interpreter_backend()[0]
        clf = Classifier(model)
        checks.update(model=str(clf.path), model_name=clf.card.name, threads=clf.num_threads,
                      quantization=clf.card.quantization, labels=clf.labels)
    except ModelError as exc:
        ok, checks["model_error"] = False, str(exc)
    checks["ok"] = ok
    if as_json:
        typer.echo(json.dumps(checks, indent=2))
    else:
        for key, value in checks.items():
            typer.echo(f"{key:>12}: {value}")
    raise typer.Exit(0 if ok else 1)


def _forward(verb: str) -> None:
    """Register `sorter VERB` as a pass-through to training/, imported only when called."""

    @app.command(verb, context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                 add_help_option=False, help=f"{verb.capitalize()} a model (needs the [train] extra; see --help).")
    def command(ctx: typer.Context) -> None:
        if importlib.util.find_spec("tensorflow") is None:
            fail(f"'sorter {verb}' needs TensorFlow: pip install 'sorter[train]'")
        from training.cli import app as training_app

        training_app([verb, *ctx.args], prog_name="sorter", standalone_mode=True)


for _verb in ("train", "evaluate", "export", "tune"):
    _forward(_verb)
