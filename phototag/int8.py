"""Int8 inference on the CPU: the model quantized after training (PT2E with the x86 inductor quantizer) and compiled
ahead of time by AOTInductor into one package whose batch dimension is dynamic.

Int8 moves every logit a little. A photo whose tag decisions are all far from flipping gets the same tags either
way; a photo with a decision within `margin` logits of flipping (a score near its threshold, two single-choice
classes nearly tied) is scored again by the eager model (`Int8Tagger`). The check picks the margin on tuning
photos and measures the agreement on held-out ones with that re-scoring in place, as served.

`python -m training.quantize` builds the package once, next to the run's model.pt, and checks that the tags it
serves stay those of the eager model (the report beside it). The archive carries both, and a worker loads the
package in well under a second: nothing is compiled at worker start, so a restarted worker is back as fast as an
eager one (torch.compile at start costs tens of seconds on 2 cores, every restart).

The package is machine code for one torch build and one CPU instruction set, compiled from one model.pt
(`build_signature`); a worker anywhere else is told why it cannot use it (`incompatibility`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from phototag.compiled import cat_outputs
from phototag.inference import Runtime, predict
from phototag.taxonomy import SINGLE, Taxonomy

log = logging.getLogger(__name__)

PACKAGE_FILE = "tagger-int8.pt2"
REPORT_FILE = "tagger-int8.json"
# The bar for a numerics change: served tags identical on >= 99% of held-out photos, metrics within 0.01.
MIN_TAG_AGREEMENT = 0.99
MAX_METRIC_CHANGE = 0.01
# Largest batch one call of the package takes; bigger batches run in chunks of it.
MAX_BATCH = 64
# The package takes plain fp32 NCHW input (channels_last and autocast belong to the eager model).
INT8_INPUT = Runtime(torch.device("cpu"))
# What a package returns (phototag.model.ServedTagger); packages built before the boxes gave logits alone.
SERVED_OUTPUTS = "logits+cells"


class Int8Unavailable(RuntimeError):
    """No usable int8 package: missing, built for another machine, torch or model.pt, or failed its tag check."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_signature(weights: str | Path) -> dict[str, str]:
    """What the package is only valid for: this torch build, this CPU's vector instruction set, these weights,
    and what it outputs (logits and the per-cell map the boxes come from: `phototag.model.ServedTagger`)."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "weights_sha256": file_sha256(weights), "outputs": SERVED_OUTPUTS}


def _dynamic_batch():
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def quantize(model: torch.nn.Module, calibration: Iterable[torch.Tensor]) -> torch.nn.Module:
    """The eval-mode served model (`phototag.model.ServedTagger`) -> its int8 PT2E graph (still runnable eagerly,
    slowly), with activation ranges observed on `calibration`: normalised float batches [N, 3, S, S] as
    `phototag.inference.to_model_input` makes them."""
    # torchao is needed to build a package, not to serve one.
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batches = [b.contiguous() for b in calibration]
    if not batches:
        raise ValueError("quantize needs at least one calibration batch")
    # strict: the non-strict export leaves the residual add-relu in a form the quantizer's fusion rejects
    graph = torch.export.export(model.eval(), (batches[0],), dynamic_shapes=_dynamic_batch(), strict=True).module()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    return convert_pt2e(prepared)


def compile_package(quantized: torch.nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """AOTInductor-compile the quantized graph (any batch of 1..MAX_BATCH) into the package file at `path`."""
    program = torch.export.export(quantized, (example.contiguous(),), dynamic_shapes=_dynamic_batch(), strict=True)
    # Freezing folds the int8 weights into prepacked oneDNN convolutions; without it (or outside no_grad) the
    # package runs the quantize/dequantize graph in fp32 and is no faster than eager.
    with torch.no_grad():
        built = torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                           inductor_configs={"freezing": True})
    return Path(built)


class Int8Model:
    """Callable like the served model (`phototag.model.ServedTagger`): float [N, 3, S, S] (NCHW) -> (float32
    logits [N, num_logits], per-cell object logits [N, K, S/16, S/16]), for any N."""

    def __init__(self, runner, max_batch: int = MAX_BATCH):
        self.runner = runner
        self.max_batch = max_batch

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(x) > self.max_batch:
            return cat_outputs([self(chunk) for chunk in x.split(self.max_batch)])
        return tuple(self.runner(x.contiguous()))


def decision_margins(logits: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
    """logits [N, num_logits] -> [N]: how far, in logits, each photo's closest tag decision is from flipping.

    Single-choice groups: the gap between the two highest logits. Yes/no classes: the distance from the logit of
    the class's threshold. Float32 logits, as `predict` returns them.
    """
    margins = []
    for group in taxonomy.groups:
        chunk = logits[:, group.logits]
        if group.kind == SINGLE:
            top2 = chunk.topk(2, dim=1).values
            margins.append(top2[:, :1] - top2[:, 1:])
        else:
            cut = torch.tensor([math.log(c.threshold / (1 - c.threshold)) for c in group.classes])
            margins.append((chunk - cut).abs())
    return torch.cat(margins, dim=1).min(dim=1).values


@dataclass
class Int8Tagger:
    """The served int8 path: uint8 batch [N, 3, S, S] -> (float32 logits [N, num_logits], per-cell object logits
    [N, K, S/16, S/16] or None) on the CPU, as `phototag.inference.predict` gives them.

    The package scores the batch; photos with a decision within `margin` logits of flipping are scored again
    (logits and cells) by the eager served model in `eager_runtime` (the precision the worker would serve without
    the package).
    """
    package: Int8Model
    eager: torch.nn.Module  # a phototag.model.ServedTagger
    eager_runtime: Runtime
    taxonomy: Taxonomy
    margin: float
    rescored: int = 0  # photos the eager model scored again, since start (for logs and reports)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, cells = predict(self.package, batch, INT8_INPUT)
        unsure = decision_margins(logits, self.taxonomy) < self.margin
        if unsure.any():
            eager_logits, eager_cells = predict(self.eager, batch[unsure], self.eager_runtime)
            logits[unsure] = eager_logits
            if cells is not None:
                cells[unsure] = eager_cells
            self.rescored += int(unsure.sum())
        return logits, cells


def load_package(path: str | Path) -> Int8Model:
    return Int8Model(torch._inductor.aoti_load_package(str(path)))


def read_report(folder: str | Path) -> dict | None:
    path = Path(folder) / REPORT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def incompatibility(report: dict, weights: str | Path) -> str | None:
    """Why a package described by `report` cannot serve `weights` on this machine, or None when it can."""
    built, here = report.get("built_for", {}), build_signature(weights)
    if built.get("weights_sha256") != here["weights_sha256"]:
        return "it was built from another model.pt (re-run python -m training.quantize on this run)"
    if built.get("outputs") != here["outputs"]:
        return ("it was built before packages gave the per-cell object map that boxes come from "
                "(re-run python -m training.quantize on this run)")
    for key, what in (("torch", "torch"), ("cpu_capability", "CPU instruction set")):
        if built.get(key) != here[key]:
            return f"it was compiled for {what} {built.get(key)!r}, this worker has {here[key]!r}"
    return None


def passed_check(report: dict) -> bool:
    check = report.get("check", {})
    return bool(check.get("passed"))


def no_faster(report: dict) -> str | None:
    """Why the package would not pay for itself as served, by `make quantize`'s own timing, or None when it does
    (or when the report, from before the timing, does not say).

    Re-scoring costs an eager pass on top of the int8 one: a model whose logits int8 moves enough to send most
    photos back (the per-cell model's best-of-256-cells object scores did: 69 % re-scored, 0.84x) serves slower
    with the package than without it."""
    speedup = report.get("speed", {}).get("speedup")
    if speedup is not None and speedup <= 1.0:
        rescored = report.get("check", {}).get("rescored_share")
        share = f", {100 * rescored:.0f}% of the photos scored again by the eager model" if rescored is not None else ""
        return f"as served it ran at {speedup}x the eager model's speed when it was built{share}"
    return None


def select_int8(precision: str, device: torch.device, model_dir: str | Path, weights: str | Path,
                eager: torch.nn.Module, eager_runtime: Runtime, taxonomy: Taxonomy) -> Int8Tagger | None:
    """The worker's int8 path (re-scoring borderline photos with `eager` in `eager_runtime`), or None for eager.

    precision 'int8': the package, or Int8Unavailable saying why not (the operator asked for it by name).
    precision 'auto' on the CPU: the package when the archive has one that runs here, passed its tag check and
    served faster than the eager model when it was built; otherwise the eager model, with the reason logged.
    Other precisions and devices: None.
    """
    if precision not in ("auto", "int8") or (precision == "auto" and device.type != "cpu"):
        return None
    if device.type != "cpu":
        raise Int8Unavailable(f"precision int8 runs on the CPU only; this worker's device is {device}")
    package, report = Path(model_dir) / PACKAGE_FILE, read_report(model_dir)
    if not package.exists() or report is None:
        reason = f"the archive has no {PACKAGE_FILE} + {REPORT_FILE} (build them: make quantize RUN=...)"
    else:
        reason = incompatibility(report, weights)
        if reason is None and precision == "auto" and not passed_check(report):
            reason = f"its tag check failed ({report['check'].get('verdict', 'no verdict')})"
        if reason is None and precision == "auto":
            reason = no_faster(report)
    if reason is None:
        return Int8Tagger(load_package(package), eager, eager_runtime, taxonomy, float(report["rescore_margin"]))
    if precision == "int8":
        raise Int8Unavailable(f"precision: int8 but the int8 package cannot be used: {reason}")
    log.info("int8 package not used: %s", reason)
    return None
