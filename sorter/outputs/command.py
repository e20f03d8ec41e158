"""Run a program per decision, the decision in its environment (SORTER_VERDICT, …, SORTER_EVENT)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field

from sorter.outputs.base import OutputConfig


class Config(OutputConfig):
    """`[outputs.command]`: argv run per decision; a non-zero exit is a failure (retried)."""

    type: Literal["command"] = "command"
    argv: list[str] = Field(min_length=1)
    timeout_seconds: float = Field(default=5.0, gt=0)
    # variables of the daemon's environment the command may see (beyond PATH, HOME, LANG, TZ, …)
    pass_env: list[str] = Field(default_factory=list)


def build(config: Config) -> CommandOutput:
    return CommandOutput(config.argv, config.timeout_seconds, config.pass_env)


def event_env(event: dict[str, Any]) -> dict[str, str]:
    """SORTER_VERDICT, SORTER_LABEL, … plus SORTER_EVENT (the whole event as JSON)."""
    env = {f"SORTER_{k.upper()}": "" if v is None else str(v) for k, v in event.items()
           if isinstance(v, str | int | float) or v is None}
    env["SORTER_EVENT"] = json.dumps(event)
    return env


# What a child needs to find programs and speak the locale; nothing else of the daemon's environment
# (which holds SORTER_OUTPUTS__MQTT__PASSWORD and the like) reaches it unless named in `pass_env`.
CHILD_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME")


def child_env(event: dict[str, Any], pass_env: Iterable[str] = (), environ: dict[str, str] | None = None,
              ) -> dict[str, str]:
    """The decision's SORTER_* variables plus CHILD_ENV, LC_* and the names in `pass_env`."""
    source = os.environ if environ is None else environ
    wanted = {*CHILD_ENV, *pass_env}
    env = {k: v for k, v in source.items() if k in wanted or k.startswith("LC_")}
    return {**env, **event_env(event)}


class CommandOutput:
    """Run a program with the decision in its environment; a non-zero exit is a failure."""

    def __init__(self, argv: list[str], timeout_seconds: float = 5.0, pass_env: Iterable[str] = ()):
        self.argv, self.timeout, self.name = argv, timeout_seconds, f"command {argv[0]}"
        self.pass_env = tuple(pass_env)

    def send(self, event: dict[str, Any]) -> None:
        done = subprocess.run(self.argv, env=child_env(event, self.pass_env), timeout=self.timeout,
                              capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-200:]}")

    def close(self) -> None:
        pass
