"""The handler's settings: the `handler:` section of the archive's model-config.yaml, as one typed object.

Every key, its type and its default live here and nowhere else; the handler and `phototag.inference` read the
object's fields. An unknown or mistyped key stops the worker at start with a message naming it: a typo such as
`torch_thread: 1` would otherwise be ignored and the worker would quietly run with the default.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from phototag.compiled import COMPILE_MODES
from phototag.decoding import MAX_PIXELS
from phototag.inference import DEVICES, PRECISIONS, BigPhotos, Runtime
from phototag.jpeg_batch import JPEG_DECODERS

# int8 needs the archive's AOTInductor package (phototag/int8.py), so only a served worker has it.
SERVED_PRECISIONS = (*PRECISIONS, "int8")


class HandlerSettingsError(ValueError):
    """The `handler:` section names a key that does not exist or gives a value of the wrong kind."""


@dataclass(frozen=True)
class HandlerSettings:
    """Defaults are what a model-config.yaml without the key gets (the shipped file sets most of them).

    device: auto (the GPU TorchServe assigned to the worker, else the CPU) | cpu | cuda.
    precision: auto (on the CPU the archive's int8 package when it passed its tag check and runs here, else bf16
        where the device computes it natively, else fp32) | bf16 | fp32 | int8 (the package, or the worker refuses).
    channels_last: NHWC activations.
    compile: false | true | a torch.compile mode; every batch size is compiled at worker start.
    jpeg_decoder: auto (batched nvjpeg on CUDA, Pillow on the CPU) | pil | torchvision.
    decode_threads: threads decoding and resizing one batch's images.
    torch_threads: intra-op threads of the forward pass; 0 keeps torch's default (all cores).
    max_pixels: larger images are refused before decoding.
    big_photo_side: the big-photo mode (`phototag.inference.BigPhotos`): a photo with a short side of at least this
        many px has its objects read again at big_photo_input px; 0 turns it off.
    big_photo_input: the input size (px, a multiple of 32) the objects of a big photo are read at.
    big_photo_max_pixels: a bigger photo is served in the ordinary mode, its answer saying so.
    """

    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    compile: bool | str = False
    jpeg_decoder: str = "auto"
    decode_threads: int = 2
    torch_threads: int = 0
    max_pixels: int = MAX_PIXELS
    big_photo_side: int = 0
    big_photo_input: int = 768
    big_photo_max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        for name, allowed in (("device", DEVICES), ("precision", SERVED_PRECISIONS), ("jpeg_decoder", JPEG_DECODERS),
                              ("compile", (False, True, *COMPILE_MODES))):
            value = getattr(self, name)
            # `True in (1, ...)` holds in Python, so compare type and value
            if not any(type(value) is type(option) and value == option for option in allowed):
                raise HandlerSettingsError(f"handler.{name} must be one of {_listed(allowed)}, not {value!r}")
        if not isinstance(self.channels_last, bool):
            raise HandlerSettingsError(f"handler.channels_last must be true or false, not {self.channels_last!r}")
        for name, minimum in (("decode_threads", 1), ("torch_threads", 0), ("max_pixels", 1), ("big_photo_side", 0),
                              ("big_photo_input", 32), ("big_photo_max_pixels", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise HandlerSettingsError(f"handler.{name} must be a whole number >= {minimum}, not {value!r}")
        if self.big_photo_input % 32:
            raise HandlerSettingsError(f"handler.big_photo_input must be a multiple of 32 (the backbone's stride), "
                                       f"not {self.big_photo_input}")

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> HandlerSettings:
        """model-config.yaml's `handler:` mapping (None or absent: every default) -> settings; refuses unknown keys
        with the list of known ones."""
        section = section or {}
        if not isinstance(section, dict):
            raise HandlerSettingsError(f"model-config.yaml's handler: must be a mapping, not {type(section).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise HandlerSettingsError(f"model-config.yaml's handler: has unknown key(s) {unknown}; "
                                       f"known keys: {known}")
        return cls(**section)

    def runtime(self, gpu_id=None) -> Runtime:
        """Where and how the worker runs; device auto is the GPU TorchServe assigned to this worker, if any."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("model-config.yaml asks for device: cuda but this worker sees no CUDA device")
        if self.device == "cpu" or not torch.cuda.is_available():
            device = torch.device("cpu")
        else:
            device = torch.device(f"cuda:{int(gpu_id) if gpu_id is not None else 0}")
        # int8 is the handler's to switch on (it needs the archive's package); until then the worker is fp32.
        precision = "fp32" if self.precision == "int8" else self.precision
        return Runtime.resolve(device, precision, self.channels_last)

    def big_photos(self) -> BigPhotos | None:
        """The big-photo mode these settings ask for, or None when it is off."""
        if not self.big_photo_side:
            return None
        return BigPhotos(self.big_photo_side, self.big_photo_input, self.big_photo_max_pixels)

    def as_section(self) -> dict[str, Any]:
        """The settings as a `handler:` mapping (for reports and for writing a model-config)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _listed(options) -> str:
    return ", ".join("true" if o is True else "false" if o is False else str(o) for o in options)
