"""Batched JPEG decoding with torchvision.io.decode_jpeg: nvjpeg when the device is a GPU, libjpeg-turbo on the CPU.

This is the fast lane for the common case only: a complete 8-bit RGB or grayscale JPEG within the pixel limit and
without an EXIF rotation (nvjpeg cannot apply one). Everything else, and any JPEG this lane fails to decode, goes
through `phototag.inference.load_image` (Pillow), which applies rotations and gives refusals their reasons. The
decoded image is resized on the device with torch's antialiased bilinear filter, the tensor counterpart of the
Pillow path's bilinear resize (the two differ by a few grey levels on average; tests measure it).
"""
from __future__ import annotations

import io
import warnings

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from phototag.headers import EXIF_ORIENTATION_TAG, JPEG_END_OF_IMAGE, JPEG_MAGIC
from phototag.preprocessing import resize_tensor

JPEG_DECODERS = ("auto", "pil", "torchvision")


def choose_jpeg_decoder(setting: str, device: torch.device) -> str:
    """'auto' is torchvision (nvjpeg) on CUDA and Pillow elsewhere: on a CPU, Pillow's draft mode decodes a large
    JPEG at 1/2-1/8 scale, which libjpeg-turbo through torchvision does not."""
    if setting not in JPEG_DECODERS:
        raise ValueError(f"jpeg_decoder must be one of {JPEG_DECODERS}, not {setting!r}")
    if setting == "auto":
        return "torchvision" if device.type == "cuda" else "pil"
    return setting


def fits_fast_lane(data: bytes, max_pixels: int) -> bool:
    """Whether `data` is a complete, upright, 8-bit RGB/grayscale JPEG of at most `max_pixels` (header only)."""
    if not data.startswith(JPEG_MAGIC) or not data.rstrip(b"\0").endswith(JPEG_END_OF_IMAGE):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning; the limit is ours, below
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
                width, height = image.size
                upright = image.getexif().get(EXIF_ORIENTATION_TAG, 1) == 1
                return image.mode in ("RGB", "L") and 0 < width * height <= max_pixels and upright
    except Exception:  # noqa: BLE001 - any header Pillow cannot read sends the bytes to the Pillow lane
        return False


def decode_jpegs(datas: list[bytes], image_size: int, device: torch.device,
                 resize: str = "squash") -> list[torch.Tensor | None]:
    """JPEG bytes -> uint8 [3, image_size, image_size] on `device` each (squashed or letterboxed, as
    `phototag.preprocessing` defines), or None where this lane failed.

    One batched decode call; if it fails (decode_jpeg returns nothing when any image in the batch is bad), each
    image is retried alone so that one bad file does not send the whole batch to the slow lane.
    """
    if not datas:
        return []
    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        images = [_decode_one(e, device) for e in encoded]
    return [None if img is None else resize_tensor(img, image_size, resize) for img in images]


def _decode_one(encoded: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None
