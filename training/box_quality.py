"""How good the served boxes are, against the generator's boxes (`object_boxes.jsonl`), broken down by object size.

Three figures, per object and pooled, and per size bucket of the true object (`training.object_sizes`):

- **centre inside**: the share of predicted boxes whose centre lies inside a true box of the same object on that
  photo (a box that sends the volunteer to the right place);
- **mean IoU**: each predicted box's intersection-over-union with the true box of that object it overlaps most
  (0 where the photo has none), averaged over the predicted boxes;
- **found**: of the true objects on photos the service tagged with that object, the share that some predicted box
  of that object has its centre in.

A predicted box's size bucket is that of the true box it overlaps most (its nearest by IoU, or by centre distance
when it overlaps none); a box on a photo without that object falls in no bucket but counts in the totals.
"""
from __future__ import annotations

import numpy as np

from training.object_sizes import SIZE_BUCKETS


def _iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _inside(point, box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def _centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _bucket(size: float) -> str:
    return next(name for name, low, high in SIZE_BUCKETS if low <= size < high)


class _Tally:
    def __init__(self):
        self.boxes = self.inside = self.objects = self.found = 0
        self.iou = 0.0

    def summary(self) -> dict:
        return {"boxes": self.boxes, "centre_inside": self.inside / self.boxes if self.boxes else None,
                "mean_iou": self.iou / self.boxes if self.boxes else None,
                "true_objects": self.objects, "found": self.found / self.objects if self.objects else None}


def box_quality(filenames: list[str], answers: list[dict | None], truth: dict[str, list[dict]],
                class_ids: list[str]) -> dict | None:
    """answers: per photo in the order of `filenames`, the service's answer for one yes/no group ({"labels",
    "boxes", ...}; None where the photo was refused); truth: {filename: [{"object", "box", "size"}]} in the same
    photo pixels. None when no photo has true boxes or no answer has boxes."""
    if not truth or not any(a is not None and "boxes" in a for a in answers):
        return None
    tallies: dict[tuple[str, str], _Tally] = {}

    def tally(cls: str, bucket: str) -> _Tally:
        return tallies.setdefault((cls, bucket), _Tally())

    for name, answer in zip(filenames, answers):
        if answer is None or name not in truth:
            continue
        predicted = answer.get("boxes", {})
        for cls in class_ids:
            true_boxes = [t for t in truth[name] if t["object"] == cls]
            mine = [p["box"] for p in predicted.get(cls, ())]
            for box in mine:
                ious = [_iou(box, t["box"]) for t in true_boxes]
                inside = any(_inside(_centre(box), t["box"]) for t in true_boxes)
                nearest = None
                if true_boxes:
                    if max(ious) > 0:
                        nearest = true_boxes[int(np.argmax(ious))]
                    else:
                        cx, cy = _centre(box)
                        nearest = min(true_boxes, key=lambda t: (_centre(t["box"])[0] - cx) ** 2
                                      + (_centre(t["box"])[1] - cy) ** 2)
                targets = [tally(cls, "all")] + ([tally(cls, _bucket(nearest["size"]))] if nearest else [])
                for t in targets:
                    t.boxes += 1
                    t.inside += inside
                    t.iou += max(ious, default=0.0)
            if cls not in answer.get("labels", ()):
                continue
            for t_box in true_boxes:
                got = any(_inside(_centre(box), t_box["box"]) for box in mine)
                for t in (tally(cls, "all"), tally(cls, _bucket(t_box["size"]))):
                    t.objects += 1
                    t.found += got
    buckets = ["all"] + [name for name, _, _ in SIZE_BUCKETS]
    result = {}
    for bucket in buckets:
        pooled = _Tally()
        for cls in class_ids:
            part = tallies.get((cls, bucket))
            if part:
                pooled.boxes += part.boxes
                pooled.inside += part.inside
                pooled.iou += part.iou
                pooled.objects += part.objects
                pooled.found += part.found
        result[bucket] = pooled.summary() | {
            "objects": {cls: tallies.get((cls, bucket), _Tally()).summary() for cls in class_ids}}
    return result


def format_box_quality(quality: dict) -> list[str]:
    """Lines for the printed summary and report.md: pooled box figures, all boxes and per size bucket."""
    def figure(value):
        return "-" if value is None else f"{value:.3f}"
    lines = [f"  {'object size':<14}{'boxes':>7}{'centre in':>11}{'mean IoU':>10}{'objects':>9}{'found':>7}"]
    for bucket, part in quality.items():
        lines.append(f"  {bucket:<14}{part['boxes']:>7}{figure(part['centre_inside']):>11}"
                     f"{figure(part['mean_iou']):>10}{part['true_objects']:>9}{figure(part['found']):>7}")
    return lines
