"""Evaluate a checkpoint in process, or the running service over REST, on a labeled CSV, with pictures.

    python -m training.evaluate --data data/demo/holdout/labels.csv --checkpoint runs/demo/model.pt --out reports/eval
    python -m training.evaluate --data data/demo/holdout/labels.csv --server http://127.0.0.1:8080 --out reports/eval

Both modes go through the service's answer: per image the tag JSON of `phototag.locate.tag_photo` (tags, and each
object's boxes). In process, each file is decoded, resized and normalised exactly as handler/tagger_handler.py does
and the model's logits and per-cell map become that JSON; with --server the JSON comes from POST
/predictions/tagger. Every metric is computed from those answers alone (single-choice labels, object labels,
object scores rounded as served, boxes), so the two modes give the same numbers for the same model and data.

Writes into --out: metrics.json, confusion_matrices.png, pr_curves.png, worst_images.png and report.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch

from client.auth import DEFAULT_KEY_FILE, KeyFileError
from client.rest import ServiceError, tag_image
from phototag.checkpoint import load_model
from phototag.decoding import MAX_PIXELS, ImageDecodeError
from phototag.inference import (
    PRECISIONS,
    BigPhotos,
    PreparedPhoto,
    Runtime,
    load_photo,
    predict,
    predict_object_map,
    prepare_model,
)
from phototag.labels_csv import LabelCsvError, LabeledImage, read_labels_csv, split_missing
from phototag.locate import tag_photo
from phototag.model import ServedTagger
from phototag.taxonomy import DEFAULT_TAXONOMY_PATH, SINGLE, Taxonomy, TaxonomyError
from training import report
from training.box_quality import box_quality, format_box_quality
from training.boxes import read_object_boxes
from training.metrics import metrics_from_predictions, pr_curve
from training.object_sizes import breakdown_by_size, format_breakdown, object_sizes
from training.report import threshold_text

IN_PROCESS_VERSION = "checkpoint"  # model_version written into in-process answers


class EvaluationError(RuntimeError):
    """Evaluation cannot go on (no usable image, an answer that does not fit the taxonomy, ...)."""


@dataclass
class Evaluation:
    """The labeled rows that were tagged, their answers (service JSON), and what was skipped and why."""
    taxonomy: Taxonomy
    data: Path
    image_dir: Path
    rows: list[LabeledImage]
    answers: list[dict]
    skipped: dict[str, str]
    listed: int
    source: dict[str, Any] = field(default_factory=dict)
    declared_thresholds: dict[str, float] | None = None  # None: not known (server mode without --taxonomy)


# ---- getting answers ------------------------------------------------------------------------------------------
def tag_with_checkpoint(rows: list[LabeledImage], image_dir: Path, model, taxonomy: Taxonomy,
                        *, batch_size: int = 32, device: str = "auto", precision: str = "auto",
                        workers: int = 2, max_pixels: int = MAX_PIXELS, big: BigPhotos | None = None,
                        ) -> tuple[list[LabeledImage], list[dict], dict[str, str]]:
    """Answers of a model (from `load_model`) for every readable listed image, computed as the handler does:
    phototag.inference.load_photo, one batched forward pass (predict) in eval mode, the big photos' closer object
    maps where `big` asks for them (predict_object_map), tag_photo."""
    runtime = Runtime.resolve(device, precision)  # as the handler resolves its defaults
    prepare_model(model, runtime)
    served = ServedTagger(model)
    image_size = model.config.image_size
    present, skipped = split_missing(rows, image_dir)

    def prepare(row: LabeledImage) -> PreparedPhoto | str:
        try:
            return load_photo((image_dir / row.filename).read_bytes(), image_size, max_pixels, model.config.resize,
                              big)
        except (ImageDecodeError, OSError) as exc:
            return str(exc)

    kept, answers = [], []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        for start in range(0, len(present), batch_size):
            chunk = present[start:start + batch_size]
            prepared = list(pool.map(prepare, chunk))
            good = [(row, p) for row, p in zip(chunk, prepared) if isinstance(p, PreparedPhoto)]
            for row, p in zip(chunk, prepared):
                if isinstance(p, str):
                    skipped[row.filename] = f"unreadable image: {p}"
            if not good:
                continue
            logits, cells = predict(served, torch.stack([p.image for _, p in good]), runtime)
            closer = {}
            big_ones = [index for index, (_, p) in enumerate(good) if p.closer is not None]
            for start_big in range(0, len(big_ones), 8):  # a 768 px input weighs 9 photos: smaller batches
                part = big_ones[start_big:start_big + 8]
                maps = predict_object_map(served, torch.stack([good[i][1].closer for i in part]), runtime)
                closer.update({i: (m.numpy(), good[i][1].closer_geometry) for i, m in zip(part, maps)})
            for index, (row, photo) in enumerate(good):
                kept.append(row)
                cell_map = None if cells is None else cells[index].numpy()
                answers.append(tag_photo(logits[index].tolist(), cell_map, taxonomy, IN_PROCESS_VERSION,
                                         photo.geometry, closer.get(index), photo.note))
    return kept, answers, skipped


def _refused_image(exc: ServiceError) -> str | None:
    """The handler's message when the service refused the image itself (HTTP 400 with its JSON), else None."""
    if exc.status != 400:
        return None
    try:
        body = json.loads(exc.body)
    except ValueError:
        return None
    if isinstance(body, dict) and "reason" in body and "error" in body:
        return str(body["error"])
    return None


def tag_with_server(rows: list[LabeledImage], image_dir: Path, url: str, *, key_file: Path = DEFAULT_KEY_FILE,
                    model: str = "tagger", version: str | None = None,
                    concurrency: int = 4) -> tuple[list[LabeledImage], list[dict], dict[str, str]]:
    """Answers of the running service (REST, token from the key file); concurrent requests let it batch them."""
    present, skipped = split_missing(rows, image_dir)
    local = threading.local()

    def ask(row: LabeledImage) -> dict | str:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        try:
            data = (image_dir / row.filename).read_bytes()
        except OSError as exc:
            return str(exc)
        try:
            return tag_image(data, model=model, version=version, url=url.rstrip("/"), key_file=key_file,
                             session=local.session)
        except ServiceError as exc:
            refused = _refused_image(exc)
            if refused is None:
                raise  # not about the image (auth, no such model, server trouble): stop here
            return refused

    kept, answers = [], []
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="rest") as pool:
        for row, answer in zip(present, pool.map(ask, present)):
            if isinstance(answer, str):
                skipped[row.filename] = f"unreadable image: {answer}"
            else:
                kept.append(row)
                answers.append(answer)
    return kept, answers, skipped


def check_answers(answers: list[dict], taxonomy: Taxonomy) -> None:
    """Every answer has every group with known class ids (a served model with another taxonomy is refused)."""
    for answer in answers:
        for group in taxonomy.groups:
            part = answer.get(group.name)
            if not isinstance(part, dict) or set(part.get("scores", {})) != set(group.class_ids):
                raise EvaluationError(f"answer does not fit the taxonomy's group {group.name!r}: {part!r}")
            labels = [part.get("label")] if group.kind == SINGLE else part.get("labels", [])
            if not set(labels) <= set(group.class_ids):
                raise EvaluationError(f"answer has unknown {group.name} labels {labels}")


# ---- metrics from answers -------------------------------------------------------------------------------------
def _truth_and_predictions(rows: list[LabeledImage], answers: list[dict], taxonomy: Taxonomy) -> dict:
    """Per group: (truth, predicted) class indices [N] (single) or 0/1 [N, K] (objects), plus object scores."""
    out = {}
    for group in taxonomy.groups:
        ids = group.class_ids
        if group.kind == SINGLE:
            truth = np.array([ids.index(r.labels[group.name]) for r in rows], dtype=np.int64)
            pred = np.array([ids.index(a[group.name]["label"]) for a in answers], dtype=np.int64)
            out[group.name] = (truth, pred, None)
        else:
            shape = (-1, len(ids))
            truth = np.array([[c in r.labels[group.name] for c in ids] for r in rows], dtype=bool).reshape(shape)
            pred = np.array([[c in a[group.name]["labels"] for c in ids] for a in answers], dtype=bool).reshape(shape)
            scores = np.array([[float(a[group.name]["scores"][c]) for c in ids] for a in answers]).reshape(shape)
            out[group.name] = (truth, pred, scores)
    return out


def compute_metrics(rows: list[LabeledImage], answers: list[dict], taxonomy: Taxonomy) -> dict:
    """training.metrics.metrics_from_predictions of the served answers (so format_metrics prints it)."""
    parts = _truth_and_predictions(rows, answers, taxonomy)
    truth = {name: true for name, (true, _, _) in parts.items()}
    predicted = {name: pred for name, (_, pred, _) in parts.items()}
    return metrics_from_predictions(truth, predicted, taxonomy)


def implied_thresholds(rows: list[LabeledImage], answers: list[dict], taxonomy: Taxonomy) -> dict[str, list[float]]:
    """Per object, the interval (above, at_most] the decision threshold must lie in, read from the answers:
    higher than every score left untagged, at most the lowest tagged score (scores as served, 4 digits)."""
    parts = _truth_and_predictions(rows, answers, taxonomy)
    result = {}
    for group in taxonomy.multi_groups:
        _, pred, scores = parts[group.name]
        for k, cls in enumerate(group.classes):
            tagged, untagged = scores[pred[:, k], k], scores[~pred[:, k], k]
            result[cls.id] = [float(untagged.max()) if len(untagged) else 0.0,
                              float(tagged.min()) if len(tagged) else 1.0]
    return result


def _tag_text(labels: dict, taxonomy: Taxonomy) -> tuple[str, str]:
    scene = " · ".join(labels[g.name] for g in taxonomy.single_groups)
    objects = ", ".join(o for g in taxonomy.multi_groups for o in labels[g.name]) or "no objects"
    return scene, objects


def worst_images(rows: list[LabeledImage], answers: list[dict], taxonomy: Taxonomy, count: int = 12) -> list[dict]:
    """The `count` images with the most wrong heads and objects; ties: lowest mean true-class probability."""
    items = []
    for row, answer in zip(rows, answers):
        wrong, probs = [], []
        predicted: dict = {}
        for group in taxonomy.groups:
            part = answer[group.name]
            if group.kind == SINGLE:
                truth = row.labels[group.name]
                predicted[group.name] = part["label"]
                probs.append(float(part["scores"][truth]))
                if part["label"] != truth:
                    wrong.append(group.name)
            else:
                present, tagged = set(row.labels[group.name]), set(part["labels"])
                predicted[group.name] = [c for c in group.class_ids if c in tagged]
                for cls in group.class_ids:
                    score = float(part["scores"][cls])
                    probs.append(score if cls in present else 1.0 - score)
                    if (cls in present) != (cls in tagged):
                        wrong.append(("missed " if cls in present else "false ") + cls)
        items.append({"filename": row.filename, "wrong": len(wrong), "what": wrong,
                      "true_prob": round(float(np.mean(probs)), 4), "truth": row.labels, "predicted": predicted})
    items.sort(key=lambda item: (-item["wrong"], item["true_prob"], item["filename"]))
    return items[:count]


# ---- the whole evaluation -------------------------------------------------------------------------------------
def run_evaluation(args) -> Evaluation:
    image_dir = args.images or args.data.parent / "images"
    if args.checkpoint:
        model, taxonomy, payload = load_model(args.checkpoint)  # the trained taxonomy, thresholds included
        rows = read_labels_csv(args.data, taxonomy)[:args.limit]
        kept, answers, skipped = tag_with_checkpoint(rows, image_dir, model, taxonomy,
                                                     batch_size=args.batch_size, device=args.device,
                                                     precision=args.precision, workers=args.workers,
                                                     max_pixels=args.max_pixels, big=big_photos_from(args))
        source = {"mode": "checkpoint", "checkpoint": str(args.checkpoint), "epoch": payload.get("epoch"),
                  "image_size": model.config.image_size, "big_photos": str(big_photos_from(args) or "off"),
                  "runtime": Runtime.resolve(args.device, args.precision).describe()}
        declared = taxonomy.thresholds()
    else:
        taxonomy = Taxonomy.load(args.taxonomy or DEFAULT_TAXONOMY_PATH)
        rows = read_labels_csv(args.data, taxonomy)[:args.limit]
        kept, answers, skipped = tag_with_server(rows, image_dir, args.server, key_file=args.key_file,
                                                 model=args.model, version=args.model_version,
                                                 concurrency=args.concurrency)
        versions = sorted({str(a.get("model_version")) for a in answers})
        source = {"mode": "server", "server": args.server, "model": args.model, "model_version": ", ".join(versions)}
        declared = taxonomy.thresholds() if args.taxonomy else None
    check_answers(answers, taxonomy)
    if not answers:
        raise EvaluationError(f"no usable images in {args.data} (looked in {image_dir}); skipped: {skipped}")
    return Evaluation(taxonomy, args.data, image_dir, kept, answers, skipped, len(rows), source, declared)


def summarise(ev: Evaluation, worst_count: int = 12) -> dict:
    """Everything metrics.json holds. `metrics` is computed from the answers' labels only (identical in both modes
    for the same model and data); `ranking` (PR curves) and `worst_images` use the served, rounded scores."""
    metrics = compute_metrics(ev.rows, ev.answers, ev.taxonomy)
    parts = _truth_and_predictions(ev.rows, ev.answers, ev.taxonomy)
    curves = {}
    for group in ev.taxonomy.multi_groups:
        truth, _, scores = parts[group.name]
        for k, cls in enumerate(group.classes):
            curves[cls.id] = pr_curve(truth[:, k], scores[:, k])
    implied = implied_thresholds(ev.rows, ev.answers, ev.taxonomy)
    boxes = read_object_boxes(ev.data)
    by_size = {}
    for group in ev.taxonomy.multi_groups if boxes else ():
        truth, pred, _ = parts[group.name]
        sizes = object_sizes([r.filename for r in ev.rows], group.class_ids, boxes)
        by_size[group.name] = breakdown_by_size(truth, pred, sizes, group.class_ids)
    box_figures = {}
    for group in ev.taxonomy.multi_groups if boxes else ():
        answers = [None if "error" in a else a[group.name] for a in ev.answers]
        quality = box_quality([r.filename for r in ev.rows], answers, boxes, group.class_ids)
        if quality is not None:
            box_figures[group.name] = quality
    return {
        "source": ev.source,
        "data": {"csv": str(ev.data), "images": str(ev.image_dir)},
        "listed": ev.listed,
        "images": len(ev.rows),
        "skipped_count": len(ev.skipped),
        "skipped": dict(sorted(ev.skipped.items())),
        "headline": {"mean_object_f1": metrics["mean_object_f1"]},
        "thresholds": {
            "source": "checkpoint taxonomy" if ev.source.get("mode") == "checkpoint"
            else ("--taxonomy file" if ev.declared_thresholds else "implied by the served labels"),
            "values": ev.declared_thresholds,
            "implied": implied,
        },
        "metrics": metrics,
        "ranking": {cls: {"average_precision": c["average_precision"], "positives": c["positives"]}
                    for cls, c in curves.items()},
        "pr_curves": curves,
        "by_object_size": by_size,
        "box_quality": box_figures,
        "worst_images": worst_images(ev.rows, ev.answers, ev.taxonomy, worst_count),
    }


def format_summary(result: dict, taxonomy: Taxonomy) -> str:
    """The short table printed at the end."""
    m = result["metrics"]
    src = result["source"]
    what = (src.get("checkpoint") if src.get("mode") == "checkpoint"
            else f"{src.get('server')} (model {src.get('model')} {src.get('model_version')})")
    lines = [f"evaluated {result['images']} of {result['listed']} images ({result['skipped_count']} skipped) "
             f"with {src.get('mode')} {what}",
             f"  {'head':<14}{'accuracy':>9}{'macro-F1':>10}"]
    for g in taxonomy.single_groups:
        lines.append(f"  {g.name:<14}{m[g.name]['accuracy']:>9.3f}{m[g.name]['macro_f1']:>10.3f}")
    lines.append(f"  {'object':<14}{'threshold':>10}{'precision':>10}{'recall':>8}{'F1':>7}{'AP':>7}")
    for g in taxonomy.multi_groups:
        for cls in g.class_ids:
            lines.append(f"  {cls:<14}{threshold_text(result, cls):>10}{m[g.name]['precision'][cls]:>10.3f}"
                         f"{m[g.name]['recall'][cls]:>8.3f}{m[g.name]['f1'][cls]:>7.3f}"
                         f"{result['ranking'][cls]['average_precision']:>7.3f}")
    lines.append(f"  mean object F1 (headline): {m['mean_object_f1']:.4f}")
    for breakdown in result.get("by_object_size", {}).values():
        lines += format_breakdown(breakdown)
    for quality in result.get("box_quality", {}).values():
        lines.append("  where the objects are (boxes against the true boxes; found: true objects on photos tagged "
                     "with them that got a box)")
        lines += format_box_quality(quality)
    return "\n".join(lines)


def write_outputs(result: dict, ev: Evaluation, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "confusion": report.write_confusion_matrices(result["metrics"], ev.taxonomy,
                                                     out_dir / "confusion_matrices.png"),
        "pr": report.write_pr_curves(result, ev.taxonomy, out_dir / "pr_curves.png"),
        "worst": report.write_worst_grid(result["worst_images"], ev.image_dir, ev.taxonomy,
                                         out_dir / "worst_images.png"),
    }
    report.write_json(out_dir / "metrics.json", result)
    figures["report"] = report.write_report_md(result, ev.taxonomy, figures, out_dir / "report.md")
    return figures


def add_in_process_args(group):
    """The options of tagging with a checkpoint in this process (`tag_with_checkpoint`), shared with compare."""
    group.add_argument("-b", "--batch-size", type=int, default=32, help="images per forward pass")
    group.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    group.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="bf16 autocast or fp32; 'auto' resolves as the handler's default does")
    group.add_argument("-j", "--workers", type=int, default=2, help="threads decoding images")
    group.add_argument("--big-photo-side", type=int, default=0, metavar="PX",
                       help="the big-photo mode, as model-config.yaml's big_photo_side: photos with a short side of "
                            "at least PX have their objects read again at --big-photo-input (default 0: off)")
    group.add_argument("--big-photo-input", type=int, default=BigPhotos.input_size, metavar="PX",
                       help="input size the objects of big photos are read at (default %(default)s)")
    group.add_argument("--big-photo-max-pixels", type=int, default=BigPhotos.max_pixels,
                       help="bigger photos stay in the ordinary mode (default %(default)s)")
    return group


def big_photos_from(args) -> BigPhotos | None:
    """The big-photo mode the in-process flags ask for, or None."""
    if not args.big_photo_side:
        return None
    return BigPhotos(args.big_photo_side, args.big_photo_input, args.big_photo_max_pixels)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Evaluate a checkpoint (in process) or the running service (REST) on a labeled CSV; "
                    "writes metrics.json, confusion matrices, PR curves, the worst images and report.md")
    parser.add_argument("--data", type=Path, required=True, help="label CSV in the original dataset's format")
    parser.add_argument("--images", type=Path,
                        help="folder the CSV's filenames are relative to (default: CSV folder/images)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path,
                       help="evaluate this model.pt in process (with its taxonomy and thresholds)")
    model.add_argument("--server", metavar="URL",
                       help="evaluate the running TorchServe at this inference URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--out", type=Path, default=Path("reports/eval"), help="report folder (created)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N rows of the CSV")
    parser.add_argument("--worst", type=int, default=12, help="how many worst-classified images to show")
    local = add_in_process_args(parser.add_argument_group("in-process (--checkpoint)"))
    local.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                       help="larger images are skipped as unreadable, as the service refuses them")
    remote = parser.add_argument_group("server (--server)")
    remote.add_argument("--key-file", type=Path, default=DEFAULT_KEY_FILE,
                        help="TorchServe's key_file.json (inference key); default $TAGGER_KEY_FILE or key_file.json")
    remote.add_argument("--model", default="tagger", help="model name at /predictions/MODEL")
    remote.add_argument("--model-version", help="ask this model version (default: the default version)")
    remote.add_argument("--concurrency", type=int, default=4, help="requests in flight (the server batches them)")
    remote.add_argument("--taxonomy", type=Path,
                        help="taxonomy JSON of the served model (e.g. runs/x/taxonomy.json) to list its thresholds; "
                             "default: the packaged layout, thresholds implied by the served labels")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        ev = run_evaluation(args)
        result = summarise(ev, args.worst)
        write_outputs(result, ev, args.out)
    except requests.ConnectionError:
        parser.exit(2, f"error: cannot reach the service at {args.server}: is TorchServe running (make serve)?\n")
    except (LabelCsvError, TaxonomyError, EvaluationError, KeyFileError, ServiceError, OSError, ValueError,
            requests.RequestException) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(format_summary(result, ev.taxonomy))
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])}: " + ", ".join(result["skipped"]))
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
