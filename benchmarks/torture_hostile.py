"""Hostile files into a real `sorter watch` (issue 14, "Done when"): bombs of every accepted format,
truncated and crafted headers, zero-byte and random files, a symlink out of INCOMING. One at a time,
so the daemon's peak RSS (VmHWM in /proc/<pid>/status) can be read after each; every file must get
a database row with a reason, and nothing outside INCOMING and OUT may change.

    python benchmarks/torture_hostile.py            # the full set (160 files), prints the figures
    python benchmarks/torture_hostile.py --small    # the set tests/test_torture_hostile.py runs
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sorter import store  # noqa: E402

MODEL = REPO / "tests" / "data" / "color-int8.tflite"
LIMIT_MB = 400.0


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int, depth: int = 8, colour: int = 2, idat: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_zeros(width: int, height: int, depth: int, colour: int) -> bytes:
    """A real, valid PNG of zeros, streamed through zlib so the harness never holds the pixels."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = b"\0" * (1 + width * channels * depth // 8)
    packer = zlib.compressobj(9)
    parts = [packer.compress(row) for _ in range(height)]
    return png_header(width, height, depth, colour, b"".join(parts) + packer.flush())


def jpeg_sof(width: int, height: int, marker: int = 0xC0, fill: int = 0, comps: int = 3) -> bytes:
    """A JPEG whose frame header claims width×height, optionally behind `fill` 0xFF fill bytes."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    body = struct.pack(">BHHB", 8, height, width, comps) + b"".join(bytes([c + 1, 0x11, 0]) for c in range(comps))
    sof = b"\xff" * fill + bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body
    return b"\xff\xd8" + app0 + sof + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x55" * 200 + b"\xff\xd9"


def webp(chunk: bytes, body: bytes) -> bytes:
    payload = b"WEBP" + chunk + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


def webp_bombs() -> Iterator[tuple[str, bytes]]:
    yield "vp8x-canvas.webp", webp(b"VP8X", b"\x10\0\0\0" + (16383).to_bytes(3, "little") * 2 + b"\0" * 20)
    bits = 16383 | (16383 << 14)
    yield "vp8l-16k.webp", webp(b"VP8L", b"\x2f" + struct.pack("<I", bits) + b"\0" * 40)
    yield "vp8-16k.webp", webp(b"VP8 ", b"\x10\x02\x00\x9d\x01\x2a" + struct.pack("<HH", 16383, 16383) + b"\0" * 40)
    yield "riff-only.webp", b"RIFF\x04\0\0\0WEBP"
    yield "vp8x-zero.webp", webp(b"VP8X", b"\0" * 10)


def tiff(width: int, height: int, bits: int = 8, samples: int = 3, ifd_at: int = 8, tags: bool = True) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 200), (277, 3, 1, samples), (278, 4, 1, height), (279, 4, 1, 16)]
    if not tags:
        entries = entries[2:]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", t, k, n) + (struct.pack("<HH", v, 0) if k == 3 else struct.pack("<I", v))
        for t, k, n, v in entries) + b"\0\0\0\0"
    return b"II*\0" + struct.pack("<I", ifd_at) + ifd + b"\0" * 220


def bmp(width: int, height: int, bits: int = 24) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 64, 0, 0, 54) + info + b"\0" * 64


def gif(width: int, height: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
            + b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00;")


def _real(fmt: str, size: int = 64, **kw) -> bytes:
    img = Image.fromarray(np.random.default_rng(size).integers(0, 255, (size, size, 3)).astype(np.uint8))
    bio = io.BytesIO()
    img.save(bio, fmt, **kw)
    return bio.getvalue()


def _with_fill(jpeg: bytes, fill: int) -> bytes:
    """The same JPEG with `fill` extra 0xFF fill bytes before its frame header (valid, T.81 B.1.1.2)."""
    at = min(jpeg.find(bytes([0xFF, m])) % len(jpeg) for m in (0xC0, 0xC2))
    return jpeg[:at] + b"\xff" * fill + jpeg[at:]


def real_bombs() -> list[tuple[str, bytes]]:
    """Real, decodable images of 81 M pixels that compress to a few KB or MB: what the old size check
    let through (TIFF and WEBP were sized 0×0, a fill byte hid the JPEG's frame, 16-bit cost 2×)."""
    zeros = np.zeros((9_000, 9_000, 3), np.uint8)
    progressive = cv2.imencode(".jpg", zeros, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    bombs = [("real-bomb-deflate.tif", cv2.imencode(".tif", zeros, [cv2.IMWRITE_TIFF_COMPRESSION, 8])[1].tobytes()),
             ("real-bomb-lossless.webp", cv2.imencode(".webp", zeros, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()),
             ("real-bomb-fill-progressive.jpg", _with_fill(progressive, 3)),
             ("real-bomb-16bit-70mp.png", png_zeros(10_000, 7_000, 16, 2))]
    del zeros
    return bombs


def hostile(small: bool = False) -> list[tuple[str, bytes]]:
    """(name, bytes) of each hostile file; `small` keeps one of each kind for the test suite."""
    out: list[tuple[str, bytes]] = real_bombs()
    suffixes = [".jpg", ".png", ".webp", ".tif", ".gif", ".bmp"]
    out += [(f"empty{s}", b"") for s in suffixes]
    out += [(f"text{s}", b"I am a text file pretending to be an image\n" * 3) for s in suffixes]
    rng = np.random.default_rng(14)
    out += [(f"random{i}{s}", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
            for i in range(1 if small else 3) for s in suffixes]
    for colour in (0, 2, 3, 4, 6):
        for depth in ((8,) if small else (1, 8, 16)):
            if colour in (2, 4, 6) and depth == 1:
                continue
            out.append((f"png-bomb-c{colour}-d{depth}.png", png_header(100_000, 100_000, depth, colour)))
    out.append(("png-16bit-over-bytes.png", png_header(7_000, 7_000, 16, 6)))  # 49 MP under the pixel limit
    out.append(("png-zero-size.png", png_header(0, 480)))
    for marker in ((0xC0, 0xC2) if small else (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB)):
        for fill in ((0, 1, 7) if small else (0, 1, 2, 7, 100)):
            out.append((f"jpeg-sof{marker:02x}-fill{fill}.jpg", jpeg_sof(65_535, 65_535, marker, fill)))
    out.append(("jpeg-progressive-30mp.jpg", jpeg_sof(6_000, 5_000, 0xC2)))  # coefficients over the bytes limit
    out.append(("jpeg-dnl-height0.jpg", jpeg_sof(4_000, 0)))
    out.append(("jpeg-cmyk-bomb.jpg", jpeg_sof(60_000, 60_000, comps=4)))
    out.append(("jpeg-soi-only.jpg", b"\xff\xd8\xff"))
    out.append(("jpeg-eoi-first.jpg", b"\xff\xd8\xff\xd9"))
    photo = cv2.imencode(".jpg", rng.integers(0, 255, (240, 320, 3)).astype(np.uint8))[1].tobytes()
    for cut in ((0.5,) if small else (0.02, 0.1, 0.3, 0.5, 0.8, 0.95)):
        out.append((f"jpeg-cut{int(cut * 100)}.jpg", photo[: int(len(photo) * cut)]))
        out.append((f"jpeg-cut{int(cut * 100)}-eoi.jpg", photo[: int(len(photo) * cut)] + b"\xff\xd9"))
    out += list(webp_bombs())
    out += [("tiff-bomb.tif", tiff(100_000, 100_000)), ("tiff-no-size.tif", tiff(0, 0, tags=False)),
            ("tiff-ifd-outside.tif", tiff(64, 64, ifd_at=1 << 30)),
            ("tiff-64bit-samples.tif", tiff(6_000, 6_000, 64, 4)), ("tiff-big-endian-header.tif", b"MM\0*\0\0\0\x08\0")]
    out += [("bmp-bomb.bmp", bmp(100_000, -100_000, 32)), ("bmp-zero.bmp", bmp(0, 0)),
            ("bmp-header-only.bmp", b"BM" + b"\0" * 20)]
    out += [("gif-bomb.gif", gif(65_535, 65_535)), ("gif-zero.gif", gif(0, 0)), ("gif-header.gif", b"GIF89a\x10")]
    real = {"png": _real("PNG"), "webp": _real("WEBP"), "gif": _real("GIF"), "tif": _real("TIFF"),
            "bmp": _real("BMP")}
    for ext, data in real.items():
        for cut in ((0.5,) if small else (0.1, 0.5, 0.9)):
            out.append((f"{ext}-cut{int(cut * 100)}.{ext}", data[: max(1, int(len(data) * cut))]))
    out.append(("photo.jp2", b"\0\0\0\x0cjP  \r\n\x87\n" + b"\0" * 200))
    out.append(("a" * 240 + ".jpg", b"\xff\xd8\xff"))
    if not small:
        out += [(f"random-large{i}.jpg", b"\xff\xd8\xff" + rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())
                for i in range(3)]
        out += [(f"png-bomb-{w}x{h}.png", png_header(w, h)) for w, h in ((1, 2**31 - 1), (2**31 - 1, 1),
                                                                          (2**32 - 1, 2**32 - 1), (9_000, 9_000))]
    return out


# Valid PNGs of zeros (a few hundred KB each) at and over the byte limit: what the limit lets one
# small file cost. `accepted` ones are decoded (a verdict, no error); the others must be refused.
AT_LIMIT = {"limit-8bit-rgb-40mp.png": (8_000, 5_000, 8, True), "limit-16bit-rgb-26mp.png": (6_000, 4_400, 16, True),
            "over-8bit-rgb-80mp.png": (10_000, 8_000, 8, False), "over-16bit-rgb-40mp.png": (8_000, 5_000, 16, False)}


def at_limit() -> list[tuple[str, bytes]]:
    return [(name, png_zeros(w, h, depth, 2)) for name, (w, h, depth, _) in AT_LIMIT.items()]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def tree_state(root: Path, skip: set[Path]) -> dict[str, tuple[int, int, str]]:
    """(size, mtime, sha256) of every file under root except those under `skip`."""
    state = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip) or not path.is_file() or path.is_symlink():
            continue
        st = path.stat()
        state[str(path)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


@dataclass
class Outcome:
    name: str
    peak_mb: float
    error: str | None
    state: str | None


def _rows_by_name(db: Path) -> dict[str, dict]:
    if not db.exists():
        return {}
    conn = store.open_reader(db)
    try:
        return {os.path.basename(r["source_path"]): dict(r) for r in conn.execute("SELECT * FROM items")}
    except Exception:
        return {}
    finally:
        conn.close()


def run(tmp: Path, files: list[tuple[str, bytes]], timeout_s: float = 30.0) -> tuple[list[Outcome], float, list[str]]:
    """Drop each file into a fresh daemon, one at a time; (outcomes, baseline MB, changed outside paths)."""
    incoming, out, db = tmp / "in", tmp / "out", tmp / "state" / "db.sqlite"
    for folder in (incoming, out, db.parent, tmp / "outside"):
        folder.mkdir(parents=True, exist_ok=True)
    secret = tmp / "outside" / "secret.jpg"
    secret.write_bytes(cv2.imencode(".jpg", np.zeros((40, 40, 3), np.uint8))[1].tobytes())
    files = [*files, ("link-out.jpg", b"")]  # the symlink to `secret` is made below
    before = tree_state(tmp, {incoming, out, db.parent})
    env = {**os.environ, "SORTER_STABLE_SECONDS": "0.2", "SORTER_THREADS": "1", "SORTER_BATCH_SIZE": "4"}
    cmd = [str(Path(sys.executable).parent / "sorter"), "watch", str(incoming), "--out", str(out),
           "--db", str(db), "--model", str(MODEL)]
    with open(tmp / "daemon.log", "w") as log:
        proc = subprocess.Popen(cmd, stderr=log, stdout=log, env=env, cwd=tmp)
    outcomes: list[Outcome] = []
    try:
        _wait(lambda: "ready" in (tmp / "daemon.log").read_text() or db.exists(), 60, proc)
        time.sleep(0.5)
        baseline = peak_rss_mb(proc.pid)
        for name, data in files:
            if name == "link-out.jpg":
                (incoming / name).symlink_to(secret)
            else:
                (incoming / f".{name[:200]}.part").write_bytes(data)
                os.rename(incoming / f".{name[:200]}.part", incoming / name)
            _wait(lambda n=name: n in _rows_by_name(db), timeout_s, proc)
            row = _rows_by_name(db)[name]
            outcomes.append(Outcome(name, peak_rss_mb(proc.pid), row.get("error"), row.get("state")))
    finally:
        proc.terminate()
        proc.wait(30)
    changed = [p for p, st in tree_state(tmp, {incoming, out, db.parent}).items()
               if before.get(p) != st and not p.endswith("daemon.log")]
    changed += [p for p in before if not Path(p).exists()]
    return outcomes, baseline, changed


def _wait(pred, timeout_s: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode}")
        if pred():
            return
        time.sleep(0.05)
    raise TimeoutError("no row in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="one file of each kind (the test suite's set)")
    args = parser.parse_args()
    files = hostile(args.small) + ([] if args.small else at_limit())
    with tempfile.TemporaryDirectory() as tmp:
        outcomes, baseline, changed = run(Path(tmp), files)
    for o in outcomes:
        print(f"{o.peak_mb:7.1f} MB  {o.state or '-':9} {o.name[:40]:40}  {o.error or '(no error)'}")
    worst = max(outcomes, key=lambda o: o.peak_mb)
    unrecorded = [o.name for o in outcomes if not o.error and not AT_LIMIT.get(o.name, (0, 0, 0, False))[3]]
    print(f"{len(outcomes)} files; baseline VmHWM {baseline:.1f} MB; peak {worst.peak_mb:.1f} MB after {worst.name}; "
          f"without a reason: {unrecorded or 'none'}; changed outside INCOMING/OUT: {changed or 'nothing'}")
    sys.exit(0 if worst.peak_mb < LIMIT_MB and not changed and not unrecorded else 1)


if __name__ == "__main__":
    main()
