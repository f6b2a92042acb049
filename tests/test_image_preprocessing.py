"""The image pipeline on synthetic images: formats, orientation, colour modes, crop, and bad uploads."""

from __future__ import annotations

import io
import resource
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageFile

from common.errors import InvalidInput, TooLarge
from image_service import preprocessing as pp

FIELD = "images[3].data"
from tests.synthetic_images import BAD_UPLOADS, BLUE, GREEN, RED, WHITE, encode, noisy, png_header_only, solid


def pixel(image: Image.Image, xy) -> tuple[int, ...]:
    return tuple(int(v) for v in image.getpixel(xy))


def close(actual, expected, tolerance=6) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


# --- formats -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "options", "tolerance"), [
    ("JPEG", {"quality": 95}, 6),
    ("PNG", {}, 0),
    ("WEBP", {"lossless": True}, 0),
    ("GIF", {}, 0),
])
def test_each_accepted_format_decodes_to_rgb(fmt, options, tolerance):
    image = pp.decode_image(encode(solid(RED), fmt, **options), FIELD)
    assert image.mode == "RGB" and image.size == (64, 64)
    assert close(pixel(image, (32, 32)), RED, tolerance)


def test_animated_gif_gives_its_first_frame():
    frames = [solid(colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert pixel(pp.decode_image(data, FIELD), (10, 10)) == RED
    out = pp.prepare_image(data, FIELD)
    assert (out == RED).all()


def test_animated_webp_gives_its_first_frame():
    frames = [solid(colour) for colour in (GREEN, RED, BLUE)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert pixel(pp.decode_image(data, FIELD), (10, 10)) == GREEN


def test_mpo_camera_jpeg_is_accepted():
    data = encode(solid(BLUE), "MPO", save_all=True, append_images=[solid(RED)], quality=95)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert close(pixel(pp.decode_image(data, FIELD), (32, 32)), BLUE)


# --- orientation and colour modes ----------------------------------------------------------------

def test_exif_orientation_is_applied():
    stored = Image.new("RGB", (80, 40), RED)
    stored.paste(BLUE, (40, 0, 80, 40))  # left half red, right half blue
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # shown turned 90 degrees clockwise: left goes to the top
    image = pp.decode_image(encode(stored, "JPEG", quality=95, exif=exif), FIELD)
    assert image.size == (40, 80)
    assert close(pixel(image, (20, 10)), RED) and close(pixel(image, (20, 70)), BLUE)


def test_transparent_pixels_become_white_and_partial_alpha_blends():
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (8, 8, 16, 16))
    image.paste((0, 0, 0, 128), (16, 16, 24, 24))
    rgb = pp.decode_image(encode(image, "PNG"), FIELD)
    assert rgb.mode == "RGB"
    assert pixel(rgb, (0, 0)) == WHITE
    assert pixel(rgb, (10, 10)) == (0, 0, 255)
    assert close(pixel(rgb, (20, 20)), (127, 127, 127), 2)


def test_cmyk_jpeg_becomes_rgb():
    data = encode(solid((0, 255, 255, 0), mode="CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image = pp.decode_image(data, FIELD)
    assert image.mode == "RGB" and close(pixel(image, (32, 32)), (255, 0, 0))


def test_palette_image_with_and_without_transparency():
    opaque = solid(RED).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert close(pixel(pp.decode_image(encode(opaque, "PNG"), FIELD), (5, 5)), RED, 0)

    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([*RED, *BLUE] + [0] * 762)
    palette.paste(1, (8, 0, 16, 16))
    data = encode(palette, "PNG", transparency=0)  # palette entry 0 (red) is transparent
    image = pp.decode_image(data, FIELD)
    assert pixel(image, (2, 2)) == WHITE and pixel(image, (12, 2)) == BLUE


def test_gray_with_alpha_goes_on_white():
    image = Image.new("LA", (16, 16), (0, 0))
    image.paste((50, 255), (0, 0, 8, 16))
    rgb = pp.decode_image(encode(image, "PNG"), FIELD)
    assert pixel(rgb, (2, 2)) == (50, 50, 50) and pixel(rgb, (12, 2)) == WHITE


def test_16_bit_grayscale_png_is_scaled_not_clipped():
    values = np.array([[0, 256, 40000, 65535]] * 8, dtype=np.uint16).repeat(4, axis=1)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = pp.decode_image(data, FIELD)
    assert [pixel(image, (x, 0)) for x in (0, 4, 8, 12)] == [(0,) * 3, (1,) * 3, (156,) * 3, (255,) * 3]


def test_one_bit_image_becomes_black_and_white_rgb():
    image = Image.new("1", (16, 16), 0)
    image.paste(1, (8, 0, 16, 16))
    rgb = pp.decode_image(encode(image, "PNG"), FIELD)
    assert pixel(rgb, (2, 2)) == (0, 0, 0) and pixel(rgb, (12, 2)) == WHITE


# --- crop, resize, output ------------------------------------------------------------------------

def test_border_box_keeps_the_central_80_percent():
    assert pp.border_box(500, 500) == (50, 50, 450, 450)
    assert pp.border_box(1000, 500, keep=0.6) == (200, 100, 800, 400)
    assert pp.border_box(40, 40, keep=1.0) == (0, 0, 40, 40)
    for bad in (0.0, -0.1, 1.2):
        with pytest.raises(ValueError):
            pp.border_box(10, 10, keep=bad)


def test_crop_removes_a_10_percent_band_on_each_side_and_keeps_the_centre():
    canvas = Image.new("RGB", (500, 500), GREEN)
    canvas.paste(RED, (50, 50, 450, 450))  # a green band exactly 10% wide on every side
    assert pp.crop_borders(canvas).size == (400, 400)
    assert (np.asarray(pp.crop_borders(canvas)) == RED).all()

    out = pp.prepare_image(encode(canvas, "PNG"), FIELD)
    assert out.shape == (pp.INPUT_SIZE, pp.INPUT_SIZE, 3) and out.dtype == np.uint8
    assert (out == RED).all()  # not a trace of the border, even on the edge rows


def test_prepare_image_output_is_uint8_rgb_at_the_input_size():
    out = pp.prepare_image(encode(noisy(), "JPEG", quality=90))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.writeable
    assert pp.prepare_image(encode(noisy((300, 120)), "PNG"), size=96).shape == (96, 96, 3)


def test_large_jpeg_is_decoded_at_reduced_scale():
    data = encode(noisy((2400, 2000)), "JPEG", quality=80)
    assert pp.decode_image(data, FIELD, min_decoded_side=280).size == (600, 500)
    assert pp.decode_image(data, FIELD).size == (2400, 2000)
    assert pp.prepare_image(data, FIELD).shape == (224, 224, 3)


def test_prepare_path_reads_the_file(tmp_path: Path):
    data = encode(noisy((120, 120)), "PNG")
    path = tmp_path / "product.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(pp.prepare_path(path), pp.prepare_image(data))
    path.write_bytes(b"")
    with pytest.raises(InvalidInput, match=str(path)):
        pp.prepare_path(path)


def test_normalize_is_efficientnet_lite_scaling():
    batch = np.array([[0, 127, 255]], dtype=np.uint8)
    normalised = pp.normalize(batch)
    assert normalised.dtype == np.float32 and normalised.shape == batch.shape
    np.testing.assert_allclose(normalised, [[-127 / 128, 0.0, 1.0]], rtol=0, atol=1e-7)
    np.testing.assert_allclose(normalised, (batch.astype(np.float32) - pp.MEAN) / pp.STD)


def test_crop_constants():
    assert (pp.BORDER_CROP, pp.KEEP) == (0.2, 0.8)


# --- bad uploads ---------------------------------------------------------------------------------

@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_bad_upload_is_refused_naming_the_field_and_the_problem(case):
    make, error, message = BAD_UPLOADS[case]
    with pytest.raises(error, match=r"^images\[3\]\.data: " + message) as raised:
        pp.prepare_image(make(), FIELD)
    assert raised.value.message == str(raised.value)


def test_bomb_is_refused_before_any_pixel_is_allocated():
    data = png_header_only(30000, 30000)
    assert len(data) < 200
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    for size in (30000, 7000):  # refused by Pillow's guard at open, by our limit after the header
        with pytest.raises(TooLarge):
            pp.prepare_image(png_header_only(size, size), FIELD)
    # Between Pillow's warning and error thresholds Pillow only warns; our limit still refuses.
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(TooLarge, match="10000x10000 pixels"):
        pp.prepare_image(png_header_only(10000, 10000), FIELD)
    assert time.perf_counter() - started < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 50 * 1024


def test_limits_are_configurable():
    data = encode(noisy((20, 20)), "PNG")
    with pytest.raises(TooLarge, match="the limit is 100 bytes"):
        pp.prepare_image(data, FIELD, pp.ImageLimits(max_bytes=100))
    with pytest.raises(TooLarge, match=r"20x20 pixels \(400\), the limit is 399 pixels"):
        pp.prepare_image(data, FIELD, pp.ImageLimits(max_pixels=399))
    with pytest.raises(InvalidInput, match="the minimum is 32x32"):
        pp.prepare_image(data, FIELD, pp.ImageLimits(min_side=32))


def test_limits_are_checked_when_built():
    with pytest.raises(ValueError, match="max_bytes"):
        pp.ImageLimits(max_bytes=0)
    with pytest.raises(ValueError, match="decompression-bomb limit"):
        pp.ImageLimits(max_pixels=Image.MAX_IMAGE_PIXELS + 1)
    with pytest.raises(AttributeError):
        pp.DEFAULT_LIMITS.max_bytes = 1


def test_pillow_guards_are_on_and_enforced(monkeypatch):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False and Image.MAX_IMAGE_PIXELS is not None
    data = encode(solid(RED), "PNG")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        pp.prepare_image(data, FIELD)
