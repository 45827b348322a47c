"""Odd and hostile uploads a photobank receives, each with what the service must answer: tags or a 400."""
from __future__ import annotations

import base64
import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

TAGS, REFUSED = "tags", 400


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _scene(size=(320, 240)) -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _png_bomb(side: int = 30000) -> bytes:
    """A real, complete 1-bit side×side PNG: a few hundred KB that would decode to 900 MP."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _gif_bomb() -> bytes:
    """A GIF whose logical screen and frame claim 65535×65535 pixels."""
    small = _save(Image.new("P", (8, 8)), "GIF")
    data = bytearray(small)
    data[6:10] = struct.pack("<HH", 65535, 65535)
    frame = data.index(b",")
    data[frame + 5:frame + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", b"not really")
    return buffer.getvalue()


def hostile_uploads() -> dict[str, tuple[bytes, str, int | str]]:
    """name -> (body, content type, expected: TAGS or REFUSED)."""
    scene = _scene()
    jpeg = _save(scene, "JPEG", quality=90)
    frames = [Image.new("RGB", (64, 48), c) for c in ((200, 0, 0), (0, 200, 0))]
    sixteen = Image.fromarray(np.full((48, 64), 40000, dtype=np.uint16))
    float_tiff = Image.fromarray(np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64), mode="F")
    palette = scene.convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    cases: dict[str, tuple[bytes, str, int | str]] = {
        "zero_bytes": (b"", "application/octet-stream", REFUSED),
        "text": (b"hello, this is a note about the search\n" * 20, "text/plain", REFUSED),
        "html": (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "text/html", REFUSED),
        "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "application/pdf", REFUSED),
        "zip": (_zip(), "application/zip", REFUSED),
        "jpeg_truncated_mid_scan": (jpeg[: len(jpeg) * 3 // 5], "image/jpeg", REFUSED),
        "jpeg_corrupt_header": (jpeg[:2] + bytes(40) + jpeg[42:], "image/jpeg", REFUSED),
        "png_bomb_30000": (_png_bomb(), "image/png", REFUSED),
        "gif_bomb_65535": (_gif_bomb(), "image/gif", REFUSED),
        "aspect_1x20000": (_save(Image.new("RGB", (1, 20000), (90, 120, 200)), "PNG"), "image/png", TAGS),
        "one_pixel": (_save(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), "image/png", TAGS),
        "tiff_16bit": (_save(sixteen, "TIFF"), "image/tiff", TAGS),
        "tiff_float": (_save(float_tiff, "TIFF"), "image/tiff", TAGS),
        "jpeg_cmyk": (_save(scene.convert("CMYK"), "JPEG"), "image/jpeg", TAGS),
        "jpeg_progressive": (_save(scene, "JPEG", progressive=True), "image/jpeg", TAGS),
        "png_palette_transparent": (_save(palette, "PNG"), "image/png", TAGS),
        "gif_animated": (_save(frames[0], "GIF", save_all=True, append_images=frames[1:]), "image/gif", TAGS),
        "webp_animated": (_save(frames[0], "WEBP", save_all=True, append_images=frames[1:]), "image/webp", TAGS),
        "tiff_multipage": (_save(frames[0], "TIFF", save_all=True, append_images=frames[1:]), "image/tiff", TAGS),
        "png_named_jpeg": (_save(scene, "PNG"), "image/jpeg", TAGS),
        "jpeg_sent_as_text": (jpeg, "text/plain", TAGS),  # not UTF-8: TorchServe passes the bytes on
        "json_bad_base64": (b'{"data": "this is ### not base64"}', "application/json", REFUSED),
        "json_no_data": (b'{"image": "' + base64.b64encode(jpeg) + b'"}', "application/json", REFUSED),
        "json_list": (b'[{"data": "' + base64.b64encode(jpeg) + b'"}]', "application/json", REFUSED),
        "json_broken": (b'{"data": "abc', "application/json", REFUSED),
    }
    for orientation in range(1, 9):
        cases[f"exif_orientation_{orientation}"] = (_save(scene, "JPEG", exif=_exif(orientation)), "image/jpeg", TAGS)
    return cases
