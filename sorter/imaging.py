"""Bytes → the model's uint8 RGB input: sniff, guard against pixel bombs, decode, orient, resize."""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 30))
import cv2
import numpy as np
import simplejpeg

MAX_PIXELS = 80_000_000  # a 9000×9000 photo; above this the decode alone could exhaust an edge box
# .jp2 is not here: OpenCV's wheels decode no JPEG 2000, so such a file is refused by its name at once
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


class ImageError(ValueError):
    """An input that is not a usable image; `reason` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Header:
    """What the header says, read before a byte is decoded. `channels` and `sample_bytes` are what the
    decoder holds per pixel (16-bit PNG/TIFF decode at 2 bytes a sample before the 8-bit conversion);
    `progressive` JPEGs keep every DCT coefficient of the frame, whatever the output scale."""

    kind: str
    width: int
    height: int
    channels: int = 3
    sample_bytes: int = 1
    progressive: bool = False


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def _jpeg_header(data: bytes) -> Header | None:
    """The first frame header, walked as libjpeg walks markers: any number of 0xFF fill bytes may come
    before a marker (skipping only one let a crafted file hide its real size); anything else between
    segments is refused rather than guessed past."""
    i = 2
    while i + 1 < len(data):
        if data[i] != 0xFF:
            return None
        while i + 1 < len(data) and data[i + 1] == 0xFF:  # fill bytes
            i += 1
        if i + 1 >= len(data):
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xD9, 0xDA) or i + 4 > len(data):  # image ends (or a scan starts) before any frame
            return None
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in _SOF:
            if length < 8 or i + 10 > len(data):
                return None
            precision, height, width, components = struct.unpack(">BHHB", data[i + 4 : i + 10])
            return Header("jpeg", width, height, max(components, 1), 2 if precision > 8 else 1,
                          marker in _PROGRESSIVE)
        if length < 2:
            return None
        i += 2 + length
    return None


def _webp_header(data: bytes) -> Header | None:
    """Canvas size from the first chunk: VP8X (extended), VP8L (lossless) or VP8 (lossy)."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return Header("webp", width, height, 4)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return Header("webp", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF), 4)
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return Header("webp", width & 0x3FFF, height & 0x3FFF, 3)
    return None


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4)}  # SHORT, LONG


def _tiff_header(data: bytes) -> Header | None:
    """Width, height, samples and bits from the first IFD (the page a decoder reads)."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    (offset,) = struct.unpack(order + "I", data[4:8])
    if offset + 2 > len(data):
        return None
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    tags: dict[int, int] = {}
    for n in range(count):
        entry = data[offset + 2 + 12 * n : offset + 14 + 12 * n]
        if len(entry) < 12:
            return None
        tag, kind, values = struct.unpack(order + "HHI", entry[:8])
        if kind in _TIFF_TYPES and tag in (256, 257, 258, 277):
            fmt, size = _TIFF_TYPES[kind]
            if values * size <= 4:
                tags[tag] = struct.unpack(order + fmt, entry[8 : 8 + size])[0]
            else:  # several values stored elsewhere (BitsPerSample per sample): take the first
                (where,) = struct.unpack(order + "I", entry[8:12])
                if where + size > len(data):
                    return None
                tags[tag] = struct.unpack(order + fmt, data[where : where + size])[0]
    if 256 not in tags or 257 not in tags:
        return None
    samples = tags.get(277, 1)
    bits = tags.get(258, 8)
    return Header("tiff", tags[256], tags[257], max(samples, 3), max(1, -(-bits // 8)))


_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def sniff(data: bytes) -> Header:
    """Format and size from the header alone, so a bomb is refused before it is decoded. A format
    whose size cannot be read here is refused: an unknown size is never trusted."""
    if not data:
        raise ImageError("empty", "zero-byte file")
    header: Header | None = None
    if data[:3] == b"\xff\xd8\xff":
        header = _jpeg_header(data)
        if header is None:
            raise ImageError("truncated", "JPEG header ends before the frame size")
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 26:
        width, height = struct.unpack(">II", data[16:24])
        header = Header("png", width, height, max(3, _PNG_CHANNELS.get(data[25], 4)), 2 if data[24] == 16 else 1)
    elif data[:2] == b"BM" and len(data) >= 30:
        width, height = struct.unpack("<ii", data[18:26])
        bits = struct.unpack("<H", data[28:30])[0]
        header = Header("bmp", abs(width), abs(height), 4 if bits == 32 else 3)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        header = _webp_header(data)
    elif data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        header = Header("gif", width, height, 4)
    elif data[:4] in (b"II*\x00", b"MM\x00*"):
        header = _tiff_header(data)
    else:
        raise ImageError("not-an-image", "unrecognised file signature")
    if header is None or not header.width or not header.height:
        raise ImageError("unknown-size", "the header does not say the image's size; refused before decoding")
    return header


def decode_bytes(header: Header, factor: int = 1) -> int:
    """What decoding costs in memory: the decoder's own buffer at this scale (16-bit and alpha included),
    plus, for a progressive JPEG, the coefficients of the whole frame it keeps while it reads the scans."""
    scaled = -(-header.width // factor) * -(-header.height // factor)
    # + 3 bytes a pixel: cv2 copies the decoder's image into the uint8 array it hands back to Python,
    # so both are held at once (an 80 MP RGB PNG, BMP or TIFF raised peak RSS by 6 B/px, 459 MB, here).
    cost = scaled * (header.channels * header.sample_bytes + 3)
    if header.progressive:
        cost += header.width * header.height * header.channels * 2
    return cost


REDUCED_MARGIN = 1.5  # decoded side ≥ 1.5 × the model's: the area filter still averages ≥1.5 pixels per output


def _reduction(header: Header, size: tuple[int, int]) -> int:
    """The largest JPEG DCT scaling (1/2, 1/4, 1/8) that still leaves ≥1.5× the model input. The
    DCT scaling is itself a clean downscale; measured on the 360 fruit test photos at 1000 px with
    the 256 px model, 1/2 instead of a full decode changed 1 prediction and cut decoding 5.6 → 3.4 ms."""
    if header.kind != "jpeg" or not header.width:
        return 1
    factor = 1
    for candidate in (2, 4, 8):
        if (header.width // candidate >= REDUCED_MARGIN * size[1]
                and header.height // candidate >= REDUCED_MARGIN * size[0]):
            factor = candidate
    return factor


if not hasattr(cv2, "IMREAD_COLOR_RGB"):  # a system OpenCV older than pyproject.toml allows
    raise ImportError(f"sorter needs OpenCV 4.11 or newer, found {cv2.__version__}: "
                      "pip install -U opencv-python-headless")

# RGB straight from the decoder (libjpeg-turbo writes it as cheaply as BGR): no channel swap after it.
# The REDUCED_* flags are a scale bit plus IMREAD_COLOR (BGR), so the scale bit is taken on its own.
_RGB = {f: cv2.IMREAD_COLOR_RGB | (flag & ~cv2.IMREAD_COLOR) for f, flag in
        ((1, cv2.IMREAD_COLOR), (2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
         (8, cv2.IMREAD_REDUCED_COLOR_8))}


def decode(data: bytes, size: tuple[int, int], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode to an (H, W, 3) uint8 RGB array of `size` (height, width); EXIF orientation honoured.

    `max_pixels` bounds the frame's size and, in bytes, what decoding may hold: 3 bytes a pixel (8-bit
    RGB) at the scale it is decoded at. A 16-bit or alpha image costs the decoder more per pixel and a
    progressive JPEG keeps its whole frame's coefficients, so those meet the limit sooner."""
    header = sniff(data)
    if header.width * header.height > max_pixels:
        raise ImageError("pixel-bomb", f"{header.width}×{header.height} exceeds {max_pixels:,} pixels")
    factor = _reduction(header, size)
    if (cost := decode_bytes(header, factor)) > 3 * max_pixels:
        raise ImageError("pixel-bomb", f"{header.width}×{header.height} {header.kind} needs {cost / 1e6:,.0f} MB "
                                       f"to decode, over the {3 * max_pixels / 1e6:,.0f} MB max_pixels allows")
    image = _decode_jpeg(data, header, factor) if header.kind == "jpeg" else None
    if image is None:
        with quiet_opencv():
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _RGB[factor])
    if image is None:
        raise ImageError("undecodable", f"{header.kind} data could not be decoded (corrupt or truncated)")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError("pixel-bomb", f"{image.shape[1]}×{image.shape[0]} exceeds {max_pixels:,} pixels")
    return fit(image, size)


# libjpeg's warnings for scan data that stops before the last block: an EOI marker reached early
# (JWRN_HIT_MARKER) or the bytes running out (JWRN_JPEG_EOF). OpenCV ignores both and returns the
# missing blocks grey, so a photo cut at 80 % with EOI appended was scored ("rotten 0.83").
_CUT_SHORT = ("premature end of data segment", "premature end of jpeg file")


def _decode_jpeg(data: bytes, header: Header, factor: int) -> np.ndarray | None:
    """A JPEG through libjpeg-turbo in strict mode (simplejpeg), at 1/factor scale, EXIF orientation
    applied: the same pixels OpenCV gives (checked on 800 photos), in one decode that also tells a scan
    cut short. None where OpenCV should decode instead: CMYK or 12-bit data, or a warning other than a cut
    (extraneous bytes, which some cameras write), which OpenCV tolerates as it always did."""
    try:
        image = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, min_factor=factor,
                                       min_height=-(-header.height // factor), min_width=-(-header.width // factor))
    except ValueError as exc:
        if any(text in str(exc).lower() for text in _CUT_SHORT):
            raise ImageError("truncated", f"JPEG scan data ends early ({str(exc).strip()})") from None
        return None
    return _orient(image, exif_orientation(data))


def exif_orientation(data: bytes) -> int:
    """The EXIF Orientation tag (1-8) of a JPEG's APP1 segment, 1 when there is none or it is unreadable."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xDA, 0xD9):
            break
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\0\0":
            return _tiff_orientation(data[i + 10 : i + 2 + length])
        i += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[offset : offset + 2])
        for n in range(count):
            tag, kind, _, value = struct.unpack(order + "HHIH", tiff[offset + 2 + 12 * n : offset + 12 + 12 * n])
            if tag == 0x0112 and kind == 3:
                return value if 1 <= value <= 8 else 1
    except struct.error:
        pass
    return 1


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """What OpenCV's decoder does for each EXIF orientation (a flip, a transpose, or both)."""
    if orientation >= 5:
        image = cv2.transpose(image)
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return image if flip is None else cv2.flip(image, flip)


class _QuietCodecs:
    """OpenCV logs its own `[ERROR]`/`[ WARN ]` lines (several, multi-line) for every corrupt file
    imdecode meets, beside the one line the caller already writes with the reason. OpenCV's log level
    is process-wide, so it is lowered only while a decode runs and restored when the last one ends:
    warnings from anything else (a camera's capture) keep their level outside decoding."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._saved = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if not self._active:
                self._saved = cv2.utils.logging.getLogLevel()
                cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if not self._active:
                    cv2.utils.logging.setLogLevel(self._saved)


quiet_opencv = _QuietCodecs()


def fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (height, width): area filter when shrinking, linear when enlarging."""
    height, width = size
    if image.shape[:2] == (height, width):  # a camera or photo already at the model's size skips a copy
        return image
    shrinking = image.shape[0] > height or image.shape[1] > width
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_rgb(bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Camera frame (BGR, BGRA, gray or 16-bit) → uint8 RGB at (height, width)."""
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    elif bgr.shape[2] == 4:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_BGRA2BGR)
    if bgr.dtype != np.uint8:
        bgr = cv2.convertScaleAbs(bgr, alpha=255.0 / max(1, int(np.iinfo(bgr.dtype).max)))
    return cv2.cvtColor(fit(bgr, size), cv2.COLOR_BGR2RGB)


def one_image_per_thread() -> None:
    """The daemons parallelise across images (decode workers); OpenCV's own pool inside each small
    resize only adds wake-ups and competes with the interpreter's threads (0.39 → 0.27 ms per
    224 px JPEG here). Process-wide, so called by the daemons, not on import."""
    cv2.setNumThreads(1)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
