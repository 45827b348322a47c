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

from phototag.headers import EXIF_ORIENTATION_TAG, declared_size, describe_non_image, sniff_container

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
# Key in the decoded image's `info`: (width, height) of the photo as a viewer shows it (EXIF orientation applied),
# at full size even where draft mode decoded it smaller. Boxes are given in these pixels (phototag.locate).
DISPLAYED_SIZE = "phototag_displayed_size"

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



def sniff_format(data: bytes) -> str | None:
    """Guess the image format from the leading bytes, without decoding: Pillow's format name for the accepted
    formats ('JPEG', 'PNG', 'WEBP', 'BMP', 'TIFF', 'GIF', and 'HEIF'/'AVIF' where this build decodes them), or
    ``None``. A cheap hint for logging and error messages; :func:`decode_image` is the authority."""
    name = sniff_container(data)
    return name if name in ACCEPTED_FORMATS else None


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
    :returns: the image; ``image.info[DISPLAYED_SIZE]`` is the full size as
        displayed, whatever scale draft mode decoded it at.
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
        size = declared_size(data)
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
        oriented = _apply_exif_orientation(img)
        if (oriented.width, oriented.height) != (img.width, img.height):
            width, height = height, width  # a quarter turn: the viewer shows the photo on its side
        rgb = _to_rgb(oriented)

    # Belt and braces: the caller relies on exactly this contract.
    if rgb.mode != "RGB":
        rgb = rgb.convert("RGB")
    rgb.info[DISPLAYED_SIZE] = (width, height)
    return rgb


def _unidentified_error(data: bytes, sniffed: str | None) -> ImageDecodeError:
    if sniffed is not None:
        # Starts like an accepted format but Pillow could not make sense of
        # the header: damaged rather than a different kind of file.
        return ImageDecodeError(
            "corrupt", f"data starts like a {sniffed} file but its header is invalid"
        )
    what = describe_non_image(data)
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
        orientation = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
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
