"""The options every `sorter` command shares, and the one way a command gets its settings.

A command asks `command_settings` for its settings: the config file (the command's `--config`, else
the one given before the command, `sorter --config FILE watch`, else SORTER_CONFIG, else
/etc/sorter/sorter.toml), the SORTER_* variables and the command's flags are merged and validated once,
by `sorter.config.load_settings`, and kept on the root Typer context for the rest of the invocation. A
config error is one line and exit 2. A command that names the sections it `uses` warns about each
other section the file or environment set, since a `[camera]` section handed to `sorter watch` or an
`[outputs]` section handed to `sorter classify` changes nothing there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from sorter.console import fail, warn

if TYPE_CHECKING:
    from sorter.config import Flag, Settings

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML configuration file.")
ModelOpt = typer.Option(None, "--model", "-m",
                        help="Model bundle (.tflite with its .card.json); default: the shipped one.")
DbOpt = typer.Option(None, "--db", help="Results database; default: config `db`.")
ReadOnlyDbOpt = typer.Option(None, "--db", help="Results database, opened read-only; default: config `db`.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")

# which command configures each section, for the warning's hint
CONFIGURES = {"camera": "sorter camera", "outputs": "sorter watch and sorter camera",
              "metrics": "sorter watch and sorter camera", "fleet": "sorter watch, camera, report and fleet",
              "report": "sorter report and fleet report", "retention": "sorter db prune"}


@dataclass
class Invocation:
    """What the root callback learnt, and the settings once a command loaded them."""

    config: Path | None = None
    settings: Settings | None = None


def invocation(ctx: typer.Context) -> Invocation:
    """The state on the root context (made here when a command runs without the callback, as in tests
    that invoke a sub-app)."""
    root = ctx.find_root()
    if not isinstance(root.obj, Invocation):
        root.obj = Invocation()
    return root.obj


def command_settings(ctx: typer.Context, config: Path | None, *flags: Flag, uses: tuple[str, ...] | None = None,
                     **overrides: Any) -> Settings:
    """This invocation's settings (see the module docstring); `flags` for nested keys, `overrides` for
    top-level ones; `uses`: the sections the command reads, None for a command that reads the box's
    shared config by design (reports, audits, the database) and warns about nothing."""
    from sorter.config import ConfigError, given_sections, load_settings

    state = invocation(ctx)
    if state.settings is None:
        try:
            state.settings = load_settings(config or state.config, *flags, **overrides)
        except ConfigError as exc:
            fail(str(exc))
        if uses is not None:
            command = " ".join(["sorter", *ctx.command_path.split()[1:]])  # whatever the program was called
            for section in given_sections(state.settings):
                if section not in uses:
                    warn(f"config section [{section}] is not used by `{command}` (it configures "
                         f"{CONFIGURES[section]})")
    return state.settings
