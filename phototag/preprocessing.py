"""Eval-time preprocessing, the one definition that training, evaluation and the handler all use.

An image becomes a 3×S×S uint8 tensor by one of two resizes, chosen at training time and stored in the checkpoint
(`ModelConfig.resize`), so serving always prepares a photo the way its model was trained:

- ``squash``: one bilinear resize of the whole frame to S×S. The aspect ratio is not kept. Checkpoints written
  before the setting existed were trained this way, and they still load with it.
- ``letterbox``: the long side is scaled to S with the aspect ratio kept, and the short side is padded evenly with
  the mean colour (0 after normalisation). Shapes stay the shapes the net learned, whatever the photo's aspect
  ratio. Nothing is cropped, because an object at the edge of the frame still counts.

Normalisation is a separate step on float batches so that it can run on the GPU after the uint8 batch has been
copied there (4× less to copy than float32).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tv_f

IMAGE_SIZE = 256
# ImageNet statistics: the ResNet backbone was pretrained with them, and random-init runs keep them so that
# either kind of checkpoint is served by the same code.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("squash", "letterbox")
# The letterbox border: the mean colour normalises to 0, so the border adds nothing to any feature.
PAD_RGB = tuple(round(m * 255) for m in MEAN)


def check_resize(resize: str) -> str:
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, not {resize!r}")
    return resize


def draft_size(image_size: int = IMAGE_SIZE) -> tuple[int, int]:
    """Smallest JPEG DCT-domain scale worth decoding at: never below the model input size."""
    return (image_size, image_size)


def letterbox_geometry(width: int, height: int, image_size: int) -> tuple[int, int, int, int]:
    """(new_width, new_height, left, top): the photo scaled so that its long side is `image_size`, and where it
    sits on the square canvas. The one definition behind both the Pillow and the tensor letterbox."""
    scale = image_size / max(width, height)
    new_w = min(image_size, max(1, round(width * scale)))
    new_h = min(image_size, max(1, round(height * scale)))
    return new_w, new_h, (image_size - new_w) // 2, (image_size - new_h) // 2


def resize_to_tensor(image: Image.Image, image_size: int = IMAGE_SIZE, resize: str = "squash") -> torch.Tensor:
    """RGB PIL image of any size -> uint8 tensor [3, image_size, image_size], squashed or letterboxed."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if check_resize(resize) == "squash":
        out = image.resize((image_size, image_size), Image.BILINEAR, reducing_gap=3.0)
    else:
        new_w, new_h, left, top = letterbox_geometry(image.width, image.height, image_size)
        out = Image.new("RGB", (image_size, image_size), PAD_RGB)
        out.paste(image.resize((new_w, new_h), Image.BILINEAR, reducing_gap=3.0), (left, top))
    array = np.asarray(out, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def resize_tensor(image: torch.Tensor, image_size: int = IMAGE_SIZE, resize: str = "squash") -> torch.Tensor:
    """uint8 [3, H, W] (any device) -> uint8 [3, image_size, image_size]: the tensor twin of `resize_to_tensor`,
    for the batched JPEG lane that decodes on the GPU."""
    if check_resize(resize) == "squash":
        return tv_f.resize(image, [image_size, image_size], antialias=True)
    new_w, new_h, left, top = letterbox_geometry(image.shape[2], image.shape[1], image_size)
    scaled = tv_f.resize(image, [new_h, new_w], antialias=True)
    canvas = torch.tensor(PAD_RGB, dtype=torch.uint8, device=image.device).view(3, 1, 1)
    canvas = canvas.expand(3, image_size, image_size).clone()
    canvas[:, top:top + new_h, left:left + new_w] = scaled
    return canvas


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 batch [N, 3, H, W] (any device) -> float32 normalised batch [N, 3, H, W] on the same device."""
    mean = torch.tensor(MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=batch.device).view(1, 3, 1, 1)
    return (batch.float().div_(255.0) - mean) / std
