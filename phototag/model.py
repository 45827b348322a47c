"""The multi-head tagger: a ResNet backbone, global pooling, and one dropout+linear head per taxonomy group.

The heads' outputs are concatenated in taxonomy order into one logit vector, so the model's output layout is
exactly the taxonomy's logit layout (see `Taxonomy.check_model_outputs`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torchvision import models

from phototag.preprocessing import IMAGE_SIZE, MEAN, STD
from phototag.taxonomy import Taxonomy

BACKBONES = {"resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
             "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1)}


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network before loading a state_dict; stored in every checkpoint."""
    head_sizes: dict[str, int]
    arch: str = "resnet34"
    dropout: float = 0.2
    image_size: int = IMAGE_SIZE
    mean: tuple[float, ...] = field(default=MEAN)
    std: tuple[float, ...] = field(default=STD)

    @classmethod
    def for_taxonomy(cls, taxonomy: Taxonomy, **kwargs) -> "ModelConfig":
        return cls(head_sizes=taxonomy.head_sizes, **kwargs)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        data["mean"], data["std"] = tuple(data.get("mean", MEAN)), tuple(data.get("std", STD))
        return cls(**data)

    @property
    def num_logits(self) -> int:
        return sum(self.head_sizes.values())


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but could neither be downloaded nor found in the torch hub cache."""


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
        backbone.fc = nn.Identity()  # global average pooling stays; the heads take the pooled features
        self.backbone = backbone
        self.heads = nn.ModuleDict(
            {name: nn.Sequential(nn.Dropout(config.dropout), nn.Linear(feature_dim, size))
             for name, size in config.head_sizes.items()}
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] normalised float -> logits [N, num_logits] in taxonomy order."""
        features = self.backbone(images)
        return torch.cat([head(features) for head in self.heads.values()], dim=1)


def build_model(taxonomy: Taxonomy, weights: str = "none", **config_kwargs) -> MultiHeadTagger:
    """A fresh model for `taxonomy`; weights is 'imagenet' (torchvision's weights API) or 'none' (random init)."""
    if weights not in ("imagenet", "none"):
        raise ValueError(f"weights must be 'imagenet' or 'none', not {weights!r}")
    config = ModelConfig.for_taxonomy(taxonomy, **config_kwargs)
    return MultiHeadTagger(config, pretrained=weights == "imagenet")
