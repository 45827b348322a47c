"""The serving path from image bytes to logits, shared by the handler, training and in-process evaluation.

Decode (JPEG in draft mode) → one resize to the model's input size (uint8 [3, S, S]) → stack → normalise on the
device → one forward pass (bf16 autocast and channels_last on CUDA) → float32 logits on the CPU.
"""
from __future__ import annotations

import torch

from phototag.decoding import MAX_PIXELS, decode_image
from phototag.preprocessing import draft_size, normalize, resize_to_tensor


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' is CUDA when present, else the CPU; anything else is taken as torch names it ('cpu', 'cuda:1')."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_image(data: bytes, image_size: int, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Image file bytes -> uint8 [3, image_size, image_size]; ImageDecodeError for anything unusable."""
    image = decode_image(data, max_pixels=max_pixels, draft_size=draft_size(image_size))
    return resize_to_tensor(image, image_size)


def to_model_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> normalised float [N, 3, S, S] on `device` (channels_last on CUDA)."""
    x = normalize(batch.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode on `device`, in the memory format `to_model_input` feeds it."""
    model.to(device).eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> float32 logits [N, num_logits] on the CPU, in one forward pass."""
    x = to_model_input(batch, device)
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x).float().cpu()
    return model(x).cpu()
