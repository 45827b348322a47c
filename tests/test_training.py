"""The training CLI end to end on tiny synthetic data: what it writes, and how it treats bad rows and files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import torch

from phototag.checkpoint import load_model
from phototag.taxonomy import Taxonomy
from tests.conftest import REPO, run
from training.data import load_labeled_folder
from training.train import get_args_parser


def test_run_writes_weights_taxonomy_metrics_and_args(tiny_run):
    payload = torch.load(tiny_run / "model.pt", weights_only=True)
    assert {"model", "model_config", "taxonomy", "args", "epoch"} <= set(payload)
    assert payload["args"]["epochs"] == 1 and payload["model_config"]["arch"] == "resnet34"
    model, taxonomy, _ = load_model(tiny_run / "model.pt")
    assert taxonomy == Taxonomy.load(tiny_run / "taxonomy.json")  # the archive's copy is the checkpoint's
    assert set(taxonomy.thresholds()) == {c.id for c in Taxonomy.load().group("objects").classes}
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("val", "val_baseline", "thresholds", "history", "best_epoch"):
        assert key in metrics
    for head in ("time_of_day", "season", "terrain"):
        assert {"accuracy", "macro_f1"} <= set(metrics["val"][head])
    assert len(metrics["val"]["objects"]["f1"]) == 8 and "mean_object_f1" in metrics["val"]
    assert json.loads((tiny_run / "args.json").read_text())["image_size"] == 64


def test_every_flag_has_help():
    parser = get_args_parser()
    for action in parser._actions:
        assert action.help, action.option_strings


def test_missing_and_unreadable_images_are_reported_and_skipped(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset.parent, data)
    images = sorted((data / "images").iterdir())
    images[0].unlink()
    images[1].write_bytes(b"this is not a photo")
    loaded = load_labeled_folder(data / "labels.csv", None, Taxonomy.load(), 32, workers=0)
    assert len(loaded) == len(images) - 2
    assert loaded.images.shape[1:] == (3, 32, 32) and loaded.images.dtype == torch.uint8
    assert "missing file" in loaded.skipped[images[0].name]
    assert "unreadable image" in loaded.skipped[images[1].name]

    result = run([sys.executable, "-m", "training.train", "--data", str(data / "labels.csv"), "--epochs", "1",
                  "--batch-size", "8", "--image-size", "32", "--arch", "resnet18", "--workers", "0",
                  "--output-dir", str(tmp_path / "run")])
    assert "skipped 2 of 24 images" in result.stdout
    assert images[0].name in result.stdout and images[1].name in result.stdout
    assert set(json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped"]) == {images[0].name,
                                                                                            images[1].name}


def test_out_of_range_label_stops_training_with_row_and_column(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset.parent, data)
    lines = (data / "labels.csv").read_text(encoding="utf-8").splitlines()
    cells = lines[3].split(";")
    cells[2] = "9"
    lines[3] = ";".join(cells)
    (data / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run([sys.executable, "-m", "training.train", "--data", str(data / "labels.csv"), "--epochs", "1",
                  "--output-dir", str(tmp_path / "run")], check=False)
    assert result.returncode == 2
    assert "error: " in result.stderr and "line 4, column 'Время года'" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_from_warm_starts_and_every_epoch_scores_the_held_out_set(tiny_dataset, tiny_run, tmp_path):
    """--init-from takes an earlier run's weights; with --test-data each epoch adds a learning-curve point."""
    out = tmp_path / "warm"
    result = run([sys.executable, "-m", "training.train", "--data", str(tiny_dataset), "--test-data",
                  str(tiny_dataset), "--init-from", str(tiny_run / "model.pt"), "--epochs", "2", "--batch-size", "8",
                  "--image-size", "64", "--resize", "letterbox", "--lr", "0", "--val-fraction", "0.25",
                  "--workers", "0", "--output-dir", str(out)])
    assert f"initial weights from {tiny_run / 'model.pt'}" in result.stdout
    warm = torch.load(out / "model.pt", weights_only=True)["model"]
    start = torch.load(tiny_run / "model.pt", weights_only=True)["model"]
    # learning rate 0: the convolution weights are still the earlier run's (batch-norm statistics still move)
    assert torch.equal(warm["backbone.conv1.weight"], start["backbone.conv1.weight"])
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["images_seen"] for h in history] == [18, 36]
    for point in history:
        assert {"mean_object_f1", "time_of_day", "objects.dog_handler"} <= set(point["test"])
        assert point["train_minutes"] > 0


def test_init_from_a_different_model_is_refused(tiny_dataset, tiny_run, tmp_path):
    result = run([sys.executable, "-m", "training.train", "--data", str(tiny_dataset), "--init-from",
                  str(tiny_run / "model.pt"), "--arch", "resnet18", "--epochs", "1", "--workers", "0",
                  "--output-dir", str(tmp_path / "run")], check=False)
    assert result.returncode != 0
    assert "its model is resnet34" in result.stderr and "this run trains resnet18" in result.stderr


def test_per_cell_run_counts_crops_and_samples_per_second(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["train_images"] == 18 and json.loads((tiny_run / "args.json").read_text())["object_head"] == "cells"
    epoch = metrics["history"][0]
    assert epoch["images_seen"] == 18 and epoch["crops_seen"] == 3 * 8  # 3 steps of 8 photos, 8 crops each
    assert epoch["samples_per_s"] > 0 and "mean_object_ap" in metrics["val"]


def _weights(path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_crops_only_steps_train_the_object_cells_and_nothing_else(tiny_dataset, tiny_run, tmp_path):
    """--batch-size 0: every step is crops, so the object cells and the backbone under them move while layer4 and
    the scene heads keep the weights they started with."""
    out = tmp_path / "crops"
    run([sys.executable, "-m", "training.train", "--data", str(tiny_dataset), "--init-from",
         str(tiny_run / "model.pt"), "--epochs", "1", "--epoch-steps", "2", "--batch-size", "0",
         "--crops-per-step", "8", "--crop-size", "32", "--image-size", "64", "--lr", "0.001", "--val-fraction",
         "0.25", "--bn-photos", "0", "--workers", "0", "--output-dir", str(out)])
    start, trained = _weights(tiny_run / "model.pt"), _weights(out / "model.pt")
    assert not torch.equal(trained["heads.objects.1.weight"], start["heads.objects.1.weight"])
    assert not torch.equal(trained["backbone.layer3.0.conv1.weight"], start["backbone.layer3.0.conv1.weight"])
    for name in ("heads.time_of_day.1.weight", "heads.season.1.weight", "backbone.layer4.0.conv1.weight"):
        assert torch.equal(trained[name], start[name]), name
    epoch = json.loads((out / "metrics.json").read_text())["history"][0]
    assert (epoch["images_seen"], epoch["crops_seen"]) == (0, 2 * 8)


def test_frozen_cells_keep_the_object_part_while_the_scene_heads_learn(tiny_dataset, tiny_run, tmp_path):
    """--freeze-cells: the backbone up to layer3 and the object cells, batch-norm statistics included, stay the
    checkpoint's; layer4 and the scene heads train on whole photos, and no crops are cut."""
    out = tmp_path / "scenes"
    run([sys.executable, "-m", "training.train", "--data", str(tiny_dataset), "--init-from",
         str(tiny_run / "model.pt"), "--freeze-cells", "--epochs", "1", "--batch-size", "8", "--image-size", "64",
         "--lr", "0.001", "--val-fraction", "0.25", "--bn-photos", "8", "--workers", "0", "--output-dir", str(out)])
    start, trained = _weights(tiny_run / "model.pt"), _weights(out / "model.pt")
    # the batch-norm recalibration before validation (--bn-photos) leaves the held statistics alone too
    held = [k for k in start if k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2",
                                              "backbone.layer3", "heads.objects"))]
    assert held and all(torch.equal(trained[k], start[k]) for k in held)
    assert not torch.equal(trained["heads.season.1.weight"], start["heads.season.1.weight"])
    assert not torch.equal(trained["backbone.layer4.0.conv1.weight"], start["backbone.layer4.0.conv1.weight"])
    assert not torch.equal(trained["backbone.layer4.0.bn1.running_mean"], start["backbone.layer4.0.bn1.running_mean"])
    assert json.loads((out / "metrics.json").read_text())["history"][0]["crops_seen"] == 0


def test_steps_with_nothing_to_train_are_refused(tiny_dataset, tiny_run, tmp_path):
    common = [sys.executable, "-m", "training.train", "--data", str(tiny_dataset), "--epochs", "1", "--image-size",
              "64", "--workers", "0", "--output-dir", str(tmp_path / "run")]
    no_length = run(common + ["--batch-size", "0"], check=False)
    assert no_length.returncode != 0 and "--batch-size 0 needs --crops-per-step and --epoch-steps" in no_length.stderr
    no_start = run(common + ["--freeze-cells"], check=False)
    assert no_start.returncode != 0 and "give --init-from a per-cell checkpoint" in no_start.stderr


def test_a_csv_without_boxes_trains_from_photo_labels_and_says_so(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset.parent, data)
    (data / "object_boxes.jsonl").unlink()
    result = run([sys.executable, "-m", "training.train", "--data", str(data / "labels.csv"), "--epochs", "1",
                  "--batch-size", "8", "--image-size", "64", "--crop-size", "32", "--lr", "0.001", "--workers", "0",
                  "--output-dir", str(tmp_path / "run")])
    assert result.stdout.count("has no box sidecar: its objects train from the photo-level labels only") == 1
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert history[0]["crops_seen"] == 0  # no boxes, no crops: the objects learn from the photos' labels


def test_a_malformed_box_line_stops_training_naming_file_and_line(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset.parent, data)
    boxes = data / "object_boxes.jsonl"
    lines = boxes.read_text(encoding="utf-8").splitlines()
    lines[2] = json.dumps({"filename": "scene_000002.jpg", "width": 480, "objects": []})  # no height
    boxes.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run([sys.executable, "-m", "training.train", "--data", str(data / "labels.csv"), "--epochs", "1",
                  "--image-size", "64", "--workers", "0", "--output-dir", str(tmp_path / "run")], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: {boxes}, line 3: not a box record" in result.stderr


def test_an_interrupted_run_resumes_from_its_last_epoch(tiny_dataset, tmp_path):
    """The process is killed in its second epoch; --resume goes on from the first with the same arguments."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "training.train", "--data", str(tiny_dataset), "--epochs", "2",
               "--epoch-steps", "40", "--batch-size", "4", "--crops-per-step", "4", "--crop-size", "32",
               "--image-size", "64", "--lr", "0.001", "--workers", "0", "--output-dir", str(out)]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not (out / "resume.pt").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    first = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in first] == [1], "the run finished its second epoch before it was stopped"
    result = run([sys.executable, "-m", "training.train", "--output-dir", str(out), "--resume"])
    assert "resuming" in result.stdout and "after epoch 1" in result.stdout
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["images_seen"] for h in history] == [160, 320] and history[1]["crops_seen"] == 320


def test_step_minutes_sizes_the_epochs_to_the_machine_and_changes_nothing_else(tiny_dataset, tmp_path):
    """--step-minutes measures the step rate on a throwaway copy, then trains exactly as --epoch-steps would with
    the number it found: same schedule, same crops, same weights."""
    common = [sys.executable, "-m", "training.train", "--data", str(tiny_dataset), "--epochs", "2", "--batch-size",
              "0", "--crops-per-step", "4", "--crop-size", "32", "--image-size", "64", "--lr", "0.001",
              "--val-fraction", "0.25", "--bn-photos", "0", "--workers", "0", "--precision", "fp32"]
    sized = run(common + ["--step-minutes", "0.02", "--output-dir", str(tmp_path / "sized")])
    steps = json.loads((tmp_path / "sized" / "args.json").read_text())["epoch_steps"]
    assert steps >= 1 and f"so 2 epochs of {steps} steps" in sized.stdout
    history = json.loads((tmp_path / "sized" / "metrics.json").read_text())["history"]
    assert [(h["steps"], h["crops_seen"]) for h in history] == [(steps, 4 * steps), (2 * steps, 8 * steps)]
    run(common + ["--epoch-steps", str(steps), "--output-dir", str(tmp_path / "fixed")])
    sized_weights, fixed_weights = _weights(tmp_path / "sized" / "model.pt"), _weights(tmp_path / "fixed" / "model.pt")
    assert all(torch.equal(sized_weights[k], fixed_weights[k]) for k in fixed_weights)
