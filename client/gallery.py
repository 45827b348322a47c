"""A self-contained review page of a tagged folder: OUT/index.html and small thumbnails in OUT/thumbs/.

    python -m client.gallery results/card1 --photos /media/card/DCIM          # (re)write the page
    python -m client.gallery results/card1 --photos DCIM --taxonomy runs/x/taxonomy.json   # exact thresholds

`make tag-folder` (client.tag_folder) writes the page after every run, so a resumed run updates it. The page works
from file:// with nothing else: its script, style and data (every answer of tags.jsonl, as JSON) are inside the
HTML, the thumbnails sit next to it, and the larger view shows the original photo through its relative path.
Volunteers filter, sort, review and correct tags there, and download the corrections as a CSV in the original
format (phototag.labels_csv reads it unchanged); nothing is uploaded anywhere. Corrections are kept in the
browser's localStorage under the page's folder, so they survive a reload and a re-generated page.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from client.results import JSONL_NAME, load_records
from phototag.decoding import ImageDecodeError, decode_image
from phototag.taxonomy import DEFAULT_THRESHOLD, SINGLE, Taxonomy

PAGE_NAME, THUMB_DIR = "index.html", "thumbs"
TEMPLATE = Path(__file__).with_name("gallery_page.html")
THUMB_SIDE = 320  # px, the longer side: sharp in a ~200 px grid cell on a high-density screen, ~20 KB each
THUMB_QUALITY = 80
# "Needs review": a single-choice winner below REVIEW_BELOW, or an object score within REVIEW_MARGIN of its
# threshold. 0.6 for a 3-5-way softmax means the runner-up is close; 0.1 is where a small change of the photo
# (crop, light) flips the object tag.
REVIEW_BELOW = 0.6
REVIEW_MARGIN = 0.1
# The larger view shows the original where browsers can draw it; HEIC and TIFF get the thumbnail instead.
BROWSER_FORMATS = frozenset(".jpg .jpeg .png .webp .bmp .gif .avif".split())
# Appears in the page (and a test reads it) so a stale template is noticed.
DATA_ELEMENT_ID = "gallery-data"
DATA_PLACEHOLDER = "/*__GALLERY_DATA__*/"


@dataclass(frozen=True)
class GalleryResult:
    page: Path
    photos: int
    failed: int
    thumbnails_made: int
    no_thumbnail: dict[str, str]  # file -> why there is no thumbnail (the photo cannot be decoded here either)


# ---- thresholds ----------------------------------------------------------------------------------------------------
def implied_thresholds(records: list[dict], taxonomy: Taxonomy) -> dict[str, float]:
    """Per object, a threshold consistent with the served labels: the taxonomy's value, moved into the interval
    (highest untagged score, lowest tagged score]. The answers do not carry the tuned thresholds, and a page that
    guessed 0.5 for an object tuned to 0.3 would call every confident tag "close to its threshold"."""
    result = {}
    ok = [r for r in records if r.get("status") == "ok"]
    for group in taxonomy.multi_groups:
        for cls in group.classes:
            tagged = [float(r[group.name]["scores"][cls.id]) for r in ok if cls.id in r[group.name]["labels"]]
            untagged = [float(r[group.name]["scores"][cls.id]) for r in ok if cls.id not in r[group.name]["labels"]]
            low, high = max(untagged, default=0.0), min(tagged, default=1.0)
            threshold = cls.threshold
            if threshold <= low:
                threshold = min(high, low + 1e-4)
            if threshold > high:
                threshold = high
            result[cls.id] = round(threshold, 4)
    return result


# ---- thumbnails ----------------------------------------------------------------------------------------------------
def thumbnail_name(file: str) -> str:
    """A flat, stable file name per photo: the relative paths of a card can repeat names in sub-folders."""
    return hashlib.sha1(file.encode("utf-8")).hexdigest()[:20] + ".jpg"


def make_thumbnail(source: Path, target: Path, side: int = THUMB_SIDE) -> str | None:
    """Write a JPEG thumbnail (upright, RGB) unless an up-to-date one exists; None, or why it cannot be made."""
    try:
        if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
            return None
        # The service's decoder: the same formats, EXIF rotation and refusals as the tagging itself.
        image = decode_image(source.read_bytes(), draft_size=(side, side))
    except (ImageDecodeError, OSError) as exc:
        return str(exc)
    image.thumbnail((side, side))
    tmp = target.with_name(target.name + ".tmp")
    image.save(tmp, "JPEG", quality=THUMB_QUALITY, optimize=True)
    os.replace(tmp, target)
    return None


# ---- the page's data -----------------------------------------------------------------------------------------------
def _english(identifier: str) -> str:
    return identifier.replace("_", " ")


def taxonomy_for_page(taxonomy: Taxonomy) -> dict:
    """Groups and classes with both languages, CSV codes and columns: what the page shows and writes."""
    groups = []
    for g in taxonomy.groups:
        groups.append({"name": g.name, "kind": g.kind, "ru": g.display_ru, "en": _english(g.name),
                       "classes": [{"id": c.id, "ru": c.display_ru, "en": _english(c.id), "code": c.code}
                                   for c in g.classes]})
    return {"groups": groups, "csv_columns": taxonomy.csv_columns()}


def photo_entry(record: dict, taxonomy: Taxonomy, thumb: str | None, original: str | None) -> dict:
    """One photo, compactly: 10,000 of them are a few MB of JSON. Scores and labels are class indices in the
    taxonomy's order; `p` holds each group's scores, `l` the single-choice index or the list of object indices;
    `b` where each tagged object is (normalised boxes), `a` the photo's aspect ratio as displayed."""
    entry = {"f": record["file"], "s": record.get("status", "failed"), "t": thumb, "o": original}
    if entry["s"] != "ok":
        entry.update(e=str(record.get("error", "")), r=str(record.get("reason", "error")),
                     h=record.get("http_status"))
        return entry
    scores, labels = [], []
    for g in taxonomy.groups:
        part = record[g.name]
        scores.append([round(float(part["scores"][c.id]), 4) for c in g.classes])
        labels.append(g.class_ids.index(part["label"]) if g.kind == SINGLE
                      else [g.class_ids.index(c) for c in part["labels"]])
    entry.update(p=scores, l=labels, v=str(record.get("model_version", "")))
    boxes = [[g, k, round(float(box["score"]), 3), *(round(float(v), 4) for v in box["box_normalized"])]
             for g, group in enumerate(taxonomy.groups) if group.kind != SINGLE
             for k, cls in enumerate(group.classes)
             for box in record[group.name].get("boxes", {}).get(cls.id, ())]
    if "image" in record:  # a model with boxes: `b` rows [group, class, score, x0, y0, x1, y1] (0-1), `a` W/H
        entry.update(b=boxes, a=round(record["image"]["width"] / record["image"]["height"], 4))
    return entry


def _script_safe_json(data: dict) -> str:
    # Inside <script>, "</script>" or "<!--" in a file name would end the element early: escape every < > &.
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(data: dict) -> str:
    template = TEMPLATE.read_text(encoding="utf-8")
    if DATA_PLACEHOLDER not in template:
        raise RuntimeError(f"{TEMPLATE} has no {DATA_PLACEHOLDER} placeholder")
    return template.replace(DATA_PLACEHOLDER, _script_safe_json(data))


def _original_link(root_from_page: str, file: str) -> str | None:
    """The photo's URL relative to the page (root_from_page: the photo folder relative to OUT), where it can
    be drawn."""
    if os.path.splitext(file)[1].lower() not in BROWSER_FORMATS:
        return None
    return quote(f"{root_from_page}/{file}")


def write_gallery(out_dir: str | Path, root: str | Path, *, records: dict[str, dict] | None = None,
                  taxonomy: Taxonomy | None = None, thresholds: dict[str, float] | None = None,
                  workers: int = 4, only: list[str] | None = None, page_name: str = PAGE_NAME,
                  search: str | None = None) -> GalleryResult:
    """(Re)write OUT/index.html from OUT/tags.jsonl (or `records`) and the photos under root.

    Thumbnails are made only where missing or older than their photo, so re-running after a resumed tagging run
    costs only the new photos. `thresholds` (e.g. from the run's taxonomy.json) override the implied ones.
    A search page (client.search --open) shows `only` those files, in that order, titled with `search`; it sits
    beside index.html and shares its corrections.
    """
    out_dir, root = Path(out_dir), Path(root)
    taxonomy = taxonomy or Taxonomy.load()
    if records is None:
        records = load_records(out_dir / JSONL_NAME)
    ordered = [records[name] for name in (sorted(records) if only is None else only)]
    thumbs = out_dir / THUMB_DIR
    thumbs.mkdir(parents=True, exist_ok=True)

    def thumbnail(record: dict) -> tuple[str, str | None, bool]:
        name = thumbnail_name(record["file"])
        target = thumbs / name
        existed = target.exists()
        problem = make_thumbnail(root / record["file"], target)
        return name, problem, not existed and problem is None

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="thumb") as pool:  # Pillow decodes without the GIL
        made = list(pool.map(thumbnail, ordered))
    no_thumbnail = {r["file"]: problem for r, (_, problem, _) in zip(ordered, made) if problem}
    root_from_page = Path(os.path.relpath(root.resolve(), out_dir.resolve())).as_posix()
    photos = [photo_entry(r, taxonomy, None if problem else f"{THUMB_DIR}/{name}",
                          _original_link(root_from_page, r["file"]))
              for r, (name, problem, _) in zip(ordered, made)]
    data = {
        "version": 1,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": str(root.resolve()),
        # localStorage is shared by every file:// page: the corrections are kept under the page's own folder.
        "storage_key": "phototag-gallery:" + str(out_dir.resolve()),
        "taxonomy": taxonomy_for_page(taxonomy),
        # From every answer, not only the shown ones: a search page marks the same photos for review as index.html.
        "thresholds": {**implied_thresholds(list(records.values()), taxonomy), **(thresholds or {})},
        "review": {"below": REVIEW_BELOW, "margin": REVIEW_MARGIN, "default_threshold": DEFAULT_THRESHOLD},
        "photos": photos,
    }
    if search is not None:
        data["search"] = search
    page = out_dir / page_name
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text(render_page(data), encoding="utf-8")
    os.replace(tmp, page)  # a browser reloading mid-write never sees half a page
    return GalleryResult(page, len(photos), sum(p["s"] != "ok" for p in photos), sum(m[2] for m in made),
                         no_thumbnail)


# ---- command line --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client.gallery", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="the tagging run's folder (with tags.jsonl)")
    parser.add_argument("--photos", type=Path, required=True, metavar="DIR",
                        help="the folder that was tagged (the names in tags.jsonl are relative to it)")
    parser.add_argument("--taxonomy", type=Path,
                        help="the served run's taxonomy.json, for its tuned object thresholds (default: thresholds "
                             "implied by the served labels)")
    parser.add_argument("--workers", type=int, default=4, help="threads making thumbnails (default: 4)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.out / "tags.jsonl").is_file():
        print(f"error: {args.out / 'tags.jsonl'} not found: tag the folder first (make tag-folder)", file=sys.stderr)
        return 2
    thresholds = Taxonomy.load(args.taxonomy).thresholds() if args.taxonomy else None
    result = write_gallery(args.out, args.photos, thresholds=thresholds, workers=args.workers)
    print(f"gallery: {result.page} ({result.photos} photos, {result.failed} failed, "
          f"{result.thumbnails_made} new thumbnails)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
