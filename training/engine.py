"""One epoch of optimisation steps and the evaluation pass (the split of torchvision's detection reference
scripts: train.py sets a run up, engine.py runs its steps).

A step is up to two parts. `--batch-size` whole photos train the scene heads and, where the photo has boxes,
the object cells; `--crops-per-step` crops at serving scale train the object cells (training/objects.py). With
`--batch-size 0` a step is crops only: the objects learn far faster per crop that way than beside whole photos
(held-out AP 0.44 against 0.33 after the same 38,400 crops; docs/model.md, 2026-12-07), so `make train-cpu`
learns the objects from crops first and the scene heads afterwards, on top of the object features held fixed
(`--freeze-cells`).
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from phototag.inference import Runtime, to_model_input
from training.data import InMemoryDataset
from training.objects import cell_loss, sample_crops


class PhotoStream:
    """Indices of whole-photo batches, from one shuffled pass over the training photos after another (the last
    batch of a pass takes what is left): an epoch of `--epoch-steps` steps need not end where a pass does."""

    def __init__(self, count: int, batch_size: int, generator: torch.Generator):
        self.count, self.batch_size, self.generator = count, batch_size, generator
        self.order, self.position = torch.randperm(count, generator=generator), 0

    def next(self) -> torch.Tensor:
        if self.position >= self.count:
            self.order, self.position = torch.randperm(self.count, generator=self.generator), 0
        idx = self.order[self.position:self.position + self.batch_size]
        self.position += len(idx)
        return idx


def _photo_batch(data: InMemoryDataset, idx: torch.Tensor, runtime: Runtime, with_cells: bool,
                 generator: torch.Generator):
    """Whole photos `idx`, half of them mirrored: uint8 images [B, 3, S, S], targets per group, and the per-cell
    targets int8 [B, K, S/16, S/16] (None for a pooled-head model), mirrored alike."""
    images = data.images[idx]
    cell_targets = data.cells[idx] if with_cells else None
    # Horizontal flips change no label (nothing in the taxonomy depends on left/right).
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    if cell_targets is not None:
        cell_targets = torch.where(flip.view(-1, 1, 1, 1), cell_targets.flip(-1), cell_targets).to(runtime.device)
    targets = {k: v[idx].to(runtime.device, non_blocking=True) for k, v in data.targets.items()}
    return images, targets, cell_targets


def train_one_epoch(model, criterion, optimizer, scheduler, data: InMemoryDataset, stream: PhotoStream, steps: int,
                    runtime: Runtime, epoch: int, args, generator: torch.Generator,
                    frozen: list[torch.nn.Module] = ()) -> dict:
    """`steps` optimisation steps of `args.batch_size` whole photos and `args.crops_per_step` crops (either may
    be 0); the `frozen` modules stay in eval mode (their batch-norm statistics fixed, no dropout). Returns the mean
    loss, photos and crops seen, and the seconds taken."""
    model.train()
    for module in frozen:
        module.eval()
    cells_model = model.config.object_head == "cells"
    candidates = data.has_boxes.nonzero().flatten() if cells_model and data.has_boxes is not None else None
    crops = args.crops_per_step if candidates is not None and len(candidates) else 0
    started, total, photos, crop_count = time.time(), 0.0, 0, 0
    bar = tqdm(range(steps), desc=f"epoch {epoch}", leave=False, mininterval=2.0, file=sys.stderr,
               disable=None)  # no bar in logs
    for _ in bar:
        idx = stream.next() if args.batch_size else None
        batch = _photo_batch(data, idx, runtime, cells_model, generator) if idx is not None else None
        with runtime.autocast():
            crop_pair = None
            if crops:
                crop_images, crop_targets = sample_crops(data.images, data.cells, candidates, crops, args.crop_size,
                                                         model.config.cell_stride, args.centred_crops, generator)
                crop_cells = model.object_cells(model.cell_features(to_model_input(crop_images, runtime)))
                crop_pair = (crop_cells, crop_targets.to(runtime.device))
            if batch is not None:
                images, targets, cell_targets = batch
                logits, cells = model.forward_with_cells(to_model_input(images, runtime))
                loss = criterion(logits, targets, cells, cell_targets, data.has_boxes[idx] if cells_model else None,
                                 crops=crop_pair)
            else:
                loss = cell_loss(crop_pair)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()
        photos += 0 if idx is None else len(idx)
        crop_count += crops
        bar.set_postfix(loss=f"{total / (bar.n + 1):.3f}")
    seconds = time.time() - started
    return {"loss": total / max(steps, 1), "photos": photos, "crops": crop_count, "seconds": seconds}


def _batches(data: InMemoryDataset, batch_size: int):
    """Evaluation batches in order: (uint8 images, targets)."""
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        yield data.images[idx], {k: v[idx] for k, v in data.targets.items()}


@torch.inference_mode()
def evaluate(model, data: InMemoryDataset, runtime: Runtime, args) -> np.ndarray:
    """Logits [N, num_logits] (float32, CPU numpy) of the whole split in eval mode."""
    model.eval()
    chunks = []
    for images, _ in _batches(data, max(args.batch_size * 2, 32)):
        with runtime.autocast():
            chunks.append(model(to_model_input(images, runtime)).float().cpu())
    return torch.cat(chunks).numpy()
