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
import shutil
from pathlib import Path

from sorter.card import sha256_file

DUPLICATES = "duplicates"
REJECTED = "rejected"
UNCERTAIN = "uncertain"
_TMP_MARK = ".sorter-tmp"


def target_dir(out: Path, verdict: str | None, label: str | None, error: str | None,
               duplicate: bool) -> Path:
    """OUT/duplicates, OUT/rejected, OUT/uncertain or OUT/<verdict>/<label>."""
    if duplicate:
        return out / DUPLICATES
    if error or not verdict or not label:
        return out / REJECTED
    if verdict == "uncertain":
        return out / UNCERTAIN
    return out / verdict / label


def free_name(folder: Path, name: str, sha256: str | None, taken: set[Path] | frozenset = frozenset()) -> Path:
    """`name`, else `stem-<short hash>.ext`, else with a counter: a name not on disk nor in `taken`."""
    stem, ext = os.path.splitext(name)
    tag = (sha256 or "")[:8]
    first = [name] + ([f"{stem}-{tag}{ext}"] if tag else [])
    counted = (f"{stem}-{tag or 'n'}-{i}{ext}" for i in range(1, 10_000))
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


def _link_or_rename(src: Path, dst: Path) -> None:
    """Put src at dst without ever replacing an existing dst (same file system)."""
    if not src.is_symlink():
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
                raise
        else:
            os.unlink(src)
            return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination exists", str(dst))
    os.rename(src, dst)


def copy_across(src: Path, dst: Path) -> None:
    """EXDEV fallback: copy to a temp name beside dst, fsync, no-clobber rename, then unlink src."""
    tmp = dst.with_name(f".{dst.name}{_TMP_MARK}")
    try:
        if src.is_symlink():
            os.symlink(os.readlink(src), tmp)
        else:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
        _link_or_rename(tmp, dst)
        _fsync_dir(dst.parent)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    os.unlink(src)


def move(src: Path, dst: Path) -> None:
    """Move src to dst atomically and without overwriting; copies when dst is on another device.
    The destination folder is made only when the move says it is missing (not once per file)."""
    try:
        _link_or_rename(src, dst)
    except FileNotFoundError:
        if dst.parent.is_dir():
            raise  # the source vanished
        dst.parent.mkdir(parents=True, exist_ok=True)
        move(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        dst.parent.mkdir(parents=True, exist_ok=True)
        copy_across(src, dst)


def _same(src: Path, dst: Path, sha256: str | None) -> bool:
    """Is dst already the finished copy of src? Same inode, or (across devices) same bytes."""
    if src.is_symlink() or dst.is_symlink():
        return src.is_symlink() and dst.is_symlink() and os.readlink(src) == os.readlink(dst)
    if os.path.samefile(src, dst):
        return True
    return sha256 is not None and sha256_file(dst) == sha256


def finish(src: Path, dst: Path, sha256: str | None) -> str:
    """Complete an interrupted move; returns 'moved', 'already' or 'lost'.

    Cases after a crash: only dst exists → already done; both exist and dst is src (hard link
    or identical copy) → drop src; src alone → move it now.
    """
    src_there, dst_there = os.path.lexists(src), os.path.lexists(dst)
    if dst_there and not src_there:
        return "already"
    if src_there and dst_there and _same(src, dst, sha256):
        os.unlink(src)
        return "already"
    if src_there and not dst_there:
        move(src, dst)
        return "moved"
    if src_there:
        raise FileExistsError(errno.EEXIST, "destination holds other content", str(dst))
    return "lost"
