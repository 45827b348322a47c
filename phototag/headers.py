"""What untrusted image bytes say about themselves, read from their first bytes without decoding them.

The container's name (for routing and error messages), a guess at what non-image uploads are, and the width and
height a header declares. Shared by the Pillow decoder (`phototag.decoding`) and the batched JPEG lane
(`phototag.jpeg_batch`); nothing here allocates pixel memory. Every reader is best effort: a surprise returns None.
"""
from __future__ import annotations

import struct

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END_OF_IMAGE = b"\xff\xd9"
EXIF_ORIENTATION_TAG = 0x0112

# Leading-byte signatures of the accepted formats, using Pillow's format
# names.  MPO files start like JPEG and are reported as JPEG here.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (JPEG_MAGIC, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),  # BigTIFF
    (b"BM", "BMP"),
)


def sniff_container(data: bytes) -> str | None:
    """The container named by the leading bytes: Pillow's format name ('JPEG', 'PNG', 'WEBP', 'BMP', 'TIFF',
    'GIF', 'HEIF', 'AVIF') or another ISO media brand's name (e.g. 'Canon CR3 raw'); None when unknown. Whether
    this build decodes it is `phototag.decoding.sniff_format`'s question."""
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        brand = _ISO_BMFF_BRANDS.get(head[8:12])
        return "HEIF" if brand in ("HEIC", "HEIF") else brand
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    return None


_ISO_BMFF_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"hevc": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
    b"crx ": "Canon CR3 raw",
    b"qt  ": "QuickTime video",
}


def describe_non_image(data: bytes) -> str | None:
    """A short guess at what non-image bytes are, for the error message.

    Clients most often send the wrong thing by accident (an HTML error page
    from a proxy, a PDF, a zipped folder, an iPhone HEIC), and naming it
    saves a round of debugging on their side.
    """
    head = bytes(data[:512])
    if head.startswith(b"%PDF"):
        return "PDF"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return "ZIP archive"
    if head.startswith(b"\x1f\x8b"):
        return "gzip data"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z archive"
    if head.startswith(b"Rar!"):
        return "RAR archive"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        return _ISO_BMFF_BRANDS.get(brand, "ISO media (MP4/MOV/HEIF family)")
    if head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"WAVE"):
        return "AVI video" if head[8:12] == b"AVI " else "WAV audio"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO icon (not accepted)"
    if head.startswith(b"8BPS"):
        return "Photoshop PSD (not accepted)"
    if head.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")):
        return "JPEG 2000 (not accepted)"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL "):
        return "JPEG XL (not accepted)"

    text = head.lstrip(b"\xef\xbb\xbf").lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "HTML"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "SVG (vector images are not accepted)"
    if text.startswith(b"<?xml"):
        return "XML"
    if text.startswith((b"{", b"[")):
        return "JSON"
    if text.startswith(b"data:image/"):
        return "a data: URL (send the decoded bytes, not the base64 text)"
    if text.startswith((b"http://", b"https://")):
        return "a URL (send the image bytes, not its address)"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the 512-byte boundary.
        try:
            decoded = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return None
    if decoded and all(c.isprintable() or c in "\r\n\t" for c in decoded):
        return "text"
    return None



def declared_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header of an accepted format, or None.

    Only used to word the error when Pillow's own bomb guard refuses an
    image inside Image.open (so we never see ``img.size``).  Best effort:
    any surprise returns None and the message falls back to Pillow's text.
    """
    try:
        fmt = sniff_container(data)
        if fmt == "PNG":
            return struct.unpack(">II", data[16:24])
        if fmt == "GIF":
            return struct.unpack("<HH", data[6:10])
        if fmt == "BMP":
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
                return struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)  # negative height means top-down rows
        if fmt == "WEBP":
            return _webp_size(data)
        if fmt == "JPEG":
            return _jpeg_size(data)
        if fmt == "TIFF":
            return _tiff_size(data)
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if kind == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return w, h
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no SOF seen
            return None
        pos += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    endian = "<" if data[:2] == b"II" else ">"
    if struct.unpack(endian + "H", data[2:4])[0] != 42:  # BigTIFF: not worth it
        return None
    (ifd,) = struct.unpack(endian + "I", data[4:8])
    (count,) = struct.unpack(endian + "H", data[ifd : ifd + 2])
    found: dict[int, int] = {}
    for i in range(count):
        entry = data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        tag, typ = struct.unpack(endian + "HH", entry[:4])
        if tag in (256, 257):
            if typ == 3:  # SHORT
                (found[tag],) = struct.unpack(endian + "H", entry[8:10])
            elif typ == 4:  # LONG
                (found[tag],) = struct.unpack(endian + "I", entry[8:12])
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None
