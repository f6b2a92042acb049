"""The study's image pipeline, shared by training and serving: bytes in, a 224x224 RGB uint8 array out.

Steps: check the upload (size, format, dimensions) before decoding any pixel, decode (first frame
of an animated GIF or WebP), apply the EXIF orientation, convert any colour mode to RGB with
transparency composited on white (product photos sit on white), crop the borders, resize.

Border crop: the study's variance analysis of the 500x500 product images found the information
in the centre and "Possibilité de rogner les images de 20%"; its code did
`tf.image.central_crop(image, 0.8)`. So 20% of each side's length goes, 10% at each edge, and the
central 80% is kept: 500x500 -> the central 400x400. The crop is done before resizing, not as a
resize box, because Pillow's filter reads pixels outside a box and would bleed the border in.

Resize: straight to size x size, as the study's `tf.image.resize` did; every training image is
square, so a non-square upload is stretched rather than padded. Bilinear with Pillow's antialiasing
(its support widens with the reduction, so a large image is not aliased). JPEGs at least twice the
needed size are decoded at 1/2, 1/4 or 1/8 scale by libjpeg (`Image.draft`), which is far faster
for large uploads; the 500x500 training images are never reduced that way.

Normalisation is not done here: EfficientNet-Lite expects (pixel - 127) / 128 and that is the first
layer of the exported model, so batches and the wire carry uint8 (4x smaller than float32).
`normalize` is the same formula for training code and tests.

Pillow's own guards stay on: `Image.MAX_IMAGE_PIXELS` (the decompression-bomb limit, which also
covers GIF frames) and `ImageFile.LOAD_TRUNCATED_IMAGES = False` (a truncated file is an error,
not an image padded with grey); `decode_image` refuses to run if either was turned off.
"""

from __future__ import annotations

import io
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from common.errors import InvalidInput, TooLarge

INPUT_SIZE = 224
BORDER_CROP = 0.2  # of each side's length, half at each edge
KEEP = 1.0 - BORDER_CROP
# The input scaling EfficientNet-Lite was trained with; backbone.py imports these.
MEAN = 127.0
STD = 128.0

RESAMPLE = Image.Resampling.BILINEAR
REDUCING_GAP = 3.0  # Pillow: from 3 on, indistinguishable from a full resample
WHITE = (255, 255, 255)

# MPO is what Pillow calls a JPEG with a multi-picture (APP2 MPF) segment, as phone cameras write.
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF"})
ACCEPTED_NAMES = "JPEG, PNG, WebP or GIF"
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

# What Pillow raises on malformed data, at open or at load.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)


@dataclass(frozen=True)
class ImageLimits:
    """What an upload may weigh and measure; the service settings fill it."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # about 6300x6300
    min_side: int = 8

    def __post_init__(self):
        for name in ("max_bytes", "max_pixels", "min_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"ImageLimits.{name} must be at least 1, got {getattr(self, name)}")
        pillow_limit = Image.MAX_IMAGE_PIXELS
        if pillow_limit is not None and self.max_pixels > pillow_limit:
            raise ValueError(f"ImageLimits.max_pixels {self.max_pixels:,} is above Pillow's decompression-bomb "
                             f"limit Image.MAX_IMAGE_PIXELS ({pillow_limit:,})")


DEFAULT_LIMITS = ImageLimits()


def check_pillow_guards() -> None:
    """Fail loudly if something in the process switched Pillow's safety settings off."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated uploads would decode "
                           "as grey-padded images; leave it False")
    if Image.MAX_IMAGE_PIXELS is None:
        raise RuntimeError("PIL.Image.MAX_IMAGE_PIXELS is None: Pillow's decompression-bomb guard is off")


def sniff_format(data: bytes) -> str | None:
    """The accepted format the first bytes announce, if any, to word error messages."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def looks_like_text(data: bytes) -> bool:
    """HTML or XML, e.g. an error page saved as .jpg: the first non-blank byte is `<`."""
    return data[:512].lstrip(b"\xef\xbb\xbf \t\r\n\f\v").startswith(b"<")


def _unidentified(data: bytes, field: str) -> InvalidInput:
    announced = sniff_format(data)
    if announced:
        return InvalidInput.at(field, f"truncated or corrupt {announced} data, its header cannot be read")
    if looks_like_text(data):
        return InvalidInput.at(field, f"looks like text or HTML, not a {ACCEPTED_NAMES} image")
    return InvalidInput.at(field, f"not a {ACCEPTED_NAMES} image (first bytes {data[:8].hex()})")


def _too_many_pixels(field: str, limits: ImageLimits, width: int, height: int) -> TooLarge:
    return TooLarge.at(field, f"image is {width}x{height} pixels ({width * height:,}), "
                    f"the limit is {limits.max_pixels:,} pixels")


def _bomb(field: str, limits: ImageLimits, exc: Exception) -> TooLarge:
    """Pillow's guard fired before the size was known to us; its message holds the pixel count."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    detail = f"{int(found[1]):,} pixels" if found else "too large to decode"
    return TooLarge.at(field, f"image is {detail}, the limit is {limits.max_pixels:,} pixels "
                    "(Pillow's decompression-bomb guard)")


def open_image(data: bytes, field: str, limits: ImageLimits) -> ImageFile.ImageFile:
    """Read the header only and check bytes, format and dimensions; no pixel is decoded yet."""
    if not data:
        raise InvalidInput.at(field, f"empty, expected an encoded {ACCEPTED_NAMES} image")
    if len(data) > limits.max_bytes:
        raise TooLarge.at(field, f"encoded image is {len(data):,} bytes, the limit is {limits.max_bytes:,} bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(field, limits, exc) from exc
    except _DECODE_ERRORS as exc:
        raise _unidentified(data, field) from exc
    if image.format not in ACCEPTED_FORMATS:
        raise InvalidInput.at(field, f"{image.format} images are not accepted, expected {ACCEPTED_NAMES}")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise _too_many_pixels(field, limits, width, height)
    if min(width, height) < limits.min_side:
        raise InvalidInput.at(field, f"image is {width}x{height} pixels, "
                           f"the minimum is {limits.min_side}x{limits.min_side}")
    return image


def apply_exif_orientation(image: Image.Image) -> None:
    """Turn the pixels the way the EXIF Orientation tag says, in place.

    Malformed EXIF is common in the wild and the pixels are still good, so a tag that cannot be
    read leaves the image as stored.
    """
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # noqa: BLE001 - any EXIF parsing failure means "no usable orientation"
        pass


def to_8bit_gray(image: Image.Image) -> Image.Image:
    """16-bit grayscale (PNG) to 8-bit by keeping the high byte; Pillow's convert would clip at 255."""
    pixels = np.asarray(image).astype(np.int64)
    return Image.fromarray((np.clip(pixels, 0, 65535) >> 8).astype(np.uint8), mode="L")


def has_transparency(image: Image.Image) -> bool:
    return "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info


def composite_on_white(image: Image.Image) -> Image.Image:
    """Alpha-blend onto a white background: transparent pixels become white, half-transparent ones lighter."""
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to RGB: CMYK, palette, grayscale, 1-bit, 16-bit; transparency onto white."""
    if image.mode in _SIXTEEN_BIT_MODES:
        image = to_8bit_gray(image)
    if has_transparency(image):
        return composite_on_white(image)
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def decode_image(data: bytes, field: str, limits: ImageLimits = DEFAULT_LIMITS,
                 min_decoded_side: int | None = None) -> Image.Image:
    """Check and decode an upload into an upright RGB image.

    Animated GIF and WebP give their first frame. With `min_decoded_side`, a JPEG at least twice
    that size on both sides is decoded at a reduced scale (1/2, 1/4, 1/8) that keeps both sides
    at or above it. Raises InvalidInput or TooLarge naming `field` and the problem.
    """
    check_pillow_guards()
    image = open_image(data, field, limits)
    if min_decoded_side and image.format in _JPEG_FORMATS:
        image.draft(image.mode, (min_decoded_side, min_decoded_side))
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(field, limits, exc) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidInput.at(field, f"truncated or corrupt {image.format} data ({exc})") from exc
    apply_exif_orientation(image)
    return to_rgb(image)


def border_box(width: int, height: int, keep: float = KEEP) -> tuple[int, int, int, int]:
    """The central `keep` fraction of each side as a crop box; (keep 0.8) 500x500 -> (50, 50, 450, 450)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    left = round(width * (1.0 - keep) / 2)
    top = round(height * (1.0 - keep) / 2)
    return left, top, max(width - left, left + 1), max(height - top, top + 1)


def crop_borders(image: Image.Image, keep: float = KEEP) -> Image.Image:
    """Keep the central `keep` fraction of width and height, like `tf.image.central_crop(image, keep)`."""
    return image.crop(border_box(*image.size, keep))


def prepare_image(data: bytes, field: str = "image", limits: ImageLimits = DEFAULT_LIMITS,
                  size: int = INPUT_SIZE, keep: float = KEEP) -> np.ndarray:
    """The whole pipeline: encoded bytes -> (size, size, 3) uint8 RGB, not normalised."""
    image = decode_image(data, field, limits, min_decoded_side=math.ceil(size / keep))
    image = crop_borders(image, keep).resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
    return np.array(image, dtype=np.uint8)  # a writable array of its own


def prepare_path(path: str | Path, limits: ImageLimits = DEFAULT_LIMITS, size: int = INPUT_SIZE) -> np.ndarray:
    """`prepare_image` on a file, for training; errors name the path."""
    path = Path(path)
    return prepare_image(path.read_bytes(), str(path), limits, size)


def normalize(batch: np.ndarray) -> np.ndarray:
    """(pixel - 127) / 128 as float32: EfficientNet-Lite's input scaling, pixels 0..255 -> about -1..1.

    The exported model does this in its first layer; this is for training code and tests.
    """
    return (np.asarray(batch, dtype=np.float32) - np.float32(MEAN)) / np.float32(STD)
