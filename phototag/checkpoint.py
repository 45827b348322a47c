"""Checkpoint files: a state_dict plus plain-data metadata, always read back with `weights_only=True`.

Nothing in a checkpoint is a pickled Python object, so loading one (in training, evaluation or the TorchServe
worker) cannot run code. The taxonomy inside is the trained one, thresholds included.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from phototag.model import ModelConfig, MultiHeadTagger
from phototag.taxonomy import Taxonomy

# 2: the model config gained `resize` and `object_pooling` (version-1 files load with squash + average pooling,
# which is how they were trained). 3: `object_head` (cells: per-cell object logits on layer3; files of format 2
# and older load as pooled heads). A file from a newer format is refused rather than served the wrong way.
FORMAT_VERSION = 3


def save_checkpoint(path: str | Path, model: MultiHeadTagger, taxonomy: Taxonomy, **extra: Any) -> None:
    """Write model weights, model config and taxonomy; `extra` must be plain data (args, epoch, metrics)."""
    payload = {
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": model.config.to_dict(),
        "taxonomy": taxonomy.to_dict(),
        **extra,
    }
    tmp = Path(path).with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a truncated checkpoint behind


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or "model" not in payload or "model_config" not in payload:
        raise ValueError(f"{path} is not a tagger checkpoint (no 'model' / 'model_config' entries)")
    version = payload.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} is checkpoint format {version!r}; this code reads formats up to {FORMAT_VERSION}")
    return payload


def load_model(path: str | Path, taxonomy: Taxonomy | None = None,
               map_location: str | torch.device = "cpu") -> tuple[MultiHeadTagger, Taxonomy, dict[str, Any]]:
    """Rebuild the model from a checkpoint. `taxonomy` overrides the embedded one; its size must match the model."""
    payload = read_checkpoint(path, map_location)
    config = ModelConfig.from_dict(payload["model_config"])
    taxonomy = taxonomy or Taxonomy.from_dict(payload["taxonomy"])
    taxonomy.check_model_outputs(config.num_logits)
    if list(config.head_sizes.items()) != list(taxonomy.head_sizes.items()):
        raise ValueError(f"model heads {config.head_sizes} do not match taxonomy groups {taxonomy.head_sizes}")
    model = MultiHeadTagger(config)
    model.load_state_dict(payload["model"])
    model.eval()
    return model, taxonomy, payload
