"""One validated settings model: file < environment (SORTER_…) < flags."""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_CONFIG = Path("/etc/sorter/sorter.toml")


class ConfigError(ValueError):
    """A configuration problem, already phrased for the operator."""


def _check_roi(value: str | None) -> str | None:
    if value is not None:
        parts = value.split(",")
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts) or min(map(int, parts[2:])) < 1:
            raise ValueError("must be x,y,w,h in pixels with w,h >= 1")
    return value


class CameraSettings(BaseModel):
    """Live-stream source: capture watchdog, trigger, voting and snapshots (`sorter camera`)."""

    model_config = ConfigDict(extra="forbid")
    device: str | None = None
    stall_seconds: float = Field(default=5.0, gt=0)
    backoff_seconds: float = Field(default=0.5, gt=0)
    backoff_max_seconds: float = Field(default=30.0, gt=0)
    queue_size: int = Field(default=4, ge=1, le=256)
    trigger: Literal["interval", "motion", "line"] = "interval"
    interval_ms: int = Field(default=500, ge=1)
    motion_threshold: float = Field(default=0.02, gt=0, le=1)
    motion_pixel_delta: int = Field(default=25, ge=1, le=255)
    motion_roi: str | None = None
    roi: str | None = None
    votes: int = Field(default=3, ge=1)
    window: int = Field(default=5, ge=1)
    control_port: int | None = Field(default=None, ge=0, le=65535)
    stdin_trigger: bool = False
    gpio_trigger_pin: int | str | None = None
    snapshots: Path = Path("snapshots")
    snapshot_retention_days: float = Field(default=30.0, gt=0)
    snapshot_max_files: int = Field(default=10_000, ge=1)
    status_seconds: float = Field(default=60.0, gt=0)
    loop: bool = False

    _roi = field_validator("roi", "motion_roi")(_check_roi)


class CommandOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    argv: list[str] = Field(min_length=1)
    timeout_seconds: float = Field(default=5.0, gt=0)
    verdicts: list[str] = Field(default_factory=lambda: ["fresh", "rotten", "uncertain"])


class WebhookOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://")
    timeout_seconds: float = Field(default=2.0, gt=0)
    verdicts: list[str] = Field(default_factory=lambda: ["fresh", "rotten", "uncertain"])


class MqttOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic: str = "sorter"
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive: int = Field(default=30, ge=5)
    spool: Path = Path("mqtt-spool")
    verdicts: list[str] = Field(default_factory=lambda: ["fresh", "rotten", "uncertain"])


class GpioOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pin: int | str
    pulse_ms: int = Field(default=200, ge=1)
    verdicts: list[str] = Field(default_factory=lambda: ["rotten"])


class SerialOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: str
    baud: int = Field(default=9600, ge=50)
    verdicts: list[str] = Field(default_factory=lambda: ["fresh", "rotten", "uncertain"])


class OutputSettings(BaseModel):
    """Where decisions go; every configured output fires, each retried on its own."""

    model_config = ConfigDict(extra="forbid")
    retries: int = Field(default=3, ge=0, le=100)
    retry_seconds: float = Field(default=0.5, gt=0)
    command: CommandOutput | None = None
    webhook: WebhookOutput | None = None
    mqtt: MqttOutput | None = None
    gpio: GpioOutput | None = None
    serial: SerialOutput | None = None


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
    camera: CameraSettings = Field(default_factory=CameraSettings)
    outputs: OutputSettings = Field(default_factory=OutputSettings)


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
        if raw is not None and name not in ("min_confidence", "camera", "outputs"):
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
