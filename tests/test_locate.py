"""Boxes from the per-cell object map (phototag/locate.py), their quality figures (training/box_quality.py), and
the box of a found object through the handler, upright and with EXIF orientation 6 and 8."""
from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from phototag.checkpoint import read_checkpoint
from phototag.decoding import DISPLAYED_SIZE, decode_image
from phototag.locate import OTHER_PLACE_SCORE, InputGeometry, object_boxes, tag_photo
from phototag.taxonomy import SINGLE, Taxonomy
from serving.torchserve_process import REPO
from training.box_quality import box_quality
from training.boxes import read_object_boxes

TAXONOMY = Taxonomy.load()
OBJECTS = [c.id for g in TAXONOMY.groups if g.kind != SINGLE for c in g.classes]
WARM_START = REPO / "weights" / "warm-start.pt"


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def cell_map(grid: int = 16, **hot: list[tuple[int, int, float]]) -> np.ndarray:
    """[K, grid, grid] logits: every cell at 1 %, the (row, col, probability) cells given per object."""
    cells = np.full((len(OBJECTS), grid, grid), logit(0.01), dtype=np.float32)
    for name, spots in hot.items():
        for r, c, p in spots:
            cells[OBJECTS.index(name), r, c] = logit(p)
    return cells


def test_a_place_becomes_its_cells_extent_in_photo_pixels():
    # 2x2 cells at rows 2-3, columns 4-5 of a 16x16 map over a 256 px squashed input: input box 64..96 x 32..64
    cells = cell_map(cars=[(2, 4, 0.9), (2, 5, 0.8), (3, 4, 0.7), (3, 5, 0.95)])
    boxes = object_boxes(cells, TAXONOMY, ["cars"], InputGeometry(1000, 500, 256, "squash"))
    [box] = boxes["cars"]
    assert box["box"] == pytest.approx([64 * 1000 / 256, 32 * 500 / 256, 96 * 1000 / 256, 64 * 500 / 256], abs=0.1)
    assert box["box_normalized"] == pytest.approx([64 / 256, 32 / 256, 96 / 256, 64 / 256], abs=1e-4)
    assert box["score"] == pytest.approx(0.95, abs=1e-4)


def test_letterbox_padding_is_taken_off_and_a_place_in_the_padding_gives_no_box():
    # 1000x500 letterboxed into 256: scaled to 256x128 with 64 px of padding above and below (rows 0-3, 12-15).
    geometry = InputGeometry(1000, 500, 256, "letterbox")
    cells = cell_map(sherp=[(4, 0, 0.9), (11, 15, 0.8), (0, 8, 0.85)])
    first, second = object_boxes(cells, TAXONOMY, ["sherp"], geometry)["sherp"]
    scale = 1000 / 256
    assert first["box"] == pytest.approx([0, 0, 16 * scale, 16 * scale], abs=0.1)
    assert second["box"] == pytest.approx([240 * scale, (176 - 64) * scale, 1000, 500], abs=0.1)
    assert second["box_normalized"] == pytest.approx([240 / 256, 112 / 128, 1, 1], abs=1e-4)


def test_separate_places_give_separate_boxes_and_weak_other_places_are_left_out():
    weak = OTHER_PLACE_SCORE - 0.1
    cells = cell_map(dog_handler=[(1, 1, 0.9), (10, 12, 0.8), (14, 2, weak)])
    boxes = object_boxes(cells, TAXONOMY, ["dog_handler"], InputGeometry(256, 256, 256))
    assert [b["score"] for b in boxes["dog_handler"]] == [0.9, 0.8]


def test_only_tagged_objects_get_boxes_and_a_tagged_one_always_does():
    threshold = TAXONOMY.group("objects").classes[OBJECTS.index("drone")].threshold
    cells = cell_map(horses=[(5, 5, 0.99)], drone=[(7, 7, threshold)])  # exactly at its threshold
    boxes = object_boxes(cells, TAXONOMY, ["drone"], InputGeometry(640, 480, 256))
    assert list(boxes) == ["drone"] and len(boxes["drone"]) == 1


def test_tag_photo_adds_boxes_only_for_a_model_with_a_cell_map():
    logits = [-5.0] * TAXONOMY.num_logits
    objects = TAXONOMY.group("objects")
    logits[objects.logits.start + OBJECTS.index("cars")] = logit(0.9)
    cells = cell_map(cars=[(8, 8, 0.9)])
    answer = tag_photo(logits, cells, TAXONOMY, "1.0", InputGeometry(800, 600, 256))
    assert answer["objects"]["labels"] == ["cars"]
    assert list(answer["objects"]["boxes"]) == ["cars"] and answer["image"] == {"width": 800, "height": 600}
    pooled = tag_photo(logits, None, TAXONOMY, "1.0", None)
    assert "boxes" not in pooled["objects"] and "image" not in pooled


def test_box_quality_figures_by_hand():
    truth = {"a.jpg": [{"object": "cars", "box": [0, 0, 100, 100], "size": 0.3},
                       {"object": "cars", "box": [200, 0, 220, 20], "size": 0.05}],
             "b.jpg": [{"object": "horses", "box": [0, 0, 50, 50], "size": 0.15}]}
    answers = [{"labels": ["cars"], "boxes": {"cars": [{"box": [0, 0, 100, 50]}, {"box": [500, 500, 510, 510]}]}},
               {"labels": ["horses", "cars"], "boxes": {"horses": [{"box": [0, 0, 50, 50]}],
                                                          "cars": [{"box": [0, 0, 10, 10]}]}}]
    quality = box_quality(["a.jpg", "b.jpg"], answers, truth, ["cars", "horses"])
    everything = quality["all"]
    assert everything["boxes"] == 4
    assert everything["centre_inside"] == pytest.approx(2 / 4)  # the 0.5-IoU car and the horse
    assert everything["mean_iou"] == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert everything["true_objects"] == 3 and everything["found"] == pytest.approx(2 / 3)  # the small car missed
    assert quality["<10%"]["true_objects"] == 1 and quality["<10%"]["found"] == 0
    assert quality["all"]["objects"]["horses"]["mean_iou"] == pytest.approx(1.0)
    assert box_quality(["a.jpg"], [{"labels": []}], truth, ["cars"]) is None  # a model without boxes


def jpeg(image: Image.Image, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


# What a camera that stores the sensor's rows does: the pixels lie turned, the tag says how to show them.
STORED_TURNED = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", sorted(STORED_TURNED))
def test_displayed_size_follows_exif_orientation_at_any_draft_scale(orientation):
    upright = Image.new("RGB", (1200, 400), (30, 90, 160))
    data = jpeg(upright.transpose(STORED_TURNED[orientation]), orientation)
    for draft in (None, (64, 64)):
        image = decode_image(data, draft_size=draft)
        assert image.info[DISPLAYED_SIZE] == (1200, 400)
        assert image.width > image.height


@pytest.fixture(scope="module")
def warm_start_handler(tmp_path_factory):
    """The handler serving the committed warm start (a model that finds objects), in process."""
    from handler.tagger_handler import PhotoTaggerHandler
    from tests.test_handler import make_context

    model_dir = tmp_path_factory.mktemp("warm_start_archive")
    shutil.copy(WARM_START, model_dir / "model.pt")
    Taxonomy.from_dict(read_checkpoint(WARM_START)["taxonomy"]).save(model_dir / "taxonomy.json")
    handler = PhotoTaggerHandler()
    handler.initialize(make_context(model_dir, precision="fp32"))
    return handler, model_dir


def found_objects(tiny_dataset, handler, model_dir):
    """(scene, true box, answer) of every large object the warm start finds with a box centred on it."""
    from tests.test_handler import handle, make_context

    truth = read_object_boxes(tiny_dataset)
    found = []
    for name, objects in truth.items():
        data = (tiny_dataset.parent / "images" / name).read_bytes()
        [answer], _ = handle(handler, make_context(model_dir), [{"body": data}])
        for item in objects:
            x0, y0, x1, y1 = item["box"]
            for box in answer["objects"].get("boxes", {}).get(item["object"], ()):
                cx, cy = (box["box"][0] + box["box"][2]) / 2, (box["box"][1] + box["box"][3]) / 2
                if x0 <= cx <= x1 and y0 <= cy <= y1:
                    found.append((name, item, answer))
                    break
    return found


def test_a_turned_photo_gets_its_box_where_a_viewer_sees_the_object(tiny_dataset, warm_start_handler):
    """The warm start's boxes for objects it finds upright; the same pixels stored turned with EXIF orientation
    6 or 8 must give the same boxes, in the displayed photo's coordinates, on the drawn object."""
    from tests.test_handler import handle, make_context

    handler, model_dir = warm_start_handler
    found = found_objects(tiny_dataset, handler, model_dir)
    assert len(found) >= 3, "the warm start found almost nothing on the tiny scenes"
    for name, item, upright_answer in found[:3]:
        with Image.open(tiny_dataset.parent / "images" / name) as opened:
            scene = opened.convert("RGB")
        for orientation, turn in STORED_TURNED.items():
            [answer], _ = handle(handler, make_context(model_dir), [{"body": jpeg(scene.transpose(turn), orientation)}])
            assert answer["image"] == {"width": scene.width, "height": scene.height}
            boxes = answer["objects"]["boxes"].get(item["object"])
            assert boxes, f"{name} turned ({orientation}): no {item['object']} box; answer {json.dumps(answer)}"
            x0, y0, x1, y1 = item["box"]
            cx, cy = (boxes[0]["box"][0] + boxes[0]["box"][2]) / 2, (boxes[0]["box"][1] + boxes[0]["box"][3]) / 2
            assert x0 <= cx <= x1 and y0 <= cy <= y1, (name, orientation, boxes[0], item)
            upright = upright_answer["objects"]["boxes"][item["object"]][0]["box"]
            # the same cells, re-encoded once more: the box may move by at most one cell of the map
            cell_w, cell_h = scene.width / 16, scene.height / 16
            assert all(abs(a - b) <= c + 0.5 for a, b, c in zip(boxes[0]["box"], upright,
                                                                  (cell_w, cell_h, cell_w, cell_h)))
