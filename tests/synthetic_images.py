"""Synthetic images for tests: encoders, pictures and the bad uploads every image path must refuse.

Nothing here comes from the Rakuten data: every picture is drawn by the code.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from common.errors import InvalidInput, TooLarge

RED, GREEN, BLUE, WHITE = (220, 20, 30), (20, 200, 40), (30, 40, 210), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def solid(colour, size=(64, 64), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def noisy(size=(500, 500), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (1-bit grey) with a few bytes of pixel data: a bomb's header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def truncated_jpeg() -> bytes:
    data = encode(noisy(), "JPEG", quality=90)
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    data = encode(noisy((200, 200)), "PNG")
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "zero bytes": (lambda: b"", InvalidInput, "empty, expected an encoded JPEG, PNG, WebP or GIF image"),
    "random bytes": (lambda: np.random.default_rng(1).bytes(4096), InvalidInput,
                     "not a JPEG, PNG, WebP or GIF image"),
    "truncated jpeg": (truncated_jpeg, InvalidInput, "truncated or corrupt JPEG data"),
    "truncated png": (truncated_png, InvalidInput, "truncated or corrupt PNG data"),
    "jpeg header only": (lambda: truncated_jpeg()[:40], InvalidInput, "truncated or corrupt JPEG data"),
    "html renamed .jpg": (lambda: b"\n  <!DOCTYPE html><html><body>404 Not Found</body></html>", InvalidInput,
                          "looks like text or HTML, not a JPEG, PNG, WebP or GIF image"),
    "1x1 image": (lambda: encode(solid(RED, (1, 1)), "PNG"), InvalidInput,
                  "image is 1x1 pixels, the minimum is 8x8"),
    "30000x30000 png (bomb)": (lambda: png_header_only(30000, 30000), TooLarge,
                               r"image is 900,000,000 pixels, the limit is 40,000,000 pixels "
                               r"\(Pillow's decompression-bomb guard\)"),
    "7000x7000 png": (lambda: png_header_only(7000, 7000), TooLarge,
                      r"image is 7000x7000 pixels \(49,000,000\), the limit is 40,000,000 pixels"),
    "20 MB upload": (lambda: b"\xff\xd8" + bytes(20 * 1024 * 1024), TooLarge,
                     "encoded image is 20,971,522 bytes, the limit is 10,485,760 bytes"),
    "bmp": (lambda: encode(solid(RED), "BMP"), InvalidInput,
            "BMP images are not accepted, expected JPEG, PNG, WebP or GIF"),
    "tiff": (lambda: encode(solid(RED), "TIFF"), InvalidInput, "TIFF images are not accepted"),
}
