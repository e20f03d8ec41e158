"""A pulse on a GPIO pin per decision (gpiozero, imported only when configured)."""

from __future__ import annotations

import threading
from typing import Any, Literal

from pydantic import Field

from sorter.outputs.base import OutputConfig


class Config(OutputConfig):
    """`[outputs.gpio]`: `pulse_ms` on `pin` (a BCM number or a gpiozero pin name); rotten only by default."""

    type: Literal["gpio"] = "gpio"
    pin: int | str
    pulse_ms: int = Field(default=200, ge=1)
    verdicts: list[str] = Field(default_factory=lambda: ["rotten"])


def build(config: Config) -> GpioOutput:
    return GpioOutput(config.pin, config.pulse_ms)


class GpioOutput:
    """A pulse of `pulse_ms` on a pin (gpiozero; pass `device` to drive any object with on/off)."""

    def __init__(self, pin: int | str, pulse_ms: int = 200, device: Any = None):
        if device is None:
            from gpiozero import DigitalOutputDevice

            device = DigitalOutputDevice(pin)
        self.device, self.pulse, self.name = device, pulse_ms / 1000, f"gpio {pin}"
        self._halt = threading.Event()

    def send(self, event: dict[str, Any]) -> None:
        self.device.on()
        try:
            self._halt.wait(self.pulse)
        finally:
            self.device.off()

    def close(self) -> None:
        self._halt.set()
        closer = getattr(self.device, "close", None)
        if closer:
            closer()
