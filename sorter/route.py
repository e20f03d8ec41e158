"""Where an item goes and how it gets there: no-clobber atomic moves, EXDEV copy fallback, recovery.

Moves never overwrite: a hard link (which fails if the name exists) then an unlink of the
source, or a rename after an existence check where links are not supported. Across file
systems the bytes are copied to a temporary name beside the destination, fsynced, renamed
into place, and only then is the source removed, so a crash leaves at worst two copies —
which `finish` (recovery) resolves by content hash — never zero.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from sorter.card import sha256_file
from sorter.verdict import Verdict

DUPLICATES = "duplicates"
REJECTED = "rejected"
UNCERTAIN = "uncertain"
_TMP_MARK = ".sorter-tmp"
_ESCAPE = re.compile(rb"\\x([0-9a-f]{2})")
NAME_MAX = 255  # bytes in one file name on every Linux file system sorter moves into


@dataclass(frozen=True)
class Identity:
    """Which file a path named when it was read: if any of these differ at move time, the bytes the
    row describes are no longer the ones at that path (replaced by rename, or still being written)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def same_file(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def unchanged(self, st: os.stat_result) -> bool:
        return self == Identity.of(st)


class Changed(OSError):
    """The file at the source path is not the one that was read: nothing was moved."""


def display_name(name: str) -> str:
    """A file name as valid UTF-8 text (undecodable bytes as `\\xNN`): what the database stores and what
    a destination is called. A camera's Latin-1 name would otherwise fail every insert of its batch."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def path_text(path: Path | str) -> str:
    """A path as storable text (see `display_name`); `from_text` maps it back for recovery."""
    return display_name(str(path))


def from_text(text: str) -> Path:
    """The path `path_text` stored: as written when it exists, else with its `\\xNN` escapes undone."""
    if "\\x" not in text or os.path.lexists(text):
        return Path(text)
    raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8"))
    return Path(os.fsdecode(raw))


def stored_at(out: Path, text: str) -> Path:
    """The path a stored destination names. Below OUT every name is UTF-8 (`free_name`, labels), but OUT's
    own path may not be: its escaped text would name a sibling folder outside OUT, so it is OUT itself."""
    prefix = path_text(out) + os.sep
    return out / text[len(prefix):] if text.startswith(prefix) else Path(text)


def _fit(stem: str, rest: str) -> str:
    """`stem + rest`, the stem cut (on a character boundary) so the name fits NAME_MAX bytes."""
    room = NAME_MAX - len(rest.encode("utf-8"))
    return stem.encode("utf-8")[: max(room, 1)].decode("utf-8", "ignore") + rest


def target_dir(out: Path, verdict: Verdict | None, label: str | None, error: str | None,
               duplicate: bool) -> Path:
    """OUT/duplicates, OUT/rejected, OUT/uncertain or OUT/<verdict>/<label> (fresh, rotten, and unknown,
    filed under its top class so a person sees what the model took it for)."""
    if duplicate:
        return out / DUPLICATES
    if error or not verdict or not label:
        return out / REJECTED
    if verdict == "uncertain":
        return out / UNCERTAIN
    folder = out / verdict / label
    if not inside(out, folder):  # cards refuse such labels; this is the last line of defence
        raise ValueError(f"destination {folder} resolves outside {out}; refused")
    return folder


def inside(out: Path, path: Path) -> bool:
    """Does `path` stay inside OUT once `..` and symlinks are resolved? (Nothing outside OUT is touched.)"""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(out))


def free_name(folder: Path, name: str, sha256: str | None, taken: set[Path] | frozenset = frozenset()) -> Path:
    """`name`, else `stem-<short hash>.ext`, else with a counter: a name not on disk nor in `taken`.
    Names are made valid UTF-8 and cut to NAME_MAX bytes: a 255-byte name that collides would otherwise
    get a tag it has no room for (ENAMETOOLONG) and could never be moved."""
    stem, ext = os.path.splitext(display_name(name))
    if len(ext.encode("utf-8")) > 32:  # not a real extension: keep it as part of the stem
        stem, ext = stem + ext, ""
    tag = (sha256 or "")[:8]
    first = [_fit(stem, ext)] + ([_fit(stem, f"-{tag}{ext}")] if tag else [])
    counted = (_fit(stem, f"-{tag or 'n'}-{i}{ext}") for i in range(1, 10_000))
    for candidate in itertools.chain(first, counted):
        path = folder / candidate
        if path not in taken and not os.path.lexists(path):
            return path
    raise FileExistsError(f"no free name for {name} in {folder}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check(src: Path, expect: Identity | None) -> None:
    """Refuse to move a file that is not (or no longer) the one that was read."""
    if expect is not None and not expect.unchanged(os.lstat(src)):
        raise Changed(errno.ESTALE, "changed since it was read", str(src))


def _link_or_rename(src: Path, dst: Path, expect: Identity | None = None) -> None:
    """Put src at dst without ever replacing an existing dst (same file system). With `expect`, only
    the file that was read moves: checked before the link, on the link itself (another file may have been
    renamed over src in between: the link is undone), and before src is unlinked (a new file that took
    the name in the meantime is left where it is)."""
    _check(src, expect)
    if not src.is_symlink():
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
                raise
        else:
            if expect is not None and not expect.unchanged(os.lstat(dst)):
                os.unlink(dst)
                raise Changed(errno.ESTALE, "replaced while it was being moved", str(src))
            _drop_source(src, expect)
            return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination exists", str(dst))
    os.rename(src, dst)


def copy_across(src: Path, dst: Path, expect: Identity | None = None) -> None:
    """EXDEV fallback: copy to a temp name beside dst, fsync, no-clobber rename, then unlink src (only
    if it is still the file that was copied)."""
    tmp = dst.with_name(_fit(f".{dst.name}", _TMP_MARK))
    try:
        if src.is_symlink():
            os.symlink(os.readlink(src), tmp)
        else:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                if expect is not None and not expect.unchanged(os.fstat(fin.fileno())):
                    raise Changed(errno.ESTALE, "changed since it was read", str(src))
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
        _link_or_rename(tmp, dst)
        _fsync_dir(dst.parent)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    _drop_source(src, expect)


def _drop_source(src: Path, expect: Identity | None) -> None:
    """Unlink src now that dst holds its file, unless a new file took the name; a src someone else
    removed meanwhile is fine (the file is at dst: the move must not be reported as failed)."""
    try:
        if expect is None or expect.same_file(os.lstat(src)):
            os.unlink(src)
    except FileNotFoundError:
        pass


def move(src: Path, dst: Path, expect: Identity | None = None) -> None:
    """Move src to dst atomically and without overwriting; copies when dst is on another device.
    The destination folder is made only when the move says it is missing (not once per file).
    With `expect`, raises `Changed` (nothing moved) when src is not the file that was read."""
    try:
        _link_or_rename(src, dst, expect)
    except FileNotFoundError:
        if dst.parent.is_dir():
            raise  # the source vanished
        dst.parent.mkdir(parents=True, exist_ok=True)
        move(src, dst, expect)
    except OSError as exc:  # `Changed` (ESTALE) goes on up with the rest
        if exc.errno != errno.EXDEV:
            raise
        dst.parent.mkdir(parents=True, exist_ok=True)
        copy_across(src, dst, expect)


def _holds(path: Path, sha256: str | None) -> bool:
    """Does `path` hold the bytes a row describes? Rows without a hash: cannot tell, yes. A symlink,
    FIFO or device holds no row's bytes (and is never opened: a FIFO would block recovery)."""
    if sha256 is None:
        return True
    return stat.S_ISREG(os.lstat(path).st_mode) and sha256_file(path) == sha256


def _same(src: Path, dst: Path) -> bool:
    """Is dst src itself (a hard link a crash left between link and unlink, or the same symlink)?"""
    if src.is_symlink() or dst.is_symlink():
        return src.is_symlink() and dst.is_symlink() and os.readlink(src) == os.readlink(dst)
    return os.path.samefile(src, dst)


def finish(src: Path, dst: Path, sha256: str | None) -> str:
    """Complete an interrupted move; returns 'moved', 'already', 'kept' or 'replaced' or 'lost'.

    Never assumes what sits at src: while the daemon was down a new file may have taken the name.
    - only dst → already done;
    - both, the same inode (killed between link and unlink) → drop the src link: 'already'; if that
      file no longer holds the row's bytes (killed before a changed file's link was undone) → drop the
      dst link instead: 'replaced';
    - both, dst holds the row's bytes: src is the finished copy's source (killed before its unlink) when it
      holds them too → dropped, 'already'; when it holds other bytes it is a new file: 'kept' (left for
      the scan, a new item);
    - src alone with the row's bytes → moved now; with other bytes → 'replaced' (the row's bytes are
      gone, the new file is left for the scan);
    - both, dst not the row's bytes → FileExistsError: the caller finds another name.
    """
    src_there, dst_there = os.path.lexists(src), os.path.lexists(dst)
    if dst_there and not src_there:
        return "already"
    if src_there and dst_there:
        if _same(src, dst):
            if not _holds(dst, sha256):  # the link of a file that changed after it was read
                os.unlink(dst)  # src is the same file: its bytes stay in INCOMING, read anew
                return "replaced"
            os.unlink(src)
            return "already"
        if sha256 is None or not _holds(dst, sha256):
            if sha256 is not None and not _holds(src, sha256):
                return "replaced"
            raise FileExistsError(errno.EEXIST, "destination holds other content", str(dst))
        if _holds(src, sha256):
            os.unlink(src)
            return "already"
        return "kept"
    if src_there:
        if not _holds(src, sha256):
            return "replaced"
        move(src, dst)
        return "moved"
    return "lost"
