"""training.evaluate and training.report: metrics, pictures and report.md of a checkpoint evaluated in process and
of the same model served by a real TorchServe (the same numbers), skipped images, and the training curves."""
from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from phototag.checkpoint import load_model
from phototag.inference import Runtime, predict_logits, prepare_model
from phototag.taxonomy import Taxonomy
from training.data import load_labeled_folder
from training.evaluate import get_args_parser, main, run_evaluation, summarise
from training.metrics import evaluate_logits, pr_curve, precision_recall
from training.report import write_training_curves

SINGLE_HEADS = ("time_of_day", "season", "terrain")
OBJECTS = ("aviation", "cars", "drone", "diver", "dog_handler", "horses", "hugs", "sherp")
PICTURES = ("confusion_matrices.png", "pr_curves.png", "worst_images.png")


def assert_png(path, min_side=300):
    assert path.is_file(), path
    assert path.stat().st_size > 10_000, f"{path} is only {path.stat().st_size} bytes"
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) >= min_side, image.size
        low, high = image.convert("L").getextrema()
        assert high - low > 100, "a blank picture"


def evaluate(out, data, *model_args) -> dict:
    assert main(["--data", str(data), "--out", str(out), *model_args]) == 0
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def in_process(tiny_run):
    return ["--checkpoint", str(tiny_run / "model.pt"), "--device", "cpu", "--batch-size", "8"]


def served(server):
    return ["--server", server.inference_url, "--key-file", str(server.key_file), "--model-version", "1.0"]


@pytest.fixture(scope="module")
def local_report(tiny_dataset, tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_local")
    return out, evaluate(out, tiny_dataset, *in_process(tiny_run))


@pytest.fixture(scope="module")
def broken_dataset(tiny_dataset, tmp_path_factory):
    """The tiny data set with one listed image deleted and one overwritten with text."""
    data = tmp_path_factory.mktemp("broken") / "data"
    shutil.copytree(tiny_dataset.parent, data)
    images = sorted((data / "images").iterdir())
    images[0].unlink()
    images[1].write_bytes(b"this is not a photo")
    return data / "labels.csv", images[0].name, images[1].name


def test_in_process_evaluation_writes_metrics_pictures_and_report(local_report, tiny_run):
    assert_png(tiny_run / "curves.png")  # written by training.train at the end of the run
    out, result = local_report
    m = result["metrics"]
    assert result["images"] == result["listed"] == 24 and result["skipped"] == {} and result["skipped_count"] == 0
    for head in SINGLE_HEADS:
        assert 0.0 <= m[head]["accuracy"] <= 1.0 and 0.0 <= m[head]["macro_f1"] <= 1.0
        assert np.asarray(m[head]["confusion"]).sum() == 24
        assert np.trace(np.asarray(m[head]["confusion"])) == round(m[head]["accuracy"] * 24)
    for key in ("precision", "recall", "f1"):
        assert set(m["objects"][key]) == set(OBJECTS)
    assert m["mean_object_f1"] == pytest.approx(np.mean(list(m["objects"]["f1"].values())))
    assert result["headline"]["mean_object_f1"] == m["mean_object_f1"]
    # The thresholds are the checkpoint's, and the answers' labels agree with them (scores rounded to 4 digits).
    thresholds = Taxonomy.load(tiny_run / "taxonomy.json").thresholds()
    assert result["thresholds"]["values"] == thresholds
    for cls, (above, at_most) in result["thresholds"]["implied"].items():
        assert above - 1e-4 <= thresholds[cls] <= at_most + 1e-4
    for name in PICTURES:
        assert_png(out / name)
    report = (out / "report.md").read_text(encoding="utf-8")
    for word in (*SINGLE_HEADS, "objects", *OBJECTS, *PICTURES, "mean F1", "Where the objects are"):
        assert word in report, word
    assert f"evaluated in process on {result['source']['runtime']}, big-photo mode off" in report
    # The boxes against the generator's: every box counted once in "all", found never above the tagged objects.
    boxes = result["box_quality"]["objects"]
    assert boxes["all"]["boxes"] == sum(p["boxes"] for p in boxes["all"]["objects"].values()) > 0
    assert boxes["all"]["boxes"] >= sum(boxes[b]["boxes"] for b in ("<10%", "10-20%", ">=20%"))
    assert 0 <= boxes["all"]["centre_inside"] <= 1 and 0 <= boxes["all"]["mean_iou"] <= 1


def test_in_process_metrics_match_the_training_code(local_report, tiny_dataset, tiny_run):
    """Same numbers as training.metrics.evaluate_logits on logits from the training data loader."""
    _, result = local_report
    model, taxonomy, _ = load_model(tiny_run / "model.pt")
    data = load_labeled_folder(tiny_dataset, None, taxonomy, model.config.image_size, workers=0,
                               resize=model.config.resize)  # prepared as the checkpoint was trained
    runtime = Runtime.resolve("cpu")  # the precision and layout evaluation and serving resolve by default
    logits = predict_logits(prepare_model(model, runtime), data.images, runtime).numpy()
    expected = evaluate_logits(logits, {k: v.numpy() for k, v in data.targets.items()}, taxonomy)
    for head in SINGLE_HEADS:
        assert result["metrics"][head]["accuracy"] == pytest.approx(expected[head]["accuracy"])
        assert result["metrics"][head]["macro_f1"] == pytest.approx(expected[head]["macro_f1"])
    assert result["metrics"]["objects"]["f1"] == pytest.approx(expected["objects"]["f1"])


@pytest.mark.server
def test_server_evaluation_gives_the_same_metrics(local_report, tiny_dataset, server, tmp_path):
    out_local, local = local_report
    remote = evaluate(tmp_path, tiny_dataset, *served(server))
    assert remote["source"]["mode"] == "server" and remote["source"]["model_version"] == "1.0"
    assert remote["metrics"] == local["metrics"]  # exact: every count, accuracy, macro-F1, precision, recall, F1
    assert remote["box_quality"] == local["box_quality"]  # the same boxes, in process and as served
    for key in ("images", "listed", "skipped"):
        assert remote[key] == local[key], key
    # Server mode knows the thresholds only from the labels; the checkpoint's lie inside those intervals.
    assert remote["thresholds"]["values"] is None
    for cls, value in local["thresholds"]["values"].items():
        above, at_most = remote["thresholds"]["implied"][cls]
        assert above - 1e-4 <= value <= at_most + 1e-4
    for name in PICTURES:
        assert_png(tmp_path / name)
    assert "served at" in (tmp_path / "report.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def broken_local_report(broken_dataset, tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_broken")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        result = evaluate(out, broken_dataset[0], *in_process(tiny_run))
    return out, result, printed.getvalue()


def test_missing_and_corrupt_images_are_reported_as_skipped(broken_dataset, broken_local_report):
    _, missing, corrupt = broken_dataset
    out, result, printed = broken_local_report
    assert result["listed"] == 24 and result["images"] == 22 and result["skipped_count"] == 2
    assert set(result["skipped"]) == {missing, corrupt}
    assert result["skipped"][missing].startswith("missing file")
    assert result["skipped"][corrupt].startswith("unreadable image")
    assert all(item["filename"] not in (missing, corrupt) for item in result["worst_images"])
    report = (out / "report.md").read_text(encoding="utf-8")
    assert missing in report and corrupt in report
    for name in PICTURES:
        assert_png(out / name)
    # The printed summary table.
    assert "evaluated 22 of 24 images (2 skipped)" in printed
    for word in (*SINGLE_HEADS, *OBJECTS, "mean object F1", missing, corrupt, "report.md"):
        assert word in printed, word


@pytest.mark.server
def test_server_mode_skips_the_same_images_for_the_same_reasons(broken_dataset, broken_local_report, server):
    csv, missing, corrupt = broken_dataset
    _, local, _ = broken_local_report
    args = get_args_parser().parse_args(["--data", str(csv), *served(server)])
    remote = summarise(run_evaluation(args))  # numbers only: the pictures are covered above
    assert remote["skipped"] == local["skipped"] and set(remote["skipped"]) == {missing, corrupt}
    assert remote["metrics"] == local["metrics"]


def test_training_curves_from_a_history(tmp_path):
    def val(epoch):
        return {"time_of_day": {"accuracy": 0.5 + 0.1 * epoch, "macro_f1": 0.4 + 0.1 * epoch},
                "season": {"accuracy": 0.3 + 0.1 * epoch, "macro_f1": 0.2 + 0.1 * epoch},
                "terrain": {"accuracy": 0.6, "macro_f1": 0.5 + 0.05 * epoch},
                "objects": {"f1": {c: 0.1 * epoch for c in OBJECTS}, "mean_f1": 0.1 * epoch},
                "mean_object_f1": 0.1 * epoch}

    history = [{"epoch": e, "train_loss": 3.0 / e, "val": val(e), "score": 0.2 * e, "seconds": 1.0}
               for e in (1, 2, 3)]
    path = write_training_curves(history, tmp_path / "run")
    assert path == tmp_path / "run" / "curves.png"
    assert_png(path)
    assert write_training_curves([], tmp_path / "empty") is None


def test_pr_curve_and_precision_recall_by_hand():
    truth = np.array([1, 0, 1, 1, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.7, 0.7, 0.1])
    curve = pr_curve(truth, scores)
    # Distinct scores 0.9, 0.8, 0.7 (two images, both positive), 0.1.
    assert curve["thresholds"] == [0.9, 0.8, 0.7, 0.1]
    assert curve["recall"] == pytest.approx([0, 1 / 3, 1 / 3, 1, 1])
    assert curve["precision"] == pytest.approx([1, 1, 1 / 2, 3 / 4, 3 / 5])
    assert curve["average_precision"] == pytest.approx(1 / 3 * 1 + 2 / 3 * 3 / 4)
    assert precision_recall(truth, scores >= 0.75) == pytest.approx((1 / 2, 1 / 3))
    assert precision_recall(truth, np.zeros(5, dtype=bool)) == (0.0, 0.0)


def test_every_flag_has_help_and_a_model_is_required():
    parser = get_args_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "x.csv"])
