"""Pixel bombs the size check used to miss (issue 14, item 8): TIFF and WEBP (sized 0×0), a JPEG whose
frame size hides behind fill bytes, 16-bit and progressive images that cost more than 3 bytes a pixel,
and `.jp2`, accepted by name and never decodable. Each is refused from its header, before decoding."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from sorter.imaging import ImageError, decode, decode_bytes, is_image_name, sniff

SIZE = (32, 32)


def _pil(img: Image.Image, fmt: str, **kw) -> bytes:
    bio = io.BytesIO()
    img.save(bio, fmt, **kw)
    return bio.getvalue()


def _small(mode: str = "RGB") -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 255, (8, 8, 3)).astype(np.uint8)).convert(mode)


def _tiff_sized(width: int, height: int, drop_size: bool = False) -> bytes:
    """A real TIFF whose first IFD claims another size (or none)."""
    data = bytearray(_pil(_small(), "TIFF"))
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    for n in range(count):
        at = offset + 2 + 12 * n
        tag, kind = struct.unpack(order + "HH", data[at : at + 4])
        if tag in (256, 257):
            value = width if tag == 256 else height
            if drop_size:
                data[at : at + 2] = struct.pack(order + "H", 65000 + tag)  # an unknown private tag
            elif kind == 3:
                data[at + 4 : at + 12] = struct.pack(order + "IHH", 1, value, 0)
            else:
                data[at + 4 : at + 12] = struct.pack(order + "II", 1, value)
    return bytes(data)


def _webp_sized(width: int, height: int, lossless: bool) -> bytes:
    data = bytearray(_pil(_small(), "WEBP", lossless=lossless, quality=80))
    chunk = bytes(data[12:16])
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
        data[21:25] = (bits | (width - 1) | ((height - 1) << 14)).to_bytes(4, "little")
    elif chunk == b"VP8 ":
        data[26:30] = struct.pack("<HH", width, height)
    else:
        assert chunk == b"VP8X", chunk
        data[24:27] = (width - 1).to_bytes(3, "little")
        data[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def _jpeg_with_fill_bytes(width: int, height: int, progressive: bool = False) -> bytes:
    """A JPEG whose frame header claims width × height, with two 0xFF fill bytes before it."""
    img = np.random.default_rng(2).integers(0, 255, (16, 16, 3)).astype(np.uint8)
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else []
    data = cv2.imencode(".jpg", img, flags)[1].tobytes()
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    assert sof > 0
    patched = data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]
    return patched[:sof] + b"\xff\xff" + patched[sof:]


def _png16(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\0" * 64)


@pytest.mark.parametrize(("make", "kind"), [
    (lambda: _tiff_sized(20_000, 20_000), "tiff"),
    (lambda: _webp_sized(16_384, 16_384, lossless=True), "webp"),
    (lambda: _webp_sized(16_000, 16_000, lossless=False), "webp"),
    (lambda: _jpeg_with_fill_bytes(30_000, 30_000), "jpeg"),
])
def test_a_bomb_in_every_format_is_refused_from_its_header(make, kind):
    data = make()
    header = sniff(data)
    assert header.kind == kind and header.width * header.height > 200_000_000
    with pytest.raises(ImageError) as info:
        decode(data, SIZE)
    assert info.value.reason == "pixel-bomb"


def test_real_sizes_are_read_for_tiff_webp_and_a_jpeg_with_fill_bytes():
    assert (sniff(_pil(_small(), "TIFF")).width, sniff(_pil(_small(), "TIFF")).height) == (8, 8)
    for lossless in (True, False):
        header = sniff(_pil(_small(), "WEBP", lossless=lossless))
        assert (header.kind, header.width, header.height) == ("webp", 8, 8)
    img = np.full((24, 40, 3), 90, np.uint8)
    data = cv2.imencode(".jpg", img)[1].tobytes()
    sof = data.find(b"\xff\xc0")
    filled = data[:sof] + b"\xff\xff\xff" + data[sof:]
    assert (sniff(filled).width, sniff(filled).height) == (40, 24)
    assert decode(filled, SIZE).shape == (32, 32, 3)  # the decoder agrees: fill bytes are legal


def test_a_tiff_that_does_not_say_its_size_is_refused():
    with pytest.raises(ImageError) as info:
        decode(_tiff_sized(0, 0, drop_size=True), SIZE)
    assert info.value.reason == "unknown-size"


def test_the_limit_is_in_bytes_for_sixteen_bit_and_progressive_images():
    png = _png16(7_000, 7_000)  # 49 M pixels, under the 80 M limit, but 6 bytes a pixel while decoding
    assert decode_bytes(sniff(png)) == 7_000 * 7_000 * (6 + 3)  # + the uint8 copy cv2 hands back
    with pytest.raises(ImageError) as info:
        decode(png, SIZE)
    assert info.value.reason == "pixel-bomb" and "MB to decode" in str(info.value)
    prog = _jpeg_with_fill_bytes(8_000, 8_000, progressive=True)  # decoded at 1/8, but keeps every coefficient
    assert sniff(prog).progressive
    with pytest.raises(ImageError) as info:
        decode(prog, SIZE)
    assert info.value.reason == "pixel-bomb"


def test_jp2_is_not_accepted_by_its_name():
    assert not is_image_name("photo.jp2") and is_image_name("photo.JPG")


def test_the_copy_cv2_hands_back_counts_against_the_limit():
    """An 8-bit RGB PNG of 50 M pixels (under the pixel limit) held 300 MB in the decoder and 300 MB
    more in the array cv2 copies it into: +459 MB peak RSS for an 80 MP one in `sorter watch`."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 10_000, 5_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + b"\0" * 64
    assert decode_bytes(sniff(png)) == 10_000 * 5_000 * 6
    with pytest.raises(ImageError) as info:
        decode(png, SIZE)
    assert info.value.reason == "pixel-bomb" and "300 MB to decode" in str(info.value)
