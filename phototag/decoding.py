"""Decode untrusted image bytes into an 8-bit RGB ``PIL.Image.Image``.

Every photo the service tags - from phones, drones and camera traps - passes
through :func:`decode_image` before preprocessing.  The bytes come from
clients we do not control, so this module is the place where "is this a
usable picture?" is decided, and its answer is always either an RGB image or
an :class:`ImageDecodeError` with a machine-readable ``reason``.  The HTTP
layer can map every reason to a 4xx without special-casing Pillow's many
exception types.

Accepted
    JPEG (including MPO, which some phones and drones write), PNG, WebP, BMP,
    TIFF, GIF, HEIC/HEIF (iPhones' default, through pillow-heif, which applies
    the file's rotation itself) and AVIF (Pillow's own plugin, where its build
    has libavif).  For animated GIF/WebP and multi-page TIFF only the first
    frame/page is used: it is what a viewer shows as the thumbnail, and
    decoding the rest would cost time for nothing.  Pillow is restricted to
    exactly these formats so that exotic plugins (EPS, which shells out to
    Ghostscript, or rarely exercised parsers) are never reached by untrusted
    input.

Normalisation
    * EXIF orientation (all 8 values, same table as
      ``PIL.ImageOps.exif_transpose``) is applied, because phones store
      portrait photos as rotated landscape pixels and the model was trained
      on upright images.  An EXIF block that cannot be parsed, or an
      orientation outside 1..8, means "no rotation" rather than a rejection:
      the pixels are still fine.
    * Everything becomes 8-bit RGB.  Transparent pixels (RGBA, LA, palette
      transparency) are composited onto white; simply dropping alpha exposes
      whatever colour the encoder left under transparent pixels, often black
      or noise.  CMYK (including Adobe's inverted CMYK/YCCK JPEGs, which
      Pillow un-inverts) uses Pillow's conversion; embedded ICC profiles are
      not applied.
    * High bit depth is scaled down, not clipped: 16-bit grayscale
      (``I;16*``) is divided by 257 so 65535 -> 255, trusting the declared
      bit depth.  32-bit integer (``I``) and float (``F``) images - typically
      thermal/radiometric TIFFs from drones - have no meaningful fixed range,
      so they are stretched from their own min..max to 0..255; a constant
      image is clipped to 0..255 instead of dividing by zero, and NaN maps
      to 0.

Refused (``ImageDecodeError.reason``)
    ``empty``            no bytes at all.
    ``not_an_image``     not one of the accepted formats (text, HTML, PDF,
                         ZIP, camera raw, ...); the message says what the bytes
                         look like when that is easy to tell.
    ``too_many_pixels``  width*height above ``max_pixels``, decided from the
                         header before any pixel memory is allocated, which
                         is what defeats decompression bombs (a 30000x30000
                         PNG is a few hundred KB).  This check does not rely
                         on Pillow's global ``Image.MAX_IMAGE_PIXELS`` (which
                         other code may change or disable) and never changes
                         it.  Extreme aspect ratios (1x20000) are fine.
    ``zero_size``        a header declaring zero width or height.
    ``truncated``        the file ends before the image data does.  We reject
                         rather than decode the partial image: Pillow would
                         fill the missing rows with grey, and the model would
                         tag a half-grey photo with full confidence.  An
                         upload cut short is cheap for the client to re-send.
                         This relies on ``ImageFile.LOAD_TRUNCATED_IMAGES``
                         staying at Pillow's default ``False``; this module
                         never sets it.
    ``unsupported_mode`` a pixel format we cannot turn into RGB.
    ``corrupt``          anything else Pillow chokes on (bad header, bad
                         compressed data, ...); the message carries Pillow's
                         own error text.

No other exception escapes :func:`decode_image` for any input bytes, except
``MemoryError``, which signals a problem with the worker rather than with the
upload and must reach the process supervisor.  Invalid *arguments* (not
bytes, a non-positive ``draft_size``) are programming errors and raise
``TypeError``/``ValueError`` as usual.

No global state is modified, so the function is safe to call from several
threads at once.

Known limits
    * The pixel limit is applied to the declared size even when
      ``draft_size`` would decode a JPEG smaller: one rule for every format
      is easier to reason about than a per-format budget.
    * For 80-179 MP images Pillow emits its own ``DecompressionBombWarning``
      inside ``Image.open`` before our check refuses them (we do not touch
      the process-wide warning filters); if warnings are turned into
      errors, that error is reported as ``too_many_pixels`` too.
    * A malformed file whose declared size is within the limit but whose
      data covers only part of it (e.g. a TIFF strip shorter than the
      image) may decode with the uncovered area blank, because Pillow does
      not flag it.  Memory and time are still bounded by ``max_pixels``.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError, features

try:  # HEIC/HEIF support is a separate wheel; without it such photos are refused as not_an_image
    import pillow_heif

    pillow_heif.register_heif_opener()
    _HEIF = ("HEIF",)
except ImportError:  # pragma: no cover - pillow-heif is in requirements.txt
    _HEIF = ()

__all__ = [
    "ACCEPTED_FORMATS",
    "MAX_PIXELS",
    "ImageDecodeError",
    "decode_image",
    "sniff_format",
]

# Why 80 MP: a 12-48 MP phone photo or a 20 MP drone frame is fine, while a
# decompression bomb (e.g. 30000x30000 = 900 MP, 2.7 GB as RGB) is refused
# before decoding.  At 80 MP an RGB decode is ~240 MB, which a worker can
# afford.
MAX_PIXELS = 80_000_000

# Pillow format names of what we accept.  MPO is listed because Pillow reports
# multi-picture JPEGs (phone portrait mode, some DJI drones) as "MPO"; they
# are ordinary JPEGs for our purpose.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF") + _HEIF + (
    ("AVIF",) if features.check("avif") else ())

# What is passed to Image.open(formats=...).  MPO has no opener of its own
# (the JPEG opener returns an MPO image when it finds MP data), and naming it
# there is a KeyError.
_OPEN_FORMATS = tuple(f for f in ACCEPTED_FORMATS if f != "MPO")

# Background for transparent pixels: white is what viewers and browsers show
# for transparent PNG/GIF areas on most pages, so it matches what a human saw.
_BACKGROUND = (255, 255, 255)

_ORIENTATION_TAG = 0x0112


class ImageDecodeError(ValueError):
    """Bytes that are not a usable image.

    ``reason`` is a short machine-readable slug ('empty', 'not_an_image',
    'truncated', 'too_many_pixels', 'zero_size', 'unsupported_mode',
    'corrupt'); ``str(exc)`` is a human-readable message naming the problem.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self):
        # Keep the exception picklable (e.g. across multiprocessing workers);
        # the default would call __init__ with a single argument.
        return (type(self), (self.reason, self.message))


# --------------------------------------------------------------------------
# Format sniffing
# --------------------------------------------------------------------------

# Leading-byte signatures of the accepted formats, using Pillow's format
# names.  MPO files start like JPEG and are reported as JPEG here.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),  # BigTIFF
    (b"BM", "BMP"),
)


def sniff_format(data: bytes) -> str | None:
    """Guess the image format from the leading bytes, without decoding.

    Returns Pillow's format name ('JPEG', 'PNG', 'WEBP', 'BMP', 'TIFF',
    'GIF') for the accepted formats, or ``None``.  This is a cheap hint for
    logging and error messages; :func:`decode_image` is the authority on
    whether the bytes actually decode.
    """
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        brand = _ISO_BMFF_BRANDS.get(head[8:12])
        name = "HEIF" if brand in ("HEIC", "HEIF") else brand
        return name if name in ACCEPTED_FORMATS else None
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


def _describe_non_image(data: bytes) -> str | None:
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


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def decode_image(
    data: bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode ``data`` into a fully loaded 8-bit RGB image.

    :param data: the raw uploaded bytes.
    :param max_pixels: refuse images whose declared width*height exceeds this.
    :param draft_size: for JPEGs, let libjpeg decode at a reduced DCT scale
        (1/2, 1/4, 1/8) whose result is still at least this large on both
        sides.  For a 12 MP photo bound for a 256x256 model input this cuts
        decode time several-fold.  Ignored for other formats.  The size
        check uses the full declared size, so ``draft_size`` does not raise
        the pixel limit.
    :raises ImageDecodeError: for any bytes that are not a usable image.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")
    if draft_size is not None:
        if (
            len(draft_size) != 2
            or not all(isinstance(v, int) and v > 0 for v in draft_size)
        ):
            raise ValueError(f"draft_size must be two positive ints, got {draft_size!r}")

    if not data:
        raise ImageDecodeError("empty", "no image data: the upload is 0 bytes")

    try:
        return _decode(data, max_pixels=max_pixels, draft_size=draft_size)
    except ImageDecodeError:
        raise
    except MemoryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own global guard (2 x Image.MAX_IMAGE_PIXELS) fires inside
        # Image.open, before we get to look at img.size; same verdict as our
        # check, but we re-read the dimensions so the message is as useful.
        size = _declared_size(data)
        if size is None:
            detail = str(exc)
        else:
            w, h = size
            if w * h > max_pixels:
                limit = f"the limit of {max_pixels:,}"
            else:
                # Only when a caller raised max_pixels above Pillow's limit.
                limit = "Pillow's global limit (2 x Image.MAX_IMAGE_PIXELS)"
            detail = f"{w}x{h} = {w * h:,} pixels, more than {limit}"
        raise ImageDecodeError(
            "too_many_pixels", f"image is too large to decode safely: {detail}"
        ) from None
    except (EOFError, struct.error) as exc:
        # Parsers that run out of bytes mid-structure surface as these.
        raise ImageDecodeError(
            "truncated",
            f"image data ends prematurely ({type(exc).__name__}: {exc or 'unexpected end of data'})",
        ) from None
    except Exception as exc:  # noqa: BLE001 - the whole point: nothing else escapes
        message = str(exc) or type(exc).__name__
        if "truncated" in message.lower():
            raise ImageDecodeError(
                "truncated",
                f"image file is truncated (the data ends before the image does): {message}",
            ) from None
        raise ImageDecodeError(
            "corrupt", f"image data is corrupt ({type(exc).__name__}: {message})"
        ) from None


def _decode(
    data: bytes, *, max_pixels: int, draft_size: tuple[int, int] | None
) -> Image.Image:
    sniffed = sniff_format(data)
    try:
        img = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except UnidentifiedImageError:
        raise _unidentified_error(data, sniffed) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
        raise  # handled (and worded) by decode_image
    except Exception as exc:  # noqa: BLE001
        # A plugin accepted the signature but its header parser failed
        # (SyntaxError, OSError, struct.error, ... depending on the plugin).
        fmt = f"{sniffed} " if sniffed else ""
        message = str(exc) or type(exc).__name__
        if isinstance(exc, EOFError) or "truncated" in message.lower():
            raise ImageDecodeError(
                "truncated",
                f"{fmt}image file is truncated inside its header "
                f"({type(exc).__name__}: {message})",
            ) from None
        raise ImageDecodeError(
            "corrupt", f"corrupt {fmt}image header ({type(exc).__name__}: {message})"
        ) from None

    with img:
        width, height = img.size
        # Checked here, after Image.open has read only the header and before
        # any pixel buffer exists: this is the decompression-bomb defence.
        if width <= 0 or height <= 0:
            raise ImageDecodeError(
                "zero_size", f"image declares a zero dimension ({width}x{height})"
            )
        if width * height > max_pixels:
            raise ImageDecodeError(
                "too_many_pixels",
                f"image is {width}x{height} = {width * height:,} pixels, "
                f"more than the limit of {max_pixels:,}",
            )

        if draft_size is not None and isinstance(img, JpegImagePlugin.JpegImageFile):
            # Orientation is applied after decoding, so a 90-degree EXIF
            # rotation swaps width and height of the result; asking for a
            # square of the larger side keeps both output sides >= draft_size
            # whichever way the photo turns out.
            side = max(draft_size)
            img.draft("RGB", (side, side))

        img.load()
        rgb = _to_rgb(_apply_exif_orientation(img))

    # Belt and braces: the caller relies on exactly this contract.
    if rgb.mode != "RGB":
        rgb = rgb.convert("RGB")
    return rgb


def _unidentified_error(data: bytes, sniffed: str | None) -> ImageDecodeError:
    if sniffed is not None:
        # Starts like an accepted format but Pillow could not make sense of
        # the header: damaged rather than a different kind of file.
        return ImageDecodeError(
            "corrupt", f"data starts like a {sniffed} file but its header is invalid"
        )
    what = _describe_non_image(data)
    hint = f" (looks like {what})" if what else ""
    return ImageDecodeError(
        "not_an_image",
        f"the bytes are not a recognised image format{hint}; "
        f"accepted formats: {', '.join(f for f in ACCEPTED_FORMATS if f != 'MPO')}",
    )


# Same table as PIL.ImageOps.exif_transpose.  We apply it ourselves because
# exif_transpose also rewrites the EXIF block to drop the tag, and
# re-serialising a malformed EXIF block can fail - which would reject a photo
# over metadata we throw away anyway.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001
        # A mangled EXIF block (common after some editing apps) says nothing
        # about the pixels; treat it as "no rotation" rather than refusing
        # an otherwise good photo.
        return img
    # Values outside 1..8 (0, 9, garbage) are meaningless: no rotation.
    method = _ORIENTATION_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    if method is None:
        return img
    rotated = img.transpose(method)
    # transpose() drops per-file attributes; keep what _to_rgb looks at.
    rotated.info = dict(img.info)
    return rotated


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode

    if mode.startswith("I;16"):
        # Declared 16-bit: map the full 0..65535 range onto 0..255
        # (65535/257 == 255 exactly), rounding to nearest.
        arr = np.asarray(img).astype(np.uint32)
        return _gray_array_to_rgb(((arr + 128) // 257).astype(np.uint8))

    if mode in ("I", "F"):
        return _gray_array_to_rgb(_stretch_to_uint8(np.asarray(img)))

    if img.has_transparency_data:
        return _composite_on_background(img)

    if mode == "RGB":
        return img.copy()

    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        # Last resort for modes Pillow cannot convert directly: go through
        # numpy and scale by the array's integer width.
        try:
            arr = np.asarray(img)
        except Exception:  # noqa: BLE001
            arr = None
        if arr is not None and arr.ndim == 3 and arr.shape[2] >= 3:
            arr = arr[:, :, :3]
            if arr.dtype == np.uint16:
                return Image.fromarray(((arr.astype(np.uint32) + 128) // 257).astype(np.uint8))
            if arr.dtype == np.uint8:
                return Image.fromarray(np.ascontiguousarray(arr))
        raise ImageDecodeError(
            "unsupported_mode", f"cannot convert pixel mode {mode!r} to RGB ({exc})"
        ) from None


def _composite_on_background(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    out = Image.new("RGB", rgba.size, _BACKGROUND)
    # paste() with the alpha band as mask does a proper alpha blend, so
    # half-transparent edges fade into the background instead of going dark.
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min/max-stretch an int32/float32 array to uint8.

    These modes carry no fixed range (thermal radiometry, elevation, raw
    counts), so the image's own range is the only sensible reference.
    """
    if arr.dtype == np.float32:
        work = arr
    else:
        # int32 -> float64 keeps every integer exact, so a narrow range at a
        # large offset (e.g. 2e9..2e9+100) still stretches cleanly.
        work = arr.astype(np.float64)
    finite = np.isfinite(work)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.uint8)
    all_finite = bool(finite.all())
    values = work if all_finite else work[finite]
    lo = float(values.min())
    hi = float(values.max())
    if hi > lo:
        scale = 255.0 / (hi - lo)
        out = (work - lo) * scale
    else:
        # Constant image: no range to stretch.  Keep the value where it is
        # already a valid 8-bit level, otherwise saturate, instead of
        # dividing by zero.
        out = np.full(arr.shape, lo, dtype=np.float64)
    if not all_finite:
        # +inf is "hotter than everything" -> white; NaN/-inf -> black.
        out = np.where(np.isposinf(work), 255.0, np.where(finite, out, 0.0))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _gray_array_to_rgb(gray: np.ndarray) -> Image.Image:
    # A 2-D uint8 array becomes mode "L".
    return Image.fromarray(np.ascontiguousarray(gray)).convert("RGB")


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header of an accepted format, or None.

    Only used to word the error when Pillow's own bomb guard refuses an
    image inside Image.open (so we never see ``img.size``).  Best effort:
    any surprise returns None and the message falls back to Pillow's text.
    """
    try:
        fmt = sniff_format(data)
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
