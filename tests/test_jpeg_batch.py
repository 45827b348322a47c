"""The batched JPEG lane (torchvision.io.decode_jpeg; nvjpeg on a GPU, libjpeg-turbo here): which files it takes,
that it agrees with the Pillow lane, and that a bad file in a batch fails alone."""
from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from phototag.inference import load_image
from phototag.jpeg_batch import choose_jpeg_decoder, decode_jpegs, fits_fast_lane
from training.synth import render_jpegs

MAX_PIXELS = 80_000_000


def _encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


@pytest.fixture(scope="module")
def scenes() -> list[bytes]:
    return render_jpegs(640, 480, 4, seed=3)


def test_choice_of_decoder():
    assert choose_jpeg_decoder("auto", torch.device("cpu")) == "pil"
    assert choose_jpeg_decoder("auto", torch.device("cuda", 0)) == "torchvision"
    assert choose_jpeg_decoder("torchvision", torch.device("cpu")) == "torchvision"
    with pytest.raises(ValueError, match="jpeg_decoder"):
        choose_jpeg_decoder("nvjpeg", torch.device("cpu"))


def test_fast_lane_takes_only_plain_complete_upright_jpegs(scenes):
    rgb = Image.open(io.BytesIO(scenes[0]))
    assert fits_fast_lane(scenes[0], MAX_PIXELS)
    assert fits_fast_lane(_encode(rgb.convert("L")), MAX_PIXELS)
    assert not fits_fast_lane(_encode(rgb.convert("CMYK")), MAX_PIXELS)
    assert not fits_fast_lane(_encode(rgb, "PNG"), MAX_PIXELS)
    assert not fits_fast_lane(scenes[0][: len(scenes[0]) // 2], MAX_PIXELS)  # truncated: Pillow refuses it
    exif = Image.Exif()
    exif[0x0112] = 6
    assert not fits_fast_lane(_encode(rgb, exif=exif), MAX_PIXELS)  # rotation: Pillow applies it
    assert not fits_fast_lane(scenes[0], 640 * 480 - 1)
    assert not fits_fast_lane(b"\xff\xd8\xff garbage \xff\xd9", MAX_PIXELS)


def test_fast_lane_agrees_with_pillow_lane(scenes):
    fast = decode_jpegs(scenes, 128, torch.device("cpu"))
    for data, tensor in zip(scenes, fast):
        assert tensor.shape == (3, 128, 128) and tensor.dtype == torch.uint8
        difference = (tensor.float() - load_image(data, 128).float()).abs().mean().item()
        assert difference < 4.0, difference


def test_one_bad_jpeg_fails_alone(scenes):
    broken = scenes[1][:200] + bytes(400) + scenes[1][-2:]  # header intact, entropy-coded data destroyed
    out = decode_jpegs([scenes[0], broken, scenes[2]], 64, torch.device("cpu"))
    assert out[0] is not None and out[2] is not None and out[1] is None
    assert torch.equal(out[0], decode_jpegs([scenes[0]], 64, torch.device("cpu"))[0])  # batch or alone: same
    assert decode_jpegs([], 64, torch.device("cpu")) == []
