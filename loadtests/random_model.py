"""A random-init tagger checkpoint at the served size, for benchmarking without a trained full run.

    .venv/bin/python -m loadtests.random_model --out runs/random-256 [--image-size 256] [--arch resnet34]
    make bench RUN=runs/random-256          # the Makefile builds runs/random-<size>/ with this tool

Writes what `make archive` packs from a training run: `model.pt` (the project's checkpoint format, the project's
taxonomy and model config, random weights; nothing downloaded) and `taxonomy.json`. The network costs what the
trained one of the same size costs, so its photos/s are the served model's; its tags mean nothing.

Batch-norm statistics are taken from a few rendered photos (train-mode forward passes, no gradient step), so that
activations and logits have the spread of a trained network instead of growing layer by layer through
identity-statistics batch norms: comparisons of numerics (int8, compile) on it are then not dominated by huge
logits.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from phototag.checkpoint import save_checkpoint
from phototag.inference import Runtime, load_image, to_model_input
from phototag.model import BACKBONES, OBJECT_HEADS, build_model
from phototag.taxonomy import DEFAULT_TAXONOMY_PATH, Taxonomy
from training.synth.render import render_jpegs


def random_model(image_size: int = 256, arch: str = "resnet34", calibration_photos: int = 16, seed: int = 0,
                 object_head: str = "cells"):
    """(model in eval mode, taxonomy): random weights, batch-norm statistics from `calibration_photos` photos."""
    torch.manual_seed(seed)
    taxonomy = Taxonomy.load(DEFAULT_TAXONOMY_PATH)
    pooling = {"object_pooling": "max"} if object_head == "cells" else {}
    model = build_model(taxonomy, weights="none", arch=arch, image_size=image_size, object_head=object_head,
                        **pooling)
    if calibration_photos:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # a plain average over the calibration batches
        photos = render_jpegs(image_size, image_size, calibration_photos, seed=seed + 1000)
        batch = torch.stack([load_image(p, image_size) for p in photos])
        model.train()
        with torch.no_grad():
            for chunk in batch.split(8):
                model(to_model_input(chunk, Runtime(torch.device("cpu"))))
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.1
    return model.eval(), taxonomy


def write_random_run(out: Path, image_size: int = 256, arch: str = "resnet34", calibration_photos: int = 16,
                     seed: int = 0, object_head: str = "cells") -> Path:
    """out/model.pt + out/taxonomy.json; returns out."""
    out.mkdir(parents=True, exist_ok=True)
    model, taxonomy = random_model(image_size, arch, calibration_photos, seed, object_head)
    args = {"random_init": True, "image_size": image_size, "arch": arch, "calibration_photos": calibration_photos,
            "seed": seed, "object_head": object_head}
    save_checkpoint(out / "model.pt", model, taxonomy, args=args)
    taxonomy.save(out / "taxonomy.json")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder to write (model.pt, taxonomy.json)")
    parser.add_argument("--image-size", type=int, default=256, help="model input size (the full run's is 256)")
    parser.add_argument("--arch", default="resnet34", choices=sorted(BACKBONES))
    parser.add_argument("--calibration-photos", type=int, default=16,
                        help="rendered photos whose statistics the batch norms take (0: identity statistics)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--object-head", default="cells", choices=OBJECT_HEADS,
                        help="cells: the per-cell object heads that training builds (and boxes come from); pooled: "
                             "the linear heads on the pooled map of checkpoints from before them")
    args = parser.parse_args(argv)
    write_random_run(args.out, args.image_size, args.arch, args.calibration_photos, args.seed, args.object_head)
    print(f"wrote {args.out}/model.pt: random-init {args.arch}, {args.image_size} px input, "
          f"{args.object_head} object heads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
