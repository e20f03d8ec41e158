"""One JSON line per decision appended to a file: a log a script can `tail -F`, or a PLC gateway can read.

The whole output type is this module (sorter.outputs.registry finds it): `[outputs.jsonl]` or a
`[[outputs.targets]]` entry with `type = "jsonl"`.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sorter.outputs.base import OutputConfig


class Config(OutputConfig):
    """`[outputs.jsonl]`: append each event to `path` as one line of JSON, flushed to disk (`fsync`)."""

    type: Literal["jsonl"] = "jsonl"
    path: Path
    fsync: bool = Field(default=True)  # each line on disk before the send counts as done


def build(config: Config) -> JsonLinesOutput:
    return JsonLinesOutput(config.path, config.fsync)


class JsonLinesOutput:
    """Lines are written whole (one `write` of the encoded line under a lock, O_APPEND), so a reader
    never sees half of one, and a line that could not be written raises (the dispatcher retries)."""

    def __init__(self, path: Path, fsync: bool = True):
        self.path, self.fsync, self.name = Path(path), fsync, f"jsonl {path}"
        self._lock = threading.Lock()

    def send(self, event: dict[str, Any]) -> None:
        line = (json.dumps(event, sort_keys=True) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        pass
