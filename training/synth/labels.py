"""Label statistics and the labels of one synthetic scene, drawn from the taxonomy."""
from __future__ import annotations

import random
from collections.abc import Sequence

from phototag.taxonomy import SINGLE, UNKNOWN, Taxonomy

# ---- label statistics ---------------------------------------------------------------------------------------
UNKNOWN_SHARE = 0.12  # share of 'unknown' in every single-choice head
OBJECT_RATE = 0.25  # each object independently; 0.75 ** 8 ~ 10 % of images without any object
SEED_STRIDE = 1_000_003  # per-image stream: random.Random(seed * SEED_STRIDE + index)

# What the renderer knows how to draw, per taxonomy group; generate_dataset refuses other classes.
TIMES = ("unknown", "day", "night", "twilight")
SEASONS = ("unknown", "winter", "spring", "summer", "autumn")
TERRAINS = ("unknown", "forest", "city")
OBJECTS = ("aviation", "cars", "drone", "diver", "dog_handler", "horses", "hugs", "sherp")
DRAWABLE = {"time_of_day": TIMES, "season": SEASONS, "terrain": TERRAINS, "objects": OBJECTS}


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
