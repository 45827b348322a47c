"""The drawing vocabulary: a pen in object units, palettes, the objects' and the scenery's shapes."""
from __future__ import annotations

import math
import random

from PIL import ImageDraw

Color = tuple


# =============================================================================================================
# small drawing helpers
# =============================================================================================================
def clamp(v: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo if v < lo else hi if v > hi else v


def jit(rng: random.Random, color: Color, amount: int = 12) -> Color:
    """A colour near `color`: no two scenes share exact palette values, so the net cannot key on them."""
    return tuple(int(clamp(c + rng.randint(-amount, amount), 0, 255)) for c in color[:3]) + tuple(color[3:])


def shade(color: Color, factor: float) -> Color:
    return tuple(int(clamp(c * factor, 0, 255)) for c in color[:3]) + tuple(color[3:])


def loguniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


class Pen:
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

    def sub(self, u: float, v: float, scale: float, facing: int | None = None) -> Pen:
        x, y = self.pt(u, v)
        return Pen(self.d, x, y, self.s * scale, self.f if facing is None else facing * self.f, self.angle)

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
def draw_person(pen: Pen, rng: random.Random, jacket: Color | None = None, arms: str = "down") -> dict:
    """Standing figure of height 1; returns hand and shoulder points (in pen units) for leashes and hugs."""
    jacket = jacket or jit(rng, rng.choice(CLOTHES), 10)
    trousers = jit(rng, rng.choice(TROUSERS), 8)
    skin = rng.choice(SKIN)
    pen.poly([(-0.08, 0.48), (-0.01, 0.48), (-0.025, 0.02), (-0.075, 0.02)], trousers)
    pen.poly([(0.01, 0.48), (0.08, 0.48), (0.075, 0.02), (0.025, 0.02)], trousers)
    pen.rect(-0.085, 0.0, -0.015, 0.03, (30, 28, 26))
    pen.rect(0.02, 0.0, 0.09, 0.03, (30, 28, 26))
    pen.poly([(-0.11, 0.80), (0.11, 0.80), (0.095, 0.45), (-0.095, 0.45)], jacket)
    pen.circle(0.0, 0.885, 0.068, skin)
    if rng.random() < 0.5:  # hat or hood
        pen.ellipse(0.0, 0.925, 0.072, 0.04, jit(rng, rng.choice(CLOTHES), 10))
    hands = {"left": (-0.15, 0.5), "right": (0.15, 0.5)}
    if arms == "raised":
        hands["right"] = (0.2, 1.02)
    for side, (hu, hv) in hands.items():
        su = -0.1 if side == "left" else 0.1
        if arms != "none":
            pen.line([(su, 0.77), (hu, hv)], jacket, 0.05)
            pen.circle(hu, hv, 0.025, skin)
    return {"hands": hands, "skin": skin, "jacket": jacket}


def _dog(pen: Pen, rng: random.Random) -> tuple[float, float]:
    """Dog of height ~0.4 standing on v=0 with its head towards +u; returns the collar point."""
    fur = jit(rng, rng.choice(DOG_COLORS), 10)
    dark = shade(fur, 0.7)
    for lu, leg_color in ((-0.13, dark), (0.12, dark), (-0.09, fur), (0.16, fur)):  # far legs darker
        pen.line([(lu, 0.24), (lu + 0.01, 0.0)], leg_color, 0.035)
    pen.ellipse(0.0, 0.27, 0.19, 0.075, fur)
    pen.line([(-0.18, 0.29), (-0.26, 0.38 + rng.uniform(-0.05, 0.05))], fur, 0.03)  # tail
    pen.line([(0.14, 0.3), (0.2, 0.37)], fur, 0.07)  # neck
    pen.ellipse(0.22, 0.39, 0.06, 0.05, fur)
    pen.poly([(0.25, 0.41), (0.33, 0.37), (0.32, 0.34), (0.24, 0.35)], fur)  # muzzle
    pen.poly([(0.18, 0.42), (0.2, 0.49), (0.23, 0.42)], dark)  # ear
    return 0.17, 0.35


def draw_dog_handler(pen: Pen, rng: random.Random) -> None:
    person = draw_person(pen.sub(-0.18, 0.0, 1.0), rng, jacket=jit(rng, rng.choice(CLOTHES[:5]), 10))
    dog_pen = pen.sub(0.3, 0.0, rng.uniform(0.85, 1.15))
    collar = _dog(dog_pen, rng)
    hand = pen.sub(-0.18, 0.0, 1.0).pt(*person["hands"]["right"])
    pen.d.line([hand, dog_pen.pt(*collar)], fill=rng.choice([(200, 30, 30), (20, 20, 20), (40, 60, 160)]),
               width=max(1, round(pen.s * 0.012)))


def draw_hugs(pen: Pen, rng: random.Random) -> None:
    a = pen.sub(-0.075, 0.0, rng.uniform(0.92, 1.0))
    b = pen.sub(0.075, 0.0, rng.uniform(0.92, 1.0), facing=-1)
    pa = draw_person(a, rng, arms="none")
    pb = draw_person(b, rng, arms="none")
    # arms wrapped around the other's back: the cue that separates a hug from two people standing close
    a.line([(0.1, 0.77), (0.16, 0.66), (0.24, 0.7)], pa["jacket"], 0.055)
    b.line([(0.1, 0.75), (0.17, 0.62), (0.25, 0.64)], pb["jacket"], 0.055)
    a.circle(0.24, 0.7, 0.028, pa["skin"])
    b.circle(0.25, 0.64, 0.028, pb["skin"])


def draw_diver(pen: Pen, rng: random.Random, season: str) -> None:
    """Diver in a dark suit with mask and tank, standing at or wading in a patch of water."""
    wading = rng.random() < 0.5
    water = jit(rng, WATER, 12)
    if season == "winter":  # an ice hole: white rim round dark water
        pen.ellipse(0.0, 0.02, 1.05, 0.16, (210, 222, 235))
        water = shade(water, 0.7)
    pen.ellipse(0.0 if wading else 0.6, 0.02, 0.9, 0.12, water)
    suit = jit(rng, rng.choice([(20, 22, 30), (12, 12, 14), (20, 30, 70)]), 6)
    body = pen.sub(0.0, -0.1 if wading else 0.0, 1.0)
    tank = jit(rng, rng.choice([(230, 200, 30), (180, 180, 185), (230, 230, 230), (220, 90, 30)]), 10)
    body.rect(-0.17, 0.5, -0.08, 0.84, tank)  # tank on the back
    body.circle(-0.125, 0.84, 0.045, tank)
    draw_person(body, rng, jacket=suit, arms="down")
    body.ellipse(0.0, 0.9, 0.075, 0.05, suit)  # hood over the head
    mask = rng.choice([(240, 200, 30), (240, 120, 30), (230, 230, 230)])
    body.rect(0.0, 0.86, 0.09, 0.93, mask)
    body.rect(0.02, 0.875, 0.08, 0.915, (120, 170, 200))
    body.line([(-0.12, 0.86), (0.0, 0.95), (0.07, 0.86)], (40, 40, 40), 0.012)  # regulator hose
    if wading:  # water surface in front of the legs
        pen.ellipse(0.0, 0.02, 0.55, 0.13, water)
        pen.line([(-0.3, 0.05), (0.3, 0.05)], shade(water, 1.4), 0.01)
    else:
        fin = rng.choice([(20, 20, 20), (230, 200, 30)])
        pen.poly([(-0.08, 0.0), (0.12, 0.0), (0.14, 0.025), (-0.08, 0.03)], fin)


def draw_horse(pen: Pen, rng: random.Random) -> None:
    coat = jit(rng, rng.choice(HORSE_COLORS), 10)
    mane = shade(coat, 0.45) if coat[0] > 60 else (15, 12, 10)
    far = shade(coat, 0.8)
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
        rider = jit(rng, rng.choice(CLOTHES), 10)
        pen.poly([(-0.1, 0.68), (0.06, 0.68), (0.04, 0.98), (-0.08, 0.98)], rider)
        pen.rect(-0.04, 0.44, 0.03, 0.7, jit(rng, rng.choice(TROUSERS), 8))
        pen.circle(-0.02, 1.05, 0.065, rng.choice(SKIN))


def draw_car(pen: Pen, rng: random.Random) -> None:
    paint = jit(rng, rng.choice(CAR_COLORS), 10)
    glass = jit(rng, (70, 90, 110), 15)
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


def draw_sherp(pen: Pen, rng: random.Random) -> None:
    """Boxy amphibious ATV on four huge tyres: the tyres are as tall as the body."""
    paint = jit(rng, rng.choice(SHERP_COLORS), 10)
    tyre = jit(rng, (34, 34, 36), 6)
    r = rng.uniform(0.22, 0.26)
    for wu in (-0.26, 0.3):  # far-side tyres peek out behind
        pen.circle(wu + 0.05, r + 0.04, r, shade(tyre, 0.7))
    pen.poly([(-0.46, 0.24), (-0.46, 0.66), (0.3, 0.66), (0.44, 0.56), (0.5, 0.4), (0.46, 0.24)], paint)
    for k in range(3):  # row of side windows
        u0 = -0.36 + k * 0.2
        pen.rect(u0, 0.5, u0 + 0.14, 0.62, jit(rng, (70, 90, 110), 12))
    pen.poly([(0.3, 0.64), (0.42, 0.55), (0.36, 0.5), (0.28, 0.5)], (80, 100, 120))
    pen.rect(-0.4, 0.66, 0.2, 0.69, shade(paint, 0.6))  # roof rack
    for wu in (-0.26, 0.3):
        pen.circle(wu, r, r, tyre)
        pen.circle(wu, r, r * 0.72, shade(tyre, 1.5))
        pen.circle(wu, r, r * 0.55, tyre)
        pen.circle(wu, r, r * 0.18, (150, 150, 150))
        for k in range(6):  # tread lugs
            a = k * math.pi / 3 + 0.3
            pen.line([(wu + math.cos(a) * r * 0.6, r + math.sin(a) * r * 0.6),
                      (wu + math.cos(a) * r * 0.98, r + math.sin(a) * r * 0.98)], shade(tyre, 0.5), 0.015)


def draw_airplane(pen: Pen, rng: random.Random, lights: list) -> None:
    """Origin at the centre. Side view or planform from below."""
    paint = jit(rng, rng.choice(AIR_COLORS), 10)
    trim = jit(rng, rng.choice(AIR_COLORS), 10)
    if rng.random() < 0.5:
        pen.ellipse(0.0, 0.0, 0.5, 0.065, paint)
        pen.poly([(-0.5, 0.02), (-0.38, 0.04), (-0.46, 0.24), (-0.52, 0.24)], trim)  # tail fin
        pen.poly([(-0.44, 0.0), (-0.3, 0.0), (-0.4, -0.05)], shade(paint, 0.8))
        pen.poly([(-0.05, -0.02), (0.12, -0.02), (-0.08, -0.2), (-0.16, -0.2)], shade(paint, 0.7))  # wing
        for k in range(7):
            pen.circle(0.3 - k * 0.08, 0.015, 0.012, (60, 70, 90))
        pen.line([(-0.46, -0.01), (0.44, -0.01)], trim, 0.015)
        lights.append(pen.pt(-0.13, -0.2))
    else:  # planform from below, swept wings
        pen.ellipse(0.0, 0.0, 0.5, 0.055, paint)
        pen.poly([(0.08, 0.0), (-0.12, 0.48), (-0.2, 0.48), (-0.08, 0.0)], shade(paint, 0.85))
        pen.poly([(0.08, 0.0), (-0.12, -0.48), (-0.2, -0.48), (-0.08, 0.0)], shade(paint, 0.85))
        pen.poly([(-0.36, 0.0), (-0.46, 0.17), (-0.5, 0.17), (-0.46, 0.0)], trim)
        pen.poly([(-0.36, 0.0), (-0.46, -0.17), (-0.5, -0.17), (-0.46, 0.0)], trim)
        for side in (-1, 1):
            pen.ellipse(0.0, side * 0.2, 0.07, 0.03, shade(paint, 0.6))
        lights.extend([pen.pt(-0.16, 0.48), pen.pt(-0.16, -0.48)])


def draw_helicopter(pen: Pen, rng: random.Random, lights: list) -> None:
    """Origin at the centre of the cabin."""
    paint = jit(rng, rng.choice(AIR_COLORS), 10)
    trim = jit(rng, rng.choice(AIR_COLORS), 10)
    pen.poly([(-0.05, 0.06), (-0.5, 0.03), (-0.5, 0.0), (-0.05, -0.04)], paint)  # tail boom
    pen.poly([(-0.46, 0.02), (-0.52, 0.14), (-0.48, 0.14), (-0.42, 0.02)], trim)
    pen.circle(-0.5, 0.04, 0.06, (90, 90, 95, 150))  # tail rotor blur
    pen.ellipse(0.12, 0.0, 0.22, 0.13, paint)
    pen.poly([(0.22, 0.1), (0.33, 0.0), (0.22, -0.01), (0.16, 0.08)], jit(rng, (90, 120, 150), 12))
    pen.rect(-0.02, -0.04, 0.24, -0.02, trim)
    pen.line([(0.1, 0.12), (0.1, 0.2)], (50, 50, 55), 0.02)  # mast
    pen.line([(-0.38, 0.2), (0.62, 0.22)], (40, 40, 44), 0.018)  # main rotor
    pen.line([(0.0, -0.13), (0.02, -0.2)], (50, 50, 55), 0.012)
    pen.line([(0.22, -0.12), (0.2, -0.2)], (50, 50, 55), 0.012)
    pen.line([(-0.08, -0.2), (0.34, -0.2), (0.38, -0.17)], (50, 50, 55), 0.018)  # skids
    lights.append(pen.pt(0.1, -0.13))


def draw_drone(pen: Pen, rng: random.Random, lights: list) -> None:
    """Quadcopter, origin at the centre: X arms with four rotor discs (from below) or side view."""
    body = jit(rng, rng.choice(DRONE_COLORS), 8)
    disc = (120, 120, 125, 110)
    if rng.random() < 0.6:  # from below
        for su in (-1, 1):
            for sv in (-1, 1):
                pen.line([(0.0, 0.0), (su * 0.32, sv * 0.32)], body, 0.06)
                pen.circle(su * 0.32, sv * 0.32, 0.17, disc)
                pen.circle(su * 0.32, sv * 0.32, 0.04, shade(body, 0.7))
        pen.rect(-0.11, -0.09, 0.11, 0.09, body)
        pen.circle(0.0, 0.0, 0.045, (20, 20, 25))  # camera
        lights.extend([pen.pt(-0.32, -0.32), pen.pt(0.32, 0.32)])
    else:  # side view
        pen.rect(-0.13, -0.02, 0.13, 0.07, body)
        pen.line([(-0.44, 0.06), (0.44, 0.06)], body, 0.04)
        for su in (-0.42, 0.42):
            pen.rect(su - 0.03, 0.06, su + 0.03, 0.11, shade(body, 0.7))
            pen.ellipse(su, 0.12, 0.17, 0.025, disc)
        pen.line([(-0.1, -0.02), (-0.14, -0.16)], body, 0.02)
        pen.line([(0.1, -0.02), (0.14, -0.16)], body, 0.02)
        pen.circle(0.0, -0.05, 0.045, (20, 20, 25))
        lights.extend([pen.pt(-0.42, 0.06), pen.pt(0.42, 0.06)])


# =============================================================================================================
# scenery shapes
# =============================================================================================================
def draw_conifer(pen: Pen, rng: random.Random, season: str) -> None:
    pen.rect(-0.025, 0.0, 0.025, 0.3, jit(rng, TRUNK, 10))
    green = jit(rng, CONIFER, 10)
    if season == "autumn" and rng.random() < 0.2:  # larch turns yellow
        green = jit(rng, (200, 160, 50), 15)
    tiers = rng.randint(3, 5)
    for i in range(tiers):
        v0 = 0.14 + i * 0.8 / tiers
        v1 = min(1.0, v0 + 1.5 * 0.8 / tiers)
        hw = 0.24 * (1 - i / tiers) + 0.05
        pen.poly([(-hw, v0), (hw, v0), (0.0, v1)], shade(green, 1.0 + 0.06 * i))
        if season == "winter":
            pen.poly([(-hw, v0), (hw, v0), (hw * 0.6, v0 + 0.05), (-hw * 0.6, v0 + 0.05)], jit(rng, SNOW, 6))
    if season == "winter":
        pen.poly([(-0.04, 0.92), (0.04, 0.92), (0.0, 1.0)], SNOW)


def draw_deciduous(pen: Pen, rng: random.Random, season: str) -> None:
    birch = rng.random() < 0.25
    bark = jit(rng, (222, 222, 212), 8) if birch else jit(rng, TRUNK, 12)
    pen.poly([(-0.035, 0.0), (0.035, 0.0), (0.015, 0.7), (-0.015, 0.7)], bark)
    if birch:
        for _ in range(5):
            v = rng.uniform(0.05, 0.6)
            pen.rect(-0.03, v, rng.uniform(-0.01, 0.03), v + 0.015, (30, 30, 30))
    branches = 9 if season == "winter" else 4
    for _ in range(branches):
        v0 = rng.uniform(0.35, 0.65)
        end = (rng.uniform(-0.3, 0.3), rng.uniform(v0 + 0.15, 0.98))
        pen.line([(0.0, v0), end], shade(bark, 0.85), 0.014)
        if season == "winter" and rng.random() < 0.5:
            pen.line([(end[0] * 0.6, v0 + (end[1] - v0) * 0.6), end], SNOW, 0.01)
    if season in FOLIAGE:
        palette = FOLIAGE[season]
        for _ in range(rng.randint(5, 8)):
            pen.circle(rng.uniform(-0.18, 0.18), rng.uniform(0.6, 0.86), rng.uniform(0.11, 0.18),
                       jit(rng, rng.choice(palette), 14))
        if season == "spring" and rng.random() < 0.6:  # blossom
            for _ in range(rng.randint(10, 25)):
                pen.circle(rng.uniform(-0.25, 0.25), rng.uniform(0.5, 0.95), 0.018,
                           rng.choice([(245, 175, 205), (250, 246, 246)]))


def draw_tree(pen: Pen, rng: random.Random, season: str) -> None:
    conifer_share = 0.6 if season == "winter" else 0.45
    (draw_conifer if rng.random() < conifer_share else draw_deciduous)(pen, rng, season)


def draw_bush(pen: Pen, rng: random.Random, season: str) -> None:
    if season == "winter":
        for _ in range(6):
            pen.line([(0.0, 0.0), (rng.uniform(-0.4, 0.4), rng.uniform(0.3, 0.6))], (90, 70, 55), 0.03)
        pen.ellipse(0.0, 0.05, 0.45, 0.08, SNOW)
        return
    palette = FOLIAGE.get(season, [(90, 100, 70)])
    for _ in range(rng.randint(3, 6)):
        pen.circle(rng.uniform(-0.3, 0.3), rng.uniform(0.2, 0.4), rng.uniform(0.18, 0.28),
                   shade(jit(rng, rng.choice(palette), 14), 0.85))


def draw_rock(pen: Pen, rng: random.Random, season: str) -> None:
    n = rng.randint(5, 8)
    pts = []
    for k in range(n):
        a = math.pi * k / (n - 1)
        r = rng.uniform(0.3, 0.5)
        pts.append((math.cos(a) * r, math.sin(a) * r * 0.8))
    pen.poly(pts, jit(rng, ROCK, 20))
    if season == "winter":
        pen.poly([(u * 0.8, v * 0.9 + 0.06) for u, v in pts if v > 0.1], SNOW)


def draw_pole(pen: Pen, rng: random.Random, lights: list, lamp: bool) -> None:
    col = jit(rng, (70, 70, 75) if lamp else (100, 80, 60), 10)
    pen.line([(0.0, 0.0), (0.0, 1.0)], col, 0.025)
    if lamp:
        pen.line([(0.0, 0.98), (0.14, 0.98)], col, 0.02)
        pen.rect(0.1, 0.94, 0.18, 0.97, (210, 210, 190))
        lights.append(pen.pt(0.14, 0.94))


def draw_bird(pen: Pen, rng: random.Random) -> None:
    col = (30, 30, 30) if rng.random() < 0.7 else (230, 230, 230)
    pen.line([(-0.5, 0.2), (0.0, 0.0), (0.5, 0.2)], col, 0.08)
