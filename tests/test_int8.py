"""The int8 package: built and checked by the real `python -m training.quantize`, packed by `make archive`, chosen
or refused by the worker, and served by a real TorchServe.

The tiny test model is trained for three steps, so many of its object logits sit near the thresholds and int8
may well flip some tags: the package is built with --keep-failed, and what is checked is that the check's figures
are right and that each precision setting serves what it promises."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import requests
import torch
import yaml

from client.auth import bearer
from loadtests.bench import load_handler
from phototag.checkpoint import load_model
from phototag.inference import Runtime, predict, predict_logits, prepare_model
from phototag.int8 import (
    INT8_INPUT,
    MAX_BATCH,
    PACKAGE_FILE,
    REPORT_FILE,
    Int8Tagger,
    Int8Unavailable,
    build_signature,
    decision_margins,
    incompatibility,
    load_package,
    no_faster,
)
from phototag.int8 import select_int8 as select
from phototag.model import ServedTagger
from phototag.taxonomy import MULTI, SINGLE, Taxonomy
from serving.torchserve_process import REPO, TorchServe
from tests.conftest import PYTHON, run
from training.quantize import MARGINS, compare

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def int8_run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run with its int8 package and report, built by the real CLI."""
    out = tmp_path_factory.mktemp("int8_run")
    for name in ("model.pt", "taxonomy.json"):
        shutil.copy(tiny_run / name, out / name)
    result = run([PYTHON, "-m", "training.quantize", "--run", str(out), "--check-photos", "24",
                  "--calibration-photos", "16", "--tune-photos", "24", "--speed-photos", "8", "--keep-failed"],
                 check=False)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert (out / PACKAGE_FILE).exists() and (out / REPORT_FILE).exists(), result.stdout + result.stderr[-2000:]
    return out


def _report(folder: Path) -> dict:
    return json.loads((folder / REPORT_FILE).read_text())


def _answers(handler, images: list[bytes]) -> list[dict]:
    rows = [{"body": b} for b in images]
    batch, prepared = handler.preprocess(rows, [None] * len(rows))
    return handler.postprocess(handler.inference(batch), prepared)


def test_report_describes_the_build_and_a_consistent_check(int8_run):
    report = _report(int8_run)
    assert report["built_for"] == build_signature(int8_run / "model.pt")
    check = report["check"]
    assert check["photos"] == 24
    assert check["tag_agreement"] == round(check["identical_tags"] / check["photos"], 4)
    worst = max(abs(v) for v in check["metric_changes"].values())
    assert check["passed"] == (check["tag_agreement"] >= 0.99 and worst <= 0.01)
    assert report["rescore_margin"] in MARGINS and 0 <= check["rescored_share"] <= 1
    speed = report["speed"]
    assert min(speed["eager_ms_per_image"], speed["int8_served_ms_per_image"],
               speed["int8_package_alone_ms_per_image"]) > 0


def test_compare_counts_flipped_tags_and_metric_changes():
    taxonomy = Taxonomy.load(REPO / "phototag" / "taxonomy.json")
    reference = torch.full((4, taxonomy.num_logits), -5.0)
    for group in taxonomy.groups:  # every photo: the first class of each single-choice head, no object
        if group.kind == SINGLE:
            reference[:, group.logits.start] = 5.0
    candidate = reference.clone()
    objects = next(g for g in taxonomy.groups if g.kind == MULTI)
    candidate[0, objects.logits.start] = 5.0  # photo 0 gains the first object
    targets = {g.name: (torch.zeros(4, dtype=torch.long) if g.kind == SINGLE else torch.zeros(4, g.size)).numpy()
               for g in taxonomy.groups}
    result = compare(reference, candidate, targets, taxonomy)
    assert (result["identical_tags"], result["flipped_tag_decisions"], result["tag_agreement"]) == (3, 1, 0.75)
    assert not result["passed"] and "3 of 4 photos" in result["verdict"]
    assert result["metric_changes"]["mean_object_f1"] == 0.0  # no true objects: F1 0 either way


def test_decision_margins_measure_the_closest_flip():
    taxonomy = Taxonomy.load(REPO / "phototag" / "taxonomy.json")
    logits = torch.full((2, taxonomy.num_logits), -8.0)
    for group in taxonomy.groups:
        if group.kind == SINGLE:  # a clear winner: gap 6
            logits[:, group.logits.start] = -2.0
    objects = next(g for g in taxonomy.groups if g.kind == MULTI)
    drone = objects.class_ids.index("drone")
    cut = torch.tensor(objects.classes[drone].threshold).logit()
    logits[1, objects.logits.start + drone] = cut + 0.03  # photo 1: drone just above its threshold
    margins = decision_margins(logits, taxonomy)
    assert margins[0] == pytest.approx(6.0)
    assert margins[1] == pytest.approx(0.03, abs=1e-4)


def test_borderline_photos_are_scored_again_by_the_eager_model(int8_run, sample_images):
    """margin 0: the package's logits; a margin no photo clears: the eager model's, exactly."""
    model, taxonomy, _ = load_model(int8_run / "model.pt")
    package = load_package(int8_run / PACKAGE_FILE)
    eager_runtime = Runtime(CPU, channels_last=True)
    handler = load_handler(int8_run, {"precision": "fp32", "decode_threads": 1}, 8)
    batch, _ = handler.preprocess([{"body": b} for b in sample_images[:6]], [None] * 6)
    prepare_model(model, eager_runtime)
    served = ServedTagger(model)
    eager_logits, eager_cells = predict(served, batch, eager_runtime)
    never, always = (Int8Tagger(package, served, eager_runtime, taxonomy, m) for m in (0.0, 1e9))
    package_logits, package_cells = predict(package, batch, INT8_INPUT)
    logits, cells = never(batch)
    assert torch.equal(logits, package_logits) and torch.equal(cells, package_cells) and never.rescored == 0
    logits, cells = always(batch)
    assert torch.equal(logits, eager_logits) and torch.equal(cells, eager_cells) and always.rescored == 6


def test_package_answers_like_the_eager_model(int8_run, sample_images):
    """In the worker's code path: the same refusals, every batch size (chunked above the package's largest), and
    logits close to fp32 eager ones on the scale of the logits themselves."""
    int8 = load_handler(int8_run, {"precision": "int8", "decode_threads": 1}, 8)
    eager = load_handler(int8_run, {"precision": "fp32", "decode_threads": 1}, 8)
    assert int8.runtime.int8 and "int8" in int8.runtime.describe() and not eager.runtime.int8
    images = (sample_images * 3)[:MAX_BATCH + 3] + [b"not an image"]
    rows = [{"body": b} for b in images]
    batch, prepared = int8.preprocess(rows, [None] * len(rows))
    (int8_logits, int8_cells, _), (eager_logits, eager_cells, _) = int8.inference(batch), eager.inference(batch)
    assert int8_logits.shape == eager_logits.shape == (MAX_BATCH + 3, 20)
    assert int8_cells.shape == eager_cells.shape == (MAX_BATCH + 3, 8, 4, 4)  # the map the boxes come from
    # batch 1 and the chunked batch agree; not bit for bit: AMX's int8 kernels block a batch of 1 differently
    torch.testing.assert_close(int8.inference(batch[:1])[0], int8_logits[:1], rtol=1e-4, atol=1e-4)
    for mine, reference in ((int8_logits, eager_logits), (int8_cells, eager_cells)):
        error = (mine - reference).abs().mean() / reference.std()
        assert error < 0.25, f"int8 output off by {error:.2f} of the eager output's spread"
    answers = int8.postprocess((int8_logits, int8_cells, None), prepared)
    assert answers[-1]["code"] == 400 and all("tags" in a and "boxes" in a["objects"] for a in answers[:-1])


def test_worker_choice_of_precision(int8_run, tiny_run, tmp_path):
    """auto serves the package only when its check passed and it served faster than eager when it was built; int8
    serves it regardless; a package that does not match the weights, the CPU or torch is refused by int8 and passed
    over by auto."""
    weights = int8_run / "model.pt"
    model, taxonomy, _ = load_model(weights)

    def select_int8(precision, device, folder, weights_file):
        return select(precision, device, folder, weights_file, model, Runtime(CPU), taxonomy)

    folder = tmp_path / "archive"
    shutil.copytree(int8_run, folder)
    report = _report(folder)
    for passed, speedup in ((True, 1.8), (False, 1.8), (True, 0.84)):  # 0.84: most photos re-scored
        report["check"]["passed"], report["speed"]["speedup"] = passed, speedup
        (folder / REPORT_FILE).write_text(json.dumps(report))
        assert (select_int8("auto", CPU, folder, weights) is not None) == (passed and speedup > 1)
        assert select_int8("int8", CPU, folder, weights) is not None
    assert "0.84x the eager model's speed" in no_faster(report)
    report["speed"]["speedup"] = 1.8  # below: refused for what the package was built for alone
    assert select_int8("fp32", CPU, folder, weights) is None
    assert select_int8("bf16", CPU, folder, weights) is None

    for key, value, why in (("weights_sha256", "0" * 64, "another model.pt"),
                            ("cpu_capability", "SOMETHING_ELSE", "CPU instruction set"),
                            ("torch", "0.0.1", "torch"),
                            ("outputs", None, "per-cell object map")):  # a package from before the boxes
        stale = {**report, "built_for": {**report["built_for"], key: value}, "check": {"passed": True}}
        assert why in incompatibility(stale, weights)
        (folder / REPORT_FILE).write_text(json.dumps(stale))
        assert select_int8("auto", CPU, folder, weights) is None
        with pytest.raises(Int8Unavailable, match=why):
            select_int8("int8", CPU, folder, weights)
    # a run without a package: auto is eager, int8 says what to build
    assert select_int8("auto", CPU, tiny_run, tiny_run / "model.pt") is None
    with pytest.raises(Int8Unavailable, match="make quantize"):
        select_int8("int8", CPU, tiny_run, tiny_run / "model.pt")


def _split_margin(run_folder: Path, images: list[bytes]) -> tuple[float, int]:
    """A re-scoring margin that sends some of `images` (scored one per batch, as a lone request is) to the eager
    model and not the others, at the widest gap between their decision margins; and how many it sends."""
    handler = load_handler(run_folder, {"precision": "int8", "decode_threads": 1}, 1)
    margins = []
    for image in images:
        batch, _ = handler.preprocess([{"body": image}], [None])
        margins.append(float(decision_margins(predict_logits(handler.int8.package, batch, INT8_INPUT),
                                              handler.taxonomy)[0]))
    ranked = sorted(margins)
    gap, cut = max((ranked[i + 1] - ranked[i], i + 1) for i in range(len(ranked) - 1))
    assert gap > 1e-3, f"the photos' decision margins are too close to split: {ranked}"
    return (ranked[cut - 1] + ranked[cut]) / 2, cut


def _metric_total(text: str, name: str) -> float | None:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")]
    return sum(values) if values else None


@pytest.mark.server
def test_archive_serves_the_package(int8_run, sample_images, tmp_path):
    """`make archive` packs the package and its report; TorchServe's worker serves the same answers as the
    in-process int8 handler, re-scoring the same borderline photos, and counts them on the metrics endpoint."""
    images = sample_images[:6]
    archived = tmp_path / "run"
    shutil.copytree(int8_run, archived)
    report = _report(archived)
    report["rescore_margin"], rescored = _split_margin(archived, images)
    (archived / REPORT_FILE).write_text(json.dumps(report))
    config = yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text())
    config.update(minWorkers=1, maxWorkers=1)
    config["handler"] = {**config["handler"], "precision": "int8"}
    config_file = tmp_path / "model-config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    store = tmp_path / "store"
    run(["make", "--no-print-directory", "archive", f"RUN={archived}", f"STORE={store}", f"BUILD={tmp_path / 'b'}",
         f"MODEL_CONFIG={config_file}"])
    server = TorchServe(tmp_path / "ts", store).start()
    try:
        served = [requests.post(f"{server.inference_url}/predictions/tagger", data=image, timeout=60,
                                headers=bearer("inference", server.key_file)) for image in images]
        deadline, counted = time.monotonic() + 30, None
        while counted != rescored and time.monotonic() < deadline:  # backend metrics arrive via the worker's log
            counted = _metric_total(requests.get(f"{server.metrics_url}/metrics", timeout=10).text,
                                    "TaggerInt8Rescored")
            time.sleep(0.5)
        log = server.log_text()
    finally:
        server.stop()
    assert all(r.status_code == 200 for r in served), [r.text for r in served]
    assert "ready on cpu int8 (AOTInductor package" in log
    assert 0 < rescored < len(images) and counted == rescored, (counted, rescored)
    local = load_handler(archived, {"precision": "int8", "decode_threads": 1}, 1)
    warm_up_rescored = local.int8.rescored  # the worker's warm-up batch goes through the int8 path too
    # one photo per batch, as the server answered them: int8 kernels may round differently by batch size
    for answer, image in zip(served, images):
        expected = _answers(local, [image])[0]
        body = answer.json()
        assert body["tags"] == expected["tags"]
        scores = body["objects"]["scores"]
        assert all(abs(scores[k] - expected["objects"]["scores"][k]) < 0.02 for k in scores)
    assert local.int8.rescored - warm_up_rescored == rescored
