"""Deterministic synthetic search-and-rescue scenes, written in the original dataset's format.

The real photos cannot be published, so training, the handler and the load tests are exercised on drawn
stand-ins: an image folder plus a `;`-separated UTF-8 CSV whose header and numeric codes come from the
taxonomy (`phototag/taxonomy.json`). Every label is made *visible* - sky colour and light for the time of
day, ground and foliage for the season, trees or buildings for the terrain, a drawn silhouette for each
object - and then muddied with clutter, occlusion, noise, blur and exposure jitter so that a CNN has to
learn the cue rather than a single pixel value.

Determinism: image `i` of seed `s` depends only on `(s, i)` - its labels, size, format and drawing seed come
from `random.Random(s * 1_000_003 + i)` - so the output is byte-identical for any worker count and for any
split into `start_index` chunks.

Only Pillow, numpy and the standard library (no torch) are used so that importing this package stays cheap.
The modules follow the pipeline: `labels` (what a scene shows) -> `shapes` (the drawing vocabulary) -> `scene`
(layout) -> `render` (a finished photo; all the load tests need) -> `dataset` (files on disk and the CLI).

    python -m training.synth --out data/synth --count 2000 --seed 0
"""
from training.synth.dataset import BOXES_NAME, CSV_NAME, IMAGE_DIR, generate_dataset, summarize
from training.synth.labels import generate_labels
from training.synth.render import render_jpegs, render_scene, render_scene_with_boxes

__all__ = ["BOXES_NAME", "CSV_NAME", "IMAGE_DIR", "generate_dataset", "generate_labels", "render_jpegs",
           "render_scene", "render_scene_with_boxes", "summarize"]
