"""The object recipe's pieces: box sidecar, per-cell targets, crops at serving scale, the cell loss, the per-cell
head and its checkpoints."""
import json

import numpy as np
import pytest
import torch

from phototag.checkpoint import load_model, save_checkpoint
from phototag.model import build_model
from phototag.taxonomy import Taxonomy
from training.boxes import IGNORED, NEGATIVE, POSITIVE, BoxFileError, PhotoBoxes, cell_targets, read_box_sidecar
from training.objects import cell_loss, sample_crops

TAXONOMY = Taxonomy.load()
OBJECTS = [c for g in TAXONOMY.multi_groups for c in g.class_ids]


def _sidecar(tmp_path, lines: list[str]):
    (tmp_path / "object_boxes.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path / "labels.csv"


def test_a_box_marks_its_centre_positive_its_rim_ignored_and_the_rest_negative():
    # a 512x512 photo squashed to 256: the box [160, 160, 352, 352] becomes [80, 80, 176, 176] (cells 5..10)
    photo = PhotoBoxes(512, 512, [{"object": "horses", "box": [160, 160, 352, 352], "size": 0.375}])
    targets = cell_targets(photo, OBJECTS, 256, 16)
    horses = targets[OBJECTS.index("horses")]
    assert targets.shape == (8, 16, 16) and targets.dtype == np.int8
    assert horses[7, 7] == POSITIVE and horses[8, 8] == POSITIVE  # centre 128: cell centres 120 and 136
    assert horses[5, 5] == IGNORED  # overlaps the box, centre 88 is outside its central half [104, 152]
    assert horses[0, 0] == NEGATIVE and horses[12, 7] == NEGATIVE
    assert (targets[OBJECTS.index("cars")] == NEGATIVE).all()


def test_a_tiny_object_still_has_its_centre_cell_and_letterbox_moves_the_box():
    drone = {"object": "drone", "box": [1000, 100, 1012, 112], "size": 0.02}
    squash = cell_targets(PhotoBoxes(2000, 1000, [drone]), OBJECTS, 256, 16)[OBJECTS.index("drone")]
    assert squash.sum(where=squash == POSITIVE) == 1 and squash[1, 8] == POSITIVE  # (1006*0.128, 106*0.256)
    letterbox = cell_targets(PhotoBoxes(2000, 1000, [drone]), OBJECTS, 256, 16,
                             resize="letterbox")[OBJECTS.index("drone")]
    assert letterbox[4, 8] == POSITIVE  # scale 0.128, 64 px of padding on top: y = 64 + 13.6


def test_sidecar_lines_are_checked_and_boxes_outside_are_clipped_and_counted(tmp_path):
    csv = _sidecar(tmp_path, [json.dumps({"filename": "a.jpg", "width": 100, "height": 50, "objects": [
        {"object": "cars", "box": [-10, 5, 40, 80], "size": 0.5},
        {"object": "drone", "box": [120, 0, 140, 10], "size": 0.2}]})])
    sidecar = read_box_sidecar(csv)
    assert sidecar.clipped == 2
    assert sidecar.photos["a.jpg"].objects == [{"object": "cars", "box": [0.0, 5.0, 40.0, 50.0], "size": 0.5}]
    _sidecar(tmp_path, [json.dumps({"filename": "a.jpg", "width": 100, "height": 50, "objects": []}), "{oops"])
    with pytest.raises(BoxFileError, match=r"object_boxes.jsonl, line 2: not JSON"):
        read_box_sidecar(csv)
    _sidecar(tmp_path, [json.dumps({"filename": "a.jpg", "width": 100, "objects": []})])
    with pytest.raises(BoxFileError, match=r"line 1: not a box record \(KeyError: 'height'\)"):
        read_box_sidecar(csv)
    assert read_box_sidecar(tmp_path / "elsewhere" / "labels.csv") is None


def test_crops_are_cut_on_the_cell_grid_with_their_slice_of_the_targets():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (3, 3, 128, 128), dtype=torch.uint8)
    cells = torch.full((3, 8, 8, 8), NEGATIVE, dtype=torch.int8)
    cells[1, 2, 6, 1] = POSITIVE  # one object on photo 1 only
    crops, targets = sample_crops(images, cells, torch.tensor([1]), 64, 32, 16, centred=1.0, generator=generator)
    assert crops.shape == (64, 3, 32, 32) and targets.shape == (64, 8, 2, 2)
    assert (targets == POSITIVE).flatten(1).any(dim=1).all()  # every crop is centred on the object
    for crop, target in zip(crops, targets):  # each crop is a grid-aligned window of photo 1, maybe mirrored
        windows = [(r, c) for r in range(7) for c in range(7)
                   if torch.equal(crop, images[1, :, r * 16:r * 16 + 32, c * 16:c * 16 + 32])
                   or torch.equal(crop, images[1, :, r * 16:r * 16 + 32, c * 16:c * 16 + 32].flip(-1))]
        assert len(windows) == 1
        r, c = windows[0]
        window = cells[1, :, r:r + 2, c:c + 2]
        assert torch.equal(target, window) or torch.equal(target, window.flip(-1))


def test_a_centred_crop_keeps_its_object_off_the_crop_border():
    generator = torch.Generator().manual_seed(1)
    images = torch.zeros((1, 3, 128, 128), dtype=torch.uint8)
    cells = torch.full((1, 8, 8, 8), NEGATIVE, dtype=torch.int8)
    cells[0, 5, 3, 4] = POSITIVE  # away from the photo's edge: any 4-cell window around it fits
    _, targets = sample_crops(images, cells, torch.tensor([0]), 200, 64, 16, centred=1.0, generator=generator)
    places = {tuple(p) for p in (targets[:, 5] == POSITIVE).nonzero()[:, 1:].tolist()}
    assert places == {(1, 1), (1, 2), (2, 1), (2, 2)}  # every inner place, never a border row or column


def test_cell_loss_ignores_ignored_cells_and_scales_by_positives():
    targets = torch.full((1, 2, 4, 4), NEGATIVE, dtype=torch.int8)
    targets[0, 0, 1, 1], targets[0, 0, 1, 2] = POSITIVE, IGNORED
    logits = torch.zeros(1, 2, 4, 4)
    base = cell_loss((logits, targets))
    moved = logits.clone()
    moved[0, 0, 1, 2] = 9.0  # an ignored cell: nothing changes
    assert torch.equal(cell_loss((moved, targets)), base)
    moved[0, 0, 1, 1] = 9.0  # the positive cell, confident and right: the loss falls
    assert cell_loss((moved, targets)) < base


def test_cell_loss_gives_every_positive_cell_one_weight_across_photos_and_crops():
    photo = torch.full((1, 1, 16, 16), NEGATIVE, dtype=torch.int8)
    photo[0, 0, 3, 3] = POSITIVE
    crops = torch.full((6, 1, 4, 4), NEGATIVE, dtype=torch.int8)
    crops[:, 0, 1, 1] = POSITIVE
    photo_logits, crop_logits = torch.zeros(1, 1, 16, 16), torch.zeros(6, 1, 4, 4)
    joint = cell_loss((photo_logits, photo), (crop_logits, crops))
    # one sum over all cells divided by all 7 positives, not the mean of each pair's own ratio
    sums = [cell_loss((photo_logits, photo)) * 1, cell_loss((crop_logits, crops)) * 6]
    assert torch.allclose(joint, (sums[0] + sums[1]) / 7)
    assert not torch.allclose(joint, (sums[0] + sums[1] / 6) / 2)


def test_per_cell_head_scores_a_photo_by_its_best_cell_and_round_trips(tmp_path):
    model = build_model(TAXONOMY, arch="resnet18", object_head="cells", object_pooling="max").eval()
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        logits, cells = model.forward_with_cells(images)
        assert cells.shape == (2, 8, 6, 6)  # stride 16
        assert torch.allclose(logits[:, TAXONOMY.group("objects").logits], cells.amax(dim=(2, 3)))
        scene = model.heads["time_of_day"](model.feature_map(images).mean(dim=(2, 3)))
        assert torch.allclose(logits[:, TAXONOMY.group("time_of_day").logits], scene, atol=1e-5)
        assert torch.equal(model(images), logits)
    save_checkpoint(tmp_path / "m.pt", model, TAXONOMY)
    loaded, _, _ = load_model(tmp_path / "m.pt")
    assert loaded.config.object_head == "cells"
    with torch.no_grad():
        assert torch.equal(loaded(images), logits)


def test_a_pooled_head_checkpoint_from_before_loads_as_pooled(tmp_path):
    """Format-2 checkpoints have no object_head: they load with the pooled heads they were trained with."""
    old = build_model(TAXONOMY, arch="resnet18", object_head="pooled", object_pooling="gem").eval()
    save_checkpoint(tmp_path / "old.pt", old, TAXONOMY)
    payload = torch.load(tmp_path / "old.pt", weights_only=True)
    payload["format_version"] = 2
    del payload["model_config"]["object_head"]
    torch.save(payload, tmp_path / "old.pt")
    loaded, _, _ = load_model(tmp_path / "old.pt")
    assert (loaded.config.object_head, loaded.config.object_pooling) == ("pooled", "gem")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), old(x))


def test_a_cells_head_refuses_a_feature_pooling():
    with pytest.raises(ValueError, match="object_pooling must be 'max'"):
        build_model(TAXONOMY, arch="resnet18", object_head="cells", object_pooling="gem")


def test_batch_norm_statistics_are_set_from_the_given_photos_alone():
    """After recalibration the first batch-norm layer holds the mean and variance of conv1's output over exactly
    these photos (whatever training left there before), the weights are untouched and the mode is restored."""
    from phototag.inference import Runtime, to_model_input
    from phototag.model import build_model
    from phototag.taxonomy import Taxonomy
    from training.objects import recalibrate_batch_norm

    model = build_model(Taxonomy.load(), object_head="cells", object_pooling="max").eval()
    model.backbone.bn1.running_mean.fill_(5.0)  # stale statistics from elsewhere
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k}
    images = torch.randint(0, 255, (10, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    runtime = Runtime(torch.device("cpu"))
    recalibrate_batch_norm(model, images, runtime, batch_size=5)
    with torch.no_grad():
        conv = model.backbone.conv1(to_model_input(images, runtime))
    expected_mean, expected_var = conv.mean(dim=(0, 2, 3)), conv.var(dim=(0, 2, 3))
    assert torch.allclose(model.backbone.bn1.running_mean, expected_mean, atol=1e-4)
    # two batches of 5: the average of their unbiased variances, close to the variance over all 10
    assert torch.allclose(model.backbone.bn1.running_var, expected_var, rtol=0.05)
    assert not model.training and model.backbone.bn1.momentum == 0.1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
