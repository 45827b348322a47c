"""Eval-time preprocessing, the one definition that training and the handler both use.

An image becomes a 3×256×256 uint8 tensor by a single bilinear resize (aspect ratio is not kept: the whole frame
matters for time of day, season and terrain, and a centre crop would cut objects at the edges). Normalisation is a
separate step on float batches so that it can run on the GPU after the uint8 batch has been copied there (4× less
to copy than float32).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGE_SIZE = 256
# ImageNet statistics: the ResNet backbone was pretrained with them, and random-init runs keep them so that
# either kind of checkpoint is served by the same code.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def draft_size(image_size: int = IMAGE_SIZE) -> tuple[int, int]:
    """Smallest JPEG DCT-domain scale worth decoding at: never below the model input size."""
    return (image_size, image_size)


def resize_to_tensor(image: Image.Image, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """RGB PIL image of any size -> uint8 tensor [3, image_size, image_size]."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    resized = image.resize((image_size, image_size), Image.BILINEAR, reducing_gap=3.0)
    array = np.asarray(resized, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 batch [N, 3, H, W] (any device) -> float32 normalised batch [N, 3, H, W] on the same device."""
    mean = torch.tensor(MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=batch.device).view(1, 3, 1, 1)
    return (batch.float().div_(255.0) - mean) / std
