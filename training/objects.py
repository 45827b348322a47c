"""The object recipe: crops at serving scale with per-cell targets, and the losses of a training step.

A photo decoded at the serving size (256 px) shows a drone as 5-15 px. Shrinking whole frames left the objects
a few pixels and told the network nothing about where to look; every such run stayed at chance (docs/model.md).
So the object heads also train on **crops cut from photos already at serving scale**, with a target per cell from
the boxes (`training.boxes.cell_targets`): a 64 px crop costs a sixteenth of a whole photo's forward pass and,
centred on an object most of the time, carries far more positive cells per CPU second.

Crops are cut on the cell grid (offsets are multiples of the stride), so each cell sees the same pixels with the
same alignment as at serving, and the crop's targets are a slice of the photo's.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from phototag.inference import Runtime, to_model_input
from phototag.taxonomy import SINGLE, Taxonomy
from training.boxes import IGNORED, POSITIVE

# RetinaNet's focal-loss settings (Lin et al. 2017), which the objects issue's trial used.
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


def sample_crops(images: torch.Tensor, cells: torch.Tensor, candidates: torch.Tensor, count: int, crop_size: int,
                 stride: int, centred: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` crops of crop_size px from photos drawn out of `candidates` (indices of photos with boxes).

    images uint8 [N, 3, S, S]; cells int8 [N, K, S/stride, S/stride]. Returns uint8 [count, 3, C, C] and int8
    [count, K, C/stride, C/stride]. A share `centred` of the crops (of photos that show anything) hold a random
    positive cell away from the crop's edge; the rest are cut anywhere. Half are mirrored left-right.

    A centred crop keeps its object's cell off the crop's border rows and columns where the crop is 3 cells or
    more: on the border, most of a larger object lies outside the crop and the cell reads the zero padding
    beside it, a view serving never gives (a whole photo shows the object entire).
    """
    grid, span = cells.shape[-1], crop_size // stride
    last = grid - span
    margin = 1 if span >= 3 else 0
    picks = candidates[torch.randint(len(candidates), (count,), generator=generator)]
    draws = torch.rand(count, 2, generator=generator)
    out_images = torch.empty((count, 3, crop_size, crop_size), dtype=images.dtype)
    out_cells = torch.empty((count, cells.shape[1], span, span), dtype=cells.dtype)
    for n, index in enumerate(picks.tolist()):
        row = int(torch.randint(last + 1, (1,), generator=generator))
        col = int(torch.randint(last + 1, (1,), generator=generator))
        if draws[n, 0] < centred:
            positive = (cells[index] == POSITIVE).any(dim=0).nonzero()
            if len(positive):
                r, c = positive[int(torch.randint(len(positive), (1,), generator=generator))].tolist()
                inside = torch.randint(margin, span - margin, (2,), generator=generator).tolist()
                row = min(max(r - inside[0], 0), last)
                col = min(max(c - inside[1], 0), last)
        crop = images[index, :, row * stride:(row + span) * stride, col * stride:(col + span) * stride]
        target = cells[index, :, row:row + span, col:col + span]
        if draws[n, 1] < 0.5:  # nothing in the taxonomy depends on left and right
            crop, target = crop.flip(-1), target.flip(-1)
        out_images[n], out_cells[n] = crop, target
    return out_images, out_cells


def cell_loss(*pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Sigmoid focal loss over the cells that are not ignored, of every (logits, targets) pair together, divided by
    their positive cells (at least one).

    Each pair is logits float [M, K, h, w] and targets int8 [M, K, h, w] of POSITIVE / NEGATIVE / IGNORED; the
    pairs may differ in M, h and w (a step's whole photos and its crops). Dividing by the positives, not by all
    cells, keeps a batch's loss on one scale however many empty cells it has. Pooling the pairs before dividing
    gives every positive cell the same weight: divided pair by pair, the 2 whole photos of a step (a handful of
    positives) weighed as much as its 64 crops (about 60). It did not change the first 500 steps' held-out AP
    (trial G in docs/model.md); it is kept because one weight per positive cell is what the loss means."""
    total = positives = pairs[0][0].new_zeros((), dtype=torch.float32)
    for logits, targets in pairs:
        keep = targets != IGNORED
        positive = (targets == POSITIVE).float()
        loss = sigmoid_focal_loss(logits.float(), positive, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, reduction="none")
        total = total + (loss * keep).sum()
        positives = positives + positive.sum()
    return total / positives.clamp(min=1.0)


class MultiHeadLoss(nn.Module):
    """The loss of a whole-photo batch: cross-entropy on each single-choice slice, and for the yes/no objects
    either the per-cell focal loss (photos with boxes, per-cell model) or BCE-with-logits on the photo's logit
    (photos without boxes, or a pooled-head model).

    The photo-level BCE is summed over the yes/no classes (averaged over the batch only): each object is a decision
    as large as a single-choice head. Averaged over the classes too, the 8 objects together weighed as much as one
    head, and runs learned time, season and terrain long before any object.
    """

    def __init__(self, taxonomy: Taxonomy):
        super().__init__()
        self.taxonomy = taxonomy
        self.ce, self.bce = nn.CrossEntropyLoss(), nn.BCEWithLogitsLoss(reduction="none")

    def forward(self, logits: torch.Tensor, targets: dict[str, torch.Tensor], cells: torch.Tensor | None = None,
                cell_targets: torch.Tensor | None = None, has_boxes: torch.Tensor | None = None,
                crops: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """logits [N, num_logits]; targets per group ([N] class index or [N, K] 0/1); cells [N, K_all, h, w] and
        cell_targets int8 of the same shape for a per-cell model; has_boxes bool [N]; crops: the step's crop
        cells [M, K_all, c, c] and their int8 targets, in one focal-loss sum with the photos' cells."""
        loss = logits.new_zeros((), dtype=torch.float32)
        boxed = has_boxes if cells is not None and has_boxes is not None else torch.zeros(len(logits), dtype=torch.bool)
        start = 0
        for group in self.taxonomy.groups:
            chunk = logits[:, group.logits].float()
            if group.kind == SINGLE:
                loss = loss + self.ce(chunk, targets[group.name])
                continue
            size = group.size
            photo_loss = self.bce(chunk, targets[group.name]).sum(dim=1)
            loss = loss + (photo_loss * ~boxed.to(photo_loss.device)).sum() / len(logits)
            pairs = [(crops[0][:, start:start + size], crops[1][:, start:start + size])] if crops is not None else []
            if boxed.any():
                pairs.append((cells[boxed][:, start:start + size], cell_targets[boxed][:, start:start + size]))
            if pairs:
                loss = loss + cell_loss(*pairs)
            start += size
        return loss


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, images: torch.Tensor, runtime: Runtime, batch_size: int = 32,
                           held: list[nn.Module] = ()) -> None:
    """Re-estimate every batch-norm layer's running statistics over `images` (uint8 [N, 3, S, S]: whole training
    photos at the serving size), as a plain average over the batches (PreciseBN, Wu & Johnson 2021).

    Training updates the running statistics from crops and whole photos alike, and crops centred on objects
    are not what serving shows; with the weights still moving, the running averages also trail them. Serving
    normalises with these statistics, so they are set from what serving sees: on the warm start of 2026-12-06 this
    alone raised the held-out mean object AP from 0.428 to 0.452 (docs/model.md). The weights do not change.
    The `held` modules (--freeze-cells) keep their statistics and normalise with them during the pass, as in
    training.
    """
    kept = {id(m) for module in held for m in module.modules()}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in kept]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # None = cumulative average over the batches since the reset
    model.train()
    for module in held:
        module.eval()
    for start in range(0, len(images), batch_size):
        with runtime.autocast():
            model(to_model_input(images[start:start + batch_size], runtime))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)
