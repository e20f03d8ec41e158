"""One validated settings model: file < environment (SORTER_…) < flags."""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_CONFIG = Path("/etc/sorter/sorter.toml")


class ConfigError(ValueError):
    """A configuration problem, already phrased for the operator."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Path | None = None
    threads: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=8, ge=1, le=256)
    batch_ms: int = Field(default=50, ge=0)
    default_min_confidence: float = Field(default=0.5, ge=0, le=1)
    min_confidence: dict[str, float] = Field(default_factory=dict)
    max_pixels: int = Field(default=80_000_000, ge=1)
    db: Path = Path("sorter.db")
    out: Path | None = None
    stable_seconds: float = Field(default=1.0, ge=0)
    temp_suffixes: list[str] = Field(default_factory=lambda: [".part", ".partial", ".tmp", ".crdownload",
                                                              ".download", ".swp", "~"])
    decode_workers: int = Field(default=2, ge=1, le=32)
    retry_seconds: float = Field(default=30.0, gt=0)
    max_file_bytes: int = Field(default=256 * 1024 * 1024, ge=1)


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _explain(exc: ValidationError, source: str) -> ConfigError:
    known = list(Settings.model_fields)
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        hint = _suggest(key, known) if err["type"] == "extra_forbidden" else ""
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{source}: {key}: {msg}{hint}")
    return ConfigError("\n".join(lines))


def _from_env() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = os.environ.get(f"SORTER_{name.upper()}")
        if raw is not None and name != "min_confidence":
            values[name] = raw
    return values


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Merge the file, SORTER_* variables and non-None flags; unknown keys are errors."""
    data: dict[str, Any] = {}
    source = "defaults"
    chosen = path or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if chosen is not None:
        source = str(chosen)
        try:
            data = tomllib.loads(Path(chosen).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{chosen}: config file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{chosen}: not valid TOML: {exc}") from exc
    data.update(_from_env())
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, source) from exc
