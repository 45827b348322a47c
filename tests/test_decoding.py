"""Tests for phototag.decoding.

Every input is generated here with Pillow/numpy/stdlib; nothing is
downloaded.  Lossy formats are compared with a tolerance.
"""

from __future__ import annotations

import io
import pickle
import random
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from phototag import headers
from phototag.decoding import (
    MAX_PIXELS,
    ImageDecodeError,
    decode_image,
    sniff_format,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)
GREEN = (0, 255, 0)
WHITE = (255, 255, 255)

LOSSY_TOL = 40
LOSSLESS_TOL = 2


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def two_colour(size=(64, 48), left=RED, right=BLUE) -> Image.Image:
    """Left half `left`, right half `right`."""
    w, h = size
    arr = np.empty((h, w, 3), np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2 :] = right
    return Image.fromarray(arr)


def assert_close(pixel, expected, tol):
    assert len(pixel) == 3
    diffs = [abs(int(a) - int(b)) for a, b in zip(pixel, expected)]
    assert max(diffs) <= tol, f"{pixel} not within {tol} of {expected}"


def reason_of(data: bytes, **kw) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kw)
    return info.value.reason


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_with_header(width: int, height: int, idat: bytes = b"", bit_depth=8, colour_type=0) -> bytes:
    """A PNG whose IHDR says width x height, with arbitrary IDAT payload."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat or zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------

FORMATS = {
    "JPEG": ({"quality": 95}, LOSSY_TOL),
    "PNG": ({}, LOSSLESS_TOL),
    "WEBP": ({"quality": 95}, LOSSY_TOL),
    "BMP": ({}, LOSSLESS_TOL),
    "TIFF": ({}, LOSSLESS_TOL),
    "GIF": ({}, LOSSLESS_TOL),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_round_trips_to_rgb(fmt):
    kw, tol = FORMATS[fmt]
    data = encode(two_colour((64, 48)), fmt, **kw)
    assert sniff_format(data) == fmt

    img = decode_image(data)

    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.size == (64, 48)
    assert_close(img.getpixel((8, 24)), RED, tol)
    assert_close(img.getpixel((56, 24)), BLUE, tol)


@pytest.mark.parametrize("wrapper", [bytes, bytearray, memoryview])
def test_accepts_bytes_like(wrapper):
    data = encode(Image.new("RGB", (4, 4), GREEN), "PNG")
    assert decode_image(wrapper(data)).getpixel((0, 0)) == GREEN


def test_non_bytes_is_a_type_error():
    with pytest.raises(TypeError):
        decode_image("not bytes")  # type: ignore[arg-type]


def test_result_is_detached_and_loaded():
    img = decode_image(encode(two_colour(), "JPEG"))
    # Writable, fully decoded image that does not hold on to the upload.
    img.putpixel((0, 0), GREEN)
    assert img.getpixel((0, 0)) == GREEN
    assert getattr(img, "fp", None) is None


def test_sniff_format_unknown():
    assert sniff_format(b"") is None
    assert sniff_format(b"hello world") is None
    assert sniff_format(b"%PDF-1.4") is None


# --------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------

# Stored image: 60x40, blue, with a red 12x12 block in the top-left corner.
# After applying orientation n, the corner the block lands in plus whether the
# sides swapped identifies each of the 8 transforms uniquely.  Expected values
# follow the EXIF spec (e.g. 6 = "0th row is the visual right side, 0th column
# the visual top": the stored top-left ends up top-right).
EXPECTED_ORIENTATION = {
    1: ((60, 40), "top-left"),
    2: ((60, 40), "top-right"),
    3: ((60, 40), "bottom-right"),
    4: ((60, 40), "bottom-left"),
    5: ((40, 60), "top-left"),
    6: ((40, 60), "top-right"),
    7: ((40, 60), "bottom-right"),
    8: ((40, 60), "bottom-left"),
}


def corner_marked_image() -> Image.Image:
    arr = np.empty((40, 60, 3), np.uint8)
    arr[:] = BLUE
    arr[:12, :12] = RED
    return Image.fromarray(arr)


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def red_corner(img: Image.Image) -> str:
    w, h = img.size
    corners = {
        "top-left": (3, 3),
        "top-right": (w - 4, 3),
        "bottom-left": (3, h - 4),
        "bottom-right": (w - 4, h - 4),
    }
    red = [name for name, xy in corners.items() if img.getpixel(xy)[0] > 200 and img.getpixel(xy)[2] < 60]
    assert len(red) == 1, f"expected exactly one red corner, got {red}"
    return red[0]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(orientation):
    data = encode(corner_marked_image(), "JPEG", quality=95, exif=exif_bytes(orientation))
    img = decode_image(data)
    size, corner = EXPECTED_ORIENTATION[orientation]
    assert img.mode == "RGB"
    assert img.size == size
    assert red_corner(img) == corner


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_other_formats(fmt, orientation):
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(corner_marked_image(), fmt, exif=exif_bytes(orientation), **kw)
    img = decode_image(data)
    size, corner = EXPECTED_ORIENTATION[orientation]
    assert img.size == size
    assert red_corner(img) == corner


def test_exif_orientation_tiff_tag():
    data = encode(corner_marked_image(), "TIFF", tiffinfo={0x0112: 6})
    img = decode_image(data)
    assert img.size == (40, 60)
    assert red_corner(img) == "top-right"


def marked_array(dtype, mark, background):
    arr = np.full((40, 60), background, dtype)
    arr[:12, :12] = mark
    return arr


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: Image.fromarray(marked_array(np.uint16, 65535, 0)), id="I;16"),
        pytest.param(lambda: Image.fromarray(marked_array(np.float32, 1.0, 0.0)), id="F"),
        pytest.param(lambda: Image.fromarray(marked_array(np.uint8, 255, 0)), id="L"),
    ],
)
def test_exif_orientation_applies_to_high_depth_tiff(make):
    img = decode_image(encode(make(), "TIFF", tiffinfo={0x0112: 8}))
    assert img.size == (40, 60)
    assert img.getpixel((3, 56)) == WHITE  # mark moved to bottom-left
    assert img.getpixel((36, 3)) == (0, 0, 0)


def test_exif_orientation_keeps_palette_transparency():
    im = Image.new("P", (60, 40), 1)
    im.putpalette([0, 0, 0] + list(BLUE) + [0, 0, 0] * 254)
    im.paste(0, (0, 0, 12, 12))  # transparent block top-left
    img = decode_image(encode(im, "PNG", transparency=0, exif=exif_bytes(6)))
    assert img.size == (40, 60)
    assert img.getpixel((36, 3)) == WHITE  # top-left -> top-right
    assert img.getpixel((3, 56)) == BLUE


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_invalid_orientation_value_is_ignored(orientation):
    data = encode(corner_marked_image(), "JPEG", quality=95, exif=exif_bytes(orientation))
    img = decode_image(data)
    assert img.size == (60, 40)
    assert red_corner(img) == "top-left"


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize(
    "exif",
    [
        b"Exif\x00\x00" + b"\xde\xad" * 20,
        b"Exif\x00\x00II*\x00\xff\xff\xff\x00",  # IFD offset past the end
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff",  # entry count with no entries
    ],
)
def test_garbage_exif_block_does_not_reject_photo(exif):
    img = decode_image(encode(corner_marked_image(), "JPEG", quality=95, exif=exif))
    assert img.size == (60, 40)
    assert red_corner(img) == "top-left"


def test_exif_parser_exception_is_treated_as_no_rotation(monkeypatch):
    data = encode(corner_marked_image(), "JPEG", quality=95, exif=exif_bytes(6))

    def broken_getexif(self):
        raise SyntaxError("simulated EXIF parser failure")

    monkeypatch.setattr(Image.Image, "getexif", broken_getexif)
    img = decode_image(data)
    assert img.size == (60, 40)


# --------------------------------------------------------------------------
# pixel modes
# --------------------------------------------------------------------------


def test_grayscale():
    img = decode_image(encode(Image.new("L", (8, 8), 100), "PNG"))
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (100, 100, 100)


def test_bilevel():
    im = Image.new("1", (8, 8), 0)
    im.paste(1, (4, 0, 8, 8))
    img = decode_image(encode(im, "PNG"))
    assert img.getpixel((0, 0)) == (0, 0, 0)
    assert img.getpixel((7, 0)) == WHITE


def test_la_transparent_becomes_white():
    im = Image.new("LA", (8, 8), (0, 0))  # black but fully transparent
    im.paste((50, 255), (0, 0, 4, 8))  # opaque dark grey left half
    img = decode_image(encode(im, "PNG"))
    assert img.getpixel((1, 1)) == (50, 50, 50)
    assert img.getpixel((6, 1)) == WHITE


def test_rgba_transparent_area_becomes_white_not_black():
    im = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 5, 10))
    img = decode_image(encode(im, "PNG"))
    assert img.mode == "RGB"
    assert img.getpixel((1, 1)) == RED
    assert img.getpixel((8, 1)) == WHITE


def test_rgba_half_transparent_blends_with_white():
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    img = decode_image(encode(im, "PNG"))
    assert_close(img.getpixel((0, 0)), (255, 127, 127), 2)


def test_palette_with_transparency_index():
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0] + [0, 255, 0] + [0, 0, 0] * 254)
    im.paste(1, (0, 0, 4, 8))
    data = encode(im, "PNG", transparency=0)  # index 0 (black) is transparent
    img = decode_image(data)
    assert img.getpixel((1, 1)) == GREEN
    assert img.getpixel((6, 1)) == WHITE


def test_gif_with_transparency():
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0] + [0, 0, 255] + [0, 0, 0] * 254)
    im.paste(1, (0, 0, 4, 8))
    img = decode_image(encode(im, "GIF", transparency=0))
    assert img.getpixel((1, 1)) == BLUE
    assert img.getpixel((6, 1)) == WHITE


def test_palette_without_transparency():
    im = two_colour().convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    img = decode_image(encode(im, "PNG"))
    assert_close(img.getpixel((8, 24)), RED, LOSSLESS_TOL)
    assert_close(img.getpixel((56, 24)), BLUE, LOSSLESS_TOL)


def test_cmyk_jpeg_cyan():
    data = encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = decode_image(data)
    assert img.mode == "RGB"
    assert_close(img.getpixel((8, 8)), (0, 255, 255), 10)


def test_cmyk_tiff():
    img = decode_image(encode(Image.new("CMYK", (4, 4), (0, 255, 0, 0)), "TIFF"))
    assert_close(img.getpixel((0, 0)), (255, 0, 255), 2)


def sixteen_bit_halves() -> np.ndarray:
    arr = np.empty((6, 8), np.uint16)
    arr[:, :4] = 65535
    arr[:, 4:] = 32768
    return arr


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale(fmt):
    im = Image.fromarray(sixteen_bit_halves())
    data = encode(im, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    img = decode_image(data)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert_close(img.getpixel((7, 0)), (128, 128, 128), 1)


def test_16bit_scaling_uses_full_range():
    # Every 8-bit level must be reachable and 65535 must map to exactly 255,
    # i.e. v/257 rounded, not v>>8 or v/256.
    values = np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)
    values[-1, -1] = 65535
    img = decode_image(encode(Image.fromarray(values), "PNG"))
    got = np.asarray(img)[..., 0].astype(int)
    expected = np.rint(values.astype(np.float64) / 257).astype(int)
    assert np.abs(got - expected).max() == 0
    assert np.array_equal(np.asarray(img)[..., 0], np.asarray(img)[..., 2])


def test_16bit_big_endian_tiff():
    arr = sixteen_bit_halves()
    im = Image.frombytes("I;16B", (8, 6), arr.astype(">u2").tobytes())
    data = encode(im, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    img = decode_image(data)
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert_close(img.getpixel((7, 0)), (128, 128, 128), 1)


def test_int32_tiff_is_stretched_min_to_max():
    arr = np.linspace(-1000, 500_000, 64, dtype=np.int32).reshape(8, 8)
    data = encode(Image.fromarray(arr), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    img = decode_image(data)
    assert img.getpixel((0, 0)) == (0, 0, 0)
    assert img.getpixel((7, 7)) == (255, 255, 255)


def test_float_tiff_is_stretched_min_to_max():
    arr = np.linspace(-20.5, 40.0, 64, dtype=np.float32).reshape(8, 8)  # e.g. thermal degC
    data = encode(Image.fromarray(arr), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    img = decode_image(data)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (0, 0, 0)
    assert img.getpixel((7, 7)) == (255, 255, 255)
    mid = img.getpixel((4, 4))[0]
    assert 100 < mid < 180


@pytest.mark.parametrize(
    "arr",
    [
        np.full((4, 4), 7.5, np.float32),
        np.full((4, 4), 1e6, np.float32),
        np.full((4, 4), 100, np.int32),
        np.full((4, 4), -5, np.int32),
    ],
)
def test_constant_high_depth_image_does_not_divide_by_zero(arr):
    with np.errstate(all="raise"):
        img = decode_image(encode(Image.fromarray(arr), "TIFF"))
    expected = int(np.clip(np.rint(float(arr.flat[0])), 0, 255))
    assert img.getpixel((0, 0)) == (expected,) * 3


def test_float_tiff_with_nan_and_inf():
    arr = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    arr[0, 0] = np.nan
    arr[0, 1] = np.inf
    arr[0, 2] = -np.inf
    img = decode_image(encode(Image.fromarray(arr), "TIFF"))
    assert img.getpixel((0, 0)) == (0, 0, 0)
    assert img.getpixel((1, 0)) == (255, 255, 255)
    assert img.getpixel((2, 0)) == (0, 0, 0)
    assert img.getpixel((3, 3)) == (255, 255, 255)


def test_all_nan_float_tiff():
    img = decode_image(encode(Image.fromarray(np.full((3, 3), np.nan, np.float32)), "TIFF"))
    assert img.getpixel((1, 1)) == (0, 0, 0)


# --------------------------------------------------------------------------
# JPEG variants, animation, pages, odd sizes
# --------------------------------------------------------------------------


def test_progressive_jpeg():
    data = encode(two_colour(), "JPEG", quality=95, progressive=True)
    assert Image.open(io.BytesIO(data)).info.get("progressive")
    img = decode_image(data)
    assert img.size == (64, 48)
    assert_close(img.getpixel((8, 24)), RED, LOSSY_TOL)
    assert_close(img.getpixel((56, 24)), BLUE, LOSSY_TOL)


def frames(colours, size=(16, 12)):
    return [Image.new("RGB", size, c) for c in colours]


def test_animated_gif_first_frame():
    first, *rest = frames([RED, GREEN, BLUE])
    data = encode(first, "GIF", save_all=True, append_images=rest, duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    img = decode_image(data)
    assert img.size == (16, 12)
    assert img.getpixel((5, 5)) == RED


def test_animated_webp_first_frame():
    first, *rest = frames([GREEN, RED, BLUE])
    data = encode(first, "WEBP", save_all=True, append_images=rest, duration=100, lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    img = decode_image(data)
    assert img.mode == "RGB"
    assert img.size == (16, 12)
    assert_close(img.getpixel((5, 5)), GREEN, LOSSLESS_TOL)


def test_multipage_tiff_first_page():
    first, *rest = frames([BLUE, RED, GREEN])
    data = encode(first, "TIFF", save_all=True, append_images=rest)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    img = decode_image(data)
    assert img.getpixel((5, 5)) == BLUE


def test_one_by_one():
    for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"):
        img = decode_image(encode(Image.new("RGB", (1, 1), RED), fmt))
        assert img.size == (1, 1)
        assert img.mode == "RGB"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("size", [(1, 20000), (20000, 1)])
def test_extreme_aspect_ratio_is_fine(fmt, size):
    img = decode_image(encode(Image.new("RGB", size, GREEN), fmt))
    assert img.size == size
    assert_close(img.getpixel((0, 0)), GREEN, LOSSY_TOL)


# --------------------------------------------------------------------------
# decompression bombs and size limits
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    """A complete, valid 30000x30000 bilevel PNG (~110 KB on disk, 900 MP).

    Built row by row with compressobj so the test never holds the pixels.
    """
    width = height = 30000
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed 1-bit pixels
    comp = zlib.compressobj(9)
    parts = []
    block = row * 500
    for _ in range(height // 500):
        parts.append(comp.compress(block))
    parts.append(comp.flush())
    return png_with_header(width, height, b"".join(parts), bit_depth=1, colour_type=0)


@pytest.fixture
def gif_bomb() -> bytes:
    """A 1x1-frame GIF whose logical screen claims 65535x65535."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


@pytest.fixture
def pixel_work(monkeypatch) -> list[tuple]:
    """Every pixel buffer Pillow allocates and every decoder it starts during the test. "Refused before decoding"
    is then a fact checked on any machine, where a stopwatch would only say "fast enough on this one"."""
    seen: list[tuple] = []
    new_buffer, get_decoder = Image.core.new, Image._getdecoder

    def buffer(mode, size, *args):
        seen.append(("buffer", mode, size))
        return new_buffer(mode, size, *args)

    def decoder(mode, name, *args, **kwargs):
        seen.append(("decoder", name))
        return get_decoder(mode, name, *args, **kwargs)

    monkeypatch.setattr(Image.core, "new", buffer)
    monkeypatch.setattr(Image, "_getdecoder", decoder)
    return seen


def assert_refused_before_decoding(data: bytes, pixel_work: list[tuple], **kw) -> ImageDecodeError:
    pixel_work.clear()
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kw)
    assert info.value.reason == "too_many_pixels"
    assert pixel_work == []  # decided from the header: no pixel memory, no decoder
    return info.value


def test_pixel_work_sees_an_ordinary_decode(pixel_work):
    # Without this, a Pillow that allocated or decoded some other way would let every bomb test pass unseen.
    for fmt, decoder in (("PNG", "zip"), ("GIF", "gif"), ("JPEG", "jpeg")):
        pixel_work.clear()
        decode_image(encode(two_colour(), fmt))
        assert ("decoder", decoder) in pixel_work and any(kind == "buffer" for kind, *_ in pixel_work), fmt


def test_png_bomb_refused(png_bomb, pixel_work):
    assert len(png_bomb) < 2_000_000
    err = assert_refused_before_decoding(png_bomb, pixel_work)
    assert "30000x30000" in str(err)


def test_gif_bomb_refused(gif_bomb, pixel_work):
    err = assert_refused_before_decoding(gif_bomb, pixel_work)
    assert "65535x65535" in str(err)


def test_bombs_refused_even_without_pillows_global_limit(monkeypatch, png_bomb, gif_bomb, pixel_work):
    # Other code in the process may disable Pillow's guard; ours must not care.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert "30000x30000" in str(assert_refused_before_decoding(png_bomb, pixel_work))
    assert "65535x65535" in str(assert_refused_before_decoding(gif_bomb, pixel_work))


def test_own_limit_applies_below_pillows_limit(pixel_work):
    # 9000x9000 = 81 MP: over our 80 MP, under Pillow's 89 MP warning level.
    data = png_with_header(9000, 9000)
    err = assert_refused_before_decoding(data, pixel_work)
    assert "9000x9000" in str(err)
    assert MAX_PIXELS == 80_000_000


def test_custom_max_pixels(pixel_work):
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")
    err = assert_refused_before_decoding(data, pixel_work, max_pixels=9_999)
    assert "100x100" in str(err)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    assert ("decoder", "zip") in pixel_work  # one pixel under the limit: decoded


def test_pillow_globals_untouched():
    before = Image.MAX_IMAGE_PIXELS
    decode_image(encode(two_colour(), "PNG"))
    with pytest.raises(ImageDecodeError):
        decode_image(png_with_header(9000, 9000))
    assert Image.MAX_IMAGE_PIXELS == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "WEBP", "JPEG", "TIFF"])
def test_declared_size_parser_matches_pillow(fmt):
    # Used to word the message when Pillow's own guard fires first.
    for size in [(37, 21), (1, 300)]:
        data = encode(Image.new("RGB", size, RED), fmt)
        assert headers.declared_size(data) == size


def test_declared_size_of_jpeg_bomb_header(pixel_work):
    data = bytearray(encode(Image.new("RGB", (8, 8), RED), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    err = assert_refused_before_decoding(bytes(data), pixel_work)
    assert "60000x60000" in str(err)


def test_zero_dimension_refused():
    for w, h in [(0, 10), (10, 0)]:
        assert reason_of(png_with_header(w, h)) in {"zero_size", "corrupt"}
    bmp = bytearray(encode(Image.new("RGB", (4, 4)), "BMP"))
    bmp[18:22] = struct.pack("<i", 0)
    assert reason_of(bytes(bmp)) in {"zero_size", "corrupt"}


# --------------------------------------------------------------------------
# not images, truncation, corruption
# --------------------------------------------------------------------------


def test_empty():
    with pytest.raises(ImageDecodeError) as info:
        decode_image(b"")
    assert info.value.reason == "empty"
    assert isinstance(info.value, ValueError)


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("photo.jpg", b"not really")
    return buf.getvalue()


@pytest.mark.parametrize(
    "data, hint",
    [
        (b"hello, this is plain text\n", "text"),
        (b"<!DOCTYPE html>\n<html><body>502 Bad Gateway</body></html>", "HTML"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF"),
        (zip_bytes(), "ZIP"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  ", "QuickTime video"),  # HEIC is accepted now
        (b'{"image": "..."}', "JSON"),
        (b"P6\n1 1\n255\n\x00\x00\x00", None),  # PPM: a real image, not accepted
        (bytes(range(256)) * 4, None),
    ],
)
def test_not_an_image(data, hint):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.reason == "not_an_image"
    assert "not a recognised image format" in str(info.value)
    if hint:
        assert f"looks like {hint}" in str(info.value)


@pytest.fixture(scope="module")
def noisy_jpeg() -> bytes:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    return encode(Image.fromarray(arr), "JPEG", quality=90)


@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_jpeg_rejected(progressive):
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = encode(Image.fromarray(arr), "JPEG", quality=90, progressive=progressive)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data[: int(len(data) * 0.6)])
    assert info.value.reason == "truncated"
    assert "truncated" in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_rejected():
    rng = np.random.default_rng(3)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    assert reason_of(data[: int(len(data) * 0.6)]) == "truncated"


def test_jpeg_cut_inside_header(noisy_jpeg):
    assert reason_of(noisy_jpeg[:200]) in {"truncated", "corrupt"}


def test_corrupt_jpeg_header(noisy_jpeg):
    rng = random.Random(4)
    data = bytearray(noisy_jpeg)
    for i in range(2, 40):
        data[i] = rng.randrange(256)
    assert reason_of(bytes(data)) in {"corrupt", "not_an_image", "truncated"}


def test_signature_only_is_corrupt_not_crash():
    for data in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"BM", b"RIFF\x00\x00\x00\x00WEBP"):
        assert reason_of(data) in {"corrupt", "truncated", "not_an_image"}


def test_error_is_picklable():
    err = ImageDecodeError("truncated", "image file is truncated")
    copy = pickle.loads(pickle.dumps(err))
    assert copy.reason == "truncated"
    assert str(copy) == "image file is truncated"


# --------------------------------------------------------------------------
# draft decoding
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    # 4000x3000 like a 12 MP phone photo; a gradient so it is not trivially
    # compressible.
    x = np.linspace(0, 255, 4000, dtype=np.float32)
    y = np.linspace(0, 255, 3000, dtype=np.float32)[:, None]
    arr = np.empty((3000, 4000, 3), np.uint8)
    arr[..., 0] = x
    arr[..., 1] = y
    arr[..., 2] = 128
    return encode(Image.fromarray(arr), "JPEG", quality=85)


def test_draft_size_reduces_decoded_size(big_jpeg):
    full = decode_image(big_jpeg)
    assert full.size == (4000, 3000)
    small = decode_image(big_jpeg, draft_size=(256, 256))
    assert small.mode == "RGB"
    assert small.size[0] < 4000 and small.size[1] < 3000
    assert small.size[0] >= 256 and small.size[1] >= 256


def test_draft_size_with_rotation_keeps_both_sides_large_enough():
    # Stored 2400x600 landscape with orientation 6 -> displayed 600x2400.
    # A naive draft of (300, 150) on the stored pixels would pick 1/4 scale
    # (600x150), which after rotation is only 150 wide; the result must
    # still be >= draft_size on both sides *after* rotation.
    arr = np.zeros((600, 2400, 3), np.uint8)
    data = encode(Image.fromarray(arr), "JPEG", exif=exif_bytes(6))
    img = decode_image(data, draft_size=(300, 150))
    assert img.size[1] > img.size[0]  # rotated: now portrait
    assert img.size[0] < 600  # it did draft
    assert img.size[0] >= 300 and img.size[1] >= 150


def test_draft_size_ignored_for_non_jpeg():
    data = encode(Image.new("RGB", (1000, 800), RED), "PNG")
    assert decode_image(data, draft_size=(64, 64)).size == (1000, 800)


def test_draft_size_larger_than_image():
    data = encode(Image.new("RGB", (100, 80), RED), "JPEG")
    assert decode_image(data, draft_size=(256, 256)).size == (100, 80)


@pytest.mark.parametrize("bad", [(0, 10), (10, -1), (10,), (1.5, 2)])
def test_bad_draft_size_is_a_value_error(bad):
    data = encode(Image.new("RGB", (10, 10)), "JPEG")
    with pytest.raises(ValueError) as info:
        decode_image(data, draft_size=bad)
    assert not isinstance(info.value, ImageDecodeError)


# --------------------------------------------------------------------------
# fuzz
# --------------------------------------------------------------------------


def fuzz_seeds() -> list[bytes]:
    base = two_colour((24, 16))
    anim_first, *anim_rest = frames([RED, GREEN], size=(12, 8))
    return [
        encode(base, "JPEG", quality=80),
        encode(base, "JPEG", quality=80, progressive=True),
        encode(base, "PNG"),
        encode(base.convert("RGBA"), "PNG"),
        encode(base, "GIF"),
        encode(anim_first, "GIF", save_all=True, append_images=anim_rest),
    ]


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0:  # overwrite random bytes
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1:  # truncate
            del buf[rng.randint(1, len(buf)) :]
        elif op == 2:  # insert junk
            pos = rng.randrange(len(buf) + 1)
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3:  # delete a span
            pos = rng.randrange(len(buf))
            del buf[pos : pos + rng.randint(1, 32)]
        else:  # set a byte to an extreme value (often a length/size field)
            buf[rng.randrange(len(buf))] = rng.choice([0x00, 0xFF, 0x7F, 0x80])
        if not buf:
            break
    return bytes(buf)


def test_fuzz_mutations_only_raise_image_decode_error():
    rng = random.Random(20240601)
    seeds = fuzz_seeds()
    outcomes = {"ok": 0}
    for i in range(300):
        data = mutate(seeds[i % len(seeds)], rng)
        try:
            img = decode_image(data)
        except ImageDecodeError as exc:
            assert exc.reason in {
                "empty",
                "not_an_image",
                "truncated",
                "too_many_pixels",
                "zero_size",
                "unsupported_mode",
                "corrupt",
            }
            assert str(exc)
            outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
        else:
            assert isinstance(img, Image.Image)
            assert img.mode == "RGB"
            assert img.size[0] > 0 and img.size[1] > 0
            outcomes["ok"] += 1
    # Sanity: the fuzzer exercised both paths.
    assert outcomes["ok"] > 0
    assert sum(outcomes.values()) - outcomes["ok"] > 0
