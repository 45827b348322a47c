"""Loading a labeled image folder into memory once, already resized to the model's input size.

Every image is decoded and resized with the same code the handler uses (`phototag.decoding` +
`phototag.preprocessing`), once, in parallel; epochs then read uint8 tensors from memory (N × 3 × S × S bytes:
196 KB an image at 256 px), which keeps a 2-core machine busy with training instead of JPEG decoding.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from phototag.decoding import ImageDecodeError
from phototag.inference import load_image
from phototag.labels_csv import LabeledImage, read_labels_csv, split_missing
from phototag.taxonomy import SINGLE, Taxonomy
from training.boxes import NEGATIVE, cell_targets, read_box_sidecar

log = logging.getLogger(__name__)


def encode_targets(labels: dict, taxonomy: Taxonomy) -> dict[str, torch.Tensor]:
    """Labels dict -> per-group training targets: class index (single-choice) or a 0/1 float vector (yes/no)."""
    targets = {}
    for group in taxonomy.groups:
        if group.kind == SINGLE:
            targets[group.name] = torch.tensor(group.class_ids.index(labels[group.name]), dtype=torch.long)
        else:
            present = set(labels[group.name])
            targets[group.name] = torch.tensor([float(c in present) for c in group.class_ids])
    return targets


def load_image_tensor(path: Path, image_size: int, resize: str = "squash") -> torch.Tensor:
    """Image file -> uint8 [3, image_size, image_size], exactly as the handler prepares a request."""
    return load_image(path.read_bytes(), image_size, resize=resize)


class _DecodeFiles(Dataset):
    def __init__(self, paths: list[Path], image_size: int, resize: str):
        self.paths, self.image_size, self.resize = paths, image_size, resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, load_image_tensor(self.paths[index], self.image_size, self.resize), None
        except (ImageDecodeError, OSError) as exc:
            return index, None, str(exc)


def _keep_as_list(batch):
    return batch


@dataclass
class InMemoryDataset:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    targets: dict[str, torch.Tensor]  # group -> [N] long or [N, K] float
    filenames: list[str]
    skipped: dict[str, str]  # filename -> why it was left out
    # Per-cell object targets from the box sidecar (training.boxes), int8 [N, K_all, S/stride, S/stride], and
    # which photos had boxes (bool [N]); None when the model has no per-cell head.
    cells: torch.Tensor | None = None
    has_boxes: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.filenames)

    def subset(self, indices: torch.Tensor) -> InMemoryDataset:
        return InMemoryDataset(self.images[indices], {k: v[indices] for k, v in self.targets.items()},
                               [self.filenames[i] for i in indices.tolist()], {},
                               None if self.cells is None else self.cells[indices],
                               None if self.has_boxes is None else self.has_boxes[indices])

    @staticmethod
    def concat(parts: list[InMemoryDataset]) -> InMemoryDataset:
        with_cells = all(p.cells is not None for p in parts)
        return InMemoryDataset(torch.cat([p.images for p in parts]),
                               {k: torch.cat([p.targets[k] for p in parts]) for k in parts[0].targets},
                               [f for p in parts for f in p.filenames],
                               {k: v for p in parts for k, v in p.skipped.items()},
                               torch.cat([p.cells for p in parts]) if with_cells else None,
                               torch.cat([p.has_boxes for p in parts]) if with_cells else None)


def _cell_targets(csv_path: Path, filenames: list[str], taxonomy: Taxonomy, image_size: int, stride: int,
                  resize: str) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 [N, K_all, G, G] per-cell targets and bool [N] has-boxes for `filenames`, from the CSV's box sidecar;
    photos without boxes get all-negative maps that the loss never reads (has_boxes False)."""
    class_ids = [c for g in taxonomy.multi_groups for c in g.class_ids]
    grid = image_size // stride
    cells = torch.full((len(filenames), len(class_ids), grid, grid), NEGATIVE, dtype=torch.int8)
    has_boxes = torch.zeros(len(filenames), dtype=torch.bool)
    sidecar = read_box_sidecar(csv_path)
    if sidecar is None:
        log.info("%s has no box sidecar: its objects train from the photo-level labels only", csv_path)
        return cells, has_boxes
    for i, name in enumerate(filenames):
        photo = sidecar.photos.get(name)
        if photo is not None:
            cells[i] = torch.from_numpy(cell_targets(photo, class_ids, image_size, stride, resize))
            has_boxes[i] = True
    log.info("boxes for %d of %d photos from %s (%d boxes clipped to their photo)", int(has_boxes.sum()),
             len(filenames), sidecar.path, sidecar.clipped)
    return cells, has_boxes


def load_labeled_folder(csv_path: str | Path, image_dir: str | Path | None, taxonomy: Taxonomy,
                        image_size: int, workers: int = 2, limit: int | None = None,
                        resize: str = "squash", cell_stride: int | None = None,
                        boxes_from: str | Path | None = None) -> InMemoryDataset:
    """Read the CSV, decode every listed image; missing and unreadable files are reported by name and skipped.
    With cell_stride (a per-cell model), per-cell targets come along from the box sidecar beside the CSV (or
    beside `boxes_from`, for a CSV that lists another folder's photos)."""
    csv_path = Path(csv_path)
    image_dir = Path(image_dir) if image_dir else csv_path.parent / "images"
    rows: list[LabeledImage] = read_labels_csv(csv_path, taxonomy)[:limit]
    present, skipped = split_missing(rows, image_dir)
    decoded: dict[int, torch.Tensor] = {}
    loader = DataLoader(_DecodeFiles([image_dir / r.filename for r in present], image_size, resize), batch_size=16,
                        num_workers=workers, collate_fn=_keep_as_list)
    for batch in loader:
        for index, tensor, error in batch:
            if tensor is None:
                skipped[present[index].filename] = f"unreadable image: {error}"
            else:
                # A tensor from a worker holds a shared-memory file descriptor until dropped: keeping tens of
                # thousands of them runs out of descriptors ("received 0 items of ancdata"). A copy holds none.
                decoded[index] = tensor.clone()
    kept = [present[i] for i in sorted(decoded)]
    if skipped:
        log.warning("skipped %d of %d images listed in %s:", len(skipped), len(rows), csv_path)
        for name, why in sorted(skipped.items()):
            log.warning("  %s: %s", name, why)
    if not kept:
        raise ValueError(f"no usable images in {csv_path} (looked in {image_dir})")
    per_image = [encode_targets(r.labels, taxonomy) for r in kept]
    targets = {g.name: torch.stack([t[g.name] for t in per_image]) for g in taxonomy.groups}
    images = torch.stack([decoded[i] for i in sorted(decoded)])
    filenames = [r.filename for r in kept]
    cells = has_boxes = None
    if cell_stride:
        cells, has_boxes = _cell_targets(Path(boxes_from or csv_path), filenames, taxonomy, image_size, cell_stride,
                                         resize)
    return InMemoryDataset(images, targets, filenames, skipped, cells, has_boxes)
