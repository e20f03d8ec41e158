"""Output types: every module of this package with a `Config` (its settings) and a `build` (its output).

Adding an output type is adding one module: its settings appear as `[outputs.<module name>]` (one of that
type) and as `type = "<module name>"` in `[[outputs.targets]]` (any number, of any type), and
`build_outputs` builds it, with no list of types to extend anywhere else.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from functools import cache
from types import ModuleType
from typing import Any

from sorter.outputs.base import Output

log = logging.getLogger("sorter.outputs")
NOT_TYPES = frozenset({"base", "dispatch", "registry"})
FIRST = ("command", "webhook", "mqtt", "gpio", "serial")  # the order they were built in before the registry


@cache
def types() -> dict[str, ModuleType]:
    """Type name → module, in a fixed order (the original five, then the rest by name)."""
    package = importlib.import_module("sorter.outputs")
    names = [m.name for m in pkgutil.iter_modules(package.__path__) if m.name not in NOT_TYPES
             and not m.name.startswith("_")]
    found = {}
    for name in sorted(names, key=lambda n: (FIRST.index(n) if n in FIRST else len(FIRST), n)):
        module = importlib.import_module(f"sorter.outputs.{name}")
        if hasattr(module, "Config") and hasattr(module, "build"):
            found[name] = module
    return found


def configured(settings: Any) -> list[Any]:
    """Every output's settings: `[outputs.<type>]` tables in type order, then `[[outputs.targets]]`."""
    one = [getattr(settings, name) for name in types() if getattr(settings, name, None) is not None]
    return [*one, *settings.targets]


def build_outputs(settings: Any) -> list[tuple[Output, list[str]]]:
    """The configured outputs, each with the verdicts it fires on. One that cannot be built (a GPIO pin,
    a serial port) closes those built before it and raises."""
    built: list[tuple[Output, list[str]]] = []
    try:
        for config in configured(settings):
            built.append((types()[config.type].build(config), config.verdicts))
    except Exception:
        for output, _ in built:
            try:
                output.close()
            except Exception:
                log.exception("closing %s", output.name)
        raise
    return built
