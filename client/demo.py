"""Tag a few held-out images through the running service and print each answer next to the true labels, with a
box for each object found.

With --metrics (the training run's metrics.json) it first says what the served model was measured to do on its
held-out photos, so that a short demo run that has not learned the objects says so instead of printing a silent
"objects MISS" on every photo.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from client.rest import tag_image
from phototag.labels_csv import read_labels_csv
from phototag.taxonomy import Taxonomy


def _agreement(truth: dict, answer: dict, taxonomy: Taxonomy) -> list[str]:
    marks = []
    for group in taxonomy.groups:
        if group.kind == "single":
            ok = answer[group.name]["label"] == truth[group.name]
            marks.append(f"{group.name} {'ok' if ok else 'MISS'}")
        else:
            ok = sorted(answer[group.name]["labels"]) == sorted(truth[group.name])
            marks.append(f"{group.name} {'ok' if ok else 'MISS'}")
    return marks


def found_text(part: dict) -> str:
    """The objects of one answer with where they are in the photo's pixels and the place's score:
    "cars at [412, 120, 600, 215] 0.93, horses at ..."."""
    found = []
    for label in part["labels"]:
        boxes = part.get("boxes", {}).get(label, [])
        where = "; ".join(f"[{', '.join(str(round(v)) for v in b['box'])}] {b['score']:.2f}" for b in boxes)
        found.append(f"{label} at {where}" if where else label)
    return ", ".join(found)


# Below this held-out mean object F1 the demo says that its model does not find the objects yet.
OBJECTS_LEARNED_F1 = 0.3


def held_out_note(metrics: dict, taxonomy: Taxonomy) -> str:
    """One paragraph on the served run's held-out figures (training.train's metrics.json) for the demo's reader."""
    test = metrics.get("test")
    if not test:
        return "The training run measured nothing on held-out photos (no --test-data)."
    heads = ", ".join(f"{g.name} {test[g.name]['macro_f1']:.2f}" for g in taxonomy.single_groups)
    minutes = metrics.get("train_seconds", 0) / 60
    ap = f", mean object AP {test['mean_object_ap']:.2f}" if "mean_object_ap" in test else ""
    lines = [f"Held-out photos ({metrics.get('test_images')}), the run that is served ({minutes:.0f} min of "
             f"training): macro-F1 {heads}; mean object F1 {test['mean_object_f1']:.2f}{ap}."]
    if test["mean_object_f1"] < OBJECTS_LEARNED_F1:
        lines.append("This run finds the objects only in part: expect 'objects MISS' on many photos below. "
                     "README 'Measured quality' has the figures of each recipe and docs/model.md what is left.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels", type=Path, required=True, help="label CSV of held-out images")
    parser.add_argument("--images", type=Path, help="their folder (default: CSV folder/images)")
    parser.add_argument("--count", type=int, default=6, help="how many images to tag")
    parser.add_argument("--metrics", type=Path, help="the served run's metrics.json: print its held-out figures")
    args = parser.parse_args(argv)
    taxonomy = Taxonomy.load()
    if args.metrics:
        print(held_out_note(json.loads(args.metrics.read_text(encoding="utf-8")), taxonomy))
    image_dir = args.images or args.labels.parent / "images"
    for row in read_labels_csv(args.labels, taxonomy)[: args.count]:
        answer = tag_image((image_dir / row.filename).read_bytes())
        print(f"=== {row.filename}")
        print(f"true:   {json.dumps(row.labels, ensure_ascii=False)}")
        shown = {k: ({**v, "boxes": "(below)"} if isinstance(v, dict) and "boxes" in v else v)
                 for k, v in answer.items()}
        print(f"served: {json.dumps(shown, ensure_ascii=False)}")
        for group in taxonomy.multi_groups:
            print(f"        {group.name} found: {found_text(answer[group.name]) or '-'}"
                  f"  (true: {', '.join(row.labels[group.name]) or '-'})")
        print(f"        {', '.join(_agreement(row.labels, answer, taxonomy))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
