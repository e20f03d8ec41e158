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


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")


@app.command()
def watch(incoming: Path = typer.Argument(..., help="Folder to watch; files already there are processed first."),
          out: Path | None = typer.Option(None, "--out", "-o",
                                          help="Where sorted files go (fresh/<label>, rotten/<label>, uncertain, "
                                               "rejected, duplicates); default: config `out`, else "
                                               "INCOMING/../sorted."),
          db: Path | None = typer.Option(None, "--db", help="Results database; default: config `db`."),
          once: bool = typer.Option(False, "--once", help="Process the backlog, then exit (cron/batch use)."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Classify and record, but move nothing."),
          model: Path | None = ModelOpt, config: Path | None = ConfigOpt) -> None:
    """Sort files dropped into INCOMING; SIGINT/SIGTERM finish the batch in flight and exit 0."""
    import signal
    import threading

    from sorter.classify import rules_for
    from sorter.watch import Watcher

    _setup_logging()
    if not incoming.is_dir():
        fail(f"{incoming} is not a folder")
    settings, clf = load_classifier(model, config)
    target = out or settings.out or incoming.resolve().parent / "sorted"
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rules = rules_for(clf, settings.default_min_confidence, settings.min_confidence)
    try:
        watcher = Watcher(incoming, target, db or settings.db, clf, rules, settings, dry_run=dry_run)
    except Exception as exc:  # the database cannot be opened: say so in one line
        fail(f"cannot open database {db or settings.db}: {exc}")
    summary = watcher.run(stop, once=once)
    err.print(f"routed {summary.routed}, duplicates {summary.duplicates}, rejected {summary.rejected}, "
              f"held {summary.held}, recovered {summary.recovered}", highlight=False)


@app.command()
def camera(device: str | None = typer.Option(None, "--device", "-d",
                                              help="0 (local index), rtsp://… or http://… (MJPEG), or a video file."),
           list_: bool = typer.Option(False, "--list", help="Probe local camera indices and print what answers."),
           trigger: str | None = typer.Option(None, "--trigger", help="interval | motion | line."),
           interval_ms: int | None = typer.Option(None, "--interval-ms", help="Interval trigger period."),
           roi: str | None = typer.Option(None, "--roi", help="x,y,w,h crop applied before classification."),
           votes: int | None = typer.Option(None, "--votes", help="K: agreeing frames needed to act."),
           window: int | None = typer.Option(None, "--window", help="N: frames considered per item."),
           stall_seconds: float | None = typer.Option(None, "--stall-seconds",
                                                      help="No fresh frame for this long = offline."),
           loop: bool | None = typer.Option(None, "--loop", help="Replay a video file forever."),
           stdin: bool | None = typer.Option(None, "--stdin", help="Line trigger: each stdin line is one item."),
           control_port: int | None = typer.Option(None, "--control-port",
                                                   help="127.0.0.1 port: POST /trigger, GET /status (0 = any)."),
           snapshots: Path | None = typer.Option(None, "--snapshots", help="Folder for rotten/uncertain JPEGs."),
           webhook: str | None = typer.Option(None, "--webhook", help="POST each decision as JSON to this URL."),
           mqtt: str | None = typer.Option(None, "--mqtt", help="MQTT broker host[:port]."),
           run_cmd: str | None = typer.Option(None, "--exec", help="Command run per decision (SORTER_* env)."),
           max_items: int | None = typer.Option(None, "--max-items", help="Stop after this many decisions."),
           db: Path | None = typer.Option(None, "--db", help="Results database; default: config `db`."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Classify and record, fire no outputs."),
           as_json: bool = typer.Option(False, "--json", help="Print the final status as JSON."),
           model: Path | None = ModelOpt, config: Path | None = ConfigOpt) -> None:
    """Classify produce from a live stream; survives unplugs and stalls; SIGINT/SIGTERM exit 0."""
    import shlex
    import signal
    import threading

    from sorter.capture import probe

    if list_:
        found = probe()
        for cam in found:
            typer.echo(f"{cam['index']}: {cam['width']}x{cam['height']} ({cam['backend']})")
        if not found:
            err.print("no local camera answered (indices 0-9)")
        raise typer.Exit(0 if found else 1)
    from sorter.camera import serve, with_flags
    from sorter.classify import rules_for
    from sorter.config import ConfigError

    _setup_logging()
    settings, clf = load_classifier(model, config)
    outputs: dict = {}
    if webhook:
        outputs["webhook"] = {"url": webhook}
    if mqtt:
        host, _, port = mqtt.partition(":")
        outputs["mqtt"] = {"host": host, "port": port or 1883}
    if run_cmd:
        outputs["command"] = {"argv": shlex.split(run_cmd)}
    try:
        settings = with_flags(settings, dict(device=device, trigger=trigger, interval_ms=interval_ms, roi=roi,
                                             votes=votes, window=window, stall_seconds=stall_seconds, loop=loop,
                                             stdin_trigger=stdin, control_port=control_port,
                                             snapshots=snapshots), outputs)
    except ConfigError as exc:
        fail(str(exc))
    if settings.camera.device is None:
        fail("no camera: pass --device (or set camera.device in the config)")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rules = rules_for(clf, settings.default_min_confidence, settings.min_confidence)
    try:
        status = serve(settings.camera.device, clf, rules, settings, db or settings.db, stop, dry_run, max_items)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(status, indent=2))
    d = status["decisions"]
    err.print(f"decisions: fresh {d['fresh']}, rotten {d['rotten']}, uncertain {d['uncertain']}; "
              f"frames classified {status['classified']}, dropped {status['dropped']}, "
              f"offline {status['capture']['offline']}x", highlight=False)


db_app = typer.Typer(help="Inspect and maintain the results database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
DbOpt = typer.Option(Path("sorter.db"), "--db", help="Results database (opened read-only where possible).")


@db_app.command("stats")
def db_stats(db: Path = DbOpt, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Counts by verdict, label, error and state, and the time range covered."""
    from sorter.store import stats

    try:
        figures = stats(db)
    except (FileNotFoundError, OSError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    typer.echo(f"items: {figures['items']} (duplicates {figures['duplicates']}), "
               f"from {figures['first']} to {figures['last']}")
    for key in ("by_verdict", "by_label", "by_error", "by_state"):
        table = Table(key.removeprefix("by_"), "count")
        for name, count in figures[key].items():
            table.add_row(name, str(count))
        Console().print(table)


@db_app.command("prune")
def db_prune(db: Path = DbOpt,
             older_than: str = typer.Option(..., "--older-than", help="Age such as 90d, 12h, 2w."),
             dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be deleted.")) -> None:
    """Delete finished rows older than the given age in small batches, then VACUUM."""
    from sorter.store import parse_age, prune

    try:
        result = prune(db, parse_age(older_than), dry_run=dry_run)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {result.matched if dry_run else result.deleted} rows"
               + (" and vacuumed" if result.vacuumed else ""))


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
