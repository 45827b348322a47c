"""The project's own warm start: a training run's model.pt, stored in bf16 for the repository.

No ImageNet weights can be had on the project's machines, and from random init the objects take far longer than
a demo has (docs/model.md). `make warm-start` trains a long CPU recipe from random init (in stages, on scenes of
seed 31, which no report or demo holds out) and this module writes its last stage's best checkpoint as
`weights/warm-start.pt`, with the run's `metrics.json` beside it (and, under `earlier_stages`, those of the
stages it was trained on from). The demo fine-tunes from it with `--init-from`.

bf16 halves the file (ResNet34: 43 MB instead of 85 MB). A warm start is a starting point for more training, so
the rounding (about three significant digits) costs nothing that the first steps of a fine-tune do not move.

    python -m training.warm_start --earlier runs/cpu-cells --run runs/cpu --out weights/warm-start.pt
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from phototag.checkpoint import read_checkpoint
from training.report import write_json


def export(run: Path, out: Path, earlier: list[Path] = ()) -> Path:
    """run/model.pt -> out (floating tensors in bf16, everything else as it was) + out's metrics.json beside it:
    run's metrics.json, with the metrics.json of each `earlier` stage (the runs it started from) inside."""
    payload = read_checkpoint(run / "model.pt")
    payload["model"] = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in payload["model"].items()}
    payload["warm_start_of"] = str(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(out)
    metrics = json.loads((run / "metrics.json").read_text())
    if earlier:
        metrics["earlier_stages"] = [{"run": str(stage), **json.loads((stage / "metrics.json").read_text())}
                                     for stage in earlier]
    write_json(out.with_suffix(".metrics.json"), metrics)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="training run folder with model.pt and metrics.json")
    parser.add_argument("--earlier", type=Path, action="append", default=[],
                        help="an earlier stage's run folder whose metrics.json goes along (repeatable, in order)")
    parser.add_argument("--out", type=Path, default=Path("weights/warm-start.pt"), help="the bf16 checkpoint to write")
    args = parser.parse_args(argv)
    out = export(args.run, args.out, args.earlier)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.metrics.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
