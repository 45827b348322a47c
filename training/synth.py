"""Deterministic synthetic search-and-rescue scenes, written in the original dataset's format.

The real photos cannot be published, so training, the handler and the load tests are exercised on drawn
stand-ins: an image folder plus a `;`-separated UTF-8 CSV whose header and numeric codes come from the
taxonomy (`phototag/taxonomy.json`). Every label is made *visible* - sky colour and light for the time of
day, ground and foliage for the season, trees or buildings for the terrain, a drawn silhouette for each
object - and then muddied with clutter, occlusion, noise, blur and exposure jitter so that a CNN has to
learn the cue rather than a single pixel value.

Determinism: image `i` of seed `s` depends only on `(s, i)` - its labels, size, format and drawing seed come
from `random.Random(s * 1_000_003 + i)` - so the output is byte-identical for any worker count and for any
split into `start_index` chunks.

Only Pillow, numpy and the standard library (no torch) are used so that importing this module stays cheap.

    python -m training.synth --out data/synth --count 2000 --seed 0
"""
from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from phototag.taxonomy import SINGLE, UNKNOWN, Taxonomy
from training.labels_csv import read_labels_csv, write_labels_csv

# ---- label statistics ---------------------------------------------------------------------------------------
UNKNOWN_SHARE = 0.12  # share of 'unknown' in every single-choice head
OBJECT_RATE = 0.25  # each object independently; 0.75 ** 8 ~ 10 % of images without any object
SEED_STRIDE = 1_000_003  # per-image stream: random.Random(seed * SEED_STRIDE + index)

# ---- rendering ----------------------------------------------------------------------------------------------
WORK_LONG_SIDE = 768  # scenes are drawn at most this large and upscaled: big images cost little more
FILENAME_PATTERN = "scene_{index:06d}"
CSV_NAME = "labels.csv"
# Where each drawn object is, beside the labels (the CSV reader never opens it): for the evaluation's breakdown by
# object size.
BOXES_NAME = "object_boxes.jsonl"
IMAGE_DIR = "images"
JPEG_QUALITY = (60, 95)
PNG_COMPRESS_LEVEL = 1  # noisy images barely compress; higher levels cost time for ~2 % smaller files

# What the renderer knows how to draw, per taxonomy group; generate_dataset refuses other classes.
TIMES = ("unknown", "day", "night", "twilight")
SEASONS = ("unknown", "winter", "spring", "summer", "autumn")
TERRAINS = ("unknown", "forest", "city")
OBJECTS = ("aviation", "cars", "drone", "diver", "dog_handler", "horses", "hugs", "sherp")
DRAWABLE = {"time_of_day": TIMES, "season": SEASONS, "terrain": TERRAINS, "objects": OBJECTS}

Color = tuple


# =============================================================================================================
# labels
# =============================================================================================================
def _single_weights(class_ids: Sequence[str], unknown_share: float = UNKNOWN_SHARE) -> list[float]:
    """'unknown' gets `unknown_share`, the remaining classes share the rest equally."""
    known = [c for c in class_ids if c != UNKNOWN]
    if len(known) == len(class_ids):
        return [1.0 / len(class_ids)] * len(class_ids)
    rest = (1.0 - unknown_share) / max(1, len(known))
    return [unknown_share if c == UNKNOWN else rest for c in class_ids]


def _pick(rng: random.Random, ids: Sequence[str], weights: Sequence[float]) -> str:
    return rng.choices(list(ids), weights=list(weights), k=1)[0]


def generate_labels(rng: random.Random, taxonomy: Taxonomy | None = None) -> dict:
    """Draw one image's labels: {group name: class id} for single-choice groups, {group: [ids]} for yes/no.

    A forest always shows foliage or snow, so a forest's season is never 'unknown'; other terrains get
    'unknown' season correspondingly more often, which keeps every season's overall share unchanged.
    """
    taxonomy = taxonomy or Taxonomy.load()
    names = [g.name for g in taxonomy.groups]
    deferred = "season" if "season" in names and "terrain" in names else None
    labels: dict = {}
    for group in taxonomy.groups:
        if group.name == deferred:
            continue
        if group.kind == SINGLE:
            labels[group.name] = _pick(rng, group.class_ids, _single_weights(group.class_ids))
        else:
            labels[group.name] = [c for c in group.class_ids if rng.random() < OBJECT_RATE]
    if deferred:
        labels[deferred] = _season_given_terrain(rng, taxonomy, labels["terrain"])
    return {name: labels[name] for name in names}  # taxonomy order


def _season_given_terrain(rng: random.Random, taxonomy: Taxonomy, terrain: str) -> str:
    seasons = taxonomy.group("season").class_ids
    terrains = taxonomy.group("terrain").class_ids
    p_forest = dict(zip(terrains, _single_weights(terrains))).get("forest", 0.0)
    if UNKNOWN not in seasons:
        return _pick(rng, seasons, _single_weights(seasons))
    known = [s for s in seasons if s != UNKNOWN]
    if terrain == "forest":
        return rng.choice(known)
    unknown_share = min(1.0, UNKNOWN_SHARE / max(1e-9, 1.0 - p_forest))
    return _pick(rng, seasons, _single_weights(seasons, unknown_share))


# =============================================================================================================
# small drawing helpers
# =============================================================================================================
def _clamp(v: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo if v < lo else hi if v > hi else v


def _jit(rng: random.Random, color: Color, amount: int = 12) -> Color:
    """A colour near `color`: no two scenes share exact palette values, so the net cannot key on them."""
    return tuple(int(_clamp(c + rng.randint(-amount, amount), 0, 255)) for c in color[:3]) + tuple(color[3:])


def _shade(color: Color, factor: float) -> Color:
    return tuple(int(_clamp(c * factor, 0, 255)) for c in color[:3]) + tuple(color[3:])


def _loguniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


class _Pen:
    """Draws a shape given in its own units: u points forward (mirrored when facing left), v points up,
    both multiplied by `size`, origin at (x, y). Shapes are written once and placed at any scale/facing."""

    def __init__(self, draw: ImageDraw.ImageDraw, x: float, y: float, size: float, facing: int = 1,
                 angle: float = 0.0):
        self.d, self.x, self.y, self.s, self.f = draw, x, y, size, facing
        self.angle = angle
        self.cos, self.sin = math.cos(angle), math.sin(angle)

    def pt(self, u: float, v: float) -> tuple[float, float]:
        u *= self.f
        if self.sin:
            u, v = u * self.cos - v * self.sin, u * self.sin + v * self.cos
        return self.x + u * self.s, self.y - v * self.s

    def sub(self, u: float, v: float, scale: float, facing: int | None = None) -> "_Pen":
        x, y = self.pt(u, v)
        return _Pen(self.d, x, y, self.s * scale, self.f if facing is None else facing * self.f, self.angle)

    def poly(self, pts, fill) -> None:
        self.d.polygon([self.pt(u, v) for u, v in pts], fill=fill)

    def rect(self, u0, v0, u1, v1, fill) -> None:
        self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], fill)

    def ellipse(self, cu, cv, ru, rv, fill) -> None:
        if self.sin:  # PIL cannot rotate an ellipse: approximate it by a polygon
            n = 14
            self.poly([(cu + ru * math.cos(2 * math.pi * k / n), cv + rv * math.sin(2 * math.pi * k / n))
                       for k in range(n)], fill)
            return
        x, y = self.pt(cu, cv)
        rx, ry = abs(ru * self.s), abs(rv * self.s)
        self.d.ellipse([x - rx, y - ry, x + rx, y + ry], fill=fill)

    def circle(self, cu, cv, r, fill) -> None:
        self.ellipse(cu, cv, r, r, fill)

    def line(self, pts, fill, width: float) -> None:
        self.d.line([self.pt(u, v) for u, v in pts], fill=fill, width=max(1, round(width * self.s)))


# =============================================================================================================
# palettes
# =============================================================================================================
SKIN = [(236, 200, 170), (212, 168, 128), (160, 112, 80), (100, 70, 50)]
CLOTHES = [(240, 118, 30), (205, 40, 40), (40, 70, 160), (42, 42, 48), (118, 112, 70), (72, 90, 52),
           (228, 200, 40), (200, 200, 205), (90, 60, 110), (30, 110, 120)]
TROUSERS = [(40, 40, 50), (45, 55, 85), (70, 70, 70), (90, 80, 60), (30, 30, 30)]
CAR_COLORS = [(235, 235, 235), (25, 25, 28), (160, 162, 168), (180, 30, 30), (35, 60, 150),
              (30, 80, 50), (225, 190, 40), (120, 120, 125), (90, 30, 40)]
SHERP_COLORS = [(236, 110, 20), (200, 40, 30), (120, 116, 70), (50, 80, 50), (225, 190, 30),
                (230, 230, 225), (40, 70, 150)]
AIR_COLORS = [(235, 235, 238), (200, 35, 35), (236, 120, 20), (225, 200, 40), (40, 70, 160),
              (90, 100, 70), (150, 152, 158)]
DRONE_COLORS = [(30, 30, 32), (60, 60, 64), (225, 225, 228), (150, 150, 155)]
HORSE_COLORS = [(120, 70, 36), (150, 82, 40), (38, 32, 30), (150, 150, 150), (225, 220, 208), (95, 60, 40)]
DOG_COLORS = [(30, 28, 26), (120, 80, 45), (190, 150, 100), (80, 60, 40), (210, 200, 185)]
BUILDING_COLORS = [(170, 168, 160), (200, 190, 170), (150, 80, 60), (120, 120, 125), (215, 205, 185),
                   (175, 150, 120), (140, 150, 165), (190, 175, 150)]
ROCK = (120, 118, 112)
TRUNK = (82, 58, 38)
CONIFER = (30, 72, 40)

# Season -> ground colour; unknown season uses a surface that carries no seasonal cue.
GROUND = {"winter": (232, 236, 244), "spring": (128, 178, 78), "summer": (48, 122, 38), "autumn": (138, 100, 52)}
BARE_GROUND = {"asphalt": (86, 86, 90), "concrete": (158, 156, 148), "sand": (206, 186, 140),
               "water": (62, 92, 118)}
FOLIAGE = {
    "spring": [(132, 196, 84), (150, 206, 96), (116, 182, 70)],
    "summer": [(38, 110, 32), (30, 92, 28), (52, 128, 40)],
    "autumn": [(228, 124, 32), (198, 58, 30), (232, 190, 52), (170, 96, 40)],
}
WATER = (58, 92, 120)
SNOW = (238, 241, 248)
MUD = (108, 84, 58)

# Time of day -> sky gradient stops (position from top to the horizon, colour) and light on the landscape.
SKY = {
    "day": [(0.0, (64, 124, 214)), (1.0, (176, 206, 238))],
    "night": [(0.0, (4, 6, 18)), (1.0, (20, 26, 52))],
    "twilight": [(0.0, (78, 58, 128)), (0.5, (206, 112, 146)), (1.0, (250, 152, 70))],
    "unknown": [(0.0, (186, 188, 190)), (1.0, (200, 200, 198))],  # only seen as fog
}
LIGHT = {  # (brightness range, RGB tint)
    "day": ((0.95, 1.08), (1.0, 1.0, 1.0)),
    "night": ((0.18, 0.3), (0.75, 0.86, 1.25)),
    "twilight": ((0.50, 0.66), (1.12, 0.88, 0.92)),
    "unknown": ((0.82, 0.98), (1.0, 1.0, 1.0)),
}
NOISE_SIGMA = {"day": (1.5, 5.0), "night": (4.0, 10.0), "twilight": (3.0, 7.0), "unknown": (1.5, 6.0)}


# =============================================================================================================
# object shapes: pen origin = bottom centre (ground contact) unless noted, size = the object's main extent
# =============================================================================================================
def _person(pen: _Pen, rng: random.Random, jacket: Color | None = None, arms: str = "down") -> dict:
    """Standing figure of height 1; returns hand and shoulder points (in pen units) for leashes and hugs."""
    jacket = jacket or _jit(rng, rng.choice(CLOTHES), 10)
    trousers = _jit(rng, rng.choice(TROUSERS), 8)
    skin = rng.choice(SKIN)
    pen.poly([(-0.08, 0.48), (-0.01, 0.48), (-0.025, 0.02), (-0.075, 0.02)], trousers)
    pen.poly([(0.01, 0.48), (0.08, 0.48), (0.075, 0.02), (0.025, 0.02)], trousers)
    pen.rect(-0.085, 0.0, -0.015, 0.03, (30, 28, 26))
    pen.rect(0.02, 0.0, 0.09, 0.03, (30, 28, 26))
    pen.poly([(-0.11, 0.80), (0.11, 0.80), (0.095, 0.45), (-0.095, 0.45)], jacket)
    pen.circle(0.0, 0.885, 0.068, skin)
    if rng.random() < 0.5:  # hat or hood
        pen.ellipse(0.0, 0.925, 0.072, 0.04, _jit(rng, rng.choice(CLOTHES), 10))
    hands = {"left": (-0.15, 0.5), "right": (0.15, 0.5)}
    if arms == "raised":
        hands["right"] = (0.2, 1.02)
    for side, (hu, hv) in hands.items():
        su = -0.1 if side == "left" else 0.1
        if arms != "none":
            pen.line([(su, 0.77), (hu, hv)], jacket, 0.05)
            pen.circle(hu, hv, 0.025, skin)
    return {"hands": hands, "skin": skin, "jacket": jacket}


def _dog(pen: _Pen, rng: random.Random) -> tuple[float, float]:
    """Dog of height ~0.4 standing on v=0 with its head towards +u; returns the collar point."""
    fur = _jit(rng, rng.choice(DOG_COLORS), 10)
    dark = _shade(fur, 0.7)
    for lu, shade in ((-0.13, dark), (0.12, dark), (-0.09, fur), (0.16, fur)):  # far legs darker
        pen.line([(lu, 0.24), (lu + 0.01, 0.0)], shade, 0.035)
    pen.ellipse(0.0, 0.27, 0.19, 0.075, fur)
    pen.line([(-0.18, 0.29), (-0.26, 0.38 + rng.uniform(-0.05, 0.05))], fur, 0.03)  # tail
    pen.line([(0.14, 0.3), (0.2, 0.37)], fur, 0.07)  # neck
    pen.ellipse(0.22, 0.39, 0.06, 0.05, fur)
    pen.poly([(0.25, 0.41), (0.33, 0.37), (0.32, 0.34), (0.24, 0.35)], fur)  # muzzle
    pen.poly([(0.18, 0.42), (0.2, 0.49), (0.23, 0.42)], dark)  # ear
    return 0.17, 0.35


def draw_dog_handler(pen: _Pen, rng: random.Random) -> None:
    person = _person(pen.sub(-0.18, 0.0, 1.0), rng, jacket=_jit(rng, rng.choice(CLOTHES[:5]), 10))
    dog_pen = pen.sub(0.3, 0.0, rng.uniform(0.85, 1.15))
    collar = _dog(dog_pen, rng)
    hand = pen.sub(-0.18, 0.0, 1.0).pt(*person["hands"]["right"])
    pen.d.line([hand, dog_pen.pt(*collar)], fill=rng.choice([(200, 30, 30), (20, 20, 20), (40, 60, 160)]),
               width=max(1, round(pen.s * 0.012)))


def draw_hugs(pen: _Pen, rng: random.Random) -> None:
    a = pen.sub(-0.075, 0.0, rng.uniform(0.92, 1.0))
    b = pen.sub(0.075, 0.0, rng.uniform(0.92, 1.0), facing=-1)
    pa = _person(a, rng, arms="none")
    pb = _person(b, rng, arms="none")
    # arms wrapped around the other's back: the cue that separates a hug from two people standing close
    a.line([(0.1, 0.77), (0.16, 0.66), (0.24, 0.7)], pa["jacket"], 0.055)
    b.line([(0.1, 0.75), (0.17, 0.62), (0.25, 0.64)], pb["jacket"], 0.055)
    a.circle(0.24, 0.7, 0.028, pa["skin"])
    b.circle(0.25, 0.64, 0.028, pb["skin"])


def draw_diver(pen: _Pen, rng: random.Random, season: str) -> None:
    """Diver in a dark suit with mask and tank, standing at or wading in a patch of water."""
    wading = rng.random() < 0.5
    water = _jit(rng, WATER, 12)
    if season == "winter":  # an ice hole: white rim round dark water
        pen.ellipse(0.0, 0.02, 1.05, 0.16, (210, 222, 235))
        water = _shade(water, 0.7)
    pen.ellipse(0.0 if wading else 0.6, 0.02, 0.9, 0.12, water)
    suit = _jit(rng, rng.choice([(20, 22, 30), (12, 12, 14), (20, 30, 70)]), 6)
    body = pen.sub(0.0, -0.1 if wading else 0.0, 1.0)
    tank = _jit(rng, rng.choice([(230, 200, 30), (180, 180, 185), (230, 230, 230), (220, 90, 30)]), 10)
    body.rect(-0.17, 0.5, -0.08, 0.84, tank)  # tank on the back
    body.circle(-0.125, 0.84, 0.045, tank)
    _person(body, rng, jacket=suit, arms="down")
    body.ellipse(0.0, 0.9, 0.075, 0.05, suit)  # hood over the head
    mask = rng.choice([(240, 200, 30), (240, 120, 30), (230, 230, 230)])
    body.rect(0.0, 0.86, 0.09, 0.93, mask)
    body.rect(0.02, 0.875, 0.08, 0.915, (120, 170, 200))
    body.line([(-0.12, 0.86), (0.0, 0.95), (0.07, 0.86)], (40, 40, 40), 0.012)  # regulator hose
    if wading:  # water surface in front of the legs
        pen.ellipse(0.0, 0.02, 0.55, 0.13, water)
        pen.line([(-0.3, 0.05), (0.3, 0.05)], _shade(water, 1.4), 0.01)
    else:
        fin = rng.choice([(20, 20, 20), (230, 200, 30)])
        pen.poly([(-0.08, 0.0), (0.12, 0.0), (0.14, 0.025), (-0.08, 0.03)], fin)


def draw_horse(pen: _Pen, rng: random.Random) -> None:
    coat = _jit(rng, rng.choice(HORSE_COLORS), 10)
    mane = _shade(coat, 0.45) if coat[0] > 60 else (15, 12, 10)
    far = _shade(coat, 0.8)
    for lu, col in ((-0.2, far), (0.24, far), (-0.26, coat), (0.18, coat)):
        pen.rect(lu - 0.025, 0.02, lu + 0.025, 0.5, col)
        pen.rect(lu - 0.027, 0.0, lu + 0.027, 0.04, (30, 25, 22))
    pen.ellipse(0.0, 0.57, 0.34, 0.13, coat)
    pen.poly([(-0.32, 0.62), (-0.36, 0.62), (-0.44, 0.24), (-0.38, 0.25)], mane)  # tail
    pen.poly([(0.18, 0.62), (0.31, 0.5), (0.46, 0.9), (0.37, 0.95)], coat)  # long neck
    pen.poly([(0.37, 0.95), (0.46, 0.92), (0.56, 0.74), (0.5, 0.71)], coat)  # head
    pen.poly([(0.38, 0.97), (0.4, 1.03), (0.42, 0.95)], coat)  # ear
    pen.line([(0.2, 0.66), (0.37, 0.95)], mane, 0.03)
    if rng.random() < 0.35:  # rider
        rider = _jit(rng, rng.choice(CLOTHES), 10)
        pen.poly([(-0.1, 0.68), (0.06, 0.68), (0.04, 0.98), (-0.08, 0.98)], rider)
        pen.rect(-0.04, 0.44, 0.03, 0.7, _jit(rng, rng.choice(TROUSERS), 8))
        pen.circle(-0.02, 1.05, 0.065, rng.choice(SKIN))


def draw_car(pen: _Pen, rng: random.Random) -> None:
    paint = _jit(rng, rng.choice(CAR_COLORS), 10)
    glass = _jit(rng, (70, 90, 110), 15)
    roof = rng.uniform(0.5, 0.62)
    body_top = rng.uniform(0.34, 0.42)
    pen.poly([(-0.5, 0.12), (-0.5, body_top - 0.02), (-0.44, body_top), (0.4, body_top), (0.5, body_top - 0.08),
              (0.5, 0.12)], paint)
    back, front = rng.uniform(-0.36, -0.26), rng.uniform(0.2, 0.3)
    pen.poly([(back, body_top), (back + 0.08, roof), (front - 0.1, roof), (front, body_top)], paint)
    pen.poly([(back + 0.03, body_top + 0.02), (back + 0.09, roof - 0.03), (-0.03, roof - 0.03),
              (-0.03, body_top + 0.02)], glass)
    pen.poly([(0.0, body_top + 0.02), (0.0, roof - 0.03), (front - 0.11, roof - 0.03),
              (front - 0.03, body_top + 0.02)], glass)
    pen.rect(0.46, body_top - 0.12, 0.5, body_top - 0.07, (250, 240, 200))
    pen.rect(-0.5, body_top - 0.1, -0.47, body_top - 0.05, (200, 30, 30))
    for wu in (-0.3, 0.3):
        pen.circle(wu, 0.12, 0.12, (22, 22, 24))
        pen.circle(wu, 0.12, 0.055, (150, 150, 155))


def draw_sherp(pen: _Pen, rng: random.Random) -> None:
    """Boxy amphibious ATV on four huge tyres: the tyres are as tall as the body."""
    paint = _jit(rng, rng.choice(SHERP_COLORS), 10)
    tyre = _jit(rng, (34, 34, 36), 6)
    r = rng.uniform(0.22, 0.26)
    for wu in (-0.26, 0.3):  # far-side tyres peek out behind
        pen.circle(wu + 0.05, r + 0.04, r, _shade(tyre, 0.7))
    pen.poly([(-0.46, 0.24), (-0.46, 0.66), (0.3, 0.66), (0.44, 0.56), (0.5, 0.4), (0.46, 0.24)], paint)
    for k in range(3):  # row of side windows
        u0 = -0.36 + k * 0.2
        pen.rect(u0, 0.5, u0 + 0.14, 0.62, _jit(rng, (70, 90, 110), 12))
    pen.poly([(0.3, 0.64), (0.42, 0.55), (0.36, 0.5), (0.28, 0.5)], (80, 100, 120))
    pen.rect(-0.4, 0.66, 0.2, 0.69, _shade(paint, 0.6))  # roof rack
    for wu in (-0.26, 0.3):
        pen.circle(wu, r, r, tyre)
        pen.circle(wu, r, r * 0.72, _shade(tyre, 1.5))
        pen.circle(wu, r, r * 0.55, tyre)
        pen.circle(wu, r, r * 0.18, (150, 150, 150))
        for k in range(6):  # tread lugs
            a = k * math.pi / 3 + 0.3
            pen.line([(wu + math.cos(a) * r * 0.6, r + math.sin(a) * r * 0.6),
                      (wu + math.cos(a) * r * 0.98, r + math.sin(a) * r * 0.98)], _shade(tyre, 0.5), 0.015)


def draw_airplane(pen: _Pen, rng: random.Random, lights: list) -> None:
    """Origin at the centre. Side view or planform from below."""
    paint = _jit(rng, rng.choice(AIR_COLORS), 10)
    trim = _jit(rng, rng.choice(AIR_COLORS), 10)
    if rng.random() < 0.5:
        pen.ellipse(0.0, 0.0, 0.5, 0.065, paint)
        pen.poly([(-0.5, 0.02), (-0.38, 0.04), (-0.46, 0.24), (-0.52, 0.24)], trim)  # tail fin
        pen.poly([(-0.44, 0.0), (-0.3, 0.0), (-0.4, -0.05)], _shade(paint, 0.8))
        pen.poly([(-0.05, -0.02), (0.12, -0.02), (-0.08, -0.2), (-0.16, -0.2)], _shade(paint, 0.7))  # wing
        for k in range(7):
            pen.circle(0.3 - k * 0.08, 0.015, 0.012, (60, 70, 90))
        pen.line([(-0.46, -0.01), (0.44, -0.01)], trim, 0.015)
        lights.append(pen.pt(-0.13, -0.2))
    else:  # planform from below, swept wings
        pen.ellipse(0.0, 0.0, 0.5, 0.055, paint)
        pen.poly([(0.08, 0.0), (-0.12, 0.48), (-0.2, 0.48), (-0.08, 0.0)], _shade(paint, 0.85))
        pen.poly([(0.08, 0.0), (-0.12, -0.48), (-0.2, -0.48), (-0.08, 0.0)], _shade(paint, 0.85))
        pen.poly([(-0.36, 0.0), (-0.46, 0.17), (-0.5, 0.17), (-0.46, 0.0)], trim)
        pen.poly([(-0.36, 0.0), (-0.46, -0.17), (-0.5, -0.17), (-0.46, 0.0)], trim)
        for side in (-1, 1):
            pen.ellipse(0.0, side * 0.2, 0.07, 0.03, _shade(paint, 0.6))
        lights.extend([pen.pt(-0.16, 0.48), pen.pt(-0.16, -0.48)])


def draw_helicopter(pen: _Pen, rng: random.Random, lights: list) -> None:
    """Origin at the centre of the cabin."""
    paint = _jit(rng, rng.choice(AIR_COLORS), 10)
    trim = _jit(rng, rng.choice(AIR_COLORS), 10)
    pen.poly([(-0.05, 0.06), (-0.5, 0.03), (-0.5, 0.0), (-0.05, -0.04)], paint)  # tail boom
    pen.poly([(-0.46, 0.02), (-0.52, 0.14), (-0.48, 0.14), (-0.42, 0.02)], trim)
    pen.circle(-0.5, 0.04, 0.06, (90, 90, 95, 150))  # tail rotor blur
    pen.ellipse(0.12, 0.0, 0.22, 0.13, paint)
    pen.poly([(0.22, 0.1), (0.33, 0.0), (0.22, -0.01), (0.16, 0.08)], _jit(rng, (90, 120, 150), 12))
    pen.rect(-0.02, -0.04, 0.24, -0.02, trim)
    pen.line([(0.1, 0.12), (0.1, 0.2)], (50, 50, 55), 0.02)  # mast
    pen.line([(-0.38, 0.2), (0.62, 0.22)], (40, 40, 44), 0.018)  # main rotor
    pen.line([(0.0, -0.13), (0.02, -0.2)], (50, 50, 55), 0.012)
    pen.line([(0.22, -0.12), (0.2, -0.2)], (50, 50, 55), 0.012)
    pen.line([(-0.08, -0.2), (0.34, -0.2), (0.38, -0.17)], (50, 50, 55), 0.018)  # skids
    lights.append(pen.pt(0.1, -0.13))


def draw_drone(pen: _Pen, rng: random.Random, lights: list) -> None:
    """Quadcopter, origin at the centre: X arms with four rotor discs (from below) or side view."""
    body = _jit(rng, rng.choice(DRONE_COLORS), 8)
    disc = (120, 120, 125, 110)
    if rng.random() < 0.6:  # from below
        for su in (-1, 1):
            for sv in (-1, 1):
                pen.line([(0.0, 0.0), (su * 0.32, sv * 0.32)], body, 0.06)
                pen.circle(su * 0.32, sv * 0.32, 0.17, disc)
                pen.circle(su * 0.32, sv * 0.32, 0.04, _shade(body, 0.7))
        pen.rect(-0.11, -0.09, 0.11, 0.09, body)
        pen.circle(0.0, 0.0, 0.045, (20, 20, 25))  # camera
        lights.extend([pen.pt(-0.32, -0.32), pen.pt(0.32, 0.32)])
    else:  # side view
        pen.rect(-0.13, -0.02, 0.13, 0.07, body)
        pen.line([(-0.44, 0.06), (0.44, 0.06)], body, 0.04)
        for su in (-0.42, 0.42):
            pen.rect(su - 0.03, 0.06, su + 0.03, 0.11, _shade(body, 0.7))
            pen.ellipse(su, 0.12, 0.17, 0.025, disc)
        pen.line([(-0.1, -0.02), (-0.14, -0.16)], body, 0.02)
        pen.line([(0.1, -0.02), (0.14, -0.16)], body, 0.02)
        pen.circle(0.0, -0.05, 0.045, (20, 20, 25))
        lights.extend([pen.pt(-0.42, 0.06), pen.pt(0.42, 0.06)])


# =============================================================================================================
# scenery shapes
# =============================================================================================================
def draw_conifer(pen: _Pen, rng: random.Random, season: str) -> None:
    pen.rect(-0.025, 0.0, 0.025, 0.3, _jit(rng, TRUNK, 10))
    green = _jit(rng, CONIFER, 10)
    if season == "autumn" and rng.random() < 0.2:  # larch turns yellow
        green = _jit(rng, (200, 160, 50), 15)
    tiers = rng.randint(3, 5)
    for i in range(tiers):
        v0 = 0.14 + i * 0.8 / tiers
        v1 = min(1.0, v0 + 1.5 * 0.8 / tiers)
        hw = 0.24 * (1 - i / tiers) + 0.05
        pen.poly([(-hw, v0), (hw, v0), (0.0, v1)], _shade(green, 1.0 + 0.06 * i))
        if season == "winter":
            pen.poly([(-hw, v0), (hw, v0), (hw * 0.6, v0 + 0.05), (-hw * 0.6, v0 + 0.05)], _jit(rng, SNOW, 6))
    if season == "winter":
        pen.poly([(-0.04, 0.92), (0.04, 0.92), (0.0, 1.0)], SNOW)


def draw_deciduous(pen: _Pen, rng: random.Random, season: str) -> None:
    birch = rng.random() < 0.25
    bark = _jit(rng, (222, 222, 212), 8) if birch else _jit(rng, TRUNK, 12)
    pen.poly([(-0.035, 0.0), (0.035, 0.0), (0.015, 0.7), (-0.015, 0.7)], bark)
    if birch:
        for _ in range(5):
            v = rng.uniform(0.05, 0.6)
            pen.rect(-0.03, v, rng.uniform(-0.01, 0.03), v + 0.015, (30, 30, 30))
    branches = 9 if season == "winter" else 4
    for _ in range(branches):
        v0 = rng.uniform(0.35, 0.65)
        end = (rng.uniform(-0.3, 0.3), rng.uniform(v0 + 0.15, 0.98))
        pen.line([(0.0, v0), end], _shade(bark, 0.85), 0.014)
        if season == "winter" and rng.random() < 0.5:
            pen.line([(end[0] * 0.6, v0 + (end[1] - v0) * 0.6), end], SNOW, 0.01)
    if season in FOLIAGE:
        palette = FOLIAGE[season]
        for _ in range(rng.randint(5, 8)):
            pen.circle(rng.uniform(-0.18, 0.18), rng.uniform(0.6, 0.86), rng.uniform(0.11, 0.18),
                       _jit(rng, rng.choice(palette), 14))
        if season == "spring" and rng.random() < 0.6:  # blossom
            for _ in range(rng.randint(10, 25)):
                pen.circle(rng.uniform(-0.25, 0.25), rng.uniform(0.5, 0.95), 0.018,
                           rng.choice([(245, 175, 205), (250, 246, 246)]))


def draw_tree(pen: _Pen, rng: random.Random, season: str) -> None:
    conifer_share = 0.6 if season == "winter" else 0.45
    (draw_conifer if rng.random() < conifer_share else draw_deciduous)(pen, rng, season)


def draw_bush(pen: _Pen, rng: random.Random, season: str) -> None:
    if season == "winter":
        for _ in range(6):
            pen.line([(0.0, 0.0), (rng.uniform(-0.4, 0.4), rng.uniform(0.3, 0.6))], (90, 70, 55), 0.03)
        pen.ellipse(0.0, 0.05, 0.45, 0.08, SNOW)
        return
    palette = FOLIAGE.get(season, [(90, 100, 70)])
    for _ in range(rng.randint(3, 6)):
        pen.circle(rng.uniform(-0.3, 0.3), rng.uniform(0.2, 0.4), rng.uniform(0.18, 0.28),
                   _shade(_jit(rng, rng.choice(palette), 14), 0.85))


def draw_rock(pen: _Pen, rng: random.Random, season: str) -> None:
    n = rng.randint(5, 8)
    pts = []
    for k in range(n):
        a = math.pi * k / (n - 1)
        r = rng.uniform(0.3, 0.5)
        pts.append((math.cos(a) * r, math.sin(a) * r * 0.8))
    pen.poly(pts, _jit(rng, ROCK, 20))
    if season == "winter":
        pen.poly([(u * 0.8, v * 0.9 + 0.06) for u, v in pts if v > 0.1], SNOW)


def draw_pole(pen: _Pen, rng: random.Random, lights: list, lamp: bool) -> None:
    col = _jit(rng, (70, 70, 75) if lamp else (100, 80, 60), 10)
    pen.line([(0.0, 0.0), (0.0, 1.0)], col, 0.025)
    if lamp:
        pen.line([(0.0, 0.98), (0.14, 0.98)], col, 0.02)
        pen.rect(0.1, 0.94, 0.18, 0.97, (210, 210, 190))
        lights.append(pen.pt(0.14, 0.94))


def draw_bird(pen: _Pen, rng: random.Random) -> None:
    col = (30, 30, 30) if rng.random() < 0.7 else (230, 230, 230)
    pen.line([(-0.5, 0.2), (0.0, 0.0), (0.5, 0.2)], col, 0.08)


# =============================================================================================================
# the scene
# =============================================================================================================
class _Sprite:
    """Something drawn back to front: larger `base` (lower on screen) is nearer and drawn later."""

    __slots__ = ("base", "draw", "box", "is_object")

    def __init__(self, base: float, draw: Callable[[ImageDraw.ImageDraw], None], box=None, is_object=False):
        self.base, self.draw, self.box, self.is_object = base, draw, box, is_object


class _Scene:
    """Lays out one scene at working resolution and renders it (before exposure jitter and noise)."""

    def __init__(self, labels: dict, width: int, height: int, rng: random.Random, nrng: np.random.Generator):
        self.tod = labels.get("time_of_day", UNKNOWN)
        self.season = labels.get("season", UNKNOWN)
        self.terrain = labels.get("terrain", UNKNOWN)
        self.objects = list(labels.get("objects", ()))
        for name, value in (("time_of_day", self.tod), ("season", self.season), ("terrain", self.terrain)):
            if value not in DRAWABLE[name]:
                raise ValueError(f"cannot draw {name}={value!r}; known: {DRAWABLE[name]}")
        for obj in self.objects:
            if obj not in OBJECTS:
                raise ValueError(f"cannot draw object {obj!r}; known: {OBJECTS}")
        self.w, self.h = width, height
        self.short = min(width, height)
        self.rng, self.nrng = rng, nrng
        self.land = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        self.d = ImageDraw.Draw(self.land, "RGBA")
        self.sprites: list[_Sprite] = []
        self.lights: list[tuple] = []  # emissive things, drawn after the scene light is applied
        self.nav_lights: list[tuple[float, float]] = []
        self.bare: str | None = None  # which season-less surface the ground is, if any
        self.placed: list[tuple[str, tuple, float]] = []  # (object, box at working size, size / short side)
        self._choose_view()

    # ---- layout --------------------------------------------------------------------------------------------
    def _choose_view(self) -> None:
        """'open' shows the sky; unknown time of day hides it: a close-up that the ground, a facade or a
        canopy fills, or thick fog that turns the sky grey."""
        rng, h = self.rng, self.h
        if self.tod != UNKNOWN:
            self.view = "open"
            self.horizon = h * rng.uniform(0.3, 0.55)
        elif rng.random() < 0.65:
            self.view = "closeup"
            self.horizon = 0.0 if self.terrain == UNKNOWN else h * rng.uniform(0.4, 0.6)
        else:
            self.view = "fog"
            self.horizon = h * rng.uniform(0.3, 0.5)
        self.sky_visible = self.view != "closeup"

    def depth_y(self, depth: float) -> float:
        """Screen y of a ground point at relative depth 0 (horizon) .. 1 (bottom edge)."""
        return self.horizon + depth * (self.h - self.horizon)

    def ground_color(self) -> Color:
        """The season's ground; without a season a surface that tells nothing (remembered in `self.bare`)."""
        if self.season in GROUND:
            return _jit(self.rng, GROUND[self.season], 10)
        if self.terrain == "city":
            return _jit(self.rng, BARE_GROUND[self.rng.choice(["asphalt", "concrete"])], 8)
        self.bare = self.rng.choice(list(BARE_GROUND))
        return _jit(self.rng, BARE_GROUND[self.bare], 10)

    # ---- build ---------------------------------------------------------------------------------------------
    def render(self) -> Image.Image:
        if self.sky_visible:
            self._clouds()
        self._ground()
        if self.terrain == "forest":
            self._forest_backdrop()
        elif self.terrain == "city":
            self._city_backdrop()
        else:
            self._field_backdrop()
        self._objects()
        self._clutter()
        self._drop_hiding_scenery()
        for sprite in sorted(self.sprites, key=lambda s: s.base):
            sprite.draw(self.d)
        return self._compose()

    def _clouds(self) -> None:
        if self.tod == "night" or self.rng.random() < 0.4:
            return
        rng = self.rng
        for _ in range(rng.randint(1, 4)):
            cx, cy = rng.uniform(0, self.w), rng.uniform(0.05, 0.7) * self.horizon
            s = self.short * rng.uniform(0.05, 0.12)
            col = (245, 245, 248, rng.randint(150, 230))
            for _ in range(rng.randint(3, 6)):
                dx, dy = rng.uniform(-2, 2) * s, rng.uniform(-0.4, 0.4) * s
                r = s * rng.uniform(0.6, 1.1)
                self.d.ellipse([cx + dx - r * 1.4, cy + dy - r * 0.7, cx + dx + r * 1.4, cy + dy + r * 0.7], fill=col)

    def _ground(self) -> None:
        """Base surface plus the small patches that tell the season (snow, mud, leaves, tufts)."""
        rng, w, h, top = self.rng, self.w, self.h, self.horizon
        base = self.ground_color()
        self.d.rectangle([0, top, w, h], fill=base)
        span = h - top
        if self.season == "spring":
            for _ in range(rng.randint(4, 9)):
                self._ground_patch(rng.choice([SNOW, SNOW, MUD]), 0.05, 0.16)
        elif self.season == "autumn":
            for _ in range(rng.randint(3, 6)):
                self._ground_patch(_jit(rng, (160, 120, 50), 15), 0.06, 0.2)
        elif self.season == "winter":
            for _ in range(rng.randint(2, 5)):
                self._ground_patch(_jit(rng, (205, 214, 230), 6), 0.06, 0.2)  # blue shadows in snow
        if self.season in GROUND and self.season != "winter":
            n = int(160 * w * span / 640 / 480)
            palette = FOLIAGE[self.season] + [_shade(base, 0.75), _shade(base, 1.2)]
            for _ in range(n):
                x, t = rng.uniform(0, w), rng.random()
                y = top + t * span
                ln = 2 + 10 * t * self.short / 480
                col = rng.choice(palette)
                if self.season == "autumn":  # fallen leaves rather than grass blades
                    self.d.ellipse([x, y, x + ln * 0.5, y + ln * 0.35], fill=col)
                else:
                    self.d.line([(x, y), (x + rng.uniform(-2, 2), y - ln)], fill=col, width=1)
        elif self.bare == "water":
            self._ripples(top, h, base)
        elif self.bare == "concrete":
            step = self.short * rng.uniform(0.12, 0.25)
            y = top + step * 0.3
            while y < h:
                self.d.line([(0, y), (w, y)], fill=_shade(base, 0.8), width=max(1, int(self.short / 300)))
                y += step * (0.4 + 0.6 * (y - top) / max(1, span))

    def _ground_patch(self, color: Color, lo: float, hi: float) -> None:
        rng = self.rng
        t = rng.random()
        y = self.depth_y(t)
        rx = self.w * rng.uniform(lo, hi) * (0.3 + t)
        ry = rx * rng.uniform(0.12, 0.25)
        x = rng.uniform(0, self.w)
        self.d.ellipse([x - rx, y - ry, x + rx, y + ry], fill=color)

    def _ripples(self, top: float, bottom: float, water: Color) -> None:
        rng = self.rng
        for _ in range(int(40 * self.w / 640)):
            y = rng.uniform(top, bottom)
            x = rng.uniform(0, self.w)
            ln = self.w * rng.uniform(0.02, 0.08)
            self.d.line([(x, y), (x + ln, y)], fill=_shade(water, rng.uniform(1.15, 1.4)), width=1)

    # ---- terrain backdrops ---------------------------------------------------------------------------------
    def _forest_backdrop(self) -> None:
        rng, w, top = self.rng, self.w, self.horizon
        if self.view == "closeup":  # a canopy closes over the top: no sky
            canopy = FOLIAGE.get(self.season, [CONIFER])
            if self.season == "winter":
                canopy = [CONIFER, _shade(CONIFER, 0.8), SNOW]
            self.d.rectangle([0, 0, w, top], fill=_shade(_jit(rng, canopy[0], 10), 0.7))
            for _ in range(int(60 * w / 640)):
                r = self.short * rng.uniform(0.05, 0.14)
                x, y = rng.uniform(0, w), rng.uniform(-r, top * 0.9)
                self.d.ellipse([x - r, y - r, x + r, y + r], fill=_jit(rng, rng.choice(canopy), 14))
            for _ in range(rng.randint(5, 10)):  # trunks down to the ground
                x = rng.uniform(0, w)
                tw = self.short * rng.uniform(0.015, 0.05)
                base = self.depth_y(rng.uniform(0.0, 0.4))
                self.d.rectangle([x - tw, top * 0.3, x + tw, base], fill=_jit(rng, TRUNK, 14))
        else:  # distant tree line along the horizon
            col = _shade(_jit(rng, CONIFER if self.season != "autumn" else (130, 90, 40), 10), 0.8)
            if self.season == "spring":
                col = _shade(_jit(rng, FOLIAGE["spring"][0], 10), 0.7)
            pts = [(0, top + 2)]
            x = 0.0
            while x < w:
                peak = self.h * rng.uniform(0.04, 0.12)
                step = self.short * rng.uniform(0.015, 0.04)
                pts += [(x + step / 2, top - peak), (x + step, top - peak * rng.uniform(0.3, 0.6))]
                x += step
            pts.append((w, top + 2))
            self.d.polygon(pts, fill=col)
            if self.season == "winter":
                self.d.line(pts[1:-1], fill=_shade(SNOW, 0.9), width=max(1, int(self.short / 250)))
        for _ in range(rng.randint(9, 18)):
            t = rng.random() ** 1.3
            self._add_tree(t, height=self.h * (0.18 + 0.75 * t) * rng.uniform(0.8, 1.2))

    def _add_tree(self, depth: float, height: float) -> None:
        rng = self.rng
        x = rng.uniform(-0.05, 1.05) * self.w
        base = self.depth_y(depth)
        seed = rng.getrandbits(32)
        season = self.season
        box = (x - 0.28 * height, base - height, x + 0.28 * height, base - 0.3 * height)
        self.sprites.append(_Sprite(base, lambda d: draw_tree(_Pen(d, x, base, height), random.Random(seed), season),
                                    box=box))

    def _city_backdrop(self) -> None:
        rng, w, h, top = self.rng, self.w, self.h, self.horizon
        night = self.tod == "night" or (self.tod == "twilight" and rng.random() < 0.6)
        if self.view == "closeup":  # one facade fills the top
            self._building(-5, w + 5, 0, top, night, cell=self.short * rng.uniform(0.1, 0.18))
        else:
            if rng.random() < 0.5:  # hazy second row behind
                x = -rng.uniform(0, 0.1) * w
                while x < w:
                    bw = w * rng.uniform(0.1, 0.25)
                    bh = h * rng.uniform(0.2, 0.4)
                    self.d.rectangle([x, top - bh, x + bw, top], fill=_jit(rng, (150, 155, 165), 12))
                    x += bw
            x = -rng.uniform(0, 0.1) * w
            while x < w:
                bw = w * rng.uniform(0.12, 0.3)
                bh = h * rng.uniform(0.12, 0.45)
                self._building(x, x + bw, top - bh, top + 2, night, cell=self.short * rng.uniform(0.035, 0.07))
                x += bw + w * rng.uniform(0.0, 0.04)
        # street: pavement along the buildings, road with markings, verge or kerb in front
        span = h - top
        pave = _jit(rng, (150, 150, 150), 12) if self.season != "winter" else _jit(rng, SNOW, 6)
        self.d.rectangle([0, top, w, top + span * 0.08], fill=pave)
        road_top, road_bottom = top + span * 0.08, top + span * rng.uniform(0.6, 0.85)
        road = _jit(rng, (80, 80, 84), 8) if self.season != "winter" else _jit(rng, (150, 152, 158), 10)
        self.d.rectangle([0, road_top, w, road_bottom], fill=road)
        mid = (road_top + road_bottom) / 2
        dash = self.w * 0.06
        for k in range(int(w / dash / 2) + 1):
            x0 = k * 2 * dash + rng.uniform(-2, 2)
            self.d.rectangle([x0, mid - span * 0.006, x0 + dash, mid + span * 0.006], fill=(230, 230, 220))
        if self.season == "winter":
            for _ in range(rng.randint(4, 9)):  # snow banks along the kerbs
                x = rng.uniform(0, w)
                y = rng.choice([road_top, road_bottom])
                r = self.short * rng.uniform(0.04, 0.1)
                self.d.ellipse([x - r * 2, y - r * 0.5, x + r * 2, y + r * 0.5], fill=_jit(rng, SNOW, 6))
        verge = GROUND.get(self.season)
        self.d.rectangle([0, road_bottom, w, h], fill=_jit(rng, verge, 10) if verge else _jit(rng, (150, 150, 150), 12))
        if self.season in FOLIAGE:  # street trees on the pavement and the verge: where a city shows its season
            for _ in range(rng.randint(2, 4)):
                depth = rng.choice([0.06, rng.uniform((road_bottom - top) / span, 1.0)])
                self._add_tree(depth, height=self.h * (0.25 + 0.5 * depth) * rng.uniform(0.8, 1.2))
        for _ in range(rng.randint(1, 3)):
            self._add_scenery("pole", rng.choice([0.05, 0.9]), lamp=True)

    def _building(self, x0, x1, y0, y1, night: bool, cell: float) -> None:
        rng = self.rng
        wall = _jit(rng, rng.choice(BUILDING_COLORS), 14)
        self.d.rectangle([x0, y0, x1, y1], fill=wall)
        if self.season == "winter" and y0 > 0:
            self.d.rectangle([x0, y0 - cell * 0.2, x1, y0 + cell * 0.15], fill=SNOW)
        glass = _jit(rng, (110, 135, 165), 15)
        lit = rng.uniform(0.2, 0.6) if night else 0.0
        win = cell * rng.uniform(0.4, 0.6)
        y = y0 + cell * 0.5
        while y + win < y1 - cell * 0.3:
            x = x0 + cell * 0.4
            while x + win < x1 - cell * 0.2:
                box = [x, y, x + win, y + win * 1.3]
                self.d.rectangle(box, fill=glass)
                if rng.random() < lit:
                    self.lights.append(("rect", box, _jit(rng, (255, 214, 130), 20)))
                x += cell
            y += cell * 1.4

    def _field_backdrop(self) -> None:
        rng, w, top = self.rng, self.w, self.horizon
        if self.view == "closeup":
            return
        if rng.random() < 0.5:  # low hills
            col = _jit(rng, (120, 130, 150), 12) if self.season != "winter" else _jit(rng, (200, 208, 222), 8)
            pts = [(0, top + 1)]
            for k in range(7):
                pts.append((w * k / 6, top - self.h * rng.uniform(0.01, 0.08)))
            pts.append((w, top + 1))
            self.d.polygon(pts, fill=col)
        if self.bare != "water" and rng.random() < 0.4:  # lake band behind the field
            band = (self.h - top) * rng.uniform(0.08, 0.25)
            water = _jit(rng, WATER, 12) if self.season != "winter" else _jit(rng, (200, 215, 230), 8)
            self.d.rectangle([0, top, w, top + band], fill=water)

    # ---- objects -------------------------------------------------------------------------------------------
    def _objects(self) -> None:
        season, lights, nav = self.season, self.lights, self.nav_lights

        def car(pen: _Pen, r: random.Random) -> None:
            draw_car(pen, r)
            lights.append(("glow", pen.pt(0.48, 0.3), pen.s * 0.05, (255, 245, 210)))

        ground = {  # name: (painter, size range as a share of the short side, box height / size)
            "cars": (car, 0.1, 0.35, 0.6),
            "sherp": (draw_sherp, 0.12, 0.35, 0.7),
            "dog_handler": (draw_dog_handler, 0.1, 0.35, 1.0),
            "hugs": (draw_hugs, 0.1, 0.35, 1.0),
            "horses": (draw_horse, 0.1, 0.35, 1.05),
            "diver": (lambda pen, r: draw_diver(pen, r, season), 0.1, 0.35, 1.0),
        }
        for name in self.objects:
            if name in ground:
                paint, lo, hi, height_frac = ground[name]
                self._place(name, lambda: self._ground_spot(lo, hi), height_frac, 0.0, paint)
            elif name == "aviation":
                self._place(name, lambda: self._air_spot(0.14, 0.35, 0.2), 0.5, 0.2,
                            lambda pen, r: (draw_helicopter if r.random() < 0.5 else draw_airplane)(pen, r, nav),
                            tilt=0.25)
            else:  # drone
                self._place(name, lambda: self._air_spot(0.06, 0.16, 0.3, low_share=0.3), 0.6, 0.3,
                            lambda pen, r: draw_drone(pen, r, nav), tilt=0.3)

    def _place(self, name: str, spot: Callable[[], tuple], height_frac: float, lift: float, paint,
               tilt: float = 0.0) -> None:
        """Find a spot where the object neither hides nor is hidden by another object, then queue it, and note
        its box for the sidecar.

        `lift` puts the pen origin that many sizes above `base` (flying things are drawn around their centre).
        """
        for _ in range(8):
            x, base, size, facing, airborne = spot()
            box = (x - size / 2, base - size * height_frac, x + size / 2, base)
            if not any(_covers(box, s.box) or _covers(s.box, box) for s in self.sprites if s.is_object):
                break
        self.placed.append((name, box, size / self.short))
        r = self._sub_rng()
        angle = r.uniform(-tilt, tilt) if airborne else 0.0
        y = base - lift * size
        self.sprites.append(_Sprite(base, lambda d: paint(_Pen(d, x, y, size, facing, angle), r), box=box,
                                    is_object=True))
        if self.rng.random() < 0.2 and not airborne:  # a bush or rock in front hides a part of it
            depth = _clamp((base - self.horizon) / max(1.0, self.h - self.horizon) + 0.02, 0, 1.2)
            ox = x + self.rng.choice((-1, 1)) * size * self.rng.uniform(0.3, 0.5)
            kind = "rock" if self.season == UNKNOWN else self.rng.choice(["bush", "rock"])
            self._add_scenery(kind, depth, size=size * self.rng.uniform(0.35, 0.6), x=ox, occluder=True)

    def _sub_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(32))

    def _ground_spot(self, lo: float, hi: float) -> tuple:
        """(x, base y, size, facing, airborne) for an object on the ground: larger objects stand nearer."""
        rng = self.rng
        frac = _loguniform(rng, lo, hi)
        t = (frac - lo) / (hi - lo)
        depth = _clamp(0.12 + 0.75 * t + rng.uniform(-0.15, 0.15), 0.04, 1.0)
        base = self.depth_y(depth) + (rng.uniform(0, 0.1) * self.h if rng.random() < 0.1 else 0)
        x = rng.uniform(-0.05, 1.05) * self.w
        return x, base, frac * self.short, rng.choice((-1, 1)), False

    def _air_spot(self, lo: float, hi: float, lift: float, low_share: float = 0.0) -> tuple:
        """Mostly in the sky; without a visible sky (close-up), or for `low_share`, low above the ground."""
        rng = self.rng
        size = _loguniform(rng, lo, hi) * self.short
        x = rng.uniform(0.0, 1.0) * self.w
        facing = rng.choice((-1, 1))
        if self.sky_visible and self.horizon > 0.12 * self.h and rng.random() >= low_share:
            y = rng.uniform(0.06 * self.h, max(0.07 * self.h, self.horizon - 0.15 * size))
            return x, y + lift * size, size, facing, True
        y = self.depth_y(rng.uniform(0.1, 0.7)) - size * (0.25 + lift)
        return x, y + lift * size, size, facing, self.sky_visible

    # ---- scenery and clutter -------------------------------------------------------------------------------
    def _drop_hiding_scenery(self) -> None:
        """Drop scenery that would hide the middle of an object standing behind it: the label must stay true."""
        objects = [s for s in self.sprites if s.is_object]
        keep = []
        for s in self.sprites:
            if not s.is_object and s.box is not None and any(
                    o.base < s.base and _covers(s.box, o.box) for o in objects):
                continue
            keep.append(s)
        self.sprites = keep

    def _add_scenery(self, kind: str, depth: float, size: float | None = None, x: float | None = None,
                     lamp: bool = False, occluder: bool = False) -> None:
        rng = self.rng
        base = self.depth_y(depth)
        size = size or self.short * rng.uniform(0.04, 0.12) * (0.4 + depth)
        x = rng.uniform(0, self.w) if x is None else x
        r = self._sub_rng()
        season, lights = self.season, self.lights
        box = None if occluder else (x - size * 0.4, base - size, x + size * 0.4, base)
        if kind == "pole":
            size = self.h * (0.2 + 0.5 * depth)
            box = (x - 2, base - size, x + 2, base)

            def fn(d):
                glow = []
                draw_pole(_Pen(d, x, base, size), r, glow, lamp)
                lights.extend(("glow", p, size * 0.04, (255, 225, 150)) for p in glow)
        elif kind == "person":
            fn = lambda d: _person(_Pen(d, x, base, size, r.choice((-1, 1))), r,  # noqa: E731
                                   arms="raised" if r.random() < 0.2 else "down")
        elif kind == "bird":
            fn = lambda d: draw_bird(_Pen(d, x, base, size), r)  # noqa: E731
        else:
            shape = {"bush": draw_bush, "rock": draw_rock}[kind]
            fn = lambda d: shape(_Pen(d, x, base, size), r, season)  # noqa: E731
        self.sprites.append(_Sprite(base + (1e-3 if occluder else 0.0), fn, box=box))

    def _clutter(self) -> None:
        """Distractors: rocks, bushes, poles, passers-by (who are not dog handlers) and birds."""
        rng = self.rng
        kinds = ["rock", "person", "pole"] + (["bush", "bush"] if self.season != UNKNOWN else [])
        for _ in range(rng.randint(1, 6)):
            kind = rng.choice(kinds)
            depth = rng.random() ** 0.8
            size = self.short * rng.uniform(0.12, 0.3) * (0.3 + depth) if kind == "person" else None
            self._add_scenery(kind, depth, size=size, lamp=self.terrain == "city" and rng.random() < 0.5)
        if self.sky_visible and rng.random() < 0.3:
            for _ in range(rng.randint(1, 5)):
                base = rng.uniform(0.05, 0.8) * self.horizon
                self._add_scenery_bird(base)

    def _add_scenery_bird(self, y: float) -> None:
        x, size = self.rng.uniform(0, self.w), self.short * self.rng.uniform(0.015, 0.04)
        r = self._sub_rng()
        self.sprites.append(_Sprite(y, lambda d: draw_bird(_Pen(d, x, y, size), r)))

    # ---- light and sky -------------------------------------------------------------------------------------
    def _sky(self) -> Image.Image:
        """The sky is smooth, so its gradient is computed on a coarse grid and upsampled; then sun/moon/stars."""
        rng, w, h = self.rng, self.w, self.h
        cw, ch = max(2, w // 8), max(2, h // 4)
        stops = SKY[self.tod]
        pos = np.array([p for p, _ in stops], dtype=np.float32)
        cols = np.array([_jit(rng, c, 14) for _, c in stops], dtype=np.float32)
        t = np.clip((np.arange(ch, dtype=np.float32) + 0.5) * (h / ch) / max(1.0, self.horizon), 0, 1)
        column = np.stack([np.interp(t, pos, cols[:, k]) for k in range(3)], axis=1)
        sky = np.repeat(column[:, None, :], cw, axis=1)
        sun_x = rng.uniform(0, w)
        if self.tod == "twilight":  # glow where the sun went down
            gx = np.exp(-((((np.arange(cw) + 0.5) * (w / cw) - sun_x) / (0.35 * w)) ** 2))
            sky = sky + np.outer(t ** 2, gx)[:, :, None] * np.array([40.0, 25.0, -10.0])
        img = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
        d = ImageDraw.Draw(img, "RGBA")
        if self.tod == "twilight" and rng.random() < 0.4:
            _disc(d, sun_x, self.horizon, self.short * 0.05, (255, 200, 120))
        elif self.tod == "night":
            n = int(rng.uniform(20, 120) * w * self.horizon / 640 / 240)
            for level in (130, 190, 250):  # stars of three magnitudes
                d.point([(rng.uniform(0, w), rng.uniform(0, self.horizon)) for _ in range(n // 3)],
                        fill=(level, level, level))
            if rng.random() < 0.5:
                _disc(d, rng.uniform(0, w), rng.uniform(0.1, 0.6) * self.horizon,
                      self.short * rng.uniform(0.025, 0.05), (235, 232, 205), glow=True)
        elif self.tod == "day" and rng.random() < 0.3:
            _disc(d, sun_x, rng.uniform(0.0, 0.4) * self.horizon, self.short * 0.04, (255, 252, 235), glow=True)
        return img

    def _compose(self) -> Image.Image:
        """Light the landscape (one LUT), lay it over the sky, add uneven light, lamps and fog."""
        rng, size = self.rng, (self.w, self.h)
        (lo, hi), tint = LIGHT[self.tod]
        gain = rng.uniform(lo, hi)
        lut = [min(255, int(v * gain * k + 0.5)) for k in tint for v in range(256)] + list(range(256))
        lit = self.land.point(lut)
        base = self._sky() if self.sky_visible else Image.new("RGB", size)
        out = Image.composite(lit.convert("RGB"), base, lit.getchannel("A"))
        out = ImageChops.overlay(out, _smooth_field(self.nrng, size, 0.08 * 128))  # nothing is evenly lit
        self._draw_lights(out)
        if self.view == "fog":
            strength = rng.uniform(0.35, 0.6)
            ramp = np.linspace(strength * 255, strength * 0.5 * 255, self.h, dtype=np.float32)
            mask = Image.fromarray(ramp.astype(np.uint8)[:, None]).resize(size, Image.BILINEAR)
            out = Image.composite(Image.new("RGB", size, _jit(rng, (196, 198, 200), 8)), out, mask)
        return out

    def _draw_lights(self, img: Image.Image) -> None:
        """Windows, lamps, headlights and navigation lights shine only when it is dark."""
        if self.tod not in ("night", "twilight"):
            return
        d = ImageDraw.Draw(img, "RGBA")
        for kind, where, *rest in self.lights:
            if kind == "rect":
                d.rectangle(where, fill=rest[0])
            else:
                (x, y), r, col = where, rest[0], rest[1]
                d.ellipse([x - r * 2.5, y - r * 2.5, x + r * 2.5, y + r * 2.5], fill=col[:3] + (50,))
                d.ellipse([x - r, y - r, x + r, y + r], fill=col)
        r = max(1.0, self.short / 300)
        for k, (x, y) in enumerate(self.nav_lights):
            col = (255, 40, 40) if k % 2 == 0 else (40, 255, 80)
            d.ellipse([x - r, y - r, x + r, y + r], fill=col)


def _covers(front, back) -> bool:
    """Whether box `front` contains the centre of box `back`."""
    cx, cy = (back[0] + back[2]) / 2, (back[1] + back[3]) / 2
    return front[0] <= cx <= front[2] and front[1] <= cy <= front[3]


def _disc(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, color, glow: bool = False) -> None:
    """Sun or moon, with a soft halo made of translucent rings."""
    if glow:
        for k in range(4, 0, -1):
            rr = r * (1 + 0.7 * k)
            d.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=tuple(color[:3]) + (22,))
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(color[:3]))


def _smooth_field(nrng: np.random.Generator, size: tuple[int, int], amplitude: float) -> Image.Image:
    """Low-frequency grey field around 128 (neutral for `ImageChops.overlay`): a coarse grid upsampled."""
    coarse = np.clip(128 + nrng.standard_normal((5, 7)) * amplitude, 0, 255).astype(np.uint8)
    return Image.fromarray(coarse).resize(size, Image.BILINEAR).convert("RGB")


# =============================================================================================================
# finishing: exposure jitter, blur, resize, sensor noise
# =============================================================================================================
_NOISE_TILE: Image.Image | None = None
NOISE_TILE_SIZE = 1024
NOISE_TILE_SCALE = 32.0  # the tile stores 128 + 32 * N(0, 1)


def _noise_tile() -> Image.Image:
    """A fixed Gaussian-noise tile, made once per process from a constant seed.

    Cutting randomly placed, randomly flipped windows out of it is ~10x cheaper than drawing fresh normals
    for every pixel, and stays deterministic because the tile is the same in every process.
    """
    global _NOISE_TILE
    if _NOISE_TILE is None:
        z = np.random.default_rng(20240611).standard_normal((NOISE_TILE_SIZE, NOISE_TILE_SIZE, 3), dtype=np.float32)
        _NOISE_TILE = Image.fromarray(np.clip(128 + NOISE_TILE_SCALE * z, 0, 255).astype(np.uint8))
    return _NOISE_TILE


_FLIPS = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180)


def _noise(rng: random.Random, size: tuple[int, int], sigma: float, mono: bool) -> Image.Image:
    """Zero-mean noise image (centred on 128) of standard deviation `sigma`, RGB or luminance-only."""
    tile, t = _noise_tile(), NOISE_TILE_SIZE
    w, h = size
    out = Image.new("RGB", size)
    for y in range(0, h, t):
        for x in range(0, w, t):
            cw, ch = min(t, w - x), min(t, h - y)
            ox, oy = rng.randint(0, t - cw), rng.randint(0, t - ch)
            patch = tile.crop((ox, oy, ox + cw, oy + ch))
            flip = rng.choice(_FLIPS)
            out.paste(patch.transpose(flip) if flip is not None else patch, (x, y))
    if mono:
        out = out.getchannel(rng.randint(0, 2))
    k = sigma / NOISE_TILE_SCALE
    out = out.point([int(_clamp(128 + (v - 128) * k, 0, 255) + 0.5) for v in range(256)] * (1 if mono else 3))
    return Image.merge("RGB", (out, out, out)) if mono else out


def _add_noise(img: Image.Image, noise: Image.Image) -> Image.Image:
    return ImageChops.add(img, noise, 1.0, -128)


def _finish(img: Image.Image, tod: str, width: int, height: int, rng: random.Random) -> Image.Image:
    mean = float(np.asarray(img.resize((32, 32), Image.BOX)).mean())
    contrast = rng.uniform(0.85, 1.15)
    brightness = rng.uniform(0.9, 1.1)  # small enough that night stays night
    img = img.point([int(_clamp(((v - mean) * contrast + mean) * brightness, 0, 255) + 0.5) for v in range(256)] * 3)
    img = _add_noise(img, _noise(rng, img.size, rng.uniform(0.5, 2.0), mono=False))  # colour noise, coarse
    if rng.random() < 0.2:  # defocus / soft lens: down and up again is a cheap blur
        w, h = img.size
        f = rng.uniform(1.5, 3.0)
        img = img.resize((max(8, int(w / f)), max(8, int(h / f))), Image.BOX).resize((w, h), Image.BILINEAR)
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    # luminance grain at full resolution: the dominant part of sensor noise, strongest in the dark
    return _add_noise(img, _noise(rng, (width, height), rng.uniform(*NOISE_SIGMA[tod]), mono=True))


def render_scene(labels: dict, width: int, height: int, seed: int) -> Image.Image:
    """Draw one RGB scene of `width` x `height` showing `labels` (as returned by `generate_labels`).

    The same labels, size and seed always give the same pixels.
    """
    return render_scene_with_boxes(labels, width, height, seed)[0]


def render_scene_with_boxes(labels: dict, width: int, height: int, seed: int) -> tuple[Image.Image, list[dict]]:
    """`render_scene`, plus one record per drawn object: {"object", "box": [x0, y0, x1, y1] in the image's pixels
    (clipped to it; the drawn shape's extent, approximately), "size": the object's size as a share of the short
    side}. Computing the boxes draws nothing more and takes no random numbers: the pixels are the same."""
    if width < 16 or height < 16:
        raise ValueError(f"image too small: {width}x{height}")
    seed = int(seed) & (2 ** 63 - 1)
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    scale = min(1.0, WORK_LONG_SIDE / max(width, height))
    ww, wh = max(16, round(width * scale)), max(16, round(height * scale))
    scene = _Scene(labels, ww, wh, rng, nrng)
    img = scene.render()
    sx, sy = width / ww, height / wh
    boxes = [{"object": name,
              "box": [round(_clamp(x0 * sx, 0, width)), round(_clamp(y0 * sy, 0, height)),
                      round(_clamp(x1 * sx, 0, width)), round(_clamp(y1 * sy, 0, height))],
              "size": round(size, 4)}
             for name, (x0, y0, x1, y1), size in scene.placed]
    return _finish(img, labels.get("time_of_day", UNKNOWN), width, height, rng), boxes


def render_jpegs(width: int, height: int, count: int, seed: int = 0, quality: int = 90) -> list[bytes]:
    """`count` random scenes of `width` x `height` as JPEG bytes, for load tests and benchmarks (deterministic)."""
    photos = []
    for i in range(count):
        scene_seed = seed * 1_000_003 + i
        buffer = io.BytesIO()
        render_scene(generate_labels(random.Random(scene_seed)), width, height, scene_seed).save(
            buffer, "JPEG", quality=quality)
        photos.append(buffer.getvalue())
    return photos


# =============================================================================================================
# dataset
# =============================================================================================================
def _plan(index: int, seed: int, taxonomy: Taxonomy, min_size: int, max_size: int, png_fraction: float) -> tuple:
    """Everything about image `index` that is random, drawn from its own stream (worker-count independent)."""
    rng = random.Random(seed * SEED_STRIDE + index)
    labels = generate_labels(rng, taxonomy)
    width, height = rng.randint(min_size, max_size), rng.randint(min_size, max_size)
    png = rng.random() < png_fraction
    quality = rng.randint(*JPEG_QUALITY)
    render_seed = rng.getrandbits(63)
    filename = FILENAME_PATTERN.format(index=index) + (".png" if png else ".jpg")
    return filename, labels, width, height, png, quality, render_seed


def _render_job(job: tuple) -> list[dict]:
    path, labels, width, height, png, quality, render_seed = job
    img, boxes = render_scene_with_boxes(labels, width, height, render_seed)
    if png:
        img.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        img.save(path, format="JPEG", quality=quality)
    return boxes


def _check_drawable(taxonomy: Taxonomy) -> None:
    for group in taxonomy.groups:
        known = DRAWABLE.get(group.name)
        missing = [c for c in group.class_ids if known is None or c not in known]
        if missing:
            raise ValueError(f"the synthetic renderer cannot draw {group.name}: {missing}")


def generate_dataset(out_dir, count: int, seed: int = 0, min_size: int = 320, max_size: int = 2000,
                     png_fraction: float = 0.1, workers: int | None = None, taxonomy: Taxonomy | None = None,
                     start_index: int = 0) -> Path:
    """Write `count` scenes to out_dir/images/ and their labels to out_dir/labels.csv; return the CSV path.

    Image `i` (file scene_{i:06d}.jpg|png, i from start_index) depends only on (seed, i).
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if not 16 <= min_size <= max_size:
        raise ValueError(f"need 16 <= min_size <= max_size, got {min_size}, {max_size}")
    if not 0.0 <= png_fraction <= 1.0:
        raise ValueError("png_fraction must be within [0, 1]")
    taxonomy = taxonomy or Taxonomy.load()
    _check_drawable(taxonomy)
    out_dir = Path(out_dir)
    image_dir = out_dir / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    indices = range(start_index, start_index + count)
    plans = [_plan(i, seed, taxonomy, min_size, max_size, png_fraction) for i in indices]
    jobs = [(str(image_dir / p[0]),) + p[1:] for p in plans]
    workers = workers or min(4, os.cpu_count() or 1)
    if workers <= 1 or count < 4:
        boxes = [_render_job(job) for job in jobs]
    else:
        # forkserver/spawn rather than fork: the caller may be a multi-threaded trainer (torch) process
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with ctx.Pool(min(workers, count)) as pool:
            boxes = list(pool.imap(_render_job, jobs, chunksize=max(1, min(16, count // (workers * 8)))))
    csv_path = out_dir / CSV_NAME
    write_labels_csv(csv_path, ((filename, labels) for filename, labels, *_ in plans), taxonomy)
    _write_boxes(out_dir / BOXES_NAME, ((p[0], p[2], p[3], b) for p, b in zip(plans, boxes)))
    return csv_path


def _write_boxes(path: Path, rows) -> None:
    """The sidecar: one JSON line per image, {"filename", "width", "height", "objects": [...]}."""
    with open(path, "w", encoding="utf-8") as out:
        for filename, width, height, objects in rows:
            out.write(json.dumps({"filename": filename, "width": width, "height": height, "objects": objects}) + "\n")


def read_object_boxes(csv_path: str | Path) -> dict[str, list[dict]]:
    """The sidecar next to a labels CSV, as {filename: [{"object", "box", "size"}, ...]}; {} where there is none
    (real photos have no boxes)."""
    path = Path(csv_path).parent / BOXES_NAME
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    return {row["filename"]: row["objects"] for row in rows}


def summarize(csv_path: Path, taxonomy: Taxonomy) -> str:
    """Label distribution per head and per object, read back from the written CSV by the training reader."""
    labels = [row.labels for row in read_labels_csv(csv_path, taxonomy)]
    parts = []
    for group in taxonomy.groups:
        if group.kind == SINGLE:
            counts = Counter(item[group.name] for item in labels)
            parts.append(f"{group.name}: " + " ".join(f"{c}={counts.get(c, 0)}" for c in group.class_ids))
        else:
            counts = Counter(c for item in labels for c in item[group.name])
            none = sum(1 for item in labels if not item[group.name])
            parts.append(f"{group.name}: " + " ".join(f"{c}={counts.get(c, 0)}" for c in group.class_ids)
                         + f" none={none}")
    return " | ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/synth", help="output folder (gets images/ and labels.csv)")
    parser.add_argument("--count", type=int, default=2000, help="number of images to generate")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; same seed + arguments = same bytes")
    parser.add_argument("--start-index", type=int, default=0,
                        help="index of the first image (to generate a big set in chunks)")
    parser.add_argument("--min-size", type=int, default=320, help="smallest width/height in pixels")
    parser.add_argument("--max-size", type=int, default=2000, help="largest width/height in pixels")
    parser.add_argument("--png-fraction", type=float, default=0.1, help="share of images saved as PNG, the rest JPEG")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default min(4, CPU count)); output does not depend on it")
    parser.add_argument("--taxonomy", default=None, help="taxonomy.json to take columns and codes from")
    args = parser.parse_args(argv)
    taxonomy = Taxonomy.load(args.taxonomy) if args.taxonomy else Taxonomy.load()
    started = time.perf_counter()
    csv_path = generate_dataset(args.out, args.count, seed=args.seed, min_size=args.min_size, max_size=args.max_size,
                                png_fraction=args.png_fraction, workers=args.workers, taxonomy=taxonomy,
                                start_index=args.start_index)
    elapsed = time.perf_counter() - started
    print(f"synth: {args.count} images in {elapsed:.1f} s ({args.count / max(elapsed, 1e-9):.1f}/s) -> {csv_path} | "
          f"{summarize(csv_path, taxonomy)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
