"""Compare two model versions on the same labeled photos before a rollout: metrics side by side, and what changed.

    python -m training.compare --old model_store/tagger.mar --new model_store/tagger-2.0.mar \
        --data data/demo/holdout/labels.csv --out reports/compare
    make compare OLD=runs/demo/model.pt NEW=runs/fixed/model.pt DATA=corrections.csv IMAGES=photos/

OLD and NEW are archives (.mar, as `make archive` builds them: the archive's taxonomy.json and model.pt are what
the handler serves) or checkpoints (model.pt). Both are run in process exactly as training/evaluate.py runs a
checkpoint (the handler's decoding, resize and `logits_to_tags`), and the metrics are evaluate.py's, computed from
the answers. Writes into --out: compare.json, report.md and changed.png (the photos whose tags changed: fixed,
newly wrong, or both).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

from phototag.checkpoint import load_model
from phototag.decoding import MAX_PIXELS
from phototag.labels_csv import LabelCsvError, LabeledImage, read_labels_csv
from phototag.taxonomy import SINGLE, Taxonomy, TaxonomyError
from training.evaluate import (
    EvaluationError,
    add_in_process_args,
    big_photos_from,
    check_answers,
    compute_metrics,
    tag_with_checkpoint,
)
from training.report import HIGHLIGHT, STYLE, save_figure, thumbnail, thumbnail_grid, write_json

ARCHIVE_MEMBERS = ("model.pt", "taxonomy.json")
FIXED, NEWLY_WRONG, MIXED = "fixed", "newly wrong", "both"


@dataclass
class Tagged:
    """One version's answers on the compared photos."""
    source: str
    taxonomy: Taxonomy
    answers: dict[str, dict]  # filename -> answer
    skipped: dict[str, str]


def load_version(path: Path, workdir: Path):
    """(model, taxonomy) of an archive or a checkpoint. From an archive, the taxonomy is its taxonomy.json, as the
    handler loads it; from a checkpoint, the one saved inside it."""
    if path.suffix == ".mar":
        try:
            with zipfile.ZipFile(path) as archive:
                missing = [m for m in ARCHIVE_MEMBERS if m not in archive.namelist()]
                if missing:
                    raise EvaluationError(f"{path} has no {', '.join(missing)}: not an archive of `make archive`")
                target = workdir / path.stem
                for member in ARCHIVE_MEMBERS:
                    archive.extract(member, target)
        except zipfile.BadZipFile:
            raise EvaluationError(f"{path} is not a model archive (not a zip file)") from None
        model, taxonomy, _ = load_model(target / "model.pt", taxonomy=Taxonomy.load(target / "taxonomy.json"))
    else:
        model, taxonomy, _ = load_model(path)
    return model, taxonomy


def tag_version(path: Path, rows: list[LabeledImage], image_dir: Path, workdir: Path, args) -> Tagged:
    model, taxonomy = load_version(path, workdir)
    kept, answers, skipped = tag_with_checkpoint(rows, image_dir, model, taxonomy, batch_size=args.batch_size,
                                                 device=args.device, precision=args.precision,
                                                 workers=args.workers, max_pixels=MAX_PIXELS,
                                                 big=big_photos_from(args))
    check_answers(answers, taxonomy)
    return Tagged(str(path), taxonomy, {row.filename: a for row, a in zip(kept, answers)}, skipped)


# ---- what changed --------------------------------------------------------------------------------------------------
def decisions(labels_or_answer: dict, taxonomy: Taxonomy, is_answer: bool) -> dict[str, object]:
    """Per decision (each single-choice head, each object) the value: a class id, or present/absent."""
    out: dict[str, object] = {}
    for group in taxonomy.groups:
        if group.kind == SINGLE:
            out[group.name] = labels_or_answer[group.name]["label"] if is_answer else labels_or_answer[group.name]
        else:
            present = set(labels_or_answer[group.name]["labels"] if is_answer else labels_or_answer[group.name])
            out.update({cls: cls in present for cls in group.class_ids})
    return out


def _describe(key: str, value: object) -> str:
    return f"{key}={value}" if not isinstance(value, bool) else (key if value else f"no {key}")


def changed_photos(rows: list[LabeledImage], old: Tagged, new: Tagged, taxonomy: Taxonomy) -> list[dict]:
    """Every photo whose tags differ between the versions, with the decisions each got right and wrong."""
    items = []
    for row in rows:
        truth = decisions(row.labels, taxonomy, False)
        before = decisions(old.answers[row.filename], taxonomy, True)
        after = decisions(new.answers[row.filename], taxonomy, True)
        if before == after:
            continue
        fixed = [_describe(k, truth[k]) for k in truth if before[k] != truth[k] and after[k] == truth[k]]
        broken = [_describe(k, after[k]) for k in truth if before[k] == truth[k] and after[k] != truth[k]]
        kind = MIXED if fixed and broken else FIXED if fixed else NEWLY_WRONG if broken else "changed, still wrong"
        items.append({"filename": row.filename, "kind": kind, "fixed": fixed, "newly_wrong": broken,
                      "truth": row.labels, "old": _labels(old.answers[row.filename], taxonomy),
                      "new": _labels(new.answers[row.filename], taxonomy)})
    order = {NEWLY_WRONG: 0, MIXED: 1, FIXED: 2}
    items.sort(key=lambda item: (order.get(item["kind"], 3), item["filename"]))
    return items


def _labels(answer: dict, taxonomy: Taxonomy) -> dict:
    return {g.name: answer[g.name]["label"] if g.kind == SINGLE else list(answer[g.name]["labels"])
            for g in taxonomy.groups}


def side_by_side(old_metrics: dict, new_metrics: dict, taxonomy: Taxonomy) -> list[dict]:
    """One row per figure: the head or object, the metric, old, new and new - old."""
    rows = []

    def add(what: str, metric: str, before: float, after: float) -> None:
        rows.append({"what": what, "metric": metric, "old": before, "new": after, "diff": after - before})

    for group in taxonomy.groups:
        o, n = old_metrics[group.name], new_metrics[group.name]
        if group.kind == SINGLE:
            add(group.name, "accuracy", o["accuracy"], n["accuracy"])
            add(group.name, "macro-F1", o["macro_f1"], n["macro_f1"])
        else:
            for cls in group.class_ids:
                add(cls, "F1", o["f1"][cls], n["f1"][cls])
    add("objects", "mean F1 (headline)", old_metrics["mean_object_f1"], new_metrics["mean_object_f1"])
    return rows


# ---- outputs -------------------------------------------------------------------------------------------------------
def _tags_line(labels: dict, taxonomy: Taxonomy) -> str:
    scene = " · ".join(str(labels[g.name]) for g in taxonomy.single_groups)
    objects = ", ".join(o for g in taxonomy.multi_groups for o in labels[g.name]) or "no objects"
    return textwrap.fill(f"{scene}; {objects}", 44, subsequent_indent="     ")


def _square(pixels: np.ndarray, side: int) -> np.ndarray:
    """The thumbnail centred on a white square, so that portrait and landscape photos take equal cells."""
    canvas = np.full((side, side, 3), 255, dtype=np.uint8)
    h, w = pixels.shape[:2]
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top:top + h, left:left + w] = pixels[:, :, :3]
    return canvas


def write_changed_grid(items: list[dict], image_dir: Path, taxonomy: Taxonomy, path: Path, limit: int = 24,
                       side: int = 256) -> Path:
    """Thumbnails of the changed photos (newly wrong first), with the truth, both answers and what changed."""
    shown = items[:limit] or [None]
    with matplotlib.rc_context(STYLE):
        fig, axes = thumbnail_grid(len(shown), (3.6, 4.9))
        for ax in axes:
            ax.spines[:].set_visible(False)
        for ax, item in zip(axes, shown):
            if item is None:
                ax.text(0.5, 0.5, "no photo's tags changed", ha="center", va="center", transform=ax.transAxes)
                continue
            pixels = thumbnail(Path(image_dir) / item["filename"], side)
            if pixels is not None:
                ax.imshow(_square(pixels, side))
            bad = item["kind"] != FIXED
            ax.set_title(f"{item['filename']}\n{item['kind']}", fontsize=8, color=HIGHLIGHT if bad else "green")
            what = "; ".join(filter(None, ["fixed: " + ", ".join(item["fixed"]) if item["fixed"] else "",
                                           "newly wrong: " + ", ".join(item["newly_wrong"])
                                           if item["newly_wrong"] else ""]))
            text = "\n".join([f"true {_tags_line(item['truth'], taxonomy)}",
                              f"old  {_tags_line(item['old'], taxonomy)}",
                              f"new  {_tags_line(item['new'], taxonomy)}", textwrap.fill(what or "–", 48)])
            # As the x label, the caption is part of the constrained layout: long captions push the next row down.
            ax.set_xlabel(text, loc="left", fontsize=7, family="monospace")
        for ax in axes[len(shown):]:
            ax.set_visible(False)
        more = f" (first {limit} of {len(items)})" if len(items) > limit else ""
        fig.suptitle(f"Photos whose tags changed{more}: newly wrong first, then both, then fixed")
        return save_figure(fig, path)


def write_report(result: dict, out_dir: Path) -> Path:
    lines = ["# Comparison of two model versions", "",
             f"- Old: `{result['old']['source']}`", f"- New: `{result['new']['source']}`",
             f"- Data: `{result['data']}`: **{result['images']} photos** tagged by both"
             + (f", {len(result['skipped'])} skipped" if result["skipped"] else ""),
             f"- Tags changed on {result['changed_count']} photos: {result['counts'].get(FIXED, 0)} fixed, "
             f"{result['counts'].get(NEWLY_WRONG, 0)} newly wrong, {result['counts'].get(MIXED, 0)} both", "",
             "| head / object | metric | old | new | new − old |", "|---|---|---|---|---|"]
    for row in result["side_by_side"]:
        lines.append(f"| {row['what']} | {row['metric']} | {row['old']:.3f} | {row['new']:.3f} | {row['diff']:+.3f} |")
    lines += ["", "![Photos whose tags changed](changed.png)", "",
              "| file | change | fixed | newly wrong |", "|---|---|---|---|"]
    for item in result["changed"]:
        lines.append(f"| `{item['filename']}` | {item['kind']} | {', '.join(item['fixed']) or '–'} | "
                     f"{', '.join(item['newly_wrong']) or '–'} |")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def format_table(result: dict) -> str:
    lines = [f"{'head / object':<16}{'metric':<20}{'old':>7}{'new':>7}{'diff':>8}"]
    for row in result["side_by_side"]:
        lines.append(f"{row['what']:<16}{row['metric']:<20}{row['old']:>7.3f}{row['new']:>7.3f}{row['diff']:>+8.3f}")
    lines.append(f"tags changed on {result['changed_count']} of {result['images']} photos: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(result["counts"].items())))
    return "\n".join(lines)


def compare(args) -> dict:
    image_dir = args.images or args.data.parent / "images"
    listed = read_labels_csv(args.data, Taxonomy.load())[:args.limit]  # labels only: no thresholds involved
    with tempfile.TemporaryDirectory(prefix="compare-") as workdir:
        old = tag_version(args.old, listed, image_dir, Path(workdir), args)
        new = tag_version(args.new, listed, image_dir, Path(workdir), args)
    if old.taxonomy.head_sizes != new.taxonomy.head_sizes:
        raise EvaluationError(f"the versions tag different heads: {old.taxonomy.head_sizes} vs "
                              f"{new.taxonomy.head_sizes}")
    taxonomy = new.taxonomy
    rows = [r for r in listed if r.filename in old.answers and r.filename in new.answers]
    if not rows:
        raise EvaluationError(f"no photo of {args.data} could be tagged (looked in {image_dir})")
    old_metrics = compute_metrics(rows, [old.answers[r.filename] for r in rows], old.taxonomy)
    new_metrics = compute_metrics(rows, [new.answers[r.filename] for r in rows], new.taxonomy)
    changed = changed_photos(rows, old, new, taxonomy)
    counts: dict[str, int] = {}
    for item in changed:
        counts[item["kind"]] = counts.get(item["kind"], 0) + 1
    return {
        "old": {"source": old.source, "metrics": old_metrics, "thresholds": old.taxonomy.thresholds()},
        "new": {"source": new.source, "metrics": new_metrics, "thresholds": new.taxonomy.thresholds()},
        "data": str(args.data), "images_dir": str(image_dir), "images": len(rows),
        "skipped": {**old.skipped, **new.skipped},
        "side_by_side": side_by_side(old_metrics, new_metrics, taxonomy),
        "changed_count": len(changed), "counts": counts, "changed": changed,
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.compare",
                                     description="Compare two model versions (archives or checkpoints) on the same "
                                                 "labeled photos: metrics side by side and the photos that changed")
    parser.add_argument("--old", type=Path, required=True, help="the serving version: a .mar archive or model.pt")
    parser.add_argument("--new", type=Path, required=True, help="the candidate: a .mar archive or model.pt")
    parser.add_argument("--data", type=Path, required=True, help="label CSV in the original dataset's format")
    parser.add_argument("--images", type=Path, help="folder the CSV's filenames are relative to (default: CSV "
                                                    "folder/images)")
    parser.add_argument("--out", type=Path, default=Path("reports/compare"), help="report folder (created)")
    parser.add_argument("--limit", type=int, help="compare on the first N rows of the CSV only")
    parser.add_argument("--show", type=int, default=24, help="most changed photos drawn in changed.png")
    add_in_process_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        result = compare(args)
        args.out.mkdir(parents=True, exist_ok=True)
        write_changed_grid(result["changed"], Path(result["images_dir"]), Taxonomy.load(), args.out / "changed.png",
                           limit=args.show)
        write_json(args.out / "compare.json", result)
        report = write_report(result, args.out)
    except (LabelCsvError, TaxonomyError, EvaluationError, OSError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(format_table(result))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
