"""Where the object heads still fail: object F1 and recall broken down by how large the object is in the photo.

Sizes come from the synthetic generator's sidecar (`training.synth.BOXES_NAME`): each drawn object's size as a
share of the photo's short side. A false positive has no size, so a size bucket's F1 is computed on the photos
that either lack the object or show it at that size: every false positive counts against every bucket, and
recall is the bucket's own. Real photos have no sidecar, and then there is no breakdown.
"""
from __future__ import annotations

import numpy as np

from training.metrics import f1_score

# Bucket edges as a share of the short side: the issue that asked for the breakdown named these.
SIZE_BUCKETS = (("<10%", 0.0, 0.10), ("10-20%", 0.10, 0.20), (">=20%", 0.20, float("inf")))


def object_sizes(filenames: list[str], class_ids: list[str], boxes: dict[str, list[dict]]) -> np.ndarray:
    """[N, K] size of each image's largest instance of each object (share of the short side); NaN where the image
    shows none, or its boxes are unknown."""
    sizes = np.full((len(filenames), len(class_ids)), np.nan)
    column = {c: k for k, c in enumerate(class_ids)}
    for i, name in enumerate(filenames):
        for item in boxes.get(name, ()):
            k = column.get(item["object"])
            if k is not None:
                sizes[i, k] = np.fmax(sizes[i, k], float(item["size"]))
    return sizes


def breakdown_by_size(truth: np.ndarray, predicted: np.ndarray, sizes: np.ndarray, class_ids: list[str]) -> dict:
    """truth, predicted: 0/1 [N, K]; sizes: [N, K] from `object_sizes`. Per bucket: per object {positives,
    recall, f1}, and all objects pooled. Positives without a known size are left out of every bucket."""
    truth, predicted = truth.astype(bool), predicted.astype(bool)
    result = {}
    for name, low, high in SIZE_BUCKETS:
        in_bucket = truth & (sizes >= low) & (sizes < high)
        per_object = {}
        for k, cls in enumerate(class_ids):
            rows = in_bucket[:, k] | ~truth[:, k]
            positives = int(in_bucket[:, k].sum())
            hits = int((in_bucket[:, k] & predicted[:, k]).sum())
            per_object[cls] = {"positives": positives,
                               "recall": hits / positives if positives else None,
                               "f1": f1_score(truth[rows, k], predicted[rows, k]) if positives else None}
        rows = in_bucket | ~truth
        positives = int(in_bucket.sum())
        result[name] = {"positives": positives,
                        "recall": int((in_bucket & predicted).sum()) / positives if positives else None,
                        "f1": f1_score(truth[rows], predicted[rows]) if positives else None,
                        "objects": per_object}
    return result


def format_breakdown(breakdown: dict) -> list[str]:
    """Lines for the printed summary and report.md: pooled recall and F1 per size bucket."""
    lines = [f"  {'object size':<14}{'positives':>10}{'recall':>8}{'F1':>7}"]
    for name, part in breakdown.items():
        recall = "-" if part["recall"] is None else f"{part['recall']:.3f}"
        f1 = "-" if part["f1"] is None else f"{part['f1']:.3f}"
        lines.append(f"  {name:<14}{part['positives']:>10}{recall:>8}{f1:>7}")
    return lines
