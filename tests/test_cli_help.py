"""Every command and sub-command has help text, and the README names every top-level command."""

from __future__ import annotations

from typer.main import get_command

from sorter.cli import app
from tests.conftest import REPO


def _walk(command, prefix=()):
    yield prefix, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, (*prefix, name))


def test_every_command_has_help_text():
    missing = [" ".join(path) for path, cmd in _walk(get_command(app)) if path and not (cmd.help or "").strip()]
    assert missing == []


def test_readme_documents_every_top_level_command():
    readme = (REPO / "README.md").read_text()
    names = sorted(get_command(app).commands)
    assert len(names) >= 10
    assert [n for n in names if f"sorter {n}" not in readme] == []


def test_help_runs_for_every_runtime_command():
    from typer.testing import CliRunner

    runner = CliRunner()
    for path, _ in _walk(get_command(app)):
        if not path or path[0] in {"train", "evaluate", "export", "tune"}:
            continue
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output

