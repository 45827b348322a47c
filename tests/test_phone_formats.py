"""iPhone HEIC/HEIF (pillow-heif) and AVIF photos, made here with the same libraries, decode upright."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from phototag.decoding import ACCEPTED_FORMATS, ImageDecodeError, decode_image, sniff_format

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _two_tone(width=80, height=40) -> Image.Image:
    """Red left quarter, blue elsewhere: shows both rotation and mirroring."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 4, height))
    return image


def _encode(fmt: str, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    kwargs = {"quality": 95}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    _two_tone().save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _close(pixel, colour, tolerance=24):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_phone_format_decodes_to_rgb(fmt):
    assert fmt in ACCEPTED_FORMATS
    data = _encode(fmt)
    assert sniff_format(data) == fmt
    image = decode_image(data)
    assert image.mode == "RGB" and image.size == (80, 40)
    assert _close(image.getpixel((2, 20)), RED) and _close(image.getpixel((70, 20)), BLUE)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_phone_format_exif_rotation_is_applied(fmt):
    image = decode_image(_encode(fmt, orientation=6))  # "rotate 90° clockwise to display"
    assert image.size == (40, 80)
    assert _close(image.getpixel((20, 2)), RED) and _close(image.getpixel((20, 70)), BLUE)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_truncated_phone_photo_is_refused(fmt):
    data = _encode(fmt)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.reason in ("truncated", "corrupt")
