"""The multi-head tagger: a ResNet backbone and one head per taxonomy group.

The single-choice heads (time of day, season, terrain) are dropout+linear heads on the average of the last feature
map (stride 32): they are about the whole frame.

The yes/no object heads come in two kinds (`ModelConfig.object_head`):

- ``cells`` (what training builds now): a 1×1 convolution over layer3's map (stride 16, 16×16 cells at 256 px)
  gives a logit per object per cell, and the photo's logit is the maximum over the cells. A drawn object is 5-60 px
  at 256 px; a photo-level label on a pooled map never told the network where to look, and every such run stayed at
  chance (docs/model.md). Per-cell logits can be trained from boxes, and they say where each object is.
- ``pooled`` (checkpoints from before): dropout+linear heads on a pooling of the last map (`object_pooling`: avg,
  max or GeM). Kept so that those checkpoints load and serve exactly as they were trained.

The heads' outputs are concatenated in taxonomy order into one logit vector, so the model's output layout is
exactly the taxonomy's logit layout (see `Taxonomy.check_model_outputs`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn
from torchvision import models

from phototag.preprocessing import IMAGE_SIZE, MEAN, STD, check_resize
from phototag.taxonomy import SINGLE, Taxonomy

BACKBONES = {"resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
             "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1)}
POOLINGS = ("avg", "max", "gem")
OBJECT_HEADS = ("pooled", "cells")
# A fresh per-cell head starts every cell at a 1 % prior (RetinaNet's focal-loss initialisation): with ~250 cells
# a photo and nearly all of them negative, a 50 % start would spend the first thousands of steps unlearning it.
CELL_PRIOR = 0.01
CELL_STRIDE = 16  # input pixels per cell of layer3's map, which the per-cell object heads read
GEM_INITIAL_P = 3.0  # Radenović et al.: p = 1 is the average, p -> inf the maximum; 3 is their usual start


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network before loading a state_dict, and to prepare its input; stored in
    every checkpoint. Fields added later default to what checkpoints without them were trained with."""
    head_sizes: dict[str, int]
    arch: str = "resnet34"
    dropout: float = 0.2
    image_size: int = IMAGE_SIZE
    mean: tuple[float, ...] = field(default=MEAN)
    std: tuple[float, ...] = field(default=STD)
    resize: str = "squash"  # phototag.preprocessing: squash | letterbox
    # pooled: avg | max | gem of the last map, then linear; cells: max over the per-cell logits
    object_pooling: str = "avg"
    object_heads: tuple[str, ...] = ()
    object_head: str = "pooled"  # pooled | cells (module docstring)

    def __post_init__(self):
        check_resize(self.resize)
        if self.object_head not in OBJECT_HEADS:
            raise ValueError(f"object_head must be one of {OBJECT_HEADS}, not {self.object_head!r}")
        if self.object_pooling not in POOLINGS:
            raise ValueError(f"object_pooling must be one of {POOLINGS}, not {self.object_pooling!r}")
        if self.object_head == "cells" and self.object_pooling != "max":
            raise ValueError("a per-cell object head scores a photo by its best cell: object_pooling must be 'max'")
        unknown = set(self.object_heads) - set(self.head_sizes)
        if unknown:
            raise ValueError(f"object_heads {sorted(unknown)} are not heads of the model {list(self.head_sizes)}")

    @classmethod
    def for_taxonomy(cls, taxonomy: Taxonomy, **kwargs) -> ModelConfig:
        object_heads = tuple(g.name for g in taxonomy.groups if g.kind != SINGLE)
        return cls(head_sizes=taxonomy.head_sizes, object_heads=object_heads, **kwargs)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        data["object_heads"] = list(self.object_heads)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        data = dict(data)
        data["mean"], data["std"] = tuple(data.get("mean", MEAN)), tuple(data.get("std", STD))
        data["object_heads"] = tuple(data.get("object_heads", ()))
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"the checkpoint's model config has settings this code does not know: {sorted(unknown)} "
                             "(written by a newer version of phototag?)")
        return cls(**data)

    @property
    def num_logits(self) -> int:
        return sum(self.head_sizes.values())

    @property
    def cell_stride(self) -> int:
        """Input pixels per cell of the per-cell object map (layer3 of a ResNet)."""
        return CELL_STRIDE


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but could neither be downloaded nor found in the torch hub cache."""


class GeM(nn.Module):
    """Generalised-mean pooling with a learned exponent: [N, C, H, W] -> [N, C]."""

    def __init__(self, p: float = GEM_INITIAL_P, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        p = self.p.float().clamp(min=1.0)
        # float32: x ** p of bf16 activations loses the small values that the mean is meant to keep
        return fmap.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def _pooling(name: str) -> nn.Module | None:
    """The object heads' pooling module; None for the plain average the other heads share."""
    if name == "gem":
        return GeM()
    if name == "max":
        return nn.AdaptiveMaxPool2d(1)
    return None


class MultiHeadTagger(nn.Module):
    def __init__(self, config: ModelConfig, pretrained: bool = False):
        super().__init__()
        if config.arch not in BACKBONES:
            raise ValueError(f"unknown arch {config.arch!r}; choose from {sorted(BACKBONES)}")
        self.config = config
        builder, imagenet = BACKBONES[config.arch]
        weights = imagenet if pretrained else None
        try:
            backbone = builder(weights=weights)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError: no network and nothing cached
            raise PretrainedWeightsUnavailable(
                f"cannot get {config.arch} ImageNet weights ({exc}). Put {imagenet.url.rsplit('/', 1)[-1]} into "
                f"$TORCH_HOME/hub/checkpoints/ or train with --weights none"
            ) from exc
        feature_dim = backbone.fc.in_features
        cell_dim = backbone.layer3[-1].conv2.out_channels
        backbone.fc = nn.Identity()  # forward() pools the last feature map itself; no parameters are dropped
        self.backbone = backbone
        self.cells = config.object_head == "cells"
        self.object_pool = None if self.cells else _pooling(config.object_pooling)
        self.object_head_names = tuple(name for name in config.head_sizes if name in config.object_heads)
        heads = {}
        for name, size in config.head_sizes.items():
            if self.cells and name in self.object_head_names:
                conv = nn.Conv2d(cell_dim, size, kernel_size=1)
                nn.init.constant_(conv.bias, -math.log((1 - CELL_PRIOR) / CELL_PRIOR))
                heads[name] = nn.Sequential(nn.Dropout(config.dropout), conv)
            else:
                heads[name] = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(feature_dim, size))
        self.heads = nn.ModuleDict(heads)

    def cell_modules(self) -> list[nn.Module]:
        """The modules behind the per-cell object logits: the backbone up to layer3 and the object heads (a
        per-cell model only). Training can hold them fixed while layer4 and the scene heads learn."""
        b = self.backbone
        return [b.conv1, b.bn1, b.layer1, b.layer2, b.layer3] + [self.heads[name] for name in self.object_head_names]

    def cell_features(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] -> layer3's map [N, C3, H/16, W/16], the map the per-cell object heads read."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
        return b.layer3(b.layer2(b.layer1(x)))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] -> the backbone's last feature map [N, C, H/32, W/32] (torchvision's ResNet
        forward up to, not including, its average pooling)."""
        return self.backbone.layer4(self.cell_features(images))

    def object_cells(self, cell_map: torch.Tensor) -> torch.Tensor:
        """layer3's map [N, C3, h, w] -> per-cell object logits [N, K, h, w], K = all yes/no classes in taxonomy
        order (a per-cell model only)."""
        return torch.cat([self.heads[name](cell_map) for name in self.object_head_names], dim=1)

    def forward_with_cells(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images [N, 3, H, W] normalised float -> (logits [N, num_logits] in taxonomy order, per-cell object
        logits [N, K, H/16, W/16] or None for a pooled-head model). A photo's object logit is its best cell's."""
        if not self.cells:
            return self._forward_pooled(images), None
        cell_map = self.cell_features(images)
        average = self.backbone.layer4(cell_map).mean(dim=(2, 3))
        cells = self.object_cells(cell_map)
        photo = cells.amax(dim=(2, 3)).to(average.dtype)
        out, start = [], 0
        for name, head in self.heads.items():
            if name in self.object_head_names:
                size = self.config.head_sizes[name]
                out.append(photo[:, start:start + size])
                start += size
            else:
                out.append(head(average))
        return torch.cat(out, dim=1), cells

    def _forward_pooled(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.feature_map(images)
        average = fmap.mean(dim=(2, 3))
        pooled = average if self.object_pool is None else torch.flatten(self.object_pool(fmap), 1).to(average.dtype)
        return torch.cat([head(pooled if name in self.object_head_names else average)
                          for name, head in self.heads.items()], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] normalised float -> logits [N, num_logits] in taxonomy order."""
        return self.forward_with_cells(images)[0]


class ServedTagger(nn.Module):
    """The served forward pass, one module so that torch.compile and the int8 export see both outputs:
    images [N, 3, H, W] normalised float -> (logits [N, num_logits], per-cell object logits [N, K, H/16, W/16]).
    A pooled-head model has no map: its cells are [N, 0, 1, 1] (`phototag.inference.predict` reads that as none).
    """

    def __init__(self, tagger: MultiHeadTagger):
        super().__init__()
        self.tagger = tagger
        self.config = tagger.config

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, cells = self.tagger.forward_with_cells(images)
        if cells is None:
            cells = logits.new_zeros((images.shape[0], 0, 1, 1))
        return logits, cells

    def object_map(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] of any size (the big-photo mode's larger input) -> per-cell object logits
        [N, K, H/16, W/16], without the scene heads (a per-cell model only)."""
        return self.tagger.object_cells(self.tagger.cell_features(images))


def build_model(taxonomy: Taxonomy, weights: str = "none", **config_kwargs) -> MultiHeadTagger:
    """A fresh model for `taxonomy`; weights is 'imagenet' (torchvision's weights API) or 'none' (random init)."""
    if weights not in ("imagenet", "none"):
        raise ValueError(f"weights must be 'imagenet' or 'none', not {weights!r}")
    config = ModelConfig.for_taxonomy(taxonomy, **config_kwargs)
    return MultiHeadTagger(config, pretrained=weights == "imagenet")
