"""One scene laid out at working resolution and drawn back to front (before exposure and noise)."""
from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from phototag.taxonomy import UNKNOWN
from training.synth.labels import DRAWABLE, OBJECTS
from training.synth.shapes import (
    BARE_GROUND,
    BUILDING_COLORS,
    CONIFER,
    FOLIAGE,
    GROUND,
    LIGHT,
    MUD,
    SKY,
    SNOW,
    TRUNK,
    WATER,
    Color,
    Pen,
    clamp,
    draw_airplane,
    draw_bird,
    draw_bush,
    draw_car,
    draw_diver,
    draw_dog_handler,
    draw_drone,
    draw_helicopter,
    draw_horse,
    draw_hugs,
    draw_person,
    draw_pole,
    draw_rock,
    draw_sherp,
    draw_tree,
    jit,
    loguniform,
    shade,
)


# =============================================================================================================
# the scene
# =============================================================================================================
class _Sprite:
    """Something drawn back to front: larger `base` (lower on screen) is nearer and drawn later."""

    __slots__ = ("base", "draw", "box", "is_object")

    def __init__(self, base: float, draw: Callable[[ImageDraw.ImageDraw], None], box=None, is_object=False):
        self.base, self.draw, self.box, self.is_object = base, draw, box, is_object


class Scene:
    """Lays out one scene at working resolution and renders it (before exposure jitter and noise)."""

    def __init__(self, labels: dict, width: int, height: int, rng: random.Random, nrng: np.random.Generator,
                 object_scale: float = 1.0):
        """`object_scale` multiplies the size of every object and of the passers-by who look like a dog handler
        (1: the ordinary scenes, 10-35 % of the short side; the large-photo option draws them 5x smaller)."""
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
        self.object_scale = object_scale
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
            return jit(self.rng, GROUND[self.season], 10)
        if self.terrain == "city":
            return jit(self.rng, BARE_GROUND[self.rng.choice(["asphalt", "concrete"])], 8)
        self.bare = self.rng.choice(list(BARE_GROUND))
        return jit(self.rng, BARE_GROUND[self.bare], 10)

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
                self._ground_patch(jit(rng, (160, 120, 50), 15), 0.06, 0.2)
        elif self.season == "winter":
            for _ in range(rng.randint(2, 5)):
                self._ground_patch(jit(rng, (205, 214, 230), 6), 0.06, 0.2)  # blue shadows in snow
        if self.season in GROUND and self.season != "winter":
            n = int(160 * w * span / 640 / 480)
            palette = FOLIAGE[self.season] + [shade(base, 0.75), shade(base, 1.2)]
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
                self.d.line([(0, y), (w, y)], fill=shade(base, 0.8), width=max(1, int(self.short / 300)))
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
            self.d.line([(x, y), (x + ln, y)], fill=shade(water, rng.uniform(1.15, 1.4)), width=1)

    # ---- terrain backdrops ---------------------------------------------------------------------------------
    def _forest_backdrop(self) -> None:
        rng, w, top = self.rng, self.w, self.horizon
        if self.view == "closeup":  # a canopy closes over the top: no sky
            canopy = FOLIAGE.get(self.season, [CONIFER])
            if self.season == "winter":
                canopy = [CONIFER, shade(CONIFER, 0.8), SNOW]
            self.d.rectangle([0, 0, w, top], fill=shade(jit(rng, canopy[0], 10), 0.7))
            for _ in range(int(60 * w / 640)):
                r = self.short * rng.uniform(0.05, 0.14)
                x, y = rng.uniform(0, w), rng.uniform(-r, top * 0.9)
                self.d.ellipse([x - r, y - r, x + r, y + r], fill=jit(rng, rng.choice(canopy), 14))
            for _ in range(rng.randint(5, 10)):  # trunks down to the ground
                x = rng.uniform(0, w)
                tw = self.short * rng.uniform(0.015, 0.05)
                base = self.depth_y(rng.uniform(0.0, 0.4))
                self.d.rectangle([x - tw, top * 0.3, x + tw, base], fill=jit(rng, TRUNK, 14))
        else:  # distant tree line along the horizon
            col = shade(jit(rng, CONIFER if self.season != "autumn" else (130, 90, 40), 10), 0.8)
            if self.season == "spring":
                col = shade(jit(rng, FOLIAGE["spring"][0], 10), 0.7)
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
                self.d.line(pts[1:-1], fill=shade(SNOW, 0.9), width=max(1, int(self.short / 250)))
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
        self.sprites.append(_Sprite(base, lambda d: draw_tree(Pen(d, x, base, height), random.Random(seed), season),
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
                    self.d.rectangle([x, top - bh, x + bw, top], fill=jit(rng, (150, 155, 165), 12))
                    x += bw
            x = -rng.uniform(0, 0.1) * w
            while x < w:
                bw = w * rng.uniform(0.12, 0.3)
                bh = h * rng.uniform(0.12, 0.45)
                self._building(x, x + bw, top - bh, top + 2, night, cell=self.short * rng.uniform(0.035, 0.07))
                x += bw + w * rng.uniform(0.0, 0.04)
        # street: pavement along the buildings, road with markings, verge or kerb in front
        span = h - top
        pave = jit(rng, (150, 150, 150), 12) if self.season != "winter" else jit(rng, SNOW, 6)
        self.d.rectangle([0, top, w, top + span * 0.08], fill=pave)
        road_top, road_bottom = top + span * 0.08, top + span * rng.uniform(0.6, 0.85)
        road = jit(rng, (80, 80, 84), 8) if self.season != "winter" else jit(rng, (150, 152, 158), 10)
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
                self.d.ellipse([x - r * 2, y - r * 0.5, x + r * 2, y + r * 0.5], fill=jit(rng, SNOW, 6))
        verge = GROUND.get(self.season)
        self.d.rectangle([0, road_bottom, w, h], fill=jit(rng, verge, 10) if verge else jit(rng, (150, 150, 150), 12))
        if self.season in FOLIAGE:  # street trees on the pavement and the verge: where a city shows its season
            for _ in range(rng.randint(2, 4)):
                depth = rng.choice([0.06, rng.uniform((road_bottom - top) / span, 1.0)])
                self._add_tree(depth, height=self.h * (0.25 + 0.5 * depth) * rng.uniform(0.8, 1.2))
        for _ in range(rng.randint(1, 3)):
            self._add_scenery("pole", rng.choice([0.05, 0.9]), lamp=True)

    def _building(self, x0, x1, y0, y1, night: bool, cell: float) -> None:
        rng = self.rng
        wall = jit(rng, rng.choice(BUILDING_COLORS), 14)
        self.d.rectangle([x0, y0, x1, y1], fill=wall)
        if self.season == "winter" and y0 > 0:
            self.d.rectangle([x0, y0 - cell * 0.2, x1, y0 + cell * 0.15], fill=SNOW)
        glass = jit(rng, (110, 135, 165), 15)
        lit = rng.uniform(0.2, 0.6) if night else 0.0
        win = cell * rng.uniform(0.4, 0.6)
        y = y0 + cell * 0.5
        while y + win < y1 - cell * 0.3:
            x = x0 + cell * 0.4
            while x + win < x1 - cell * 0.2:
                box = [x, y, x + win, y + win * 1.3]
                self.d.rectangle(box, fill=glass)
                if rng.random() < lit:
                    self.lights.append(("rect", box, jit(rng, (255, 214, 130), 20)))
                x += cell
            y += cell * 1.4

    def _field_backdrop(self) -> None:
        rng, w, top = self.rng, self.w, self.horizon
        if self.view == "closeup":
            return
        if rng.random() < 0.5:  # low hills
            col = jit(rng, (120, 130, 150), 12) if self.season != "winter" else jit(rng, (200, 208, 222), 8)
            pts = [(0, top + 1)]
            for k in range(7):
                pts.append((w * k / 6, top - self.h * rng.uniform(0.01, 0.08)))
            pts.append((w, top + 1))
            self.d.polygon(pts, fill=col)
        if self.bare != "water" and rng.random() < 0.4:  # lake band behind the field
            band = (self.h - top) * rng.uniform(0.08, 0.25)
            water = jit(rng, WATER, 12) if self.season != "winter" else jit(rng, (200, 215, 230), 8)
            self.d.rectangle([0, top, w, top + band], fill=water)

    # ---- objects -------------------------------------------------------------------------------------------
    def _objects(self) -> None:
        season, lights, nav, k = self.season, self.lights, self.nav_lights, self.object_scale

        def car(pen: Pen, r: random.Random) -> None:
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
                self._place(name, lambda lo=lo, hi=hi: self._ground_spot(lo * k, hi * k), height_frac, 0.0, paint)
            elif name == "aviation":
                self._place(name, lambda: self._air_spot(0.14 * k, 0.35 * k, 0.2), 0.5, 0.2,
                            lambda pen, r: (draw_helicopter if r.random() < 0.5 else draw_airplane)(pen, r, nav),
                            tilt=0.25)
            else:  # drone
                self._place(name, lambda: self._air_spot(0.06 * k, 0.16 * k, 0.3, low_share=0.3), 0.6, 0.3,
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
        self.sprites.append(_Sprite(base, lambda d: paint(Pen(d, x, y, size, facing, angle), r), box=box,
                                    is_object=True))
        if self.rng.random() < 0.2 and not airborne:  # a bush or rock in front hides a part of it
            depth = clamp((base - self.horizon) / max(1.0, self.h - self.horizon) + 0.02, 0, 1.2)
            ox = x + self.rng.choice((-1, 1)) * size * self.rng.uniform(0.3, 0.5)
            kind = "rock" if self.season == UNKNOWN else self.rng.choice(["bush", "rock"])
            self._add_scenery(kind, depth, size=size * self.rng.uniform(0.35, 0.6), x=ox, occluder=True)

    def _sub_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(32))

    def _ground_spot(self, lo: float, hi: float) -> tuple:
        """(x, base y, size, facing, airborne) for an object on the ground: larger objects stand nearer."""
        rng = self.rng
        frac = loguniform(rng, lo, hi)
        t = (frac - lo) / (hi - lo)
        depth = clamp(0.12 + 0.75 * t + rng.uniform(-0.15, 0.15), 0.04, 1.0)
        base = self.depth_y(depth) + (rng.uniform(0, 0.1) * self.h if rng.random() < 0.1 else 0)
        x = rng.uniform(-0.05, 1.05) * self.w
        return x, base, frac * self.short, rng.choice((-1, 1)), False

    def _air_spot(self, lo: float, hi: float, lift: float, low_share: float = 0.0) -> tuple:
        """Mostly in the sky; without a visible sky (close-up), or for `low_share`, low above the ground."""
        rng = self.rng
        size = loguniform(rng, lo, hi) * self.short
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
                draw_pole(Pen(d, x, base, size), r, glow, lamp)
                lights.extend(("glow", p, size * 0.04, (255, 225, 150)) for p in glow)
        elif kind == "person":
            fn = lambda d: draw_person(Pen(d, x, base, size, r.choice((-1, 1))), r,  # noqa: E731
                                   arms="raised" if r.random() < 0.2 else "down")
        elif kind == "bird":
            fn = lambda d: draw_bird(Pen(d, x, base, size), r)  # noqa: E731
        else:
            shape = {"bush": draw_bush, "rock": draw_rock}[kind]
            fn = lambda d: shape(Pen(d, x, base, size), r, season)  # noqa: E731
        self.sprites.append(_Sprite(base + (1e-3 if occluder else 0.0), fn, box=box))

    def _clutter(self) -> None:
        """Distractors: rocks, bushes, poles, passers-by (who are not dog handlers) and birds."""
        rng = self.rng
        kinds = ["rock", "person", "pole"] + (["bush", "bush"] if self.season != UNKNOWN else [])
        for _ in range(rng.randint(1, 6)):
            kind = rng.choice(kinds)
            depth = rng.random() ** 0.8
            size = None
            if kind == "person":  # a passer-by looks like a dog handler: drawn at the objects' scale
                size = self.short * rng.uniform(0.12, 0.3) * (0.3 + depth) * self.object_scale
            self._add_scenery(kind, depth, size=size, lamp=self.terrain == "city" and rng.random() < 0.5)
        if self.sky_visible and rng.random() < 0.3:
            for _ in range(rng.randint(1, 5)):
                base = rng.uniform(0.05, 0.8) * self.horizon
                self._add_scenery_bird(base)

    def _add_scenery_bird(self, y: float) -> None:
        x, size = self.rng.uniform(0, self.w), self.short * self.rng.uniform(0.015, 0.04)
        r = self._sub_rng()
        self.sprites.append(_Sprite(y, lambda d: draw_bird(Pen(d, x, y, size), r)))

    # ---- light and sky -------------------------------------------------------------------------------------
    def _sky(self) -> Image.Image:
        """The sky is smooth, so its gradient is computed on a coarse grid and upsampled; then sun/moon/stars."""
        rng, w, h = self.rng, self.w, self.h
        cw, ch = max(2, w // 8), max(2, h // 4)
        stops = SKY[self.tod]
        pos = np.array([p for p, _ in stops], dtype=np.float32)
        cols = np.array([jit(rng, c, 14) for _, c in stops], dtype=np.float32)
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
            out = Image.composite(Image.new("RGB", size, jit(rng, (196, 198, 200), 8)), out, mask)
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
