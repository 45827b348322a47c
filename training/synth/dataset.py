"""A synthetic dataset on disk: images, labels.csv in the original format, and the object-box sidecar."""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from phototag.labels_csv import read_labels_csv, write_labels_csv
from phototag.taxonomy import SINGLE, Taxonomy
from training.synth.labels import DRAWABLE, SEED_STRIDE, generate_labels
from training.synth.render import render_scene_with_boxes

FILENAME_PATTERN = "scene_{index:06d}"
CSV_NAME = "labels.csv"
# Where each drawn object is, beside the labels (the CSV reader never opens it; training.boxes reads it).
BOXES_NAME = "object_boxes.jsonl"
IMAGE_DIR = "images"
JPEG_QUALITY = (60, 95)
# --large: drone and camera-trap frames. Sizes of common 12-20 MP sensors (both orientations), objects 5x smaller
# than in the ordinary scenes (1.2-7 % of the short side: a 60 px dog handler in a 4000 px frame), drawn on a
# 2048 px canvas instead of 768 so that they keep their shapes. Shapes, clutter, look-alikes, night and fog as ever.
LARGE_SIZES = ((4000, 3000), (3000, 4000), (5472, 3648), (3648, 5472), (4000, 2250))
LARGE_OBJECT_SCALE = 0.2
LARGE_WORK_LONG_SIDE = 2048
PNG_COMPRESS_LEVEL = 1  # noisy images barely compress; higher levels cost time for ~2 % smaller files


# =============================================================================================================
# dataset
# =============================================================================================================
def _plan(index: int, seed: int, taxonomy: Taxonomy, min_size: int, max_size: int, png_fraction: float,
          large: bool = False) -> tuple:
    """Everything about image `index` that is random, drawn from its own stream (worker-count independent)."""
    rng = random.Random(seed * SEED_STRIDE + index)
    labels = generate_labels(rng, taxonomy)
    if large:
        width, height = rng.choice(LARGE_SIZES)
    else:
        width, height = rng.randint(min_size, max_size), rng.randint(min_size, max_size)
    png = rng.random() < png_fraction
    quality = rng.randint(*JPEG_QUALITY)
    render_seed = rng.getrandbits(63)
    filename = FILENAME_PATTERN.format(index=index) + (".png" if png else ".jpg")
    return filename, labels, width, height, png, quality, render_seed, large


def _render_job(job: tuple) -> list[dict]:
    path, labels, width, height, png, quality, render_seed, large = job
    options = {"object_scale": LARGE_OBJECT_SCALE, "work_long_side": LARGE_WORK_LONG_SIDE} if large else {}
    img, boxes = render_scene_with_boxes(labels, width, height, render_seed, **options)
    if png:
        img.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        img.save(path, format="JPEG", quality=quality)
    return boxes


def _check_drawable(taxonomy: Taxonomy) -> None:
    for group in taxonomy.groups:
        known = DRAWABLE.get(group.name)
        missing = [c for c in group.class_ids if known is None or c not in known]
        if missing:
            raise ValueError(f"the synthetic renderer cannot draw {group.name}: {missing}")


def generate_dataset(out_dir, count: int, seed: int = 0, min_size: int = 320, max_size: int = 2000,
                     png_fraction: float = 0.1, workers: int | None = None, taxonomy: Taxonomy | None = None,
                     start_index: int = 0, large: bool = False) -> Path:
    """Write `count` scenes to out_dir/images/ and their labels to out_dir/labels.csv; return the CSV path.

    Image `i` (file scene_{i:06d}.jpg|png, i from start_index) depends only on (seed, i, large). `large`: the
    large-photo option (LARGE_SIZES, objects LARGE_OBJECT_SCALE times the usual size; min/max size unused).
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if not 16 <= min_size <= max_size:
        raise ValueError(f"need 16 <= min_size <= max_size, got {min_size}, {max_size}")
    if not 0.0 <= png_fraction <= 1.0:
        raise ValueError("png_fraction must be within [0, 1]")
    taxonomy = taxonomy or Taxonomy.load()
    _check_drawable(taxonomy)
    out_dir = Path(out_dir)
    image_dir = out_dir / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    indices = range(start_index, start_index + count)
    plans = [_plan(i, seed, taxonomy, min_size, max_size, png_fraction, large) for i in indices]
    jobs = [(str(image_dir / p[0]),) + p[1:] for p in plans]
    workers = workers or min(4, os.cpu_count() or 1)
    if workers <= 1 or count < 4:
        boxes = [_render_job(job) for job in jobs]
    else:
        # forkserver/spawn rather than fork: the caller may be a multi-threaded trainer (torch) process
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with ctx.Pool(min(workers, count)) as pool:
            boxes = list(pool.imap(_render_job, jobs, chunksize=max(1, min(16, count // (workers * 8)))))
    csv_path = out_dir / CSV_NAME
    write_labels_csv(csv_path, ((filename, labels) for filename, labels, *_ in plans), taxonomy)
    _write_boxes(out_dir / BOXES_NAME, ((p[0], p[2], p[3], b) for p, b in zip(plans, boxes)))
    return csv_path


def _write_boxes(path: Path, rows) -> None:
    """The sidecar: one JSON line per image, {"filename", "width", "height", "objects": [...]}."""
    with open(path, "w", encoding="utf-8") as out:
        for filename, width, height, objects in rows:
            out.write(json.dumps({"filename": filename, "width": width, "height": height, "objects": objects}) + "\n")


def summarize(csv_path: Path, taxonomy: Taxonomy) -> str:
    """Label distribution per head and per object, read back from the written CSV by the training reader."""
    labels = [row.labels for row in read_labels_csv(csv_path, taxonomy)]
    parts = []
    for group in taxonomy.groups:
        if group.kind == SINGLE:
            counts = Counter(item[group.name] for item in labels)
            parts.append(f"{group.name}: " + " ".join(f"{c}={counts.get(c, 0)}" for c in group.class_ids))
        else:
            counts = Counter(c for item in labels for c in item[group.name])
            none = sum(1 for item in labels if not item[group.name])
            parts.append(f"{group.name}: " + " ".join(f"{c}={counts.get(c, 0)}" for c in group.class_ids)
                         + f" none={none}")
    return " | ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/synth", help="output folder (gets images/ and labels.csv)")
    parser.add_argument("--count", type=int, default=2000, help="number of images to generate")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; same seed + arguments = same bytes")
    parser.add_argument("--start-index", type=int, default=0,
                        help="index of the first image (to generate a big set in chunks)")
    parser.add_argument("--min-size", type=int, default=320, help="smallest width/height in pixels")
    parser.add_argument("--max-size", type=int, default=2000, help="largest width/height in pixels")
    parser.add_argument("--png-fraction", type=float, default=0.1, help="share of images saved as PNG, the rest JPEG")
    parser.add_argument("--large", action="store_true",
                        help="drone and camera-trap frames: 12-20 MP (4000x3000, 5472x3648, both orientations, and "
                             "4000x2250), objects 1.2-7%% of the short side instead of 10-35%%; --min/--max-size "
                             "are not used (give --png-fraction 0 unless 36 MB PNGs are wanted)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default min(4, CPU count)); output does not depend on it")
    parser.add_argument("--taxonomy", default=None, help="taxonomy.json to take columns and codes from")
    args = parser.parse_args(argv)
    taxonomy = Taxonomy.load(args.taxonomy) if args.taxonomy else Taxonomy.load()
    started = time.perf_counter()
    csv_path = generate_dataset(args.out, args.count, seed=args.seed, min_size=args.min_size, max_size=args.max_size,
                                png_fraction=args.png_fraction, workers=args.workers, taxonomy=taxonomy,
                                start_index=args.start_index, large=args.large)
    elapsed = time.perf_counter() - started
    print(f"synth: {args.count} images in {elapsed:.1f} s ({args.count / max(elapsed, 1e-9):.1f}/s) -> {csv_path} | "
          f"{summarize(csv_path, taxonomy)}")
    return 0


