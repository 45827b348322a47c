"""A finished photo from labels: scene, exposure jitter, blur, resize, sensor noise; JPEG bytes for load tests."""
from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageChops

from phototag.taxonomy import UNKNOWN
from training.synth.labels import SEED_STRIDE, generate_labels
from training.synth.scene import Scene
from training.synth.shapes import NOISE_SIGMA, clamp

# ---- rendering ----------------------------------------------------------------------------------------------
WORK_LONG_SIDE = 768  # scenes are drawn at most this large and upscaled: big images cost little more


# =============================================================================================================
# finishing: exposure jitter, blur, resize, sensor noise
# =============================================================================================================
_NOISE_TILE: Image.Image | None = None
NOISE_TILE_SIZE = 1024
NOISE_TILE_SCALE = 32.0  # the tile stores 128 + 32 * N(0, 1)


def _noise_tile() -> Image.Image:
    """A fixed Gaussian-noise tile, made once per process from a constant seed.

    Cutting randomly placed, randomly flipped windows out of it is ~10x cheaper than drawing fresh normals
    for every pixel, and stays deterministic because the tile is the same in every process.
    """
    global _NOISE_TILE
    if _NOISE_TILE is None:
        z = np.random.default_rng(20240611).standard_normal((NOISE_TILE_SIZE, NOISE_TILE_SIZE, 3), dtype=np.float32)
        _NOISE_TILE = Image.fromarray(np.clip(128 + NOISE_TILE_SCALE * z, 0, 255).astype(np.uint8))
    return _NOISE_TILE


_FLIPS = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180)


def _noise(rng: random.Random, size: tuple[int, int], sigma: float, mono: bool) -> Image.Image:
    """Zero-mean noise image (centred on 128) of standard deviation `sigma`, RGB or luminance-only."""
    tile, t = _noise_tile(), NOISE_TILE_SIZE
    w, h = size
    out = Image.new("RGB", size)
    for y in range(0, h, t):
        for x in range(0, w, t):
            cw, ch = min(t, w - x), min(t, h - y)
            ox, oy = rng.randint(0, t - cw), rng.randint(0, t - ch)
            patch = tile.crop((ox, oy, ox + cw, oy + ch))
            flip = rng.choice(_FLIPS)
            out.paste(patch.transpose(flip) if flip is not None else patch, (x, y))
    if mono:
        out = out.getchannel(rng.randint(0, 2))
    k = sigma / NOISE_TILE_SCALE
    out = out.point([int(clamp(128 + (v - 128) * k, 0, 255) + 0.5) for v in range(256)] * (1 if mono else 3))
    return Image.merge("RGB", (out, out, out)) if mono else out


def _add_noise(img: Image.Image, noise: Image.Image) -> Image.Image:
    return ImageChops.add(img, noise, 1.0, -128)


def _finish(img: Image.Image, tod: str, width: int, height: int, rng: random.Random) -> Image.Image:
    mean = float(np.asarray(img.resize((32, 32), Image.BOX)).mean())
    contrast = rng.uniform(0.85, 1.15)
    brightness = rng.uniform(0.9, 1.1)  # small enough that night stays night
    img = img.point([int(clamp(((v - mean) * contrast + mean) * brightness, 0, 255) + 0.5) for v in range(256)] * 3)
    img = _add_noise(img, _noise(rng, img.size, rng.uniform(0.5, 2.0), mono=False))  # colour noise, coarse
    if rng.random() < 0.2:  # defocus / soft lens: down and up again is a cheap blur
        w, h = img.size
        f = rng.uniform(1.5, 3.0)
        img = img.resize((max(8, int(w / f)), max(8, int(h / f))), Image.BOX).resize((w, h), Image.BILINEAR)
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    # luminance grain at full resolution: the dominant part of sensor noise, strongest in the dark
    return _add_noise(img, _noise(rng, (width, height), rng.uniform(*NOISE_SIGMA[tod]), mono=True))


def render_scene(labels: dict, width: int, height: int, seed: int) -> Image.Image:
    """Draw one RGB scene of `width` x `height` showing `labels` (as returned by `generate_labels`).

    The same labels, size and seed always give the same pixels.
    """
    return render_scene_with_boxes(labels, width, height, seed)[0]


def render_scene_with_boxes(labels: dict, width: int, height: int, seed: int, object_scale: float = 1.0,
                            work_long_side: int = WORK_LONG_SIDE) -> tuple[Image.Image, list[dict]]:
    """`render_scene`, plus one record per drawn object: {"object", "box": [x0, y0, x1, y1] in the image's pixels
    (clipped to it; the drawn shape's extent, approximately), "size": the object's size as a share of the short
    side}. Computing the boxes draws nothing more and takes no random numbers: the pixels are the same.

    `object_scale` and `work_long_side` are the large-photo option's (training.synth.dataset): objects that much
    smaller, drawn on a larger canvas so that a small object keeps its shape's detail."""
    if width < 16 or height < 16:
        raise ValueError(f"image too small: {width}x{height}")
    seed = int(seed) & (2 ** 63 - 1)
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    scale = min(1.0, work_long_side / max(width, height))
    ww, wh = max(16, round(width * scale)), max(16, round(height * scale))
    scene = Scene(labels, ww, wh, rng, nrng, object_scale)
    img = scene.render()
    sx, sy = width / ww, height / wh
    boxes = [{"object": name,
              "box": [round(clamp(x0 * sx, 0, width)), round(clamp(y0 * sy, 0, height)),
                      round(clamp(x1 * sx, 0, width)), round(clamp(y1 * sy, 0, height))],
              "size": round(size, 4)}
             for name, (x0, y0, x1, y1), size in scene.placed]
    return _finish(img, labels.get("time_of_day", UNKNOWN), width, height, rng), boxes


def render_jpegs(width: int, height: int, count: int, seed: int = 0, quality: int = 90) -> list[bytes]:
    """`count` random scenes of `width` x `height` as JPEG bytes, for load tests and benchmarks (deterministic)."""
    photos = []
    for i in range(count):
        scene_seed = seed * SEED_STRIDE + i
        buffer = io.BytesIO()
        render_scene(generate_labels(random.Random(scene_seed)), width, height, scene_seed).save(
            buffer, "JPEG", quality=quality)
        photos.append(buffer.getvalue())
    return photos
