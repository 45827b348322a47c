"""Tag a few held-out images through the running service and print each answer next to the true labels."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from client.rest import tag_image
from phototag.taxonomy import Taxonomy
from training.labels_csv import read_labels_csv


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels", type=Path, required=True, help="label CSV of held-out images")
    parser.add_argument("--images", type=Path, help="their folder (default: CSV folder/images)")
    parser.add_argument("--count", type=int, default=6, help="how many images to tag")
    args = parser.parse_args(argv)
    taxonomy = Taxonomy.load()
    image_dir = args.images or args.labels.parent / "images"
    for row in read_labels_csv(args.labels, taxonomy)[: args.count]:
        answer = tag_image((image_dir / row.filename).read_bytes())
        print(f"=== {row.filename}")
        print(f"true:   {json.dumps(row.labels, ensure_ascii=False)}")
        print(f"served: {json.dumps(answer, ensure_ascii=False)}")
        print(f"        {', '.join(_agreement(row.labels, answer, taxonomy))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
