"""Tests for the synthetic scene generator: determinism, the CSV format, label statistics and that the labels
are actually visible in the pixels (fixed seeds, generous margins: the assertions must never be flaky)."""
from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from phototag.labels_csv import labels_to_row
from phototag.taxonomy import MULTI, SINGLE, UNKNOWN, Taxonomy
from training import synth
from training.boxes import read_object_boxes
from training.synth import dataset, shapes

TAXONOMY = Taxonomy.load()
SEEDS = range(5)


def _labels(tod="day", season="summer", terrain="unknown", objects=()):
    return {"time_of_day": tod, "season": season, "terrain": terrain, "objects": list(objects)}


def _render(labels, seed, width=256, height=192) -> np.ndarray:
    return np.asarray(synth.render_scene(labels, width, height, seed), dtype=np.float32)


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh, delimiter=";"))


def _snapshot(out_dir: Path) -> dict[str, bytes]:
    files = {p.relative_to(out_dir).as_posix(): p.read_bytes() for p in sorted(out_dir.rglob("*")) if p.is_file()}
    assert files, "nothing was written"
    return files


# ---- determinism --------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    kwargs = dict(count=6, min_size=96, max_size=400, png_fraction=0.3, workers=1)
    synth.generate_dataset(tmp_path / "a", seed=7, **kwargs)
    synth.generate_dataset(tmp_path / "b", seed=7, **kwargs)
    synth.generate_dataset(tmp_path / "c", seed=8, **kwargs)
    a, b, c = (_snapshot(tmp_path / name) for name in "abc")
    assert a == b
    assert a["labels.csv"] != c["labels.csv"] or any(a[k] != c.get(k) for k in a)
    images_a = {k: v for k, v in a.items() if k.startswith("images/")}
    assert not any(v == c.get(k) for k, v in images_a.items())


def test_output_does_not_depend_on_workers_or_chunking(tmp_path):
    kwargs = dict(seed=3, min_size=64, max_size=200, png_fraction=0.5)
    synth.generate_dataset(tmp_path / "one", 6, workers=1, **kwargs)
    synth.generate_dataset(tmp_path / "pool", 6, workers=2, **kwargs)
    synth.generate_dataset(tmp_path / "chunk", 2, workers=1, start_index=4, **kwargs)
    one, pool, chunk = (_snapshot(tmp_path / name) for name in ("one", "pool", "chunk"))
    assert one == pool
    for name, data in chunk.items():
        if name.startswith("images/"):
            assert one[name] == data
    assert _read_csv(tmp_path / "chunk" / "labels.csv")[1:] == _read_csv(tmp_path / "one" / "labels.csv")[5:]


# ---- CSV format -----------------------------------------------------------------------------------------------
def test_csv_format_codes_files_and_sizes(tmp_path):
    csv_path = synth.generate_dataset(tmp_path, 8, seed=1, min_size=64, max_size=180, png_fraction=0.0, workers=1)
    assert csv_path == tmp_path / "labels.csv"
    text = csv_path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ";".join(TAXONOMY.csv_columns())
    rows = _read_csv(csv_path)
    header, body = rows[0], rows[1:]
    assert header == TAXONOMY.csv_columns()
    assert len(body) == 8
    for index, row in enumerate(body):
        assert len(row) == len(header)
        record = dict(zip(header, row))
        name = record[header[0]]
        assert name == f"scene_{index:06d}.jpg"
        for group in TAXONOMY.groups:
            if group.kind == SINGLE:
                assert int(record[group.csv_column]) in {c.code for c in group.classes}
            else:
                assert all(record[c.csv_column] in ("0", "1") for c in group.classes)
        with Image.open(tmp_path / "images" / name) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert all(64 <= side <= 180 for side in img.size)


def test_png_fraction_controls_format(tmp_path):
    synth.generate_dataset(tmp_path / "png", 4, seed=2, min_size=48, max_size=96, png_fraction=1.0, workers=1)
    names = [row[0] for row in _read_csv(tmp_path / "png" / "labels.csv")[1:]]
    assert names and all(n.endswith(".png") for n in names)
    for name in names:
        with Image.open(tmp_path / "png" / "images" / name) as img:
            assert img.format == "PNG"
    synth.generate_dataset(tmp_path / "jpg", 4, seed=2, min_size=48, max_size=96, png_fraction=0.0, workers=1)
    assert not list((tmp_path / "jpg" / "images").glob("*.png"))


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synth.generate_dataset(tmp_path, 1, min_size=500, max_size=400)
    with pytest.raises(ValueError):
        synth.generate_dataset(tmp_path, 1, png_fraction=1.5)
    with pytest.raises(ValueError):
        synth.render_scene(_labels(tod="dusk"), 64, 64, 0)


def test_cli_writes_dataset_and_prints_summary(tmp_path, capsys):
    assert dataset.main(["--out", str(tmp_path), "--count", "3", "--seed", "4", "--min-size", "64",
                       "--max-size", "96", "--workers", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "3 images" in line and "time_of_day:" in line and "aviation=" in line
    assert len(_read_csv(tmp_path / "labels.csv")) == 4


# ---- label statistics -----------------------------------------------------------------------------------------
def test_generate_labels_statistics():
    n = 4000
    draws = [synth.generate_labels(random.Random(i), TAXONOMY) for i in range(n)]
    assert list(draws[0]) == [g.name for g in TAXONOMY.groups]
    for group in TAXONOMY.groups:
        for labels in draws[:50]:
            values = [labels[group.name]] if group.kind == SINGLE else labels[group.name]
            assert set(values) <= set(group.class_ids)
    for group in TAXONOMY.single_groups:
        share = sum(d[group.name] == UNKNOWN for d in draws) / n
        assert 0.08 <= share <= 0.17, (group.name, share)
        for cls in group.class_ids:
            assert sum(d[group.name] == cls for d in draws) / n >= 0.08, (group.name, cls)
    for group in TAXONOMY.multi_groups:
        for cls in group.class_ids:
            share = sum(cls in d[group.name] for d in draws) / n
            assert 0.2 <= share <= 0.3, (cls, share)
        none = sum(not d[group.name] for d in draws) / n
        assert 0.06 <= none <= 0.14
    assert not any(d["terrain"] == "forest" and d["season"] == UNKNOWN for d in draws)


def test_row_follows_taxonomy_columns():
    labels = _labels("night", "autumn", "city", ["drone", "sherp"])
    record = dict(zip(TAXONOMY.csv_columns(), labels_to_row("x.jpg", labels, TAXONOMY)))
    assert record[TAXONOMY.group("time_of_day").csv_column] == "2"
    assert record[TAXONOMY.group("season").csv_column] == "4"
    assert record[TAXONOMY.group("terrain").csv_column] == "2"
    objects = TAXONOMY.group("objects")
    assert objects.kind == MULTI
    assert [record[c.csv_column] for c in objects.classes] == ["1" if c.id in ("drone", "sherp") else "0"
                                                              for c in objects.classes]


# ---- the labels are visible -----------------------------------------------------------------------------------
def test_render_size_and_mode():
    for width, height in ((320, 2000), (2000, 330), (97, 61)):
        img = synth.render_scene(_labels(objects=["cars", "aviation"]), width, height, 11)
        assert img.mode == "RGB" and img.size == (width, height)


@pytest.mark.parametrize("terrain", ["unknown", "forest", "city"])
def test_night_is_much_darker_than_day(terrain):
    for seed in SEEDS:
        night = _render(_labels("night", terrain=terrain), seed).mean()
        day = _render(_labels("day", terrain=terrain), seed).mean()
        assert night < 0.4 * day, (seed, night, day)


def test_winter_ground_white_summer_ground_green():
    for seed in SEEDS:
        winter = _render(_labels(season="winter"), seed)[-64:].mean(axis=(0, 1))
        summer = _render(_labels(season="summer"), seed)[-64:].mean(axis=(0, 1))
        assert winter.mean() > summer.mean() + 60, (seed, winter, summer)
        assert summer[1] > summer[0] + 20 and summer[1] > summer[2] + 20, (seed, summer)


def test_twilight_sky_is_redder_than_day_sky():
    for seed in SEEDS:
        twilight = _render(_labels("twilight"), seed)[:38].mean(axis=(0, 1))  # top fifth: always sky
        day = _render(_labels("day"), seed)[:38].mean(axis=(0, 1))
        assert twilight[0] / twilight[2] > day[0] / day[2] + 0.1, (seed, twilight, day)


def test_unknown_time_shows_no_blue_sky():
    for seed in SEEDS:
        for terrain in ("unknown", "forest"):
            unknown = _render(_labels(UNKNOWN, terrain=terrain), seed)[:38].mean(axis=(0, 1))
            day = _render(_labels("day", terrain="unknown"), seed)[:38].mean(axis=(0, 1))
            assert unknown[2] - unknown[:2].mean() < day[2] - day[:2].mean() - 25, (seed, terrain, unknown, day)


def _draw_alone(name: str, size: int = 160) -> np.ndarray:
    """Alpha mask of one object shape drawn on a transparent canvas."""
    canvas = Image.new("RGBA", (480, 480), (0, 0, 0, 0))
    pen = shapes.Pen(ImageDraw.Draw(canvas, "RGBA"), 240, 330, size)
    rng, lights = random.Random(5), []
    painters = {
        "aviation": lambda: shapes.draw_airplane(pen, rng, lights),
        "helicopter": lambda: shapes.draw_helicopter(pen, rng, lights),
        "cars": lambda: shapes.draw_car(pen, rng),
        "drone": lambda: shapes.draw_drone(pen, rng, lights),
        "diver": lambda: shapes.draw_diver(pen, rng, "summer"),
        "dog_handler": lambda: shapes.draw_dog_handler(pen, rng),
        "horses": lambda: shapes.draw_horse(pen, rng),
        "hugs": lambda: shapes.draw_hugs(pen, rng),
        "sherp": lambda: shapes.draw_sherp(pen, rng),
    }
    painters[name]()
    return np.asarray(canvas)[..., 3] > 0


def test_every_object_is_a_distinct_shape_of_the_requested_size():
    names = ["aviation", "helicopter", "cars", "drone", "diver", "dog_handler", "horses", "hugs", "sherp"]
    masks = {name: _draw_alone(name) for name in names}
    for name, mask in masks.items():
        ys, xs = np.nonzero(mask)
        extent = max(xs.max() - xs.min(), ys.max() - ys.min())
        assert 0.4 * 160 <= extent <= 2.2 * 160, (name, extent)
        box_fill = mask.sum() / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
        assert 0.1 <= box_fill <= 0.95, (name, box_fill)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.75, (a, b, iou)


def test_objects_change_the_picture():
    for seed in SEEDS:
        without = _render(_labels(season="unknown"), seed)
        with_sherp = _render(_labels(season="unknown", objects=["sherp"]), seed)
        assert np.abs(without - with_sherp).mean() > 2.0, seed


# ---- object boxes (the sidecar the evaluation's size breakdown reads) ----------------------------------------
def test_boxes_come_with_the_same_pixels_and_one_box_per_drawn_object():
    labels = _labels(tod="day", season="winter", terrain="forest", objects=["drone", "dog_handler", "sherp"])
    image, boxes = synth.render_scene_with_boxes(labels, 600, 300, seed=9)
    assert np.array_equal(np.asarray(image), np.asarray(synth.render_scene(labels, 600, 300, 9)))
    assert sorted(b["object"] for b in boxes) == ["dog_handler", "drone", "sherp"]
    for item in boxes:
        x0, y0, x1, y1 = item["box"]
        assert 0 <= x0 <= x1 <= 600 and 0 <= y0 <= y1 <= 300, item
        low, high = (0.06, 0.16) if item["object"] == "drone" else (0.10, 0.35)
        assert low <= item["size"] <= high, item  # the generator's size ranges, as a share of the short side


def test_dataset_writes_a_boxes_sidecar_that_the_csv_reader_ignores(tmp_path):
    csv_path = synth.generate_dataset(tmp_path, count=8, seed=4, max_size=400, workers=1)
    boxes = read_object_boxes(csv_path)
    rows = _read_csv(csv_path)[1:]
    assert sorted(boxes) == sorted(r[0] for r in rows)
    objects = [g for g in TAXONOMY.groups if g.kind == MULTI][0].class_ids
    for row in rows:
        drawn = sorted({b["object"] for b in boxes[row[0]]})
        assert drawn == sorted(c for c, v in zip(objects, row[4:]) if v == "1"), row
    assert read_object_boxes(tmp_path / "elsewhere" / "labels.csv") == {}
