"""Route: destinations, no-clobber names, symlinks, cross-device copies, ENOSPC, crash recovery."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from sorter import route
from sorter.card import sha256_file


def test_target_dir(tmp_path):
    assert route.target_dir(tmp_path, "fresh", "apple", None, False) == tmp_path / "fresh" / "apple"
    assert route.target_dir(tmp_path, "rotten", "apple", None, False) == tmp_path / "rotten" / "apple"
    assert route.target_dir(tmp_path, "uncertain", "apple", None, False) == tmp_path / "uncertain"
    assert route.target_dir(tmp_path, None, None, "empty", False) == tmp_path / "rejected"
    assert route.target_dir(tmp_path, "fresh", "apple", None, True) == tmp_path / "duplicates"


def test_free_name_never_reuses_a_name(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"1")
    assert route.free_name(tmp_path, "a.jpg", "deadbeef00") == tmp_path / "a-deadbeef.jpg"
    (tmp_path / "a-deadbeef.jpg").write_bytes(b"2")
    assert route.free_name(tmp_path, "a.jpg", "deadbeef00") == tmp_path / "a-deadbeef-1.jpg"
    taken = {tmp_path / "b.jpg"}
    assert route.free_name(tmp_path, "b.jpg", "cafe0000", taken) == tmp_path / "b-cafe0000.jpg"


def test_move_never_overwrites(tmp_path):
    src, dst = tmp_path / "s.jpg", tmp_path / "o" / "d.jpg"
    src.write_bytes(b"new")
    dst.parent.mkdir()
    dst.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        route.move(src, dst)
    assert (src.read_bytes(), dst.read_bytes()) == (b"new", b"old")


def test_move_symlink_moves_the_link_not_the_target(tmp_path):
    target = tmp_path / "outside.jpg"
    target.write_bytes(b"precious")
    link = tmp_path / "in" / "link.jpg"
    link.parent.mkdir()
    link.symlink_to(target)
    dst = tmp_path / "out" / "link.jpg"
    route.move(link, dst)
    assert dst.is_symlink() and not os.path.lexists(link)
    assert target.read_bytes() == b"precious"


def _other_device(tmp_path: Path) -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) on another device")
    return shm


def test_move_across_devices_really(tmp_path):
    other = _other_device(tmp_path)
    src = tmp_path / "x.jpg"
    src.write_bytes(b"bytes" * 1000)
    dst = Path(other) / f"sorter-test-{os.getpid()}" / "x.jpg"
    try:
        route.move(src, dst)
        assert dst.read_bytes() == b"bytes" * 1000 and not src.exists()
        assert [p.name for p in dst.parent.iterdir()] == ["x.jpg"]  # no temp file left
    finally:
        shutil.rmtree(dst.parent, ignore_errors=True)


def _exdev(*_a, **_k):
    raise OSError(errno.EXDEV, "Invalid cross-device link")


def test_exdev_falls_back_to_copy(tmp_path, monkeypatch):
    src, dst = tmp_path / "s.jpg", tmp_path / "o" / "d.jpg"
    src.write_bytes(b"abc")
    real_link = os.link
    calls = []

    def link_once(a, b, **kw):  # EXDEV for the source, real link for the temp copy
        calls.append(a)
        if Path(a) == src:
            _exdev()
        return real_link(a, b, **kw)

    monkeypatch.setattr(route.os, "link", link_once)
    route.move(src, dst)
    assert dst.read_bytes() == b"abc" and not src.exists() and len(calls) == 2


def test_enospc_during_copy_leaves_source_and_no_debris(tmp_path, monkeypatch):
    src, dst = tmp_path / "s.jpg", tmp_path / "o" / "d.jpg"
    src.write_bytes(b"abc")
    monkeypatch.setattr(route.os, "link", _exdev)

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(route.shutil, "copyfileobj", full)
    with pytest.raises(OSError) as info:
        route.move(src, dst)
    assert info.value.errno == errno.ENOSPC
    assert src.read_bytes() == b"abc" and list(dst.parent.iterdir()) == []


def test_finish_covers_every_crash_point(tmp_path):
    sha = sha256_file
    d = tmp_path / "out"
    d.mkdir()
    # src only: the move never happened
    (tmp_path / "a").write_bytes(b"A")
    assert route.finish(tmp_path / "a", d / "a", None) == "moved" and (d / "a").read_bytes() == b"A"
    # dst only: moved, not yet marked done
    assert route.finish(tmp_path / "a", d / "a", None) == "already"
    # both, hard-linked: crash between link and unlink
    (tmp_path / "b").write_bytes(b"B")
    os.link(tmp_path / "b", d / "b")
    assert route.finish(tmp_path / "b", d / "b", None) == "already" and not (tmp_path / "b").exists()
    # both, a finished cross-device copy: same bytes
    (tmp_path / "c").write_bytes(b"C")
    (d / "c").write_bytes(b"C")
    assert route.finish(tmp_path / "c", d / "c", sha(d / "c")) == "already" and not (tmp_path / "c").exists()
    # both, different content at dst: refuse rather than lose either
    (tmp_path / "e").write_bytes(b"E")
    (d / "e").write_bytes(b"other")
    with pytest.raises(FileExistsError):
        route.finish(tmp_path / "e", d / "e", sha(tmp_path / "e"))
    # neither
    assert route.finish(tmp_path / "zz", d / "zz", None) == "lost"
