"""The `sorter` command: thin Typer commands over the library modules."""

from __future__ import annotations

import importlib.util
import json
import platform
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import typer
from rich.markup import escape
from rich.table import Table

from sorter import __version__
from sorter.cli_dataset import dataset_app
from sorter.cli_labelstudio import register as register_labelstudio
from sorter.cli_options import (
    ConfigOpt,
    DbOpt,
    Invocation,
    JsonOpt,
    ModelOpt,
    ReadOnlyDbOpt,
    command_settings,
    invocation,
)
from sorter.console import card_or_none, cell, err, fail, print_table, report_import, warn

if TYPE_CHECKING:
    from sorter.config import Flag

# Help texts print as written: Rich markup would eat bracketed words (`[auditor]`, `[time]`).
# Every Typer here passes PLAIN_HELP (tests/test_cli_markup.py checks each command's help).
PLAIN_HELP = None
app = typer.Typer(help="Edge-device batch sorter for produce.", no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=PLAIN_HELP)


class Closer(Protocol):
    """What a command starts beside its daemon (metrics server, fleet publisher) and closes after it."""

    def close(self) -> object: ...


def _version(value: bool) -> None:
    if value:
        from sorter.model import interpreter_backend

        backend = interpreter_backend()[0]
        typer.echo(f"sorter {__version__} (interpreter: {backend}, python {platform.python_version()})")
        raise typer.Exit()


_LOG: dict[str, str | None] = {"format": None}  # --log-format; None: the config's `log_format`


@app.callback()
def main(ctx: typer.Context,
         version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and the interpreter in use."),
         log_format: str | None = typer.Option(None, "--log-format",
                                               help="Log lines on stderr: text, or json (one object per line); "
                                                    "default: config `log_format` (SORTER_LOG_FORMAT), text."),
         config: Path | None = typer.Option(None, "--config", "-c",
                                            help="TOML configuration file for the command (its own --config "
                                                 "wins); default: SORTER_CONFIG, else /etc/sorter/sorter.toml.")
         ) -> None:
    """Classify produce with a TFLite model, log results in SQLite and route rotten items."""
    if log_format is not None and log_format not in ("text", "json"):
        fail(f"--log-format must be text or json, not {log_format!r}")
    _LOG["format"] = log_format
    ctx.obj = Invocation(config=config)  # a command loads its settings once, through command_settings


def load_classifier(ctx: typer.Context, model: Path | None, config: Path | None = None, pooled: bool = False,
                    *flags: Flag, uses: tuple[str, ...] | None = None):
    """Settings and a ready classifier, or one clear line and exit 2. `pooled`: the first of several
    interpreters side by side (watch), so its threads come from the inference layout."""
    from sorter.model import Classifier, ModelError, inference_layout

    settings = command_settings(ctx, config, *flags, uses=uses, model=model)
    try:
        threads = inference_layout(settings.interpreters, settings.threads)[1] if pooled else settings.threads
        return settings, Classifier(settings.model, num_threads=threads, max_batch=settings.batch_size)
    except ModelError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")


def decision_rules(clf, settings):
    """The verdict rules of this card under these settings, or one clear line and exit 2."""
    from sorter.classify import rules_for
    from sorter.config import ConfigError

    try:
        return rules_for(clf, settings)
    except ConfigError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")


@app.command()
def classify(ctx: typer.Context,
             paths: list[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
             model: Path | None = ModelOpt, config: Path | None = ConfigOpt,
             as_json: bool = typer.Option(False, "--json", help="One JSON object per line on stdout."),
             silent: bool = typer.Option(False, "--silent", help="No progress bar.")) -> None:
    """Classify image files; exit 1 if any file could not be classified."""
    from rich.progress import Progress

    from sorter.classify import classify_files, collect

    settings, clf = load_classifier(ctx, model, config, uses=())
    rules = decision_rules(clf, settings)
    files = collect(paths)
    if not files:  # an empty table and exit 0 read as "all classified"
        fail(f"no image files found in {', '.join(str(p) for p in paths)} (searched recursively)")
    table = Table("path", "label", "confidence", "verdict")
    failed = 0
    with Progress(console=err, disable=silent or len(files) < 20, transient=True) as progress:
        task = progress.add_task("classifying", total=len(files))
        for result in classify_files(files, clf, rules, settings.batch_size, settings.max_pixels,
                                     settings.max_file_bytes):
            progress.advance(task)
            failed += result.error is not None
            if as_json:
                sys.stdout.write(json.dumps(result.as_json()) + "\n")
            elif result.error:
                table.add_row(cell(result.path), "[red]error[/red]", "", cell(result.error))
            else:
                table.add_row(cell(result.path), cell(result.label), f"{result.confidence:.3f}", result.verdict)
    if not as_json:
        print_table(table)
    raise typer.Exit(1 if failed else 0)


@app.command()
def doctor(ctx: typer.Context, model: Path | None = ModelOpt, config: Path | None = ConfigOpt,
           incoming: Path | None = typer.Option(None, "--incoming", help="Folder whose free disk is checked too."),
           cameras: bool = typer.Option(True, "--cameras/--no-cameras", help="Probe local camera indices."),
           as_json: bool = JsonOpt) -> None:
    """Check versions, interpreter and threads, the model against its card, cameras, disk and the DB;
    exit 1 if any check fails."""
    from sorter.doctor import as_json as checks_json
    from sorter.doctor import run_checks

    settings = command_settings(ctx, config)
    checks = run_checks(settings, model, incoming, cameras)
    report = checks_json(checks)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            typer.echo(f"{mark} {check.name:>10}: {check.detail}")
    raise typer.Exit(0 if report["ok"] else 1)


def _stop_on_signals():
    """An event set by SIGINT/SIGTERM: daemons finish the work in flight, then exit 0."""
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _setup_logging(settings=None) -> None:
    """Log lines in the --log-format flag's format, else the config's `log_format` once it is loaded
    (called again then: the first call covers what is logged while the settings load)."""
    from sorter.logs import setup

    setup(_LOG["format"] or (settings.log_format if settings is not None else "text"))  # type: ignore[arg-type]


def _operations(settings, source: str, metrics_port: int | None):
    """Telemetry for the hooks, the /metrics server and the fleet publisher, as configured."""
    from sorter.metrics import MetricsServer, Telemetry

    telemetry = Telemetry(source)
    telemetry.model_loaded = True
    port = metrics_port if metrics_port is not None else settings.metrics.port
    closers: list[Closer] = []
    if port is not None:
        try:
            closers.append(MetricsServer(telemetry, settings.metrics.host, port).start())
        except OSError as exc:
            fail(f"cannot serve metrics on {settings.metrics.host}:{port}: {exc.strerror}")
    if settings.fleet.broker:
        from sorter.fleet import FleetPublisher

        publisher = FleetPublisher(settings.fleet, settings.line, source)
        telemetry.listeners.append(publisher.on_item)
        closers.insert(0, publisher)
    return telemetry, closers


def _close_all(closers) -> None:
    for closer in closers:
        closer.close()


MetricsPortOpt = typer.Option(None, "--metrics-port",
                              help="Serve /healthz and /metrics on this port (config metrics.host, 127.0.0.1).")


@app.command()
def watch(ctx: typer.Context,
          incoming: Path | None = typer.Argument(None, help="Folder to watch; files already there are processed "
                                                           "first; default: config `incoming`."),
          out: Path | None = typer.Option(None, "--out", "-o",
                                          help="Where sorted files go (fresh/<label>, rotten/<label>, uncertain, "
                                               "unknown/<label>, rejected, duplicates); default: config `out`, else "
                                               "INCOMING/../sorted."),
          db: Path | None = typer.Option(None, "--db", help="Results database; default: config `db`."),
          once: bool = typer.Option(False, "--once", help="Process the backlog, then exit (cron/batch use)."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Classify and record, but move nothing."),
          metrics_port: int | None = MetricsPortOpt,
          model: Path | None = ModelOpt, config: Path | None = ConfigOpt) -> None:
    """Sort files dropped into INCOMING; SIGINT/SIGTERM finish the batch in flight and exit 0."""
    from sorter.model import inference_layout
    from sorter.watch import Watcher

    _setup_logging()
    if incoming is not None and not incoming.is_dir():
        fail(f"{incoming} is not a folder")
    settings, clf = load_classifier(ctx, model, config, True, uses=("outputs", "metrics", "fleet"))
    _setup_logging(settings)
    incoming = incoming or settings.incoming
    if incoming is None:
        fail("no folder to watch: pass INCOMING (or set `incoming` in the config)")
    if not incoming.is_dir():
        fail(f"{incoming} (config `incoming`) is not a folder")
    interpreters, _ = inference_layout(settings.interpreters, settings.threads)
    target = out or settings.out or incoming.resolve().parent / "sorted"
    rules = decision_rules(clf, settings)
    stop = _stop_on_signals()
    telemetry, closers = _operations(settings, "watch", metrics_port)
    try:
        watcher = Watcher(incoming, target, db or settings.db, clf, rules, settings, dry_run=dry_run,
                          telemetry=telemetry, interpreters=interpreters)
    except (sqlite3.Error, OSError) as exc:  # the database cannot be opened: say so in one line
        _close_all(closers)
        fail(f"cannot open database {db or settings.db}: {exc}")
    except Exception as exc:  # an output that cannot be built (a GPIO pin, a serial port)
        _close_all(closers)
        fail(f"cannot start the outputs: {exc}")
    try:
        summary = watcher.run(stop, once=once)
    finally:
        _close_all(closers)
    err.print(summary.line(dry_run), highlight=False, markup=False, soft_wrap=True)
    if once and summary.left:  # a batch run that left files behind has not done its job
        raise typer.Exit(1)


@app.command()
def camera(ctx: typer.Context, device: str | None = typer.Option(None, "--device", "-d",
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
           snapshots: Path | None = typer.Option(None, "--snapshots",
                                                 help="Folder for rotten/uncertain/unknown JPEGs."),
           webhook: str | None = typer.Option(None, "--webhook", help="POST each decision as JSON to this URL."),
           mqtt: str | None = typer.Option(None, "--mqtt", help="MQTT broker host[:port]."),
           run_cmd: str | None = typer.Option(None, "--exec", help="Command run per decision (SORTER_* env)."),
           max_items: int | None = typer.Option(None, "--max-items", help="Stop after this many decisions."),
           db: Path | None = typer.Option(None, "--db", help="Results database; default: config `db`."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Classify and record, fire no outputs."),
           as_json: bool = typer.Option(False, "--json", help="Print the final status as JSON."),
           metrics_port: int | None = MetricsPortOpt,
           model: Path | None = ModelOpt, config: Path | None = ConfigOpt) -> None:
    """Classify produce from a live stream; survives unplugs and stalls; SIGINT/SIGTERM exit 0."""
    import shlex

    from sorter.capture import probe

    if list_:
        found = probe()
        for cam in found:
            typer.echo(f"{cam['index']}: {cam['width']}x{cam['height']} ({cam['backend']})")
        if not found:
            err.print("no local camera answered (indices 0-9)", highlight=False)
        raise typer.Exit(0 if found else 1)
    from sorter.camera import serve
    from sorter.config import Flag

    _setup_logging()
    host, _, port = (mqtt or "").partition(":")
    flags = [Flag(f"camera.{key}", value, f"--{name}") for key, value, name in (
        ("device", device, "device"), ("trigger", trigger, "trigger"), ("interval_ms", interval_ms, "interval-ms"),
        ("roi", roi, "roi"), ("votes", votes, "votes"), ("window", window, "window"),
        ("stall_seconds", stall_seconds, "stall-seconds"), ("loop", loop, "loop"), ("stdin_trigger", stdin, "stdin"),
        ("control_port", control_port, "control-port"), ("snapshots", snapshots, "snapshots"))]
    flags += [Flag("outputs.webhook.url", webhook, "--webhook"),
              Flag("outputs.mqtt.host", host or None, "--mqtt"), Flag("outputs.mqtt.port", port or None, "--mqtt"),
              Flag("outputs.command.argv", shlex.split(run_cmd) if run_cmd else None, "--exec")]
    settings, clf = load_classifier(ctx, model, config, False, *flags, uses=("camera", "outputs", "metrics", "fleet"))
    _setup_logging(settings)
    if settings.camera.device is None:
        fail("no camera: pass --device (or set camera.device in the config)")
    rules = decision_rules(clf, settings)
    stop = _stop_on_signals()
    telemetry, closers = _operations(settings, "camera", metrics_port)
    try:
        status = serve(settings.camera.device, clf, rules, settings, db or settings.db, stop, dry_run, max_items,
                       telemetry=telemetry)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    finally:
        _close_all(closers)
    if as_json:
        typer.echo(json.dumps(status, indent=2))
    d = status["decisions"]
    err.print(f"decisions: fresh {d['fresh']}, rotten {d['rotten']}, uncertain {d['uncertain']}, "
              f"unknown {d['unknown']}; "
              f"frames classified {status['classified']}, same scene {status['unchanged']}, "
              f"dropped {status['dropped']}, "
              f"offline {status['capture']['offline']}x", highlight=False)


db_app = typer.Typer(help="Inspect and maintain the results database.", no_args_is_help=True,
                      rich_markup_mode=PLAIN_HELP)
app.add_typer(db_app, name="db")


@db_app.command("stats")
def db_stats(ctx: typer.Context, db: Path | None = ReadOnlyDbOpt, as_json: bool = JsonOpt,
             config: Path | None = ConfigOpt) -> None:
    """Counts by verdict, label, error and state, and the time range covered."""
    from sorter.store import stats

    try:
        figures = stats(command_settings(ctx, config, db=db).db)
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
            table.add_row(cell(name), str(count))
        print_table(table)


@db_app.command("prune")
def db_prune(ctx: typer.Context, db: Path | None = DbOpt,
             older_than: str | None = typer.Option(None, "--older-than",
                                                   help="Items only, this age (90d, 12h, 2w); without it the "
                                                        "config `retention` section prunes items, camera events "
                                                        "and snapshots."),
             dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be deleted."),
             config: Path | None = ConfigOpt) -> None:
    """Delete old finished rows (and camera events, snapshots) in small batches, then give the free pages back
    to the disk in incremental-vacuum steps (a daemon writing alongside waits one batch at most)."""
    from datetime import timedelta

    from sorter.store import apply_retention, parse_age, prune

    try:
        settings = command_settings(ctx, config)
        path = db or settings.db
        if older_than is None:
            ret = settings.retention
            res = apply_retention(path, timedelta(days=ret.items_days), timedelta(days=ret.camera_events_days),
                                  timedelta(days=ret.snapshots_days), settings.camera.snapshots, ret.batch_size,
                                  ret.vacuum_freelist_ratio, dry_run)
            verb = "would delete" if dry_run else "deleted"
            typer.echo(f"{verb} {res.items} items, {res.camera_events} camera events, {res.snapshots} snapshots"
                       + (" and vacuumed" if res.vacuumed else ""))
            return
        result = prune(path, parse_age(older_than), dry_run=dry_run)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {result.matched if dry_run else result.deleted} rows"
               + (" and vacuumed" if result.vacuumed else ""))


@db_app.command("vacuum")
def db_vacuum(ctx: typer.Context, db: Path | None = DbOpt, config: Path | None = ConfigOpt) -> None:
    """Rewrite the database file once (VACUUM), making it incremental: from then on retention returns free
    pages to the disk in short steps while the daemon writes. Locks the database while it runs (minutes for
    gigabytes): a database made by this version is incremental already. A database from before the compact
    layout (m011) finishes its conversion first (the daemon does it a step at a time otherwise)."""
    import time

    from sorter.store import full_vacuum

    try:
        path = db or command_settings(ctx, config).db
        if not Path(path).exists():
            raise FileNotFoundError(f"database {path} not found")
        began = time.monotonic()
        before, after = full_vacuum(path)
    except (ValueError, FileNotFoundError, sqlite3.Error) as exc:
        fail(str(exc))
    typer.echo(f"vacuumed {path}: {before / 1e6:.1f} MB → {after / 1e6:.1f} MB in {time.monotonic() - began:.1f} s; "
               "retention now returns free pages incrementally")


audit_app = typer.Typer(help="Record operator audits (ground truth) and draw samples to check.",
                        no_args_is_help=True, rich_markup_mode=PLAIN_HELP)
app.add_typer(audit_app, name="audit")
PartialOpt = typer.Option(False, "--partial", help="Import the valid rows even when others are wrong.")


@audit_app.command("import")
def audit_import(ctx: typer.Context,
                 file: Path = typer.Argument(..., help="CSV: sha256 or file/path, true_label, [auditor], [time]."),
                 db: Path | None = DbOpt, model: Path | None = ModelOpt, config: Path | None = ConfigOpt,
                 partial: bool = PartialOpt) -> None:
    """Import audits from a CSV; every row is checked first, re-imports change nothing."""
    from sorter.audit import AuditError, import_csv

    try:
        settings = command_settings(ctx, config, model=model, db=db)
        result = import_csv(settings.db, file, card_or_none(settings.model, True).labels, partial)
    except (AuditError, OSError) as exc:
        fail(str(exc))
    report_import(result)


@audit_app.command("folder")
def audit_folder(ctx: typer.Context,
                 folder: Path = typer.Argument(..., help="AUDIT_DIR with one sub-folder per true label."),
                 auditor: str = typer.Option("", "--auditor", help="Who sorted the folder."),
                 db: Path | None = DbOpt, model: Path | None = ModelOpt, config: Path | None = ConfigOpt,
                 partial: bool = PartialOpt) -> None:
    """Import audits from AUDIT_DIR/<true label>/ files, matched to items by content hash."""
    from sorter.audit import AuditError, import_folder

    try:
        settings = command_settings(ctx, config, model=model, db=db)
        result = import_folder(settings.db, folder, card_or_none(settings.model, True).labels, auditor, partial)
    except (AuditError, OSError) as exc:
        fail(str(exc))
    report_import(result)


@audit_app.command("sample")
def audit_sample(ctx: typer.Context, n: int = typer.Option(50, "--n", min=1, help="How many items to draw."),
                 since: str = typer.Option("24h", "--since", help="Window ending now: 24h, 7d, …"),
                 out: Path = typer.Option(..., "--out", "-o", help="Folder for the copies and sample.csv."),
                 seed: int | None = typer.Option(None, "--seed", help="Fixed seed: the same sample again."),
                 control_data: Path | None = typer.Option(
                     None, "--control-data", help="DIR/<label>/ photos of known label (e.g. the base data's test "
                                                  "split): some are shuffled in among the items, to check the "
                                                  "auditors' answers (`sorter retrain` refuses audits that fail)."),
                 controls: int | None = typer.Option(None, "--controls", min=0,
                                                     help="How many control photos (default with --control-data: "
                                                          "10 % of --n, at least 5; 0 without it)."),
                 db: Path | None = DbOpt, model: Path | None = ModelOpt,
                 config: Path | None = ConfigOpt) -> None:
    """Copy a random sample (weighted to uncertain and low-confidence items) for people to check; each
    draw's probability is recorded, so the report can weight the audits back. With --control-data, photos of
    known label are shuffled in among them, named like them (recorded apart, never as items)."""
    from sorter.audit import ControlSpec, sample
    from sorter.controls import default_count
    from sorter.model import ModelError, resolve_model
    from sorter.report import window

    if controls and control_data is None:
        fail("--controls needs --control-data (the folder of photos of known label)")
    try:
        settings = command_settings(ctx, config, model=model, db=db)
        lo, hi = window(since)
        card = card_or_none(settings.model, control_data is not None)
        spec = None if control_data is None else ControlSpec(
            control_data, default_count(n) if controls is None else controls, resolve_model(settings.model))
        result = sample(settings.db, out, n, lo.isoformat(timespec="milliseconds"),
                        hi.isoformat(timespec="milliseconds"), card.labels if card else [], seed, spec)
    except (ModelError, ValueError, OSError) as exc:
        fail(str(exc))
    shown = f" and {result.controls} control photos of known label" if result.controls else ""
    typer.echo(f"drew {result.drawn} of {result.candidates} unaudited items {result.by_verdict}{shown} into {out} "
               f"(sample {result.sample_id[:8]}, each draw's probability recorded); "
               f"sort them into {out}/<true label>/ and run `sorter audit folder {out}`, "
               f"or fill {result.manifest.name} and run `sorter audit import`")


register_labelstudio(audit_app)  # audit export-labelstudio / import-labelstudio (sorter/cli_labelstudio.py)


def _report_options(settings, margin: float | None):
    """Drift margin (--margin over config) and the audited count below which no flag is raised."""
    from sorter.report import ReportOptions

    return ReportOptions(margin if margin is not None else settings.report.drift_margin,
                         settings.report.min_audited)


@app.command()
def report(ctx: typer.Context,
           out: Path = typer.Option(..., "--out", "-o", help="Folder for report.json and report.html."),
           since: str | None = typer.Option(None, "--since", help="Window ending now (default 24h)."),
           start: str | None = typer.Option(None, "--from", help="Window start, ISO date/time (UTC if naive)."),
           end: str | None = typer.Option(None, "--to", help="Window end (default now)."),
           db: Path | None = typer.Option(None, "--db", help="Results database, opened read-only."),
           dated: bool = typer.Option(False, "--dated", help="Write OUT/<window start date>/ (nightly use)."),
           keep: int = typer.Option(0, "--keep", min=0, help="With --dated: keep only the newest N folders."),
           previous: Path | None = typer.Option(None, "--previous", help="report.json to compare with; "
                                                "default: the newest earlier dated report (or OUT's own)."),
           margin: float | None = typer.Option(None, "--margin", help="Accuracy fall that raises a drift flag."),
           fail_on_drift: bool = typer.Option(False, "--fail-on-drift", help="Exit 1 when a drift flag is raised."),
           publish: bool = typer.Option(True, "--publish/--no-publish",
                                        help="Send report.json (retained) to the fleet broker, when fleet.broker "
                                             "is set; an unreachable broker is a warning, not a failure."),
           model: Path | None = ModelOpt, config: Path | None = ConfigOpt) -> None:
    """Write the accuracy report (JSON + one self-contained HTML page) for a time window."""
    from sorter.report import generate, window

    if since and start:
        fail("use --since or --from/--to, not both")
    try:
        settings = command_settings(ctx, config, model=model, db=db)
        lo, hi = window(since, start, end)
        written = generate(settings.db, out, lo, hi, card_or_none(settings.model, False),
                           _report_options(settings, margin), dated, keep,
                           previous, settings.report.max_thumbnails)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    r = written.report
    typer.echo(f"{written.folder}: {_window_figures(r)}, pruned {len(written.pruned)}")
    if compared := _card_compared(r):
        typer.echo(compared)
    if publish and settings.fleet.broker:
        _publish(settings, r, [p.name for p in written.pruned])
    _exit_on_drift(r, fail_on_drift)


def _window_figures(report: dict) -> str:
    """`12 items, rotten 25.0%, accuracy …`, or `no items in this window` (never `rotten None`)."""
    n = report["items"]["classified"]
    if not n:
        return "no items in this window"
    return f"{n} items, rotten {report['rotten_rate']:.1%}, {_accuracy(report)}"


def _card_compared(report: dict) -> str | None:
    """`compared with card, other sources (…, 268 photos): 92.0 %, audited -2.0 points`: which card
    figure the drift check held audited accuracy against, or None without one."""
    from sorter.report import card_figure

    vs = report["drift"]["vs_card"]
    if not vs:
        return None
    delta = vs.get("accuracy_delta")
    return f"compared with {card_figure(vs)}" + (f", audited {delta * 100:+.1f} points" if delta is not None else "")


def _accuracy(report: dict) -> str:
    """`accuracy 0.900 (n=20)`; with recorded draw probabilities the weighted figure (which drift holds)
    beside the unweighted one, and how many audits had no recorded draw (counted as p = 1)."""
    a = report["audit"]
    if a["accuracy"] is None:
        return "no audited items"
    w = a.get("weighted") or {}
    if not w.get("with_p"):
        used = "; drift uses it (no audit has a recorded draw probability)" if w else ""
        return f"accuracy {a['accuracy']:.3f} (n={a['n']}){used}"
    ci = w["accuracy_ci95"]
    return (f"weighted accuracy {w['accuracy']:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}), unweighted {a['accuracy']:.3f} "
            f"(n={a['n']}, {w['without_p']} without a recorded draw, counted as p=1); drift uses the weighted one")


def _exit_on_drift(report: dict, fail_on_drift: bool) -> None:
    """Each drift flag as a red line on stderr; exit 1 with --fail-on-drift when any was raised."""
    for flag in report["drift"]["flags"]:
        err.print(f"[red]drift:[/red] {escape(flag['message'])}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if fail_on_drift and report["drift"]["flagged"] else 0)


def _publish(settings, report: dict, pruned: list[str]) -> None:
    """The report to the fleet broker; the files are what matters, so a failure is one warning line."""
    from sorter.fleet import publish_report

    try:
        topic = publish_report(settings.fleet, settings.line, report, clear=pruned)
    except (OSError, ValueError) as exc:
        warn(f"report not published to {settings.fleet.broker}: {exc}")
        return
    typer.echo(f"published to {topic}")


config_app = typer.Typer(help="Validate and show the configuration (file < SORTER_* environment < flags).",
                         no_args_is_help=True, rich_markup_mode=PLAIN_HELP)
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(ctx: typer.Context, config: Path | None = ConfigOpt) -> None:
    """Validate the configuration without starting anything; each problem names its file or variable."""
    from sorter.config import config_path

    command_settings(ctx, config)
    typer.echo(f"ok: {config_path(config or invocation(ctx).config) or 'defaults (no config file)'}")


@config_app.command("show")
def config_show(ctx: typer.Context, config: Path | None = ConfigOpt) -> None:
    """Print the effective configuration as JSON; secrets are masked."""
    from sorter.config import public_dump

    settings = command_settings(ctx, config)
    typer.echo(json.dumps(public_dump(settings), indent=2))


model_app = typer.Typer(help="Install a new model bundle safely, or roll back.", no_args_is_help=True,
                         rich_markup_mode=PLAIN_HELP)
app.add_typer(model_app, name="model")
ModelsDirOpt = typer.Option(Path("/var/lib/sorter/models"), "--dir", help="Models folder holding `current`.")


@model_app.command("install")
def model_install(new: Path = typer.Argument(..., help="The new NAME.tflite (its NAME.card.json beside it)."),
                  models: Path = ModelsDirOpt,
                  accept_failed_gate: bool = typer.Option(
                      False, "--accept-failed-gate",
                      help="Install even though the export failed its accuracy gate (recorded in the card).")
                  ) -> None:
    """Doctor-check NEW, copy it in, point `current` at it atomically; the old one stays as `previous`.
    A bundle whose export failed its accuracy gate is refused unless --accept-failed-gate."""
    from sorter.bundle import BundleError, install

    try:
        folder, checks = install(new, models, accept_failed_gate)
    except (BundleError, OSError, ValueError) as exc:
        fail(str(exc), 1)
    for check in checks:
        if check.name == "gate" and not check.ok:
            from rich.markup import escape

            err.print(f"[yellow]warning:[/yellow] installed although {escape(check.detail)}", highlight=False,
                      soft_wrap=True)
    typer.echo(f"current -> {folder.name}; restart the services to load it (sorter model rollback undoes this)")


@model_app.command("rollback")
def model_rollback(models: Path = ModelsDirOpt) -> None:
    """Point `current` back at `previous` (run again to undo)."""
    from sorter.bundle import BundleError, rollback

    try:
        folder = rollback(models)
    except (BundleError, OSError) as exc:
        fail(str(exc), 1)
    typer.echo(f"current -> {folder.name}; restart the services to load it")


fleet_app = typer.Typer(help="Many conveyor lines on one MQTT broker.", no_args_is_help=True,
                         rich_markup_mode=PLAIN_HELP)
app.add_typer(fleet_app, name="fleet")
app.add_typer(dataset_app, name="dataset")


@fleet_app.command("report")
def fleet_report(ctx: typer.Context, broker: str | None = typer.Option(None, "--broker",
                                                  help="HOST:PORT of the fleet's MQTT broker; default: config "
                                                       "fleet.broker."),
                 duration: float = typer.Option(5.0, "--duration", help="Seconds to listen (retained reports and "
                                                                        "counters arrive at once)."),
                 out: Path = typer.Option(..., "--out", help="Folder for report.json and report.html."),
                 topic: str | None = typer.Option(None, "--topic", help="Fleet topic prefix; default: config "
                                                                        "fleet.topic (sorter/fleet)."),
                 date: str | None = typer.Option(None, "--date", help="Day (YYYY-MM-DD, the lines' window start) "
                                                                      "to report; default: the newest reported."),
                 margin: float | None = typer.Option(None, "--margin",
                                                     help="Accuracy fall that raises a fleet drift flag."),
                 fail_on_drift: bool = typer.Option(False, "--fail-on-drift",
                                                    help="Exit 1 when a drift flag is raised (fleet or any line)."),
                 config: Path | None = ConfigOpt) -> None:
    """The nightly report across lines: every line's published report merged, plus the live hourly counters."""
    from sorter.fleet import build_fleet_report, check_day, listen, write_report
    from sorter.secrets import reveal

    settings = command_settings(ctx, config)
    try:
        date = check_day(date)
    except ValueError as exc:
        fail(str(exc))
    fleet = settings.fleet
    broker = broker or fleet.broker
    if not broker:
        fail("no broker: pass --broker or set fleet.broker in the config")
    try:
        heard = listen(broker, duration, topic or fleet.topic, fleet.username, reveal(fleet.password), date)
    except (ValueError, OSError) as exc:
        fail(f"{broker}: {exc}")
    try:
        report = build_fleet_report(heard, date, _report_options(settings, margin))
    except ValueError as exc:  # every line's report refused: not the report format
        fail(str(exc))
    for why in (report.get("refused_lines") or {}).values():
        warn(f"{why}; left out of the fleet report")
    files = write_report(report, out, settings.report.max_thumbnails)
    total = report["live"]["total"]
    live = f"live counters: {len(report['live']['lines'])} line(s), {total['items']} items {total['by_verdict']}"
    if "audit" not in report:
        typer.echo(f"{report['note']}; {live}; wrote {', '.join(str(f) for f in files)}")
        raise typer.Exit(0)
    typer.echo(f"{report['date']}: {len(report['lines'])} line(s), {report['items']['classified']} items, "
               f"{_accuracy(report)}; {live}; wrote {', '.join(str(f) for f in files)}")
    for said in dict.fromkeys(filter(None, (_card_compared(report), report["drift"].get("note")))):
        typer.echo(said)  # the card figure the fleet compared with, and why (none, or plain for some lines)
    _exit_on_drift(report, fail_on_drift)


def _forward(verb: str, summary: str | None = None) -> None:
    """Register `sorter VERB` as a pass-through to training/, imported only when called.
    Verbs with their own `summary` need no TensorFlow."""

    @app.command(verb, context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                 add_help_option=False,
                 help=summary or f"{verb.capitalize()} a model (needs TensorFlow, the train extra; see --help).")
    def command(ctx: typer.Context) -> None:
        if summary is None and importlib.util.find_spec("tensorflow") is None:
            fail(f"'sorter {verb}' needs TensorFlow: pip install 'sorter[train]'")
        from training.cli import app as training_app

        training_app([verb, *ctx.args], prog_name="sorter", standalone_mode=True)


for _verb in ("train", "evaluate", "export", "tune", "retrain"):
    _forward(_verb)
_forward("split", "Split a photo collection into train/val/test by near-duplicate groups (see --help).")
