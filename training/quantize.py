"""Build a run's int8 package (phototag/int8.py) and check that it serves the tags the eager model serves.

    python -m training.quantize --run runs/demo [--check-data data/demo/holdout/labels.csv]

Three sets of photos, none of them training photos: synthetic scenes of one seed calibrate the activation ranges,
scenes of a second seed choose the re-scoring margin (the smallest on MARGINS whose tags agree with the eager model
on >= 99.5% of them), and held-out photos (--check-data, or scenes of a third seed) check the result as served,
re-scoring included: the share of photos whose served tags are identical to the eager model's (in the precision
`auto` serves without the package: bf16 where the CPU has it natively, else fp32) and each held-out metric's change.

It writes runs/X/tagger-int8.pt2 and tagger-int8.json only when tags agree on >= 99% of the held-out photos, no
metric moves by more than 0.01 and the package as served (re-scoring included) is faster than the eager model;
`make archive` then packs them and `precision: auto` serves int8. Otherwise it writes the report alone and exits 1
(--keep-failed keeps the package too, for speed measurements of untrained models; `auto` still refuses it,
`precision: int8` serves it).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from phototag.checkpoint import load_model
from phototag.inference import Runtime, predict_logits, prepare_model, to_model_input
from phototag.int8 import (
    INT8_INPUT,
    MAX_METRIC_CHANGE,
    MIN_TAG_AGREEMENT,
    PACKAGE_FILE,
    REPORT_FILE,
    Int8Tagger,
    build_signature,
    compile_package,
    decision_margins,
    load_package,
    no_faster,
    quantize,
)
from phototag.model import ServedTagger
from phototag.taxonomy import SINGLE, Taxonomy, logits_to_tags
from training.data import InMemoryDataset, load_labeled_folder
from training.metrics import evaluate_logits
from training.report import write_json
from training.synth import generate_dataset

# Re-scoring margins tried, in logits (0: never re-score), and the agreement the tuning photos must reach: above
# the 99% the held-out check demands, so that the margin is not tuned to scrape past it.
MARGINS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
TUNE_AGREEMENT = 0.995


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="training run folder with model.pt")
    parser.add_argument("--out", type=Path, default=None, help="where the package and report go (default: --run)")
    parser.add_argument("--check-data", type=Path, default=None,
                        help="held-out label CSV to check on (default: --check-photos synthetic scenes)")
    parser.add_argument("--check-photos", type=int, default=200, help="synthetic held-out scenes without --check-data")
    parser.add_argument("--check-seed", type=int, default=707,
                        help="seed of the synthetic held-out scenes (not a training seed)")
    parser.add_argument("--calibration-photos", type=int, default=64, help="synthetic scenes observed for ranges")
    parser.add_argument("--calibration-seed", type=int, default=606, help="seed of the calibration scenes")
    parser.add_argument("--tune-photos", type=int, default=200, help="synthetic scenes that choose the margin")
    parser.add_argument("--tune-seed", type=int, default=808, help="seed of the margin-tuning scenes")
    parser.add_argument("--batch-size", type=int, default=8, help="batch of the check and the speed comparison")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the speed comparison (the shipped workers run 1 each)")
    parser.add_argument("--speed-photos", type=int, default=64,
                        help="held-out photos timed through each path (twice, interleaved)")
    parser.add_argument("--keep-failed", action="store_true",
                        help="write the package even when the tag check fails or it is no faster (auto does not "
                             "serve it then)")
    return parser


def synthetic_set(folder: Path, count: int, seed: int, taxonomy: Taxonomy, image_size: int,
                  resize: str) -> InMemoryDataset:
    csv = generate_dataset(folder, count, seed=seed, max_size=1280, taxonomy=taxonomy)
    return load_labeled_folder(csv, None, taxonomy, image_size, resize=resize)


def served_tags(logits: torch.Tensor, taxonomy: Taxonomy) -> list[list[str]]:
    return [logits_to_tags(row, taxonomy, "check")["tags"] for row in logits.tolist()]


def headline_metrics(metrics: dict, taxonomy: Taxonomy) -> dict[str, float]:
    """The figures a report leads with: each single-choice head's accuracy and macro-F1, the mean object F1."""
    out = {}
    for group in taxonomy.groups:
        if group.kind == SINGLE:
            out[f"{group.name}.accuracy"] = metrics[group.name]["accuracy"]
            out[f"{group.name}.macro_f1"] = metrics[group.name]["macro_f1"]
    out["mean_object_f1"] = metrics["mean_object_f1"]
    return {k: round(float(v), 4) for k, v in out.items()}


def compare(reference: torch.Tensor, candidate: torch.Tensor, targets: dict[str, np.ndarray],
            taxonomy: Taxonomy) -> dict:
    """Tag agreement and metric changes of `candidate` logits against `reference` ones, [N, num_logits] each."""
    ref_tags, new_tags = served_tags(reference, taxonomy), served_tags(candidate, taxonomy)
    identical = sum(a == b for a, b in zip(ref_tags, new_tags))
    flipped = sum(len(set(a) ^ set(b)) for a, b in zip(ref_tags, new_tags))
    ref_metrics = headline_metrics(evaluate_logits(reference.numpy(), targets, taxonomy), taxonomy)
    new_metrics = headline_metrics(evaluate_logits(candidate.numpy(), targets, taxonomy), taxonomy)
    changes = {k: round(new_metrics[k] - ref_metrics[k], 4) for k in ref_metrics}
    agreement = identical / len(ref_tags)
    worst = max(changes, key=lambda k: abs(changes[k]))
    passed = agreement >= MIN_TAG_AGREEMENT and abs(changes[worst]) <= MAX_METRIC_CHANGE
    verdict = (f"identical tags on {identical} of {len(ref_tags)} photos ({100 * agreement:.1f}%, need "
               f"{100 * MIN_TAG_AGREEMENT:.0f}%); largest metric change {worst} {changes[worst]:+.4f} "
               f"(allowed ±{MAX_METRIC_CHANGE})")
    return {"photos": len(ref_tags), "identical_tags": identical, "tag_agreement": round(agreement, 4),
            "flipped_tag_decisions": flipped, "max_logit_change": round(float((candidate - reference).abs().max()), 4),
            "metrics_eager": ref_metrics, "metrics_int8": new_metrics, "metric_changes": changes,
            "passed": passed, "verdict": verdict}


def choose_margin(eager: torch.Tensor, package: torch.Tensor, taxonomy: Taxonomy) -> tuple[float, dict]:
    """The smallest margin on MARGINS whose re-scoring gives >= TUNE_AGREEMENT identical tags on the tuning photos
    (eager and package logits [N, num_logits]); the largest when none does."""
    reference = served_tags(eager, taxonomy)
    margins = decision_margins(package, taxonomy)
    for margin in MARGINS:
        unsure = margins < margin
        served = torch.where(unsure.unsqueeze(1), eager, package)
        agreement = sum(a == b for a, b in zip(reference, served_tags(served, taxonomy))) / len(reference)
        if agreement >= TUNE_AGREEMENT or margin == MARGINS[-1]:
            return margin, {"tag_agreement": round(agreement, 4),
                            "rescored_share": round(float(unsure.float().mean()), 4)}
    raise AssertionError("unreachable")


def served_logits(forward, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([forward(b) for b in images.split(batch_size)])


def time_per_image(forward, images: torch.Tensor, batch_size: int) -> float:
    started = time.perf_counter()
    served_logits(forward, images, batch_size)
    return 1000 * (time.perf_counter() - started) / len(images)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    out = args.out or args.run
    weights = args.run / "model.pt"
    model, taxonomy, _ = load_model(weights)
    size, resize = model.config.image_size, model.config.resize
    # What a worker serves without the package: the reference, and the model that re-scores borderline photos.
    reference = Runtime.resolve("cpu", "auto")
    prepare_model(model, reference)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tagger-quantize-") as tmp:
        tmp = Path(tmp)
        calibration = synthetic_set(tmp / "calibration", args.calibration_photos, args.calibration_seed, taxonomy,
                                    size, resize)
        tuning = synthetic_set(tmp / "tuning", args.tune_photos, args.tune_seed, taxonomy, size, resize)
        if args.check_data:
            check = load_labeled_folder(args.check_data, None, taxonomy, size, resize=resize)
        else:
            check = synthetic_set(tmp / "check", args.check_photos, args.check_seed, taxonomy, size, resize)
        print(f"calibrating on {len(calibration)} scenes (seed {args.calibration_seed}), choosing the margin on "
              f"{len(tuning)} (seed {args.tune_seed}), checking on {len(check)} photos "
              f"({args.check_data or f'synthetic, seed {args.check_seed}'})", flush=True)
        batches = [to_model_input(b, INT8_INPUT) for b in calibration.images.split(args.batch_size)]
        served_model = ServedTagger(model)
        package = compile_package(quantize(served_model, batches), batches[0], tmp / PACKAGE_FILE)
        build_seconds = time.perf_counter() - started
        int8 = load_package(package)

        def eager(batch):
            return predict_logits(model, batch, reference)

        def package_alone(batch):
            return predict_logits(int8, batch, INT8_INPUT)

        margin, tuned = choose_margin(served_logits(eager, tuning.images, args.batch_size),
                                      served_logits(package_alone, tuning.images, args.batch_size), taxonomy)
        print(f"re-scoring margin {margin} logits: {100 * tuned['rescored_share']:.1f}% of the tuning photos "
              f"re-scored, {100 * tuned['tag_agreement']:.1f}% identical tags", flush=True)
        int8_tagger = Int8Tagger(int8, served_model, reference, taxonomy, margin)

        def served(batch):
            return int8_tagger(batch)[0]

        eager_logits = served_logits(eager, check.images, args.batch_size)
        int8_logits = served_logits(served, check.images, args.batch_size)
        targets = {k: v.numpy() for k, v in check.targets.items()}
        result = {**compare(eager_logits, int8_logits, targets, taxonomy),
                  "rescored_share": round(int8_tagger.rescored / len(check), 4)}
        print(f"{'passed' if result['passed'] else 'FAILED'}: {result['verdict']}; "
              f"{100 * result['rescored_share']:.1f}% re-scored", flush=True)

        torch.set_num_threads(args.threads)
        timed = check.images[:args.speed_photos]
        eager_ms, served_ms, alone_ms = [], [], []
        for _ in range(2):  # interleaved, so that drift in the machine's load hits each path alike
            eager_ms.append(time_per_image(eager, timed, args.batch_size))
            served_ms.append(time_per_image(served, timed, args.batch_size))
            alone_ms.append(time_per_image(package_alone, timed, args.batch_size))
        speed = {"photos": len(timed), "batch_size": args.batch_size, "threads": args.threads,
                 "eager": reference.describe(), "eager_ms_per_image": round(min(eager_ms), 2),
                 "int8_served_ms_per_image": round(min(served_ms), 2),
                 "int8_package_alone_ms_per_image": round(min(alone_ms), 2),
                 "speedup": round(min(eager_ms) / min(served_ms), 2)}
        print(f"speed ({args.threads} thread(s), batch {args.batch_size}, {size} px, {len(timed)} held-out photos): "
              f"eager {speed['eager_ms_per_image']} ms/img, int8 as served {speed['int8_served_ms_per_image']} "
              f"ms/img ({speed['speedup']}x; the package alone {speed['int8_package_alone_ms_per_image']})",
              flush=True)

        report = {"built_for": build_signature(weights), "image_size": size, "build_seconds": round(build_seconds, 1),
                  "reference": reference.describe(), "rescore_margin": margin,
                  "calibration": {"photos": len(calibration), "source": f"synthetic, seed {args.calibration_seed}"},
                  "tuning": {"photos": len(tuning), "source": f"synthetic, seed {args.tune_seed}", **tuned},
                  "check": {**result, "source": str(args.check_data or f"synthetic, seed {args.check_seed}")},
                  "speed": speed}
        slower = no_faster(report)
        if slower:
            print(f"not kept: {slower}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / PACKAGE_FILE).unlink(missing_ok=True)  # never leave a package beside a report it does not match
        useful = result["passed"] and not slower
        if useful or args.keep_failed:
            shutil.move(package, out / PACKAGE_FILE)
        write_json(out / REPORT_FILE, report)
    kept = (out / PACKAGE_FILE).exists()
    print(f"wrote {out / REPORT_FILE}" + (f" and {out / PACKAGE_FILE}" if kept else " (no package)"))
    return 0 if useful else 1


if __name__ == "__main__":
    sys.exit(main())
