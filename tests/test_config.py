"""Strict configuration: unknown keys named with a suggestion, file < environment < flags."""

from __future__ import annotations

import pytest

from sorter.config import ConfigError, load_settings


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = tmp_path / "sorter.toml"
    path.write_text("batch_sise = 4\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert str(path) in message and "batch_sise" in message and "did you mean 'batch_size'" in message


def test_precedence_file_then_environment_then_flags(tmp_path, monkeypatch):
    path = tmp_path / "sorter.toml"
    path.write_text("batch_size = 4\nbatch_ms = 10\nthreads = 1\n")
    assert load_settings(path).batch_size == 4
    monkeypatch.setenv("SORTER_BATCH_SIZE", "6")
    settings = load_settings(path, threads=2)
    assert (settings.batch_size, settings.batch_ms, settings.threads) == (6, 10, 2)
    assert load_settings(path, batch_size=3).batch_size == 3


def test_bad_values_and_bad_toml_are_clear(tmp_path):
    path = tmp_path / "sorter.toml"
    path.write_text("batch_size = 0\n")
    with pytest.raises(ConfigError, match="batch_size"):
        load_settings(path)
    path.write_text("batch_size = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")
