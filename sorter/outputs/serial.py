"""One line per decision on a serial port (pyserial, imported only when configured)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sorter.outputs.base import OutputConfig


class Config(OutputConfig):
    """`[outputs.serial]`: `<verdict> <label> <confidence>` lines on `port` at `baud`."""

    type: Literal["serial"] = "serial"
    port: str
    baud: int = Field(default=9600, ge=50)


def build(config: Config) -> SerialOutput:
    return SerialOutput(config.port, config.baud)


class SerialOutput:
    """One line per decision, `<verdict> <label> <confidence>\\n`, on a serial port (pyserial)."""

    def __init__(self, port: str, baud: int = 9600):
        self.port, self.baud, self.name = port, baud, f"serial {port}"
        self._serial: Any = None

    def send(self, event: dict[str, Any]) -> None:
        import serial

        if self._serial is None:
            self._serial = serial.serial_for_url(self.port, baudrate=self.baud, timeout=1, write_timeout=2)
        line = f"{event['verdict']} {event.get('label') or '-'} {event.get('confidence') or 0:.3f}\n"
        try:
            self._serial.write(line.encode())
            self._serial.flush()
        except Exception:
            self.close()  # reopen on the next attempt: the adapter may have been replugged
            raise

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None
