"""phototag.preprocessing: the squash and letterbox resizes, in Pillow and on tensors (the batched JPEG lane)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from phototag.inference import load_image
from phototag.jpeg_batch import decode_jpegs
from phototag.preprocessing import PAD_RGB, letterbox_geometry, resize_tensor, resize_to_tensor
from training.synth import render_jpegs


@pytest.mark.parametrize("width, height, expected", [
    (1271, 552, (128, 56, 0, 36)),  # landscape: the long side fills the width, the rest is padded evenly
    (552, 1271, (56, 128, 36, 0)),
    (300, 300, (128, 128, 0, 0)),
    (5000, 10, (128, 1, 0, 63)),  # never thinner than a pixel
])
def test_letterbox_geometry(width, height, expected):
    assert letterbox_geometry(width, height, 128) == expected


def test_letterbox_keeps_the_aspect_ratio_and_pads_with_the_mean_colour():
    image = Image.new("RGB", (400, 200), (200, 10, 10))
    out = resize_to_tensor(image, 64, "letterbox")
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8
    pad = torch.tensor(PAD_RGB, dtype=torch.uint8).view(3, 1)
    assert torch.equal(out[:, :16].reshape(3, -1), pad.expand(3, 16 * 64))  # the top border
    assert torch.equal(out[:, 48:].reshape(3, -1), pad.expand(3, 16 * 64))  # the bottom border
    assert torch.all(out[:, 16:48] == torch.tensor([200, 10, 10], dtype=torch.uint8).view(3, 1, 1))


def test_squash_fills_the_square_with_the_whole_frame():
    image = Image.new("RGB", (400, 200), (200, 10, 10))
    image.paste((0, 0, 255), (0, 0, 200, 200))  # left half blue
    out = resize_to_tensor(image, 64, "squash")
    assert out[2, :, :30].float().mean() > 250 and out[0, :, 34:].float().mean() > 195


def test_unknown_resize_is_refused():
    with pytest.raises(ValueError, match="resize must be one of"):
        resize_to_tensor(Image.new("RGB", (10, 10)), 8, "crop")


@pytest.mark.parametrize("resize", ["squash", "letterbox"])
def test_tensor_lane_agrees_with_pillow_lane(resize):
    """The batched JPEG lane (torchvision decode + resize_tensor) prepares a photo as the Pillow lane does."""
    photos = render_jpegs(900, 400, 2, seed=4) + render_jpegs(300, 700, 2, seed=5)
    for data, tensor in zip(photos, decode_jpegs(photos, 96, torch.device("cpu"), resize)):
        reference = load_image(data, 96, resize=resize)
        assert tensor.shape == reference.shape == (3, 96, 96)
        assert (tensor.float() - reference.float()).abs().mean().item() < 4.0


def test_resize_tensor_letterbox_borders_match_pillow_exactly():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 200, 3), dtype=np.uint8))
    pillow = resize_to_tensor(image, 64, "letterbox")
    tensor = resize_tensor(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), 64, "letterbox")
    content = (pillow.sum(dim=0) != sum(PAD_RGB)).any(dim=1)
    assert torch.equal(content, (tensor.sum(dim=0) != sum(PAD_RGB)).any(dim=1))  # the same rows carry the photo
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    assert torch.equal(load_image(buffer.getvalue(), 64, resize="letterbox"), pillow)
