"""What the commands print (issue 14 items 21, 23, 25): bracketed text as written (Rich markup must not eat
it), whole paths in pipes and CI logs, and summary lines that say what they mean."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from typer.main import get_command
from typer.testing import CliRunner

from sorter import store
from sorter.cli import app
from sorter.report import compare
from tests.watch_helpers import MODEL, SORTER, drop, jpeg, watch_command

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
TRAINING = {"train", "evaluate", "export", "tune", "split", "retrain"}


def _squash(text: str) -> str:
    """Help is wrapped to the terminal: compare without whitespace."""
    return "".join(text.split())


def _commands(command=None, path=()):
    command = command or get_command(app)
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        if not (path == () and name in TRAINING):
            yield from _commands(sub, (*path, name))


# ---- 21: Rich markup eats bracketed text ----

def test_audit_import_help_shows_the_optional_columns():
    result = runner.invoke(app, ["audit", "import", "--help"])
    assert result.exit_code == 0
    assert "CSV: sha256 or file/path, true_label, [auditor], [time]." in " ".join(result.output.split())


def test_every_help_text_prints_as_written():
    """Each command's and each option's help, bracketed words and all, appears in its --help."""
    eaten = []
    for path, command in _commands():
        output = _squash(runner.invoke(app, [*path, "--help"]).output)
        texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
        eaten += [f"{' '.join(path)}: {t}" for t in texts if _squash(t) not in output]
    assert eaten == []


def test_an_error_line_prints_a_bracketed_path_whole(tmp_path):
    missing = tmp_path / "cam[raw]" / "[day 1]"
    result = runner.invoke(app, ["watch", str(missing)])
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == f"error: {missing} is not a folder"


def test_audit_errors_print_bracketed_folder_names(tmp_path):
    db = store.open_writer(tmp_path / "s.db")
    db.close()
    (tmp_path / "audit" / "[red]").mkdir(parents=True)
    (tmp_path / "audit" / "[red]" / "a.jpg").write_bytes(jpeg("red"))
    result = runner.invoke(app, ["audit", "folder", str(tmp_path / "audit"), "--db", str(tmp_path / "s.db"),
                                 "--model", str(MODEL)])
    assert result.exit_code == 1
    assert result.output.splitlines()[0].startswith("[red]/: ")


# ---- 23: whole paths when stdout is not a terminal ----

def test_a_piped_table_at_80_columns_prints_every_path_whole(tmp_path):
    deep = tmp_path / "camera-line-4" / "2026-12-01 morning shift [raw]" / "bad"
    deep.mkdir(parents=True)
    (deep / "empty-file-from-the-camera.jpg").write_bytes(b"")
    good = deep.parent / "a-perfectly-fine-red-apple-photographed-at-dawn.jpg"
    good.write_bytes(jpeg("red"))
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(REPO)}
    done = subprocess.run([*SORTER, "classify", str(tmp_path), "--model", str(MODEL)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # one file could not be classified
    lines = done.stdout.splitlines()
    empty_row = next(line for line in lines if str(deep / "empty-file-from-the-camera.jpg") in line)
    assert "error" in empty_row
    good_row = next(line for line in lines if str(good) in line)
    assert "freshred" in good_row and "fresh" in good_row
    assert "…" not in done.stdout


# ---- 25: summary lines that say what they mean ----

def test_a_report_of_an_empty_window_says_so(tmp_path):
    db = store.open_writer(tmp_path / "s.db")
    db.close()
    result = runner.invoke(app, ["report", "--out", str(tmp_path / "r"), "--db", str(tmp_path / "s.db"),
                                 "--model", str(MODEL), "--no-publish"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{tmp_path / 'r'}: no items in this window, pruned 0"
    assert "None" not in result.output


def test_a_report_with_items_but_no_audits_says_no_audited_items(tmp_path):
    db = store.open_writer(tmp_path / "s.db")
    store.insert_items(db, [{"source": "watch", "state": "done", "received_at": store.now_iso(), "sha256": s,
                             "source_path": f"/in/{s}.jpg", "label": lbl, "verdict": v}
                            for s, lbl, v in (("a", "freshred", "fresh"), ("b", "rottenblue", "rotten"))])
    db.close()
    result = runner.invoke(app, ["report", "--out", str(tmp_path / "r"), "--db", str(tmp_path / "s.db"),
                                 "--model", str(MODEL), "--no-publish"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{tmp_path / 'r'}: 2 items, rotten 50.0%, no audited items, pruned 0"


def test_a_drift_flag_counts_percentage_points():
    current = {"accuracy": 0.8, "n": 30, "fresh_vs_rotten_accuracy": None, "per_class": {}}
    _, flags = compare(current, {"accuracy": 29 / 30}, "model card", 0.05, 20, None)
    assert flags[0]["message"] == ("accuracy 80.0% is 16.7 points below the model card's 96.7% "
                                   "(margin 5.0 points, 30 audited items)")


def test_the_html_report_states_the_margin_in_points(tmp_path):
    db = store.open_writer(tmp_path / "s.db")
    db.close()
    result = runner.invoke(app, ["report", "--out", str(tmp_path / "r"), "--db", str(tmp_path / "s.db"),
                                 "--model", str(MODEL), "--no-publish", "--margin", "0.05"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "report.json").read_text())["drift"]["margin"] == 0.05
    page = (tmp_path / "r" / "report.html").read_text()
    assert "no drift flag (margin 5.0 points)" in page


def test_watch_dry_run_ends_would_route(tmp_path):
    (tmp_path / "in").mkdir()
    for i, colour in enumerate(("red", "green", "blue")):
        drop(tmp_path / "in", f"{i}.jpg", jpeg(colour))
    env = {**os.environ, "SORTER_STABLE_SECONDS": "0.2", "SORTER_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(watch_command(tmp_path, "--once", "--dry-run"), env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1].startswith("would route 3, ")
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]  # nothing moved


def test_evaluation_folders_are_ignored_by_git():
    done = subprocess.run(["git", "check-ignore", "-q", "evaluations/color-int8-test/report.json"], cwd=REPO)
    assert done.returncode == 0, "evaluations/ (sorter evaluate's default output) belongs in .gitignore"


