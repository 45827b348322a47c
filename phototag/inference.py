"""The serving path from image bytes to logits, shared by the handler, training and in-process evaluation.

Decode (JPEG in draft mode) → one resize to the model's input size, squashed or letterboxed as the model was
trained (uint8 [3, S, S]) → stack → normalise on the device → one forward pass (bf16 autocast and channels_last
where the hardware runs them faster) → float32 logits on the CPU.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from phototag.decoding import DISPLAYED_SIZE, MAX_PIXELS, decode_image
from phototag.headers import declared_size
from phototag.locate import InputGeometry
from phototag.preprocessing import draft_size, normalize, resize_to_tensor

PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' is CUDA when present, else the CPU; anything else is taken as torch names it ('cpu', 'cuda:1')."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware (CUDA Ampere+, CPUs with AVX512-BF16 or AMX via oneDNN).

    Elsewhere bf16 autocast is emulated and slower than fp32, so 'auto' precision stays in fp32 there.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


@dataclass(frozen=True)
class Runtime:
    """Where and how the network runs: the device, bf16 autocast or fp32, and the activations' memory layout.

    int8: the worker serves the AOTInductor int8 package (phototag/int8.py); these settings are then those of the
    eager model that scores borderline photos again.
    """
    device: torch.device
    bf16: bool = False
    channels_last: bool = False
    int8: bool = False

    @classmethod
    def resolve(cls, device: str | torch.device = "auto", precision: str = "auto",
                channels_last: bool = True) -> Runtime:
        """precision 'auto' is bf16 where the device has it natively (`native_bf16`), else fp32."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        bf16 = precision == "bf16" or (precision == "auto" and native_bf16(dev))
        return cls(dev, bf16=bf16, channels_last=bool(channels_last))

    def autocast(self):
        """The autocast context of a forward pass (a no-op in fp32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def describe(self) -> str:
        eager = f"{self.device} {'bf16' if self.bf16 else 'fp32'}{' channels_last' if self.channels_last else ''}"
        return f"{self.device} int8 (AOTInductor package; borderline photos: {eager})" if self.int8 else eager


@dataclass(frozen=True)
class BigPhotos:
    """The big-photo mode: a photo whose short side is at least `side` px has its objects read again from the
    photo resized to `input_size` (the per-cell heads are convolutions: a larger input is a finer map over the
    same photo), while the scene heads keep the trained input size. A 60 px dog handler in a 4000 px frame is 4 px
    at 256 but 12 px at 768. `side` 0 turns the mode off. A photo over `max_pixels` stays in the ordinary mode,
    with a note saying so (`verdict`)."""
    side: int = 0
    input_size: int = 768
    max_pixels: int = 40_000_000

    def verdict(self, width: int, height: int) -> tuple[bool, str | None]:
        """(read this photo closer?, why not, where the mode would apply but the photo is over the budget)."""
        if not self.side or min(width, height) < self.side:
            return False, None
        if width * height > self.max_pixels:
            return False, (f"objects read at the ordinary size only: {width}x{height} is over the big-photo "
                           f"budget of {self.max_pixels:,} pixels")
        return True, None

    def verdict_of(self, data: bytes) -> tuple[bool, str | None]:
        """`verdict` of a photo file by the size its header declares; (False, None) where it declares none."""
        size = declared_size(data) if self.side else None
        return self.verdict(*size) if size else (False, None)


@dataclass(frozen=True)
class PreparedPhoto:
    """One decoded photo: the model input uint8 [3, S, S] and how the photo as displayed maps onto it; in the
    big-photo mode also the larger input uint8 [3, B, B] its objects are read from, and its geometry; `note` says
    why a big photo was not read closer."""
    image: torch.Tensor
    geometry: InputGeometry
    closer: torch.Tensor | None = None
    closer_geometry: InputGeometry | None = None
    note: str | None = None


def load_photo(data: bytes, image_size: int, max_pixels: int = MAX_PIXELS, resize: str = "squash",
               big: BigPhotos | None = None) -> PreparedPhoto:
    """Image file bytes -> the photo squashed or letterboxed to image_size as `ModelConfig.resize` says, with its
    geometry; for a big photo (`big`) also at big.input_size, from a second decode at that size's JPEG draft.
    ImageDecodeError for anything unusable.

    Two decodes, not one at the larger draft: resized from another draft, the image_size input differs in its
    last bits, and the scene heads answered differently on 2 of 150 large photos (docs/where.md). Decoded at its
    own draft, it is the ordinary mode's input exactly, for about 7 ms more a 12 MP photo
    (TorchServe's decode median of a lone photo went from 98 to 105 ms, docs/where.md)."""
    closer, note = big.verdict_of(data) if big is not None else (False, None)
    image = decode_image(data, max_pixels=max_pixels, draft_size=draft_size(image_size))
    width, height = image.info[DISPLAYED_SIZE]
    photo = PreparedPhoto(resize_to_tensor(image, image_size, resize),
                          InputGeometry(width, height, image_size, resize), note=note)
    if closer:
        del image  # freed first: the two decodes are never in memory together
        nearer = decode_image(data, max_pixels=max_pixels, draft_size=draft_size(max(image_size, big.input_size)))
        photo = replace(photo, closer=resize_to_tensor(nearer, big.input_size, resize),
                        closer_geometry=InputGeometry(width, height, big.input_size, resize))
    return photo


def load_image(data: bytes, image_size: int, max_pixels: int = MAX_PIXELS, resize: str = "squash") -> torch.Tensor:
    """Image file bytes -> uint8 [3, image_size, image_size] (`load_photo` without the geometry)."""
    return load_photo(data, image_size, max_pixels, resize).image


def to_model_input(batch: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> normalised float [N, 3, S, S] on the runtime's device, in its memory format."""
    x = normalize(batch.to(runtime.device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x


def prepare_model(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """Eval mode on the runtime's device, in the memory format `to_model_input` feeds it."""
    model.to(runtime.device).eval()
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


@torch.inference_mode()
def predict(model, batch: torch.Tensor, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 [N, 3, S, S] -> (float32 logits [N, num_logits], float32 per-cell object logits [N, K, S/16, S/16] or
    None), on the CPU, in one forward pass. `model` is a served model (`phototag.model.ServedTagger`, its compiled
    or int8 form: logits and cells) or any model giving logits alone."""
    x = to_model_input(batch, runtime)
    with runtime.autocast():
        out = model(x)
    logits, cells = out if isinstance(out, (tuple, list)) else (out, None)
    if cells is not None and cells.shape[1] == 0:  # a pooled-head model has no map
        cells = None
    return logits.float().cpu(), None if cells is None else cells.float().cpu()


@torch.inference_mode()
def predict_object_map(served, batch: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """uint8 [N, 3, B, B] (big photos at the big-photo input size) -> float32 per-cell object logits
    [N, K, B/16, B/16] on the CPU, from the eager served model (`phototag.model.ServedTagger.object_map`)."""
    x = to_model_input(batch, runtime)
    with runtime.autocast():
        return served.object_map(x).float().cpu()


def predict_logits(model, batch: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> float32 logits [N, num_logits] on the CPU (`predict` without the cells)."""
    return predict(model, batch, runtime)[0]
