"""One validated settings model: file < environment (SORTER_…) < flags."""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from sorter.outputs.registry import types as output_types
from sorter.redact import mask_url
from sorter.secrets import read_secret
from sorter.verdict import VERDICTS

DEFAULT_CONFIG = Path("/etc/sorter/sorter.toml")


class ConfigError(ValueError):
    """A configuration problem, already phrased for the operator."""


def _check_roi(value: str | None) -> str | None:
    if value is not None:
        parts = value.split(",")
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts) or min(map(int, parts[2:])) < 1:
            raise ValueError("must be x,y,w,h in pixels with w,h >= 1")
    return value


DEFAULT_KEEP_SHARE = {"fresh": 0.02, "rotten": 1.0, "uncertain": 1.0, "unknown": 1.0}


def _check_keep_share(value: dict[str, float]) -> dict[str, float]:
    """`keep_share`: verdict → share of its items whose snapshot is kept, 0..1; a verdict not named keeps
    its default (so `{fresh = 0.1}` does not silently stop keeping rotten items)."""
    wrong = [v for v in value if v not in VERDICTS]
    if wrong:
        raise ValueError(f"not a verdict: {', '.join(map(repr, wrong))} (verdicts are {', '.join(VERDICTS)})")
    bad = [f"{k} = {v}" for k, v in value.items() if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"a share is between 0 and 1: {', '.join(bad)}")
    return {**DEFAULT_KEEP_SHARE, **value}


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
    # interval trigger: after a decision, this fraction of the (ROI) picture must change before the
    # next one (an item that stays, a stopped belt or a frozen picture is decided once); 0 = off
    scene_change: float = Field(default=0.02, ge=0, le=1)
    # live sources: a frame identical to the last fresh one but for at most this fraction of its
    # cells (a clock drawn over a frozen picture) is stale; 0 = only exact repeats
    frozen_area: float = Field(default=0.05, ge=0, lt=1)
    roi: str | None = None
    votes: int = Field(default=3, ge=1)
    window: int = Field(default=5, ge=1)
    control_port: int | None = Field(default=None, ge=0, le=65535)
    stdin_trigger: bool = False
    gpio_trigger_pin: int | str | None = None
    snapshots: Path = Path("snapshots")
    snapshot_retention_days: float = Field(default=30.0, gt=0)
    snapshot_max_files: int = Field(default=10_000, ge=1)
    # the share of each verdict's items whose snapshot is kept for audits, drawn at random; each camera
    # row records its verdict's share (`items.keep_p`) so audited accuracy can be weighted back
    keep_share: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_KEEP_SHARE))
    status_seconds: float = Field(default=60.0, gt=0)
    loop: bool = False

    _roi = field_validator("roi", "motion_roi")(_check_roi)
    _keep = field_validator("keep_share")(_check_keep_share)

    @model_validator(mode="after")
    def _votes_fit_the_window(self) -> CameraSettings:
        """K of N: found when the config is read (`config check`), not when the camera starts."""
        if self.votes > self.window:
            raise ValueError(f"votes ({self.votes}) is more than window ({self.window}): K of N needs K <= N")
        return self


class _OutputCommon(BaseModel):
    """Where decisions go; every configured output fires, each retried on its own."""

    model_config = ConfigDict(extra="forbid")
    retries: int = Field(default=3, ge=0, le=100)
    retry_seconds: float = Field(default=0.5, gt=0)
    resend_seconds: float = Field(default=60.0, gt=0)  # how often deliveries that failed go out again


def _output_settings() -> type[BaseModel]:
    """[outputs]: the shared keys, `[outputs.<type>]` (one of a type) for every module of sorter.outputs,
    and `[[outputs.targets]]`, any number of any type told apart by `type` (a discriminated union)."""
    found = output_types()
    configs = tuple(m.Config for m in found.values())
    target = Annotated[Union[configs], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
    fields: dict[str, Any] = {name: (m.Config | None, None) for name, m in found.items()}
    fields["targets"] = (list[target], Field(default_factory=list))
    return create_model("OutputSettings", __base__=_OutputCommon, **fields)


if TYPE_CHECKING:
    class OutputSettings(_OutputCommon):
        targets: list[Any] = []

        def __getattr__(self, name: str) -> Any: ...
else:
    OutputSettings = _output_settings()


class ReportSettings(BaseModel):
    """Nightly report (`sorter report`): when an accuracy fall counts as drift."""

    model_config = ConfigDict(extra="forbid")
    drift_margin: float = Field(default=0.05, ge=0, le=1)
    min_audited: int = Field(default=20, ge=1)
    max_thumbnails: int = Field(default=24, ge=0, le=500)


class MetricsSettings(BaseModel):
    """The local /healthz + /metrics endpoint; off unless a port is set (0 = any free port)."""

    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=0, le=65535)


class RetentionSettings(BaseModel):
    """How long rows and snapshots live (`sorter db prune` with no --older-than; the prune timer)."""

    model_config = ConfigDict(extra="forbid")
    items_days: float = Field(default=90.0, gt=0)
    camera_events_days: float = Field(default=30.0, gt=0)
    snapshots_days: float = Field(default=30.0, gt=0)
    batch_size: int = Field(default=1000, ge=1)
    vacuum_freelist_ratio: float = Field(default=0.2, ge=0, le=1)


class FleetSettings(BaseModel):
    """Publish verdicts and hourly counters, tagged with this conveyor's `line`, to one broker."""

    model_config = ConfigDict(extra="forbid")
    broker: str | None = Field(default=None, pattern=r"^[^:]+(:\d+)?$")
    topic: str = "sorter/fleet"
    counters_seconds: float = Field(default=60.0, gt=0)
    spool: Path = Path("fleet-spool")
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _password(self) -> FleetSettings:
        return read_secret(self, "password")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line: str = Field(default_factory=lambda: os.uname().nodename, pattern=r"^[A-Za-z0-9_.-]+$")
    model: Path | None = None
    incoming: Path | None = None
    rotten_labels: list[str] | None = None
    log_format: Literal["text", "json"] = "text"
    min_free_mb: int = Field(default=200, ge=0)
    threads: int | None = Field(default=None, ge=1)
    interpreters: int | None = Field(default=None, ge=1, le=32)
    batch_size: int = Field(default=8, ge=1, le=256)
    batch_ms: int = Field(default=50, ge=0)
    # the top-1 rule's floor (0.5 when unset); under a P(rotten) rule only a floor someone set applies
    default_min_confidence: float | None = Field(default=None, ge=0, le=1)
    min_confidence: dict[str, float] = Field(default_factory=dict)
    # P(rotten) thresholds over the card's `decision` (sorter.verdict); on a card without one, set both
    rotten_at: float | None = Field(default=None, ge=0, le=1)
    fresh_at: float | None = Field(default=None, ge=0, le=1)
    # the card's OOD score (energy or feature distance) below this is `unknown` (over the card's
    # `ood.threshold`); `unknown = false`: never unknown
    unknown_below: float | None = None
    unknown: bool = True
    max_pixels: int = Field(default=80_000_000, ge=1)
    db: Path = Path("sorter.db")
    out: Path | None = None
    stable_seconds: float = Field(default=1.0, ge=0)
    # `watch` follows subfolders of INCOMING (a camera's dated folders), hidden ones and OUT aside
    recursive: bool = True
    temp_suffixes: list[str] = Field(default_factory=lambda: [".part", ".partial", ".tmp", ".crdownload",
                                                              ".download", ".swp", "~"])
    decode_workers: int = Field(default=2, ge=1, le=32)
    # `watch`: the decode, routing and database threads run as background work (SCHED_BATCH, at
    # least this nice) so the interpreters keep the cores (sorter.threads); 0: ordinary threads
    background_nice: int = Field(default=19, ge=0, le=19)
    retry_seconds: float = Field(default=30.0, gt=0)
    max_file_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    camera: CameraSettings = Field(default_factory=CameraSettings)
    outputs: OutputSettings = Field(default_factory=OutputSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)

    @model_validator(mode="after")
    def _decision(self) -> Settings:
        if self.rotten_at is not None and self.fresh_at is not None and self.fresh_at > self.rotten_at:
            raise ValueError(f"fresh_at {self.fresh_at} is above rotten_at {self.rotten_at}")
        if self.unknown_below is not None and not self.unknown:
            raise ValueError("unknown_below is set but unknown = false turns the unknown verdict off")
        return self


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _fields_at(loc: tuple) -> list[str]:
    """The keys allowed where an unknown key was found, for the suggestion (sections included)."""
    model: Any = Settings
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(str(part))
        if field is None:
            return []
        model = next((a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(getattr(model, "model_fields", {}))


def _explain(exc: ValidationError, origins: dict[str, str]) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
        key = ".".join(str(p) for p in loc)
        extra = err["type"] == "extra_forbidden"
        hint = _suggest(str(loc[-1]), _fields_at(loc)) if extra and loc else ""
        msg = "unknown key" if extra else err["msg"]
        source = next((origins[k] for k in (key, *_prefixes(key)) if k in origins), origins.get("", "defaults"))
        if not key:  # a rule across keys (Settings' own validators): its message names them
            lines.append(f"{source}: {msg.removeprefix('Value error, ')}")
            continue
        lines.append(f"{source}: {key}: {msg}{hint}")
    return ConfigError("\n".join(lines))


def _prefixes(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _env_value(raw: str) -> Any:
    """Lists and tables come as JSON (SORTER_TEMP_SUFFIXES='[".part"]'); everything else as text."""
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _not_settings(environ: Mapping[str, str]) -> set[str]:
    """SORTER_* names that are not configuration: SORTER_CONFIG (which file to read), and the decision
    a command output hands its child (sorter.outputs.event_env: SORTER_EVENT, the event as JSON, and
    SORTER_<KEY> per key of it), so that a `sorter` run by such a command does not trip over them."""
    names = {"SORTER_CONFIG", "SORTER_EVENT"}
    try:
        event = json.loads(environ.get("SORTER_EVENT", "{}"))
    except ValueError:
        event = {}
    if isinstance(event, dict):
        names |= {f"SORTER_{str(key).upper()}" for key in event}
    return names


def _from_env(environ: Mapping[str, str] | None = None) -> dict[str, tuple[list[str], Any]]:
    """SORTER_BATCH_SIZE and SORTER_CAMERA__STALL_SECONDS (`__` descends into a section).

    A SORTER_* name whose first part is no top-level key is an error with a suggestion, as a
    mistyped TOML key is (SORTER_BATCH_SIZ=4 must not pass silently); SORTER_CONFIG and the
    variables outputs hand to child commands (SORTER_VERDICT, …) are not configuration.
    """
    environ = os.environ if environ is None else environ
    skip = _not_settings(environ)
    found: dict[str, tuple[list[str], Any]] = {}
    unknown = []
    for name, raw in environ.items():
        if not name.startswith("SORTER_") or name in skip:
            continue
        path = [p.lower() for p in name.removeprefix("SORTER_").split("__")]
        if path[0] in Settings.model_fields:
            found[name] = (path, _env_value(raw))
            continue
        close = difflib.get_close_matches(path[0], list(Settings.model_fields), n=1)
        hint = f" (did you mean 'SORTER_{'__'.join([close[0], *path[1:]]).upper()}'?)" if close else ""
        unknown.append(f"environment {name}: unknown variable{hint}")
    if unknown:
        raise ConfigError("\n".join(sorted(unknown)))
    return found


def _put(data: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = data.get(part)
        if not isinstance(node, dict):
            node = data[part] = {}
        data = node
    data[path[-1]] = value


def _walk(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, dict):
            keys += _walk(value, full + ".")
    return keys


@dataclass(frozen=True)
class Flag:
    """A command-line value for one settings key, dotted for a nested one (`camera.votes`); `name` is the
    flag as typed (`--votes`), so an error says where the value came from. None: the flag was not given."""

    key: str
    value: Any
    name: str


SECTIONS = ("camera", "outputs", "report", "metrics", "retention", "fleet")  # the tables a config may hold


def given_sections(settings: Settings) -> list[str]:
    """The sections the file, the environment or a flag set (not left at their defaults)."""
    return [name for name in SECTIONS if name in settings.model_fields_set]


def load_settings(path: Path | None = None, *flags: Flag, **overrides: Any) -> Settings:
    """Merge the file, SORTER_* variables and non-None flags (`flags` for nested keys, merged into their
    section; keyword `overrides` for top-level ones), validated once; unknown keys are errors."""
    data: dict[str, Any] = {}
    origins: dict[str, str] = {"": "defaults"}
    chosen = config_path(path)
    if chosen is not None:
        origins[""] = str(chosen)
        try:
            data = tomllib.loads(Path(chosen).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{chosen}: config file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{chosen}: not valid TOML: {exc}") from exc
    for key in _walk(data):
        origins[key] = str(chosen)
    for name, (keys, value) in _from_env().items():
        _put(data, keys, value)
        origins[".".join(keys)] = f"environment {name}"
    given = [Flag(key, value, f"--{key.replace('_', '-')}") for key, value in overrides.items()] + list(flags)
    for flag in given:
        if flag.value is not None:
            _put(data, flag.key.split("."), flag.value)
            origins[flag.key] = f"flag {flag.name}"
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, origins) from exc


def config_path(path: Path | None = None) -> Path | None:
    """--config, else SORTER_CONFIG, else /etc/sorter/sorter.toml when it exists."""
    if path is not None:
        return Path(path)
    if env := os.environ.get("SORTER_CONFIG"):
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def public_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as JSON-able data; secrets come out as '**********', and URLs
    (camera device, webhook) without their passwords (sorter.redact)."""
    data = settings.model_dump(mode="json")
    if data["camera"]["device"]:
        data["camera"]["device"] = mask_url(data["camera"]["device"])
    for output in [data["outputs"].get(name) for name in output_types()] + data["outputs"]["targets"]:
        if output and isinstance(output.get("url"), str):
            output["url"] = mask_url(output["url"])
    return data
