"""Where each object is: the box sidecar beside a labels CSV, and the per-cell targets it gives the object heads.

The synthetic generator writes `object_boxes.jsonl` next to `labels.csv`: one JSON line per image,
``{"filename", "width", "height", "objects": [{"object", "box": [x0, y0, x1, y1], "size"}, ...]}`` with boxes in
the image's own pixels. Real photos have no sidecar; they train through their photo-level labels alone.

Per-cell targets, for a model whose object map has one cell per `stride` input pixels (`ModelConfig.cell_stride`):
a cell is **positive** for an object when its centre lies in the central half of a box of that object (and the
cell holding the box's centre always is, so that a 6 px drone still has one); a cell that only overlaps such a box
is **ignored** (it sees part of the object: calling it "no" would punish the net for seeing it); every other cell
is **negative**. The photo is squashed or letterboxed to the model's input the way serving prepares it, and the
boxes follow the same geometry.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phototag.preprocessing import letterbox_geometry
from training.synth.dataset import BOXES_NAME

POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


class BoxFileError(ValueError):
    """A line of the box sidecar is not what the generator writes; the message names the file and the line."""


@dataclass
class PhotoBoxes:
    width: int
    height: int
    objects: list[dict]  # {"object", "box": [x0, y0, x1, y1] clipped to the photo, "size"}


@dataclass
class BoxSidecar:
    photos: dict[str, PhotoBoxes] = field(default_factory=dict)
    clipped: int = 0  # boxes that reached outside their photo and were clipped to it
    path: Path | None = None

    def objects(self) -> dict[str, list[dict]]:
        return {name: photo.objects for name, photo in self.photos.items()}


def _photo_from_line(row, where: str) -> tuple[str, PhotoBoxes, int]:
    try:
        filename, width, height = str(row["filename"]), int(row["width"]), int(row["height"])
        items = row["objects"]
        if width <= 0 or height <= 0 or not isinstance(items, list):
            raise ValueError("width and height must be positive and objects a list")
        objects, clipped = [], 0
        for item in items:
            x0, y0, x1, y1 = (float(v) for v in item["box"])
            cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
            cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
            clipped += (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
            if cx1 <= cx0 or cy1 <= cy0:
                continue  # nothing of it is inside the photo
            objects.append({"object": str(item["object"]), "box": [cx0, cy0, cx1, cy1],
                            "size": float(item.get("size", min(cx1 - cx0, cy1 - cy0) / min(width, height)))})
    except (KeyError, TypeError, ValueError) as exc:
        raise BoxFileError(f"{where}: not a box record ({type(exc).__name__}: {exc})") from exc
    return filename, PhotoBoxes(width, height, objects), clipped


def read_box_sidecar(csv_path: str | Path) -> BoxSidecar | None:
    """The sidecar next to a labels CSV; None where there is none. A malformed line raises BoxFileError naming the
    file and the line; a box reaching outside its photo is clipped and counted in `clipped`."""
    path = Path(csv_path).parent / BOXES_NAME
    if not path.is_file():
        return None
    sidecar = BoxSidecar(path=path)
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BoxFileError(f"{where}: not JSON ({exc.msg})") from exc
            filename, photo, clipped = _photo_from_line(row, where)
            sidecar.photos[filename] = photo
            sidecar.clipped += clipped
    return sidecar


def read_object_boxes(csv_path: str | Path) -> dict[str, list[dict]]:
    """{filename: [{"object", "box", "size"}, ...]} from the sidecar next to a labels CSV; {} where there is none."""
    sidecar = read_box_sidecar(csv_path)
    return sidecar.objects() if sidecar else {}


def _to_input_geometry(photo: PhotoBoxes, image_size: int, resize: str):
    """(scale_x, scale_y, left, top): photo pixels -> model-input pixels, as phototag.preprocessing resizes."""
    if resize == "squash":
        return image_size / photo.width, image_size / photo.height, 0, 0
    new_w, new_h, left, top = letterbox_geometry(photo.width, photo.height, image_size)
    return new_w / photo.width, new_h / photo.height, left, top


def cell_targets(photo: PhotoBoxes, class_ids: list[str], image_size: int, stride: int,
                 resize: str = "squash") -> np.ndarray:
    """int8 [K, G, G] (G = image_size / stride): POSITIVE, NEGATIVE or IGNORED per object and cell (module
    docstring). Objects not in class_ids are left out."""
    grid = image_size // stride
    centres = (np.arange(grid) + 0.5) * stride
    edges = np.arange(grid + 1) * stride
    positive = np.zeros((len(class_ids), grid, grid), dtype=bool)
    overlap = np.zeros_like(positive)
    sx, sy, left, top = _to_input_geometry(photo, image_size, resize)
    column = {c: k for k, c in enumerate(class_ids)}
    for item in photo.objects:
        k = column.get(item["object"])
        if k is None:
            continue
        x0, y0, x1, y1 = item["box"]
        x0, x1 = left + x0 * sx, left + x1 * sx
        y0, y1 = top + y0 * sy, top + y1 * sy
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4, (y1 - y0) / 4
        in_x = np.abs(centres - cx) <= hw
        in_y = np.abs(centres - cy) <= hh
        positive[k] |= in_y[:, None] & in_x[None, :]
        row = min(grid - 1, max(0, int(cy // stride)))
        col = min(grid - 1, max(0, int(cx // stride)))
        positive[k, row, col] = True
        touch_x = (edges[1:] > x0) & (edges[:-1] < x1)
        touch_y = (edges[1:] > y0) & (edges[:-1] < y1)
        overlap[k] |= touch_y[:, None] & touch_x[None, :]
    targets = np.full(positive.shape, NEGATIVE, dtype=np.int8)
    targets[overlap] = IGNORED
    targets[positive] = POSITIVE
    return targets
