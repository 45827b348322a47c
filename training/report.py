"""Pictures and the Markdown report of an evaluation (training/evaluate.py), and the training curves (train.py).

Every figure is drawn in one style with matplotlib's non-interactive Agg backend (no display needed) on a
standalone `Figure`, so nothing depends on pyplot's global state.
"""
from __future__ import annotations

import json
import logging
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from phototag.decoding import ImageDecodeError, decode_image
from phototag.taxonomy import Taxonomy

log = logging.getLogger(__name__)

STYLE = {
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "savefig.dpi": 110,
    "savefig.facecolor": "white",
}
CMAP = "Blues"
HIGHLIGHT = "#c0392b"  # operating points, wrong answers


def write_json(path: Path, data: dict) -> None:
    """A JSON report (metrics, benchmarks, checks): indented, UTF-8, non-ASCII labels kept readable."""
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_figure(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def threshold_text(result: dict, cls: str) -> str:
    """An object's threshold as a short string: the declared value, or the interval implied by the served labels."""
    values = result["thresholds"]["values"]
    if values and cls in values:
        return f"{values[cls]:.3f}"
    low, high = result["thresholds"]["implied"][cls]
    return f"({low:.2f}, {high:.2f}]"


def _object_groups(taxonomy: Taxonomy) -> list[tuple[str, str]]:
    return [(g.name, c) for g in taxonomy.multi_groups for c in g.class_ids]


# ---- evaluation figures ---------------------------------------------------------------------------------------
def write_confusion_matrices(metrics: dict, taxonomy: Taxonomy, path: Path) -> Path:
    """One panel per single-choice head: counts in the cells, colour = row-normalised share, class names on axes."""
    groups = taxonomy.single_groups
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.3 * len(groups) + 0.8, 4.4), layout="constrained")
        axes = fig.subplots(1, len(groups), squeeze=False)[0]
        image = None
        for ax, group in zip(axes, groups):
            m = metrics[group.name]
            counts = np.asarray(m["confusion"], dtype=np.int64)
            support = counts.sum(axis=1, keepdims=True)
            share = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
            image = ax.imshow(share, cmap=CMAP, vmin=0.0, vmax=1.0)
            for i in range(counts.shape[0]):
                for j in range(counts.shape[1]):
                    text = f"{counts[i, j]}\n{share[i, j]:.0%}" if support[i, 0] else "–"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.55 else "black")
            classes = m.get("classes", group.class_ids)
            ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
            ax.set_yticks(range(len(classes)), [f"{c} ({support[k, 0]})" for k, c in enumerate(classes)])
            ax.set_xlabel("predicted")
            ax.set_ylabel("true (images)")
            ax.set_title(f"{group.name}\naccuracy {m['accuracy']:.3f} · macro-F1 {m['macro_f1']:.3f}")
            ax.spines[:].set_visible(False)
        fig.colorbar(image, ax=list(axes), shrink=0.85, label="share of the true class (row)")
        return save_figure(fig, path)


def write_pr_curves(result: dict, taxonomy: Taxonomy, path: Path) -> Path:
    """Precision-recall curve of every object from its scores, with the operating point of its threshold."""
    objects = _object_groups(taxonomy)
    ncols = min(4, len(objects))
    nrows = math.ceil(len(objects) / ncols)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.2 * ncols, 3.1 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (group, cls) in zip(axes, objects):
            curve = result["pr_curves"][cls]
            m = result["metrics"][group]
            precision, recall = m["precision"][cls], m["recall"][cls]
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.05)
            ax.grid(True)
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            if curve["positives"]:
                # Precision p_k holds on (r_{k-1}, r_k]: the step curve whose area is the average precision.
                ax.plot([0.0] + curve["recall"][1:], curve["precision"][1:2] + curve["precision"][1:],
                        drawstyle="steps-pre", color="C0", lw=1.5)
                prevalence = curve["positives"] / max(result["images"], 1)
                ax.axhline(prevalence, color="grey", ls=":", lw=1, label=f"prevalence {prevalence:.2f}")
                ax.plot([recall], [precision], "o", color=HIGHLIGHT, ms=7,
                        label=f"threshold {threshold_text(result, cls)}\nP {precision:.2f} · R {recall:.2f}")
                ax.legend(loc="best")
                ax.set_title(f"{cls}: AP {curve['average_precision']:.3f} · F1 {m['f1'][cls]:.3f}")
            else:
                ax.text(0.5, 0.5, f"no {cls} in the truth\n({m['predicted'][cls]} tagged)", ha="center",
                        va="center", transform=ax.transAxes, color="grey")
                ax.set_title(f"{cls}: no positives")
        for ax in axes[len(objects):]:
            ax.set_visible(False)
        fig.suptitle(f"Objects: precision-recall from the answers' scores ({result['images']} images)")
        return save_figure(fig, path)


def thumbnail(path: Path, side: int) -> np.ndarray | None:
    try:
        image = decode_image(path.read_bytes(), draft_size=(side, side))
    except (ImageDecodeError, OSError):
        return None
    image.thumbnail((side, side))
    return np.asarray(image)


def thumbnail_grid(count: int, cell_inches: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure of `count` picture cells, four to a row, without ticks; the caller draws into the axes (call it
    inside matplotlib.rc_context(STYLE))."""
    ncols = min(4, count)
    nrows = math.ceil(count / ncols)
    fig = Figure(figsize=(cell_inches[0] * ncols, cell_inches[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _tags_text(labels: dict, taxonomy: Taxonomy) -> str:
    scene = " · ".join(str(labels[g.name]) for g in taxonomy.single_groups)
    objects = ", ".join(o for g in taxonomy.multi_groups for o in labels[g.name]) or "no objects"
    return scene + "\n" + textwrap.fill(objects, 42)


def write_worst_grid(items: list[dict], image_dir: Path, taxonomy: Taxonomy, path: Path, side: int = 256) -> Path:
    """Thumbnails of the worst-classified images with the true and predicted tags (and what is wrong) under each."""
    with matplotlib.rc_context(STYLE):
        fig, axes = thumbnail_grid(max(len(items), 1), (3.4, 4.3))
        for ax, item in zip(axes, items):
            pixels = thumbnail(Path(image_dir) / item["filename"], side)
            if pixels is None:
                ax.text(0.5, 0.5, "image unreadable now", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(pixels)
            ax.set_title(f"{item['filename']}\n{item['wrong']} wrong · true-class p {item['true_prob']:.2f}",
                         fontsize=8)
            truth = ax.text(0.0, -0.03, "true: " + _tags_text(item["truth"], taxonomy).replace("\n", "\n      "),
                            transform=ax.transAxes, va="top", ha="left", fontsize=7, family="monospace")
            wrong = textwrap.fill("wrong: " + (", ".join(item["what"]) or "nothing"), 48)
            ax.annotate("pred: " + _tags_text(item["predicted"], taxonomy).replace("\n", "\n      ") + "\n" + wrong,
                        xy=(0.0, 0.0), xycoords=truth, xytext=(0, -3), textcoords="offset points", va="top",
                        ha="left", fontsize=7, family="monospace", color=HIGHLIGHT if item["wrong"] else "black")
        for ax in axes[len(items):]:
            ax.set_visible(False)
        fig.suptitle(f"{len(items)} worst-classified images (most wrong heads and objects, then lowest "
                     "true-class probability)")
        return save_figure(fig, path)


# ---- report.md --------------------------------------------------------------------------------------------------
def write_report_md(result: dict, taxonomy: Taxonomy, figures: dict[str, Path], path: Path) -> Path:
    m, src = result["metrics"], result["source"]
    objects = _object_groups(taxonomy)
    if src.get("mode") == "checkpoint":
        model = (f"checkpoint `{src.get('checkpoint')}` (epoch {src.get('epoch')}, input {src.get('image_size')} px), "
                 f"evaluated in process on {src.get('runtime')}, big-photo mode {src.get('big_photos', 'off')}")
    else:
        model = f"`{src.get('model')}` version {src.get('model_version')} served at {src.get('server')} (REST)"
    lines = [
        "# Evaluation report", "",
        f"- Model: {model}",
        f"- Data: `{result['data']['csv']}`, images in `{result['data']['images']}`: {result['listed']} listed, "
        f"**{result['images']} evaluated**, {result['skipped_count']} skipped",
        f"- **Headline: mean F1 over the {len(objects)} objects = {m['mean_object_f1']:.4f}**",
        "",
        "Every number comes from the service's answer per image (labels; scores as served, 4 digits), so a "
        "checkpoint evaluated in process and the same model evaluated through the server give the same metrics.",
        "", "## Single-choice heads", "",
        "| head | accuracy | macro-F1 | F1 per class |", "|---|---|---|---|",
    ]
    for g in taxonomy.single_groups:
        per_class = ", ".join(f"{c} {v:.2f}" for c, v in m[g.name].get("f1_per_class", {}).items())
        lines.append(f"| {g.name} | {m[g.name]['accuracy']:.3f} | {m[g.name]['macro_f1']:.3f} | {per_class} |")
    lines += ["", f"![Confusion matrices]({Path(figures['confusion']).name})", "",
              "Confusion matrices: rows are the true class (image count in brackets), columns the prediction; "
              "each cell shows the count and the share of its row, which also sets the colour.", "",
              "## Objects", "",
              f"Thresholds: {result['thresholds']['source']}"
              + (" (an interval (above, at most] where only the served labels tell)."
                 if not result["thresholds"]["values"] else "."), "",
              "| object | threshold | precision | recall | F1 | average precision | in truth | tagged |",
              "|---|---|---|---|---|---|---|---|"]
    for group, cls in objects:
        g = m[group]
        lines.append(f"| {cls} | {threshold_text(result, cls)} | {g['precision'][cls]:.3f} | {g['recall'][cls]:.3f} | "
                     f"{g['f1'][cls]:.3f} | {result['ranking'][cls]['average_precision']:.3f} | "
                     f"{g['positives'][cls]} | {g['predicted'][cls]} |")
    lines += [f"| **mean** | | | | **{m['mean_object_f1']:.4f}** | | | |", "",
              f"![Precision-recall curves]({Path(figures['pr']).name})", "",
              "Precision-recall curves from the object scores; the red point is the operating point of the "
              "threshold in use (the precision and recall in the table).", ""]
    lines += _size_breakdown_lines(result.get("by_object_size", {}))
    lines += _box_quality_lines(result.get("box_quality", {}))
    lines += ["## Worst-classified images", "",
              f"![Worst-classified images]({Path(figures['worst']).name})", "",
              "| # | file | wrong | what | mean true-class probability |", "|---|---|---|---|---|"]
    for k, item in enumerate(result["worst_images"], 1):
        lines.append(f"| {k} | `{item['filename']}` | {item['wrong']} | {', '.join(item['what']) or '–'} | "
                     f"{item['true_prob']:.3f} |")
    lines += ["", "## Skipped images", ""]
    if result["skipped"]:
        lines += ["| file | why |", "|---|---|"]
        lines += [f"| `{name}` | {why.replace('|', '/')} |" for name, why in result["skipped"].items()]
    else:
        lines.append("None: every listed image was read and tagged.")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _size_breakdown_lines(by_size: dict) -> list[str]:
    """report.md's table of recall and F1 per object and size bucket (only where the data has object boxes)."""
    if not by_size:
        return []
    lines = ["## Objects by size", "",
             "Size of the object as a share of the photo's short side (from the generator's box sidecar). Each "
             "cell is recall / F1, the F1 taken over the photos without the object plus those showing it at that "
             "size; the number of photos showing it at that size is in brackets.", ""]
    for group, buckets in by_size.items():
        names = list(buckets)
        lines += ["| object | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        objects = list(next(iter(buckets.values()))["objects"])

        def cell(part: dict) -> str:
            if part["recall"] is None:
                return "–"
            return f"{part['recall']:.2f} / {part['f1']:.2f} ({part['positives']})"
        for cls in objects:
            lines.append(f"| {cls} | " + " | ".join(cell(buckets[b]["objects"][cls]) for b in names) + " |")
        lines.append(f"| **all {group}** | " + " | ".join(cell(buckets[b]) for b in names) + " |")
        lines.append("")
    return lines


def _box_quality_lines(quality: dict) -> list[str]:
    """report.md's table of how well the served boxes say where the objects are (training/box_quality.py)."""
    if not quality:
        return []
    lines = ["## Where the objects are", "",
             "Each served box against the generator's boxes: **centre inside** is the share of boxes whose centre "
             "lies in a true box of the same object, **IoU** the mean overlap with the best-matching true box (0 "
             "where there is none), **found** the share of true objects, on photos tagged with that object, that "
             "got a box centred on them. Rows by the size of the true object (share of the short side); boxes on "
             "photos without the object count only in *all*.", ""]

    def figure(value) -> str:
        return "–" if value is None else f"{value:.2f}"
    for group, buckets in quality.items():
        lines += ["| object | size | boxes | centre inside | IoU | true objects | found |",
                  "|---|---|---|---|---|---|---|"]
        for bucket, part in buckets.items():
            lines.append(f"| **all {group}** | {bucket} | {part['boxes']} | {figure(part['centre_inside'])} | "
                         f"{figure(part['mean_iou'])} | {part['true_objects']} | {figure(part['found'])} |")
        for cls, part in buckets["all"]["objects"].items():
            lines.append(f"| {cls} | all | {part['boxes']} | {figure(part['centre_inside'])} | "
                         f"{figure(part['mean_iou'])} | {part['true_objects']} | {figure(part['found'])} |")
        lines.append("")
    return lines


# ---- training curves ------------------------------------------------------------------------------------------
def write_training_curves(history: list[dict], out_dir: str | Path, name: str = "curves.png") -> Path | None:
    """Loss and per-epoch validation metrics (macro-F1 per single-choice head, mean object F1) of a training run.

    `history` is train.py's list of {"epoch", "train_loss", "val": evaluate_logits output, "score", "seconds"} and,
    where the run had --test-data, "test" (the held-out learning-curve point) drawn too.
    Writes OUT_DIR/curves.png and returns its path; None (and a warning, never an exception that would fail a
    finished training run) when there is nothing to draw or drawing fails.
    """
    if not history:
        return None
    try:
        return _draw_training_curves(history, Path(out_dir) / name)
    except (KeyError, TypeError, ValueError, OSError) as exc:
        log.warning("could not draw the training curves: %s", exc)
        return None


def _draw_training_curves(history: list[dict], path: Path) -> Path:
    epochs = [h["epoch"] for h in history]
    vals = [h.get("val") or {} for h in history]
    heads = [k for k, v in vals[0].items() if isinstance(v, dict) and "macro_f1" in v]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(12, 3.9), layout="constrained")
        ax_loss, ax_val = fig.subplots(1, 2)
        ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", color="C0", label="train loss")
        val_loss = [h.get("val_loss", v.get("loss")) for h, v in zip(history, vals)]
        if any(x is not None for x in val_loss):
            ax_loss.plot(epochs, [np.nan if x is None else x for x in val_loss], marker="o", color="C1",
                         label="val loss")
        ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
        for k, head in enumerate(heads):
            ax_val.plot(epochs, [v[head]["macro_f1"] for v in vals], marker="o", color=f"C{k}",
                        label=f"{head} macro-F1")
        ax_val.plot(epochs, [v.get("mean_object_f1", np.nan) for v in vals], marker="s", lw=2.2, color="black",
                    label="mean object F1 (headline)")
        if any("test" in h for h in history):  # the learning curve: held out, thresholds tuned on validation
            ax_val.plot(epochs, [h.get("test", {}).get("mean_object_f1", np.nan) for h in history], marker="D",
                        lw=2.2, ls="-.", color=HIGHLIGHT, label="held-out mean object F1")
        if all("score" in h for h in history):
            best = max(history, key=lambda h: h["score"])
            ax_val.plot(epochs, [h["score"] for h in history], ls="--", color="grey", label="selection score")
            ax_val.axvline(best["epoch"], color=HIGHLIGHT, ls=":", lw=1.2, label=f"best epoch {best['epoch']}")
        ax_val.set(xlabel="epoch", ylabel="validation", title="validation metrics per epoch", ylim=(-0.02, 1.02))
        for ax in (ax_loss, ax_val):
            ax.grid(True)
            if len(epochs) <= 20:
                ax.set_xticks(epochs)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax_loss.legend(loc="best")
        ax_val.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
        return save_figure(fig, path)
