"""Train, evaluate and save the multi-head photo tagger (shaped like torchvision's reference scripts).

    python -m training.train --data data/train/labels.csv --output-dir runs/exp1
    python -m training.train --synthetic 2000 --output-dir runs/synth      # generate a synthetic set first

Writes into --output-dir: model.pt (state_dict + model config + taxonomy with tuned thresholds + args, loadable
with weights_only=True), taxonomy.json (the same taxonomy, for the archive), metrics.json and args.json.
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from phototag.checkpoint import read_checkpoint, save_checkpoint
from phototag.inference import PRECISIONS, Runtime
from phototag.labels_csv import LabelCsvError, read_labels_csv, write_labels_csv
from phototag.model import (
    BACKBONES,
    CELL_STRIDE,
    OBJECT_HEADS,
    POOLINGS,
    ModelConfig,
    PretrainedWeightsUnavailable,
    build_model,
)
from phototag.preprocessing import IMAGE_SIZE, RESIZE_MODES
from phototag.taxonomy import DEFAULT_TAXONOMY_PATH, SINGLE, Taxonomy, TaxonomyError
from training.boxes import BoxFileError
from training.data import InMemoryDataset, load_labeled_folder
from training.engine import PhotoStream, evaluate, train_one_epoch
from training.metrics import evaluate_logits, format_metrics, majority_baseline, tune_thresholds
from training.objects import MultiHeadLoss, recalibrate_batch_norm
from training.report import write_json, write_training_curves
from training.resume import read_resume_point, restore, resumed_args, save_resume_point

log = logging.getLogger("train")
# 4×4 cells: the objects issue's trial size, a sixteenth of a 256 px photo's cost
DEFAULT_CROP_SIZE = 64
# --step-minutes measures the step rate over this many steps, after these many untimed ones
RATE_WARMUP_STEPS, RATE_STEPS = 10, 40


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
    model.add_argument("--object-head", choices=OBJECT_HEADS,
                       help="cells: a logit per object per layer3 cell (stride 16), the photo's logit is the best "
                            "cell's, trained from the box sidecar where there is one; pooled: linear heads on a "
                            "pooling of the last map, the recipe before (default: cells, or the --init-from "
                            "checkpoint's)")
    model.add_argument("--object-pooling", choices=POOLINGS,
                       help="pooled object head only: pooling of the last feature map it reads (the single-choice "
                            "heads always average); gem = generalised mean with a learned exponent (docs/model.md) "
                            "(default: avg; a cells head always takes the max over its cells)")
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

    crops = parser.add_argument_group("object crops at serving scale (per-cell model, photos with boxes)")
    crops.add_argument("--crops-per-step", type=int, default=64,
                       help="crops cut from photos decoded at the serving size, trained per cell beside each "
                            "whole-photo batch (0: whole photos only)")
    crops.add_argument("--crop-size", type=int,
                       help="crop side in px, a multiple of the cell stride (16) (default: 64, or the input size "
                            "where that is smaller)")
    crops.add_argument("--bn-photos", type=int, default=256,
                       help="whole training photos at the serving size that set the batch-norm statistics before "
                            "each validation and save (0: keep the running averages of training, crops included)")
    crops.add_argument("--centred-crops", type=float, default=0.6,
                       help="share of the crops placed over a random object of their photo (the rest anywhere)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=10,
                       help="epochs: each one --epoch-steps steps, then validation, the learning curve and a save")
    optim.add_argument("--epoch-steps", type=int,
                       help="optimisation steps per epoch (default: one pass over the training photos); a large "
                            "generated set is then seen in parts, with a learning-curve point after each")
    optim.add_argument("--step-minutes", type=float, metavar="MIN",
                       help="size the schedule to this machine: --epoch-steps becomes the number of steps that fit "
                            "MIN minutes over --epochs, by the step rate measured on a throwaway copy of the model "
                            "before training (scoring between epochs not counted); overrides --epoch-steps, kept "
                            "on --resume")
    optim.add_argument("-b", "--batch-size", type=int, default=32,
                       help="whole photos per optimisation step (0: crops only, training just the object cells; "
                            "needs --epoch-steps or --step-minutes, and photos with boxes)")
    optim.add_argument("--freeze-cells", action="store_true",
                       help="hold the backbone up to layer3 and the object cells as they are (from --init-from) "
                            "and train layer4 and the scene heads on whole photos only")
    optim.add_argument("--opt", default="sgd", choices=["sgd", "adam", "adamw"],
                       help="optimiser: SGD with Nesterov momentum, Adam, or AdamW (decoupled weight decay)")
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
    optim.add_argument("--resume", action="store_true",
                       help="continue the run in --output-dir from its last finished epoch (resume.pt: weights, "
                            "optimiser, schedule, learning curve), with the arguments it was started with")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/latest"), help="where model.pt and metrics go")
    return parser


def _numpy_targets(data: InMemoryDataset) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in data.targets.items()}


def _selection_score(metrics: dict, taxonomy: Taxonomy) -> float:
    """One number to pick the best epoch: the headline object F1 and every single-choice macro-F1, averaged."""
    parts = [metrics["mean_object_f1"]] + [metrics[g.name]["macro_f1"] for g in taxonomy.single_groups]
    return float(np.mean(parts))


def _build(args, taxonomy: Taxonomy, weights: str = "none"):
    return build_model(taxonomy, weights=weights, arch=args.arch, dropout=args.dropout, image_size=args.image_size,
                       resize=args.resize, object_pooling=args.object_pooling, object_head=args.object_head)


def _input_settings(args) -> None:
    """Fill in --image-size, --resize, --object-head and --object-pooling: the --init-from checkpoint's where one
    is given (a fine-tune that silently switched a 128 px letterboxed model to 256 px squash would undo what it
    starts from), else the defaults."""
    defaults = {"image_size": IMAGE_SIZE, "resize": "squash", "object_head": "cells"}
    if args.init_from:
        old = ModelConfig.from_dict(read_checkpoint(args.init_from)["model_config"])
        defaults = {name: getattr(old, name) for name in defaults}
        if args.object_head in (None, old.object_head) and args.object_pooling is None:
            args.object_pooling = old.object_pooling
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.object_head == "cells":
        if args.object_pooling not in (None, "max"):
            raise SystemExit("--object-pooling is for --object-head pooled; a cells head takes the max over cells")
        args.object_pooling = "max"
    elif args.object_pooling is None:
        args.object_pooling = "avg"
    if args.crop_size is None:
        args.crop_size = min(DEFAULT_CROP_SIZE, args.image_size // CELL_STRIDE * CELL_STRIDE)
    if args.crop_size % CELL_STRIDE or not CELL_STRIDE <= args.crop_size <= args.image_size:
        raise SystemExit(f"--crop-size {args.crop_size} must be a multiple of 16 and at most --image-size")


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
    # The record sits in the output folder, away from the mix data's box sidecar: the boxes come from the original.
    mixed = load_labeled_folder(record, args.mix_images or args.mix_data.parent / "images", taxonomy,
                                args.image_size, args.workers, resize=args.resize, cell_stride=_cell_stride(args),
                                boxes_from=args.mix_data)
    log.info("mixed in %d of the %d photos of %s (--mix-ratio %g)", len(mixed), len(rows), args.mix_data,
             args.mix_ratio)
    mixed.filenames = [f"{args.mix_data.parent.name}/{f}" for f in mixed.filenames]
    mixed.skipped = {f"{args.mix_data}: {k}": v for k, v in mixed.skipped.items()}
    return InMemoryDataset.concat([pool, mixed])


def _cell_stride(args) -> int | None:
    """The per-cell targets' stride for a cells model, None for a pooled one (it trains from photo labels)."""
    return CELL_STRIDE if args.object_head == "cells" else None


def _load_initial_weights(model, path: Path) -> None:
    """--init-from: every weight of an earlier checkpoint with the same backbone and heads. The object pooling may
    differ (GeM's exponent then starts fresh); so may the object head's kind, and then the object heads start
    fresh on the checkpoint's backbone. Input size and resize are the checkpoint's unless given."""
    payload = read_checkpoint(path)
    old = ModelConfig.from_dict(payload["model_config"])
    if old.arch != model.config.arch or old.head_sizes != model.config.head_sizes:
        raise SystemExit(f"--init-from {path}: its model is {old.arch} with heads {old.head_sizes}, this run trains "
                         f"{model.config.arch} with heads {model.config.head_sizes}")
    state = payload["model"]
    fresh = ()
    if old.object_head != model.config.object_head:
        fresh = tuple(f"heads.{name}." for name in model.config.object_heads)
        state = {k: v for k, v in state.items() if not k.startswith(fresh)}
        log.info("--init-from %s has %s object heads, this run trains %s ones: they start fresh", path,
                 old.object_head, model.config.object_head)
    missing, unexpected = model.load_state_dict(state, strict=False)
    stray = [k for k in missing + unexpected if not k.startswith(("object_pool.",) + fresh)]
    if stray:
        raise SystemExit(f"--init-from {path}: weights do not fit this model: {stray[:5]}")
    log.info("initial weights from %s (epoch %s, %s, %d px, object pooling %s)", path, payload.get("epoch"),
             old.resize, old.image_size, old.object_pooling)


def _check_step_parts(args, data: InMemoryDataset) -> None:
    """A step needs something to train: --batch-size 0 leaves crops only, which need boxes and an epoch length;
    --freeze-cells leaves the whole photos only."""
    if args.batch_size < 0 or args.crops_per_step < 0:
        raise SystemExit("--batch-size and --crops-per-step cannot be negative")
    if args.freeze_cells:
        if args.object_head != "cells" or not args.init_from:
            raise SystemExit("--freeze-cells holds a trained per-cell model's object part: give --init-from a "
                             "per-cell checkpoint")
        if not args.batch_size:
            raise SystemExit("--freeze-cells trains on whole photos: --batch-size must be at least 1")
        args.crops_per_step = 0  # crops train only the object cells, which are held
    if not args.batch_size:
        if args.object_head != "cells" or data.has_boxes is None or not bool(data.has_boxes.any()):
            raise SystemExit("--batch-size 0 trains the object cells on crops only: it needs a per-cell model and "
                             "photos with a box sidecar")
        if not args.crops_per_step or not (args.epoch_steps or args.step_minutes):
            raise SystemExit("--batch-size 0 needs --crops-per-step and --epoch-steps or --step-minutes (an epoch "
                             "is no pass over the photos then)")


def _freeze_cells(model) -> list:
    """--freeze-cells: the object part of the model keeps its weights and batch-norm statistics."""
    frozen = model.cell_modules()
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def _steps_that_fit(model, criterion, data: InMemoryDataset, runtime: Runtime, args) -> int:
    """--step-minutes: the epoch length that fits the minutes on this machine. Samples per CPU minute are what
    the objects learn from, and the CPUs this project trains on differ threefold (AVX2 fp32 against AMX bf16), so
    a fixed step count either wastes the fast machine or overruns the slow one. The rate is measured with real
    steps on a copy of the model and optimiser, thrown away after; the random streams of the run are untouched."""
    with torch.random.fork_rng(devices=[]):
        trial = copy.deepcopy(model)
        frozen = _freeze_cells(trial) if args.freeze_cells else []
        optimizer = _optimizer(trial, args)
        constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        generator = torch.Generator().manual_seed(args.seed + 1)
        stream = PhotoStream(len(data), args.batch_size, generator)
        for steps in (RATE_WARMUP_STEPS, RATE_STEPS):  # the first steps pay for oneDNN's kernel choices
            done = train_one_epoch(trial, criterion, optimizer, constant, data, stream, steps, runtime, 0, args,
                                   generator, frozen)
    per_second = RATE_STEPS / done["seconds"]
    epoch_steps = max(1, int(args.step_minutes * 60 * per_second / args.epochs))
    log.info("--step-minutes %g: %.2f steps/s measured over %d steps, so %d epochs of %d steps", args.step_minutes,
             per_second, RATE_STEPS, args.epochs, epoch_steps)
    return epoch_steps


def _optimizer(model, args) -> torch.optim.Optimizer:
    """Weight decay on the conv and linear weights only: decaying batch-norm scales and biases restrains no
    capacity worth restraining and slows an underfitting run (torchvision's reference scripts offer the same
    split as --norm-weight-decay / --bias-weight-decay)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim > 1]
    no_decay = [p for p in trained if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.opt == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)
    if args.opt == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr)
    return torch.optim.Adam(groups, lr=args.lr)


def _curve_point(metrics: dict, taxonomy: Taxonomy) -> dict:
    """The learning curve's held-out figures of one epoch: mean object F1, each object's F1, each head's macro-F1."""
    point = {"mean_object_f1": metrics["mean_object_f1"], "mean_object_ap": metrics["mean_object_ap"]}
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


def main(args, resume_state: dict | None = None) -> dict:
    """Train as `args` say; with resume_state (training.resume.read_resume_point), go on after its last epoch."""
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
    if runtime.device.type == "cpu":
        # Denormal floats (below 1.2e-38) take a slow path in x86 arithmetic, and a training network makes many:
        # flushed to zero, 32 crops a step ran at 84 crops/s from the trained objects stage instead of 70, and at
        # 84 instead of 79 from random init (AVX2, docs/model.md). Nothing this small carries a learnable signal.
        torch.set_flush_denormal(True)
    log.info("running on %s, %d torch threads%s", runtime.describe(), torch.get_num_threads(),
             ", denormals flushed to zero" if runtime.device.type == "cpu" else "")

    started = time.time()
    stride = _cell_stride(args)
    pool = load_labeled_folder(args.data, args.images, taxonomy, args.image_size, args.workers, args.limit,
                               resize=args.resize, cell_stride=stride)
    if args.mix_data:
        pool = _mix_in(pool, args, taxonomy)
    _check_step_parts(args, pool)
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
    frozen = _freeze_cells(model) if args.freeze_cells else []
    criterion = MultiHeadLoss(taxonomy)
    optimizer = _optimizer(model, args)
    if args.step_minutes and resume_state is None:  # a resumed run keeps the epoch length it measured
        args.epoch_steps = _steps_that_fit(model, criterion, train_data, runtime, args)
    steps_per_epoch = args.epoch_steps or math.ceil(len(train_data) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs,
                                                    steps_per_epoch=steps_per_epoch, pct_start=args.warmup,
                                                    cycle_momentum=args.opt == "sgd",
                                                    base_momentum=0.85 * args.momentum, max_momentum=args.momentum)
    generator = torch.Generator().manual_seed(args.seed)
    # The same photos every epoch, drawn apart from the training stream so that --bn-photos changes no batch.
    calibration = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(args.seed))[:args.bn_photos]
    stream = PhotoStream(len(train_data), args.batch_size, generator)

    test_data = test_targets = None
    if args.test_data:  # held out, never used for a choice: scored after every epoch for the learning curve
        test_data = load_labeled_folder(args.test_data, args.test_images, taxonomy, args.image_size, args.workers,
                                        resize=args.resize)
        test_targets = _numpy_targets(test_data)

    history, best = [], None
    summary = {"val_baseline": baseline, "train_images": len(train_data), "val_images": len(val_data),
               "skipped": pool.skipped, "runtime": runtime.describe(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    first_epoch, seen, train_seconds = 1, {"photos": 0, "crops": 0}, 0.0
    if resume_state is not None:
        state = resume_state
        stream.order, stream.position = restore(state, model, optimizer, scheduler, generator)
        log.info("resuming %s after epoch %d (%d photos + %d crops seen)", args.output_dir, state["epoch"],
                 state["seen"]["photos"], state["seen"]["crops"])
        first_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        seen, train_seconds = state["seen"], state["train_seconds"]
        summary.update(state["summary"])
    for epoch in range(first_epoch, args.epochs + 1):
        epoch_start = time.time()
        done = train_one_epoch(model, criterion, optimizer, scheduler, train_data, stream, steps_per_epoch, runtime,
                               epoch, args, generator, frozen)
        seen = {"photos": seen["photos"] + done["photos"], "crops": seen["crops"] + done["crops"]}
        train_seconds += done["seconds"]
        if args.bn_photos:
            recalibrate_batch_norm(model, train_data.images[calibration], runtime, held=frozen)
        val_logits = evaluate(model, val_data, runtime, args)
        metrics = evaluate_logits(val_logits, val_targets, taxonomy)
        score = _selection_score(metrics, taxonomy)
        thresholds = tune_thresholds(val_logits, val_targets, taxonomy)
        trained_taxonomy = taxonomy.with_thresholds(thresholds)
        record = {"epoch": epoch, "train_loss": done["loss"], "val": metrics, "score": score,
                  "seconds": round(time.time() - epoch_start, 1), "steps": epoch * steps_per_epoch,
                  "images_seen": seen["photos"], "crops_seen": seen["crops"],
                  "samples_per_s": round((done["photos"] + done["crops"]) / max(done["seconds"], 1e-9), 1),
                  "train_minutes": round(train_seconds / 60, 2)}
        if test_data is not None:
            test_metrics = evaluate_logits(evaluate(model, test_data, runtime, args), test_targets, trained_taxonomy)
            record["test"] = _curve_point(test_metrics, taxonomy)
        history.append(record)
        log.info("epoch %d/%d  loss %.4f  val score %.4f  %d photos + %d crops seen, %.1f samples/s  (%.0f s)%s\n%s",
                 epoch, args.epochs, done["loss"], score, seen["photos"], seen["crops"], record["samples_per_s"],
                 time.time() - epoch_start,
                 _held_out_line(record), format_metrics(metrics, taxonomy))
        if best is None or score > best["score"]:
            # Saved at once, so an interrupted long run still leaves its best model behind, ready to archive.
            best = {"epoch": epoch, "score": score, "taxonomy": trained_taxonomy.to_dict(),
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            summary.update(best_epoch=epoch, thresholds=thresholds,
                           val=evaluate_logits(val_logits, val_targets, trained_taxonomy))
            _save_run(args, model, trained_taxonomy, summary)
        summary.update(history=history, epochs_done=epoch, train_seconds=round(time.time() - started, 1))
        write_json(args.output_dir / "metrics.json", summary)
        save_resume_point(args.output_dir, args=_jsonable_args(args), model=model, optimizer=optimizer,
                          scheduler=scheduler, generator=generator, stream_state=[stream.order, stream.position],
                          epoch=epoch, history=history, best=best, seen=seen, train_seconds=train_seconds,
                          summary={k: summary[k] for k in ("best_epoch", "thresholds", "val") if k in summary})

    model.load_state_dict(best["state"])
    best_taxonomy = Taxonomy.from_dict(best["taxonomy"])
    log.info("best epoch %d, val with tuned thresholds:\n%s", best["epoch"], format_metrics(summary["val"], taxonomy))
    if test_data is not None:
        summary["test"] = evaluate_logits(evaluate(model, test_data, runtime, args), test_targets, best_taxonomy)
        summary["test_baseline"] = majority_baseline(_numpy_targets(train_data), test_targets, taxonomy)
        summary["test_images"] = len(test_data)
        log.info("held-out test (%d images):\n%s\nmajority baseline on test:\n%s", len(test_data),
                 format_metrics(summary["test"], taxonomy), format_metrics(summary["test_baseline"], taxonomy))
    write_json(args.output_dir / "metrics.json", summary)
    log.info("saved %s (model.pt, taxonomy.json, metrics.json)", args.output_dir)
    write_training_curves(summary["history"], args.output_dir)
    return summary


def _held_out_line(record: dict) -> str:
    test = record.get("test")
    return f"  held-out mean object F1 {test['mean_object_f1']:.3f}, AP {test['mean_object_ap']:.3f}" if test else ""


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
        parsed = parser.parse_args()
        if parsed.resume:
            state = read_resume_point(parsed.output_dir)
            main(resumed_args(state, get_args_parser()), resume_state=state)
        else:
            main(parsed)
    except (LabelCsvError, TaxonomyError, PretrainedWeightsUnavailable, BoxFileError) as exc:
        parser.exit(2, f"error: {exc}\n")
