"""Where each object is: boxes from the per-cell object map, in the photo's own pixels as a viewer shows it.

A per-cell model (`phototag.model`, object head ``cells``) gives a logit per object per cell of layer3's map; the
photo's object score is its best cell's. For every object the photo is tagged with, the cells whose score reaches
that object's threshold are grouped into 8-connected places, and each place becomes one box, the extent of its
cells, with the score of its best cell. A photo's tag and its boxes come from one map, so every tagged object has
a box, its best place (unless that lies wholly in the letterbox padding). Further places (two dog handlers far
apart) are given when their own score reaches `OTHER_PLACE_SCORE`: the weaker places were mostly wrong (measured in
docs/where.md, with the other box rule tried: the cells' centres spread to twice their span, which fitted worse).

Coordinates: the map covers the model input (the photo squashed or letterboxed to S×S, `phototag.preprocessing`);
a box is mapped back through the same geometry into the photo as displayed (after EXIF orientation), clipped to
it, and also given normalised to 0-1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from phototag.preprocessing import check_resize, letterbox_geometry
from phototag.taxonomy import SINGLE, Taxonomy, logits_to_tags

# A photo full of one object (a car park, a herd) could give dozens of places; the best ones say enough.
MAX_BOXES_PER_OBJECT = 10
# Held-out seed 32, the warm start of 2026-12-07: a box's centre fell inside a true box of its object for 47 % of
# best places alone, 36 % with every place above threshold, 46 % with the others at >= 0.7 (and 40 % at >= 0.5).
OTHER_PLACE_SCORE = 0.7


@dataclass(frozen=True)
class InputGeometry:
    """How a photo of `width`×`height` px (as displayed) became the model's `image_size`² input."""
    width: int
    height: int
    image_size: int
    resize: str = "squash"

    def __post_init__(self):
        check_resize(self.resize)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"photo size must be positive, not {self.width}x{self.height}")

    def to_photo(self, box: tuple[float, float, float, float]) -> list[float]:
        """Model-input px [x0, y0, x1, y1] -> photo px, clipped to the photo."""
        x0, y0, x1, y1 = box
        if self.resize == "squash":
            sx, sy, left, top = self.image_size / self.width, self.image_size / self.height, 0, 0
        else:
            new_w, new_h, left, top = letterbox_geometry(self.width, self.height, self.image_size)
            sx, sy = new_w / self.width, new_h / self.height
        return [min(max((x0 - left) / sx, 0.0), self.width), min(max((y0 - top) / sy, 0.0), self.height),
                min(max((x1 - left) / sx, 0.0), self.width), min(max((y1 - top) / sy, 0.0), self.height)]


def _places(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected groups of True cells of a [h, w] mask, each a list of (row, col)."""
    seen = np.zeros_like(mask, dtype=bool)
    places = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        stack, place = [start], []
        while stack:
            r, c = stack.pop()
            place.append((int(r), int(c)))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    nr, nc = r + dr, c + dc
                    if 0 <= nr < mask.shape[0] and 0 <= nc < mask.shape[1] and mask[nr, nc] and not seen[nr, nc]:
                        seen[nr, nc] = True
                        stack.append((nr, nc))
        places.append(place)
    return places


def _place_box(place: list[tuple[int, int]], stride: float) -> tuple[float, float, float, float]:
    """Model-input px box [x0, y0, x1, y1] of one place: the extent of its cells."""
    rows = [r for r, _ in place]
    cols = [c for _, c in place]
    return min(cols) * stride, min(rows) * stride, (max(cols) + 1) * stride, (max(rows) + 1) * stride


def _round(values, digits: int) -> list[float]:
    return [round(float(v), digits) for v in values]


def object_boxes(cell_logits: np.ndarray, taxonomy: Taxonomy, labels: list[str], geometry: InputGeometry,
                 digits: int = 4) -> dict[str, list[dict]]:
    """Per-cell object logits [K, h, w] (K = the yes/no classes in taxonomy order) of one photo, and the object
    labels it was tagged with -> {label: [{"box", "box_normalized", "score"}, ...]}, best place first.

    "box" is [x0, y0, x1, y1] in the photo's pixels as displayed, "box_normalized" the same divided by its width
    and height; "score" is the sigmoid of the place's best cell. A pure function of its inputs.
    """
    classes = [c for g in taxonomy.groups if g.kind != SINGLE for c in g.classes]
    if cell_logits.shape[0] != len(classes):
        raise ValueError(f"the cell map has {cell_logits.shape[0]} object channels, the taxonomy {len(classes)}")
    stride = geometry.image_size / cell_logits.shape[-1]
    wanted = set(labels)
    boxes: dict[str, list[dict]] = {}
    for k, tag_class in enumerate(classes):
        if tag_class.id not in wanted:
            continue
        cut = math.log(tag_class.threshold / (1 - tag_class.threshold))
        logits = np.asarray(cell_logits[k], dtype=np.float32)
        found = []
        mask = logits >= cut
        # The tag was decided on the best cell's score; float rounding must not leave a tagged object boxless.
        mask.flat[int(np.argmax(logits))] = True
        for place in _places(mask):
            peak = max(float(logits[r, c]) for r, c in place)
            box = geometry.to_photo(_place_box(place, stride))
            if box[2] <= box[0] or box[3] <= box[1]:
                continue  # the place lies in the letterbox padding: nothing of the photo to show
            normalised = [box[0] / geometry.width, box[1] / geometry.height,
                          box[2] / geometry.width, box[3] / geometry.height]
            found.append({"box": _round(box, 1), "box_normalized": _round(normalised, digits),
                          "score": round(1.0 / (1.0 + math.exp(-peak)), digits)})
        found.sort(key=lambda item: -item["score"])
        best, others = found[:1], [item for item in found[1:] if item["score"] >= OTHER_PLACE_SCORE]
        boxes[tag_class.id] = (best + others)[:MAX_BOXES_PER_OBJECT]
    return boxes


def tag_photo(logits, cell_logits: np.ndarray | None, taxonomy: Taxonomy, model_version: str,
              geometry: InputGeometry | None, closer: tuple[np.ndarray, InputGeometry] | None = None,
              note: str | None = None) -> dict:
    """One photo's answer: `logits_to_tags` of its logits [num_logits], and, from a per-cell model's map
    [K, h, w] with the photo's geometry, a "boxes" entry in each yes/no group ({label: [box, ...]} for the labels
    it was tagged with) and the photo's displayed size as "image". Without a map (a pooled-head model) the answer
    is the tags alone, as such models always served.

    `closer`: the map of the same photo read at the big-photo mode's larger input ([K, h', w'], its geometry).
    Each object's score is then the better of the two maps' best cells, and its boxes come from that map: small
    objects are found closer, large ones (which fill more than a crop's worth of the larger input) as before.
    "image" then says the size the objects were read at; `note` (why a big photo was not read closer) goes there
    too."""
    if cell_logits is None or geometry is None:
        return logits_to_tags(logits, taxonomy, model_version)
    values = [float(v) for v in logits]
    from_closer = set()
    if closer is not None:
        peaks = np.asarray(closer[0], dtype=np.float32).reshape(closer[0].shape[0], -1).max(axis=1)
        k = 0
        for group in taxonomy.groups:
            if group.kind == SINGLE:
                continue
            for offset, tag_class in enumerate(group.classes):
                index = group.logits.start + offset
                if peaks[k] > values[index]:
                    values[index] = float(peaks[k])
                    from_closer.add(tag_class.id)
                k += 1
    answer = logits_to_tags(values, taxonomy, model_version)
    labels = [label for g in taxonomy.groups if g.kind != SINGLE for label in answer[g.name]["labels"]]
    boxes = object_boxes(cell_logits, taxonomy, [x for x in labels if x not in from_closer], geometry)
    if from_closer:
        boxes |= object_boxes(closer[0], taxonomy, [x for x in labels if x in from_closer], closer[1])
    for group in taxonomy.groups:
        if group.kind != SINGLE:
            answer[group.name]["boxes"] = {label: boxes[label] for label in answer[group.name]["labels"]}
    answer["image"] = {"width": geometry.width, "height": geometry.height}
    if closer is not None:
        answer["image"]["objects_read_at"] = closer[1].image_size
    if note:
        answer["image"]["note"] = note
    return answer
