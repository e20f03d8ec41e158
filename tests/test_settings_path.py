"""One settings path (issue 17): every command's settings come from one load (file, SORTER_*, flags), kept
on the root context; flags reach nested keys and an error names the flag; the config may come before the
command; a section the command does not use is said out loud. The real CLI, in-process."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from sorter.cli import app
from sorter.config import Flag, load_settings
from tests.watch_helpers import MODEL, drop, files_under, jpeg

runner = CliRunner()


def _config(tmp: Path, text: str) -> Path:
    path = tmp / "sorter.toml"
    path.write_text(text)
    return path


def test_a_flag_for_a_nested_key_merges_into_its_section_and_an_error_names_the_flag(tmp_path):
    cfg = _config(tmp_path, '[camera]\nvotes = 2\nwindow = 4\n'
                            '[outputs.webhook]\nurl = "http://a/x"\ntimeout_seconds = 7\n')
    settings = load_settings(cfg, Flag("camera.votes", 3, "--votes"), Flag("outputs.webhook.url", "http://b/y",
                                                                           "--webhook"))
    assert (settings.camera.votes, settings.camera.window) == (3, 4)  # the file's window kept
    assert settings.outputs.webhook is not None and settings.outputs.webhook.timeout_seconds == 7
    assert settings.outputs.webhook.url == "http://b/y"
    db = ["--db", str(tmp_path / "never.db")]  # a camera run that got past its settings must not write here
    result = runner.invoke(app, ["camera", "-d", "0", "-m", str(MODEL), "--votes", "0", "--config", str(cfg), *db])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: flag --votes: camera.votes: Input should be greater than or equal to 1")
    result = runner.invoke(app, ["camera", "-d", "0", "-m", str(MODEL), "--votes", "9", "--config", str(cfg), *db])
    assert result.exit_code == 2 and "votes (9) is more than window (4)" in result.stderr, result.stderr
    assert not (tmp_path / "never.db").exists()  # refused before anything opened


def test_the_config_may_come_before_the_command_and_the_commands_own_wins(tmp_path):
    (tmp_path / "in").mkdir()
    cfg = _config(tmp_path, f'model = "{MODEL}"\nincoming = "{tmp_path / "in"}"\nout = "{tmp_path / "sorted"}"\n'
                            f'db = "{tmp_path / "a.db"}"\nstable_seconds = 0.1\nthreads = 1\n')
    drop(tmp_path / "in", "a.jpg", jpeg("red"))
    result = runner.invoke(app, ["--config", str(cfg), "watch", "--once"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in files_under(tmp_path / "sorted")] == ["a.jpg"] and (tmp_path / "a.db").is_file()
    broken = tmp_path / "broken.toml"
    broken.write_text("batch_size = 0\n")
    result = runner.invoke(app, ["--config", str(cfg), "config", "check", "--config", str(broken)])
    assert result.exit_code == 2 and f"{broken}: batch_size" in result.stderr


def test_a_section_the_command_does_not_use_is_a_warning(tmp_path):
    (tmp_path / "in").mkdir()
    cfg = _config(tmp_path, f'model = "{MODEL}"\ndb = "{tmp_path / "a.db"}"\nstable_seconds = 0.1\nthreads = 1\n'
                            '[camera]\nvotes = 2\n[outputs.jsonl]\npath = "/tmp/never-written.jsonl"\n')
    watched = runner.invoke(app, ["watch", str(tmp_path / "in"), "--once", "--dry-run", "--config", str(cfg)])
    assert watched.exit_code == 0, watched.output
    warnings = [line for line in watched.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: config section [camera] is not used by `sorter watch` (it configures sorter "
                        "camera)"]
    photo = tmp_path / "a.jpg"
    photo.write_bytes(jpeg("red"))
    classified = runner.invoke(app, ["classify", str(photo), "--config", str(cfg)])
    assert classified.exit_code == 0, classified.output
    assert "config section [camera] is not used by `sorter classify`" in classified.stderr
    assert "config section [outputs] is not used by `sorter classify`" in classified.stderr
    stats = runner.invoke(app, ["db", "stats", "--config", str(cfg)])  # a reader of the box's shared config
    assert stats.exit_code == 0 and "warning" not in stats.stderr
