"""One line per log record on stderr (journald keeps them), as text or as JSON objects."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

from sorter.redact import mask_text

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _one_line(text: str) -> str:
    """A traceback or a multi-line message must not become many journal entries."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message"}` (+ `exc`): what log shippers parse without rules.
    URL credentials are masked in both (sorter.redact): a journal is read by more people than a config."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "message": mask_text(record.getMessage())}
        if record.exc_info:
            entry["exc"] = mask_text(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_text(_one_line(super().format(record)))


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted, not the stream it was made with: a
    command run in-process (tests, a CLI runner) swaps stderr and closes the old one when it ends."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:  # logging assigns it in __init__ and setStream: ignored below
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def setup(fmt: LogFormat = "text", level: int | str = logging.INFO) -> logging.Handler:
    """Replace the root handlers with one stderr handler in the chosen format (idempotent)."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False  # never printed: skip per record
    logging._srcfile = None  # nor is the caller's file and line: no stack walk per record (logging's own advice)
    return handler
