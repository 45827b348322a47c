"""Train, evaluate and save the multi-head photo tagger (shaped like torchvision's reference scripts).

    python -m training.train --data data/train/labels.csv --output-dir runs/exp1
    python -m training.train --synthetic 2000 --output-dir runs/synth      # generate a synthetic set first

Writes into --output-dir: model.pt (state_dict + model config + taxonomy with tuned thresholds + args, loadable
with weights_only=True), taxonomy.json (the same taxonomy, for the archive), metrics.json and args.json.
"""
from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from phototag.checkpoint import read_checkpoint, save_checkpoint
from phototag.inference import PRECISIONS, Runtime, to_model_input
from phototag.labels_csv import LabelCsvError, read_labels_csv, write_labels_csv
from phototag.model import BACKBONES, POOLINGS, ModelConfig, PretrainedWeightsUnavailable, build_model
from phototag.preprocessing import IMAGE_SIZE, RESIZE_MODES
from phototag.taxonomy import DEFAULT_TAXONOMY_PATH, SINGLE, Taxonomy, TaxonomyError
from training.data import InMemoryDataset, load_labeled_folder
from training.metrics import evaluate_logits, format_metrics, majority_baseline, tune_thresholds
from training.report import write_json, write_training_curves

log = logging.getLogger("train")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the multi-head photo tagger", add_help=add_help)
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, help="label CSV in the original dataset's format (train+val pool)")
    data.add_argument("--images", type=Path,
                      help="folder the CSV's filenames are relative to (default: CSV folder/images)")
    data.add_argument("--synthetic", type=int, default=0, metavar="N",
                      help="without --data: first generate N synthetic scenes into OUTPUT_DIR/synthetic")
    data.add_argument("--synthetic-seed", type=int, default=0, help="seed of the generated synthetic scenes")
    data.add_argument("--synthetic-max-size", type=int, default=2000, help="largest side of generated scenes, px")
    data.add_argument("--test-data", type=Path, help="held-out label CSV evaluated once with the final model")
    data.add_argument("--test-images", type=Path, help="image folder of --test-data (default: its folder/images)")
    data.add_argument("--val-fraction", type=float, default=0.15, help="share of --data held out for validation")
    data.add_argument("--limit", type=int, help="use only the first N rows of --data (quick experiments)")
    data.add_argument("--taxonomy", type=Path, default=DEFAULT_TAXONOMY_PATH,
                      help="taxonomy JSON (heads and CSV columns)")

    model = parser.add_argument_group("model")
    model.add_argument("--arch", default="resnet34", choices=sorted(BACKBONES), help="backbone architecture")
    model.add_argument("--weights", default="none", choices=["none", "imagenet"],
                       help="backbone init: torchvision ImageNet weights (needs network or the torch hub cache) "
                            "or random")
    model.add_argument("--dropout", type=float, default=0.2, help="dropout before each head")
    model.add_argument("--image-size", type=int,
                       help=f"square model input side; stored in the checkpoint so serving resizes the same way "
                            f"(default: {IMAGE_SIZE}, or the --init-from checkpoint's)")
    model.add_argument("--resize", choices=RESIZE_MODES,
                       help="how a photo becomes the square input: squash stretches the whole frame (an object keeps "
                            "its full size along one axis), letterbox keeps the aspect ratio and pads; stored in the "
                            "checkpoint (default: squash, or the --init-from checkpoint's)")
    model.add_argument("--object-pooling", choices=POOLINGS,
                       help="pooling of the last feature map for the yes/no object heads (the single-choice heads "
                            "always average); gem = generalised mean with a learned exponent (docs/model.md) "
                            "(default: avg, or the --init-from checkpoint's)")
    model.add_argument("--init-from", type=Path, metavar="CHECKPOINT",
                       help="start from an earlier run's model.pt (same arch and heads): a short run warm-starts a "
                            "longer one, corrections fine-tune a served model; its input size, resize and object "
                            "pooling are kept unless given")

    mix = parser.add_argument_group("mixing in earlier training data (fine-tuning on corrections)")
    mix.add_argument("--mix-data", type=Path, metavar="CSV",
                     help="the original training data's label CSV: a sample of it is trained on with --data, so that "
                          "a fine-tune on a few hundred corrections does not forget everything else")
    mix.add_argument("--mix-images", type=Path, help="image folder of --mix-data (default: its folder/images)")
    mix.add_argument("--mix-ratio", type=float, default=1.0, metavar="R",
                     help="photos of --mix-data per photo of --data, drawn with --seed (all of them when it has "
                          "fewer; default: 1.0, half and half)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=10, help="passes over the training split")
    optim.add_argument("-b", "--batch-size", type=int, default=32, help="images per optimisation step")
    optim.add_argument("--opt", default="sgd", choices=["sgd", "adam"],
                       help="optimiser: SGD with Nesterov momentum, or Adam")
    optim.add_argument("--lr", type=float, default=0.05, help="peak learning rate of the one-cycle schedule")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (Nesterov)")
    optim.add_argument("--weight-decay", type=float, default=5e-5,
                       help="L2 weight decay (not on batch-norm and bias parameters)")
    optim.add_argument("--warmup", type=float, default=0.15,
                       help="share of the steps spent raising the learning rate to its peak (one-cycle pct_start)")
    optim.add_argument("--seed", type=int, default=0, help="seed of the train/val split, init and shuffling")
    optim.add_argument("-j", "--workers", type=int, default=2, help="processes decoding images before training")
    optim.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    optim.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="bf16 autocast or fp32; 'auto' is bf16 where the device has it natively (CUDA, CPUs "
                            "with AVX512-BF16/AMX: about 1.6x faster training on this project's CPU machine)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/latest"), help="where model.pt and metrics go")
    return parser


class MultiHeadLoss(nn.Module):
    """Cross-entropy on each single-choice slice plus BCE-with-logits on each yes/no class, summed.

    The BCE is summed over the yes/no classes (averaged over the batch only): each object is a decision as large as
    a single-choice head. Averaged over the classes too, the 8 objects together weighed as much as one head, and
    runs learned time, season and terrain long before any object.
    """

    def __init__(self, taxonomy: Taxonomy):
        super().__init__()
        self.taxonomy = taxonomy
        self.ce, self.bce = nn.CrossEntropyLoss(), nn.BCEWithLogitsLoss(reduction="none")

    def forward(self, logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = logits.new_zeros(())
        for group in self.taxonomy.groups:
            chunk = logits[:, group.logits].float()
            loss = loss + (self.ce(chunk, targets[group.name]) if group.kind == SINGLE
                           else self.bce(chunk, targets[group.name]).sum(dim=1).mean())
        return loss


def _batches(data: InMemoryDataset, batch_size: int, shuffle: bool, generator: torch.Generator | None = None):
    order = torch.randperm(len(data), generator=generator) if shuffle else torch.arange(len(data))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield data.images[idx], {k: v[idx] for k, v in data.targets.items()}


def train_one_epoch(model, criterion, optimizer, scheduler, data: InMemoryDataset, runtime: Runtime, epoch: int, args,
                    generator: torch.Generator) -> float:
    model.train()
    total, seen = 0.0, 0
    steps = math.ceil(len(data) / args.batch_size)
    bar = tqdm(_batches(data, args.batch_size, True, generator), total=steps, desc=f"epoch {epoch}",
               leave=False, mininterval=2.0, file=sys.stderr, disable=None)  # no bar in logs
    for images, targets in bar:
        # Horizontal flips change no label (nothing in the taxonomy depends on left/right).
        flip = torch.rand(len(images), generator=generator) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        x = to_model_input(images, runtime)
        targets = {k: v.to(runtime.device, non_blocking=True) for k, v in targets.items()}
        with runtime.autocast():
            loss = criterion(model(x), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{total / seen:.3f}")
    return total / max(seen, 1)


@torch.inference_mode()
def evaluate(model, data: InMemoryDataset, runtime: Runtime, args) -> np.ndarray:
    """Logits [N, num_logits] (float32, CPU numpy) of the whole split in eval mode."""
    model.eval()
    chunks = []
    for images, _ in _batches(data, args.batch_size * 2, False):
        with runtime.autocast():
            chunks.append(model(to_model_input(images, runtime)).float().cpu())
    return torch.cat(chunks).numpy()


def _numpy_targets(data: InMemoryDataset) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in data.targets.items()}


def _selection_score(metrics: dict, taxonomy: Taxonomy) -> float:
    """One number to pick the best epoch: the headline object F1 and every single-choice macro-F1, averaged."""
    parts = [metrics["mean_object_f1"]] + [metrics[g.name]["macro_f1"] for g in taxonomy.single_groups]
    return float(np.mean(parts))


def _build(args, taxonomy: Taxonomy, weights: str = "none"):
    return build_model(taxonomy, weights=weights, arch=args.arch, dropout=args.dropout, image_size=args.image_size,
                       resize=args.resize, object_pooling=args.object_pooling)


def _input_settings(args) -> None:
    """Fill in --image-size, --resize and --object-pooling: the --init-from checkpoint's where one is given (a
    fine-tune that silently switched a 128 px letterboxed model to 256 px squash would undo what it starts from),
    else the defaults."""
    defaults = {"image_size": IMAGE_SIZE, "resize": "squash", "object_pooling": "avg"}
    if args.init_from:
        old = ModelConfig.from_dict(read_checkpoint(args.init_from)["model_config"])
        defaults = {name: getattr(old, name) for name in defaults}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _mix_in(pool: InMemoryDataset, args, taxonomy: Taxonomy) -> InMemoryDataset:
    """--mix-data: the pool plus a seeded sample of the earlier training data, --mix-ratio photos per pool photo.
    The sample's rows are written to OUTPUT_DIR/mixed_in.csv, a record of what the run saw."""
    rows = read_labels_csv(args.mix_data, taxonomy)
    count = min(len(rows), max(0, round(args.mix_ratio * len(pool))))
    sample = sorted(random.Random(args.seed).sample(rows, count), key=lambda row: row.line)
    if not sample:
        return pool
    record = args.output_dir / "mixed_in.csv"
    write_labels_csv(record, [(row.filename, row.labels) for row in sample], taxonomy)
    mixed = load_labeled_folder(record, args.mix_images or args.mix_data.parent / "images", taxonomy,
                                args.image_size, args.workers, resize=args.resize)
    log.info("mixed in %d of the %d photos of %s (--mix-ratio %g)", len(mixed), len(rows), args.mix_data,
             args.mix_ratio)
    return InMemoryDataset(torch.cat([pool.images, mixed.images]),
                           {k: torch.cat([v, mixed.targets[k]]) for k, v in pool.targets.items()},
                           pool.filenames + [f"{args.mix_data.parent.name}/{f}" for f in mixed.filenames],
                           {**pool.skipped, **{f"{args.mix_data}: {k}": v for k, v in mixed.skipped.items()}})


def _load_initial_weights(model, path: Path) -> None:
    """--init-from: every weight of an earlier checkpoint with the same backbone and heads. The object pooling may
    differ (GeM's exponent then starts fresh); input size and resize are the checkpoint's unless given."""
    payload = read_checkpoint(path)
    old = ModelConfig.from_dict(payload["model_config"])
    if old.arch != model.config.arch or old.head_sizes != model.config.head_sizes:
        raise SystemExit(f"--init-from {path}: its model is {old.arch} with heads {old.head_sizes}, this run trains "
                         f"{model.config.arch} with heads {model.config.head_sizes}")
    missing, unexpected = model.load_state_dict(payload["model"], strict=False)
    stray = [k for k in missing + unexpected if not k.startswith("object_pool.")]
    if stray:
        raise SystemExit(f"--init-from {path}: weights do not fit this model: {stray[:5]}")
    log.info("initial weights from %s (epoch %s, %s, %d px, object pooling %s)", path, payload.get("epoch"),
             old.resize, old.image_size, old.object_pooling)


def _optimizer(model, args) -> torch.optim.Optimizer:
    """Weight decay on the conv and linear weights only: decaying batch-norm scales and biases restrains no
    capacity worth restraining and slows an underfitting run (torchvision's reference scripts offer the same
    split as --norm-weight-decay / --bias-weight-decay)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.opt == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)
    return torch.optim.Adam(groups, lr=args.lr)


def _curve_point(metrics: dict, taxonomy: Taxonomy) -> dict:
    """The learning curve's held-out figures of one epoch: mean object F1, each object's F1, each head's macro-F1."""
    point = {"mean_object_f1": metrics["mean_object_f1"]}
    point.update({g.name: metrics[g.name]["macro_f1"] for g in taxonomy.single_groups})
    for group in taxonomy.groups:
        if group.kind != SINGLE:
            point.update({f"{group.name}.{cls}": f1 for cls, f1 in metrics[group.name]["f1"].items()})
    return point


def _split(data: InMemoryDataset, val_fraction: float, seed: int) -> tuple[InMemoryDataset, InMemoryDataset]:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(len(data) * val_fraction)))
    if n_val >= len(data):
        raise ValueError(f"{len(data)} images are too few to hold out {val_fraction:.0%} for validation")
    return data.subset(order[n_val:]), data.subset(order[:n_val])


def _prepare_synthetic(args) -> None:
    from training.synth import generate_dataset  # only needed for synthetic runs

    target = args.output_dir / "synthetic"
    log.info("generating %d synthetic scenes into %s", args.synthetic, target)
    args.data = generate_dataset(target, count=args.synthetic, seed=args.synthetic_seed,
                                 max_size=args.synthetic_max_size, workers=args.workers)
    args.images = None


def _jsonable_args(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def main(args) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    torch.manual_seed(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        if not args.synthetic:
            raise SystemExit("give --data CSV or --synthetic N")
        _prepare_synthetic(args)
    taxonomy = Taxonomy.load(args.taxonomy)
    _input_settings(args)
    runtime = Runtime.resolve(args.device, args.precision)
    log.info("running on %s, %d torch threads", runtime.describe(), torch.get_num_threads())

    started = time.time()
    pool = load_labeled_folder(args.data, args.images, taxonomy, args.image_size, args.workers, args.limit,
                               resize=args.resize)
    if args.mix_data:
        pool = _mix_in(pool, args, taxonomy)
    train_data, val_data = _split(pool, args.val_fraction, args.seed)
    log.info("loaded %d images (%d skipped) in %.0f s: %d train, %d val", len(pool), len(pool.skipped),
             time.time() - started, len(train_data), len(val_data))
    val_targets = _numpy_targets(val_data)
    baseline = majority_baseline(_numpy_targets(train_data), val_targets, taxonomy)
    log.info("majority-class baseline on val:\n%s", format_metrics(baseline, taxonomy))

    model = _build(args, taxonomy, args.weights)
    if args.init_from:
        _load_initial_weights(model, args.init_from)
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = MultiHeadLoss(taxonomy)
    optimizer = _optimizer(model, args)
    steps_per_epoch = math.ceil(len(train_data) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs,
                                                    steps_per_epoch=steps_per_epoch, pct_start=args.warmup,
                                                    cycle_momentum=args.opt == "sgd",
                                                    base_momentum=0.85 * args.momentum, max_momentum=args.momentum)
    generator = torch.Generator().manual_seed(args.seed)

    test_data = test_targets = None
    if args.test_data:  # held out, never used for a choice: scored after every epoch for the learning curve
        test_data = load_labeled_folder(args.test_data, args.test_images, taxonomy, args.image_size, args.workers,
                                        resize=args.resize)
        test_targets = _numpy_targets(test_data)

    history, best = [], None
    summary = {"val_baseline": baseline, "train_images": len(train_data), "val_images": len(val_data),
               "skipped": pool.skipped, "runtime": runtime.describe()}
    train_started = time.time()
    for epoch in range(1, args.epochs + 1):
        epoch_start = time.time()
        train_loss = train_one_epoch(model, criterion, optimizer, scheduler, train_data, runtime, epoch, args,
                                     generator)
        val_logits = evaluate(model, val_data, runtime, args)
        metrics = evaluate_logits(val_logits, val_targets, taxonomy)
        score = _selection_score(metrics, taxonomy)
        thresholds = tune_thresholds(val_logits, val_targets, taxonomy)
        trained_taxonomy = taxonomy.with_thresholds(thresholds)
        record = {"epoch": epoch, "train_loss": train_loss, "val": metrics, "score": score,
                  "seconds": round(time.time() - epoch_start, 1), "images_seen": epoch * len(train_data),
                  "train_minutes": round((time.time() - train_started) / 60, 2)}
        if test_data is not None:
            test_metrics = evaluate_logits(evaluate(model, test_data, runtime, args), test_targets, trained_taxonomy)
            record["test"] = _curve_point(test_metrics, taxonomy)
        history.append(record)
        log.info("epoch %d/%d  loss %.4f  val score %.4f  (%.0f s)%s\n%s", epoch, args.epochs, train_loss, score,
                 time.time() - epoch_start,
                 f"  held-out mean object F1 {record['test']['mean_object_f1']:.3f}" if "test" in record else "",
                 format_metrics(metrics, taxonomy))
        if best is None or score > best["score"]:
            # Saved at once, so an interrupted long run still leaves its best model behind, ready to archive.
            best = {"epoch": epoch, "score": score, "taxonomy": trained_taxonomy,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            summary.update(best_epoch=epoch, thresholds=thresholds,
                           val=evaluate_logits(val_logits, val_targets, trained_taxonomy))
            _save_run(args, model, trained_taxonomy, summary)
        summary.update(history=history, epochs_done=epoch, train_seconds=round(time.time() - started, 1))
        write_json(args.output_dir / "metrics.json", summary)

    model.load_state_dict(best["state"])
    log.info("best epoch %d, val with tuned thresholds:\n%s", best["epoch"], format_metrics(summary["val"], taxonomy))
    if test_data is not None:
        summary["test"] = evaluate_logits(evaluate(model, test_data, runtime, args), test_targets, best["taxonomy"])
        summary["test_baseline"] = majority_baseline(_numpy_targets(train_data), test_targets, taxonomy)
        summary["test_images"] = len(test_data)
        log.info("held-out test (%d images):\n%s\nmajority baseline on test:\n%s", len(test_data),
                 format_metrics(summary["test"], taxonomy), format_metrics(summary["test_baseline"], taxonomy))
    write_json(args.output_dir / "metrics.json", summary)
    log.info("saved %s (model.pt, taxonomy.json, metrics.json)", args.output_dir)
    write_training_curves(summary["history"], args.output_dir)
    return summary


def _save_run(args, model, taxonomy: Taxonomy, summary: dict) -> None:
    """model.pt (weights + config + taxonomy + args), taxonomy.json beside it, args.json."""
    cpu_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    export = _build(args, taxonomy)
    export.load_state_dict(cpu_state)  # a plain CPU, contiguous-format copy: the training model stays as it is
    save_checkpoint(args.output_dir / "model.pt", export, taxonomy, args=_jsonable_args(args),
                    epoch=summary["best_epoch"], metrics=summary["val"])
    taxonomy.save(args.output_dir / "taxonomy.json")
    write_json(args.output_dir / "args.json", _jsonable_args(args))


if __name__ == "__main__":
    parser = get_args_parser()
    try:
        main(parser.parse_args())
    except (LabelCsvError, TaxonomyError, PretrainedWeightsUnavailable) as exc:
        parser.exit(2, f"error: {exc}\n")
