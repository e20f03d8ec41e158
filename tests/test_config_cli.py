"""`sorter config check|show`, nested sections from the environment, secrets from files, masked output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.config import ConfigError, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "sorter.toml"
runner = CliRunner()


def test_the_commented_example_validates_and_fills_every_section():
    settings = load_settings(EXAMPLE)
    assert settings.line == "line-1" and settings.metrics.port == 9108
    assert settings.min_confidence["rottenbanana"] == 0.7 and settings.retention.items_days == 90
    assert settings.fleet.broker == "127.0.0.1:1883" and settings.outputs.mqtt.verdicts == ["rotten"]
    result = runner.invoke(app, ["config", "check", "--config", str(EXAMPLE)])
    assert result.exit_code == 0 and "ok:" in result.output


def test_unknown_key_inside_a_section_names_file_key_and_suggestion(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[camera]\nstall_secs = 3\n[outputs.mqtt]\nhots = 'x'\n")
    result = runner.invoke(app, ["config", "check", "--config", str(path)])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert f"{path}: camera.stall_secs: unknown key (did you mean 'stall_seconds'?)" in text
    assert "outputs.mqtt.hots: unknown key (did you mean 'host'?)" in text


def test_nested_environment_overrides_file_and_flags_override_both(tmp_path, monkeypatch):
    path = tmp_path / "s.toml"
    path.write_text("batch_size = 4\n[camera]\nstall_seconds = 3\n[metrics]\nport = 9100\n")
    monkeypatch.setenv("SORTER_CAMERA__STALL_SECONDS", "8.5")
    monkeypatch.setenv("SORTER_METRICS__PORT", "9200")
    monkeypatch.setenv("SORTER_MIN_CONFIDENCE", '{"rottenblue": 0.9}')
    monkeypatch.setenv("SORTER_VERDICT", "rotten")  # an output's child variables, not configuration
    monkeypatch.setenv("SORTER_EVENT", '{"verdict": "rotten"}')
    settings = load_settings(path, batch_size=2)
    assert (settings.camera.stall_seconds, settings.metrics.port, settings.batch_size) == (8.5, 9200, 2)
    assert settings.min_confidence == {"rottenblue": 0.9}


def test_bad_environment_value_is_blamed_on_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("SORTER_CAMERA__STALL_SECONDS", "soon")
    with pytest.raises(ConfigError, match=r"environment SORTER_CAMERA__STALL_SECONDS: camera\.stall_seconds"):
        load_settings(None)
    monkeypatch.setenv("SORTER_CAMERA__STAL_SECONDS", "1")
    monkeypatch.delenv("SORTER_CAMERA__STALL_SECONDS")
    with pytest.raises(ConfigError, match="did you mean 'stall_seconds'"):
        load_settings(None)


def test_secrets_come_from_files_or_environment_and_are_never_printed(tmp_path, monkeypatch):
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret-from-file\n")
    path = tmp_path / "s.toml"
    path.write_text(f"[outputs.mqtt]\nusername = 'u'\npassword_file = '{secret}'\n"
                    "[outputs.webhook]\nurl = 'http://127.0.0.1:1/x'\n")
    monkeypatch.setenv("SORTER_OUTPUTS__WEBHOOK__TOKEN", "tok-from-env")
    settings = load_settings(path)
    assert settings.outputs.mqtt.password.get_secret_value() == "s3cret-from-file"
    assert settings.outputs.webhook.token.get_secret_value() == "tok-from-env"
    result = runner.invoke(app, ["config", "show", "--config", str(path)])
    assert result.exit_code == 0
    assert "s3cret" not in result.output and "tok-from-env" not in result.output
    shown = json.loads(result.output)
    assert shown["outputs"]["mqtt"]["password"] == "**********" and shown["outputs"]["webhook"]["token"] == "**********"
    secret.unlink()
    with pytest.raises(ConfigError, match="password_file"):
        load_settings(path)
