"""Reading a file someone else wrote: bounded in size, never through a symlink.

`sorter watch` and `sorter classify` read what cameras, copy tools and people put in a folder; a 10 GB
file or a link to /etc/shadow must cost neither the memory nor the disclosure.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class RefusedFile(OSError):
    """A file not read, with the reason in watch's words (`symlink: not followed`, `too-large: …`)."""


def read_at_most(path: Path, limit: int, expected: int) -> tuple[bytes, os.stat_result]:
    """Up to `limit` + 1 bytes through one descriptor that never follows a symlink, and that
    descriptor's stat after reading (which file was read, and its size once read). Plain os.read:
    a buffered file object adds fstat, isatty and seek calls (and GIL hand-offs) to every file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        chunks, total = [], 0
        while total <= limit:
            want = min(limit + 1 - total, max(expected + 1, 1 << 16))
            chunk = os.read(fd, want)
            chunks.append(chunk)
            total += len(chunk)
            if len(chunk) < want:  # a regular file reads short only at its end: no extra call for EOF
                break
        return b"".join(chunks), os.fstat(fd)
    finally:
        os.close(fd)


def refusal(st: os.stat_result, limit: int) -> str | None:
    """Why a file (its lstat) is not read, or None: a symlink, not a regular file, over `limit` bytes."""
    if stat.S_ISLNK(st.st_mode):
        return "symlink: not followed"
    if not stat.S_ISREG(st.st_mode):
        return "not-a-regular-file"
    if st.st_size > limit:
        return f"too-large: {st.st_size:,} bytes"
    return None


HINTS = {"symlink": " (name the file it points to)", "too-large": " (max_file_bytes {limit:,})"}


def read_guarded(path: Path, limit: int) -> bytes:
    """The whole file when it is a regular file (not a symlink) of at most `limit` bytes; RefusedFile
    with the reason (and what to do about it) otherwise (FileNotFoundError when it is gone)."""
    st = os.lstat(path)
    if (reason := refusal(st, limit)) is not None:
        raise RefusedFile(reason + HINTS.get(reason.split(":")[0], "").format(limit=limit))
    try:
        data, _ = read_at_most(path, limit, st.st_size)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a symlink between the lstat and the open
            raise RefusedFile("symlink: not followed (name the file it points to)") from exc
        raise
    if len(data) > limit:
        raise RefusedFile(f"too-large: more than {limit:,} bytes (max_file_bytes)")
    return data
