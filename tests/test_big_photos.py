"""The big-photo mode: large photos have their objects read again at a larger input (phototag.inference.BigPhotos,
phototag.locate.tag_photo), the setting that turns it on, and the generator's large-photo option it is measured on.
"""
from __future__ import annotations

import io
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from phototag.checkpoint import read_checkpoint
from phototag.handler_settings import HandlerSettings, HandlerSettingsError
from phototag.inference import BigPhotos, load_photo
from phototag.locate import InputGeometry, tag_photo
from phototag.taxonomy import SINGLE, Taxonomy
from serving.torchserve_process import REPO
from training.boxes import read_object_boxes
from training.synth import generate_dataset
from training.synth.dataset import LARGE_SIZES

TAXONOMY = Taxonomy.load()
OBJECTS = [c.id for g in TAXONOMY.groups if g.kind != SINGLE for c in g.classes]
WARM_START = REPO / "weights" / "warm-start.pt"
BIG = BigPhotos(side=1000, input_size=512, max_pixels=3_000_000)


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 60)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_only_photos_past_the_side_and_within_the_budget_are_read_closer():
    big = load_photo(jpeg(1600, 1200), 256, big=BIG)
    assert big.image.shape == (3, 256, 256) and big.closer.shape == (3, 512, 512)
    assert big.closer_geometry == InputGeometry(1600, 1200, 512) and big.note is None
    small = load_photo(jpeg(1600, 900), 256, big=BIG)  # short side under 1000
    assert small.closer is None and small.note is None
    over = load_photo(jpeg(2400, 1800), 256, big=BIG)  # 4.3 MP > the 3 MP budget: ordinary, and says so
    assert over.closer is None and "budget of 3,000,000 pixels" in over.note
    assert load_photo(jpeg(1600, 1200), 256).closer is None  # the mode off


def test_the_scene_input_of_a_big_photo_is_the_ordinary_modes_exactly():
    """The closer read decodes at its own JPEG draft; the 256 px input the scene heads read is decoded at the
    ordinary draft, so a photo's scene tags do not depend on the mode (one decode at the larger draft changed the
    season of 2 of 150 large photos)."""
    rng = np.random.default_rng(3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    big, ordinary = load_photo(data, 256, big=BIG), load_photo(data, 256)
    assert big.closer is not None and ordinary.closer is None
    assert np.array_equal(big.image.numpy(), ordinary.image.numpy())
    assert big.geometry == ordinary.geometry == InputGeometry(1600, 1200, 256)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_an_object_is_scored_and_boxed_from_the_read_that_sees_it_better():
    logits = [-5.0] * TAXONOMY.num_logits
    objects = TAXONOMY.group("objects").logits.start
    logits[objects + OBJECTS.index("cars")] = logit(0.9)  # a large car, seen in the ordinary read
    ordinary = np.full((8, 16, 16), logit(0.01), dtype=np.float32)
    ordinary[OBJECTS.index("cars"), 2, 3] = logit(0.9)
    closer = np.full((8, 48, 48), logit(0.01), dtype=np.float32)
    closer[OBJECTS.index("cars"), 7, 10] = logit(0.6)  # weaker there: the car's box stays the ordinary one
    closer[OBJECTS.index("drone"), 30, 40] = logit(0.8)  # a drone only the closer read sees
    geometry, closer_geometry = InputGeometry(4000, 3000, 256), InputGeometry(4000, 3000, 768)
    answer = tag_photo(logits, ordinary, TAXONOMY, "1.0", geometry, (closer, closer_geometry))
    assert answer["objects"]["labels"] == ["cars", "drone"]
    assert answer["objects"]["scores"]["drone"] == pytest.approx(0.8, abs=1e-4)
    assert answer["objects"]["boxes"]["cars"][0]["box"] == pytest.approx([3 * 4000 / 16, 2 * 3000 / 16,
                                                                          4 * 4000 / 16, 3 * 3000 / 16], abs=0.1)
    assert answer["objects"]["boxes"]["drone"][0]["box"] == pytest.approx([40 * 4000 / 48, 30 * 3000 / 48,
                                                                           41 * 4000 / 48, 31 * 3000 / 48], abs=0.1)
    assert answer["image"] == {"width": 4000, "height": 3000, "objects_read_at": 768}


@pytest.mark.parametrize("section, message", [
    ({"big_photo_input": 700}, "multiple of 32"),
    ({"big_photo_side": -1}, "big_photo_side must be a whole number >= 0"),
    ({"big_photo_max_pixels": "lots"}, "big_photo_max_pixels must be a whole number"),
])
def test_big_photo_settings_are_checked(section, message):
    with pytest.raises(HandlerSettingsError, match=message):
        HandlerSettings.from_section(section)


def test_the_shipped_setting_turns_the_mode_on_for_twelve_megapixels():
    import yaml
    section = yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text())["handler"]
    big = HandlerSettings.from_section(section).big_photos()
    assert big.verdict(4000, 3000) == (True, None) and big.verdict(1920, 1080) == (False, None)
    assert HandlerSettings.from_section({}).big_photos() is None


@pytest.fixture(scope="module")
def large_scenes(tmp_path_factory):
    """Six scenes of the generator's large-photo option (12-20 MP, objects 1.2-7 % of the short side)."""
    out = tmp_path_factory.mktemp("large_scenes")
    return generate_dataset(out, 6, seed=9, large=True, png_fraction=0.0, workers=2)


def test_the_large_option_draws_camera_sizes_with_small_objects(large_scenes):
    boxes = read_object_boxes(large_scenes)
    for name, objects in boxes.items():
        with Image.open(large_scenes.parent / "images" / name) as image:
            assert image.size in LARGE_SIZES
        assert all(0.01 <= item["size"] <= 0.08 for item in objects), objects


def test_the_handler_finds_small_objects_in_big_photos_it_misses_at_the_ordinary_size(large_scenes, tmp_path):
    """The warm start through the handler, mode off and on: the big-photo read puts boxes on more of the true
    small objects (a box centred on each), and says it read them closer."""
    from handler.tagger_handler import PhotoTaggerHandler
    from tests.test_handler import handle, make_context

    shutil.copy(WARM_START, tmp_path / "model.pt")
    Taxonomy.from_dict(read_checkpoint(WARM_START)["taxonomy"]).save(tmp_path / "taxonomy.json")
    truth = read_object_boxes(large_scenes)
    found = {}
    for side in (0, 2000):
        handler = PhotoTaggerHandler()
        handler.initialize(make_context(tmp_path, precision="fp32", big_photo_side=side))
        hits = 0
        for name, objects in truth.items():
            data = (large_scenes.parent / "images" / name).read_bytes()
            [answer], _ = handle(handler, make_context(tmp_path), [{"body": data}])
            assert ("objects_read_at" in answer["image"]) == bool(side)
            for item in objects:
                x0, y0, x1, y1 = item["box"]
                hits += any(x0 <= (b["box"][0] + b["box"][2]) / 2 <= x1 and y0 <= (b["box"][1] + b["box"][3]) / 2 <= y1
                            for b in answer["objects"]["boxes"].get(item["object"], ()))
        found[side] = hits
    print("true objects found, mode off / on:", found, "of", sum(map(len, truth.values())))
    assert found[2000] > found[0], found


@pytest.mark.parametrize("jpeg_decoder", ["pil", "torchvision"])
def test_a_request_turns_the_mode_off_for_its_own_photo_only(tiny_run, jpeg_decoder):
    """In one batch: the archive's mode reads the big photos closer, except the one whose request says
    big_photos=off; a request with another value is refused alone (both JPEG decoding lanes)."""
    from handler.tagger_handler import PhotoTaggerHandler
    from tests.test_handler import handle, make_context

    handler = PhotoTaggerHandler()
    handler.initialize(make_context(tiny_run, jpeg_decoder=jpeg_decoder))  # the shipped big_photo_side: 2000
    photo = jpeg(2400, 2000)
    rows = [{"body": photo}, {"body": photo, "big_photos": b"off"}, {"body": photo, "big_photos": b"sideways"},
            {"body": photo, "big_photos": "auto"}]
    answers, _ = handle(handler, make_context(tiny_run), rows)
    assert [a.get("image", {}).get("objects_read_at") for a in answers] == [768, None, None, 768], answers
    assert answers[2]["reason"] == "bad_parameter" and "big_photos" in answers[2]["error"]
    assert "tags" in answers[1]
