"""Keep native libraries' start-up banners off the operator's terminal, and nothing else.

LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." the first time a process
allocates an interpreter, and TensorFlow prints its oneDNN and CPU-feature banners while its shared
libraries load (twice: two of them carry the check). Both write straight to file descriptor 2 from C++,
with no switch: LiteRT's minimal logger reads no setting, and the oneDNN line ignores
TF_CPP_MIN_LOG_LEVEL. So the two calls that print them run with fd 2 pointed at a temporary file, and
every line is written back except those known banners: a real warning or error still reaches stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

BANNERS = tuple(re.compile(p) for p in (
    r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"I\d{4} [\d:.]+ +\d+ (port|cpu_feature_guard)\.cc:\d+\] ",
    r"To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$",
))
_lock = threading.Lock()
_allocated = threading.Event()


def is_banner(line: str, extra: tuple[re.Pattern, ...] = ()) -> bool:
    return any(p.match(line) for p in (*BANNERS, *extra))


def _replay(captured: bytes, extra: tuple[re.Pattern, ...]) -> None:
    kept = [line for line in captured.splitlines(keepends=True)
            if not is_banner(line.decode(errors="replace").rstrip("\r\n"), extra)]
    if kept:
        os.write(2, b"".join(kept))


@contextlib.contextmanager
def banners_filtered(extra: tuple[re.Pattern, ...] = ()) -> Iterator[None]:
    """Run the block with fd 2 captured, then write back every line that is not a known banner
    (BANNERS, plus `extra`). Other threads' stderr lines written meanwhile are delayed, never lost."""
    with _lock, tempfile.TemporaryFile() as tmp:
        with contextlib.suppress(ValueError, OSError):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to keep clean
            yield
            return
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError, OSError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            _replay(tmp.read(), extra)


def allocate_tensors(interpreter) -> None:
    """`interpreter.allocate_tensors()`; the process's first one (where LiteRT sets up XNNPACK and
    announces it) runs with the banner filtered out."""
    if _allocated.is_set():
        interpreter.allocate_tensors()
        return
    with banners_filtered():
        interpreter.allocate_tensors()
    _allocated.set()
