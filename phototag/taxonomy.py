"""The tag taxonomy: heads, logit layout, tag names, Russian display names and CSV columns.

Everything that depends on the number or order of logits reads it from a `Taxonomy`, which is loaded from
`taxonomy.json` (the packaged default) or from the copy that training writes next to the weights, which also
carries the per-object decision thresholds tuned on the validation split.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_TAXONOMY_PATH = Path(__file__).with_name("taxonomy.json")
SINGLE = "single"  # exactly one class is true: softmax over the group's logits
MULTI = "multi"  # each class is an independent yes/no: one sigmoid logit each
UNKNOWN = "unknown"  # a single-choice value that is not worth indexing as a tag
DEFAULT_THRESHOLD = 0.5


class TaxonomyError(ValueError):
    """The taxonomy file is malformed or does not fit the model it is used with."""


@dataclass(frozen=True)
class TagClass:
    id: str
    display_ru: str
    code: int | None = None  # numeric value in a single-choice CSV column
    csv_column: str | None = None  # own 0/1 CSV column of a yes/no class
    threshold: float = DEFAULT_THRESHOLD  # yes/no decision threshold on the sigmoid score


@dataclass(frozen=True)
class Group:
    name: str
    kind: str
    display_ru: str
    classes: tuple[TagClass, ...]
    start: int  # index of the group's first logit
    csv_column: str | None = None

    @property
    def size(self) -> int:
        return len(self.classes)

    @property
    def logits(self) -> slice:
        return slice(self.start, self.start + self.size)

    @property
    def class_ids(self) -> list[str]:
        return [c.id for c in self.classes]

    def index_of_code(self, code: int) -> int:
        """Position of a single-choice CSV code within the group; TaxonomyError if there is none."""
        for index, cls in enumerate(self.classes):
            if cls.code == code:
                return index
        valid = ", ".join(f"{c.code}={c.id}" for c in self.classes)
        raise TaxonomyError(f"{self.name}: code {code} is not one of {valid}")


@dataclass(frozen=True)
class Taxonomy:
    name: str
    version: int
    groups: tuple[Group, ...]
    filename_columns: tuple[str, ...] = field(default=("filename",))

    # ---- layout -------------------------------------------------------------------------------------------
    @property
    def num_logits(self) -> int:
        return sum(g.size for g in self.groups)

    @property
    def single_groups(self) -> list[Group]:
        return [g for g in self.groups if g.kind == SINGLE]

    @property
    def multi_groups(self) -> list[Group]:
        return [g for g in self.groups if g.kind == MULTI]

    @property
    def head_sizes(self) -> dict[str, int]:
        """Output width of each head, in logit order: what the model is built from."""
        return {g.name: g.size for g in self.groups}

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def csv_columns(self) -> list[str]:
        """Header of the original dataset's CSV: filename, one column per single-choice group, one per yes/no class."""
        columns = [self.filename_columns[0]]
        for g in self.groups:
            if g.kind == SINGLE:
                columns.append(g.csv_column)
            else:
                columns.extend(c.csv_column for c in g.classes)
        return columns

    def thresholds(self) -> dict[str, float]:
        return {c.id: c.threshold for g in self.multi_groups for c in g.classes}

    def with_thresholds(self, thresholds: Mapping[str, float]) -> Taxonomy:
        """A copy whose yes/no classes use the given thresholds (classes not named keep theirs)."""
        unknown = set(thresholds) - set(self.thresholds())
        if unknown:
            raise TaxonomyError(f"thresholds for classes that are not yes/no classes: {sorted(unknown)}")
        groups = tuple(
            replace(g, classes=tuple(replace(c, threshold=float(thresholds.get(c.id, c.threshold))) for c in g.classes))
            if g.kind == MULTI
            else g
            for g in self.groups
        )
        return replace(self, groups=groups)

    def check_model_outputs(self, num_outputs: int) -> None:
        if num_outputs != self.num_logits:
            raise TaxonomyError(
                f"the model has {num_outputs} outputs but the taxonomy describes {self.num_logits} logits "
                f"({', '.join(f'{g.name}={g.size}' for g in self.groups)})"
            )

    # ---- (de)serialisation --------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Taxonomy:
        try:
            raw_groups = data["groups"]
        except (KeyError, TypeError) as exc:
            raise TaxonomyError("taxonomy has no 'groups' list") from exc
        groups, start, seen = [], 0, set()
        for raw in raw_groups:
            group = _parse_group(raw, start)
            if group.name in seen:
                raise TaxonomyError(f"group {group.name!r} appears twice")
            seen.add(group.name)
            groups.append(group)
            start += group.size
        if not groups:
            raise TaxonomyError("taxonomy has no groups")
        filename_columns = tuple(data.get("filename_columns") or ("filename",))
        return cls(name=str(data.get("name", "taxonomy")), version=int(data.get("version", 1)),
                   groups=tuple(groups), filename_columns=filename_columns)

    def to_dict(self) -> dict[str, Any]:
        groups = []
        for g in self.groups:
            classes = []
            for c in g.classes:
                entry: dict[str, Any] = {"id": c.id}
                if g.kind == SINGLE:
                    entry["code"] = c.code
                else:
                    entry["csv_column"] = c.csv_column
                    entry["threshold"] = round(c.threshold, 6)
                entry["display_ru"] = c.display_ru
                classes.append(entry)
            raw: dict[str, Any] = {"name": g.name, "kind": g.kind}
            if g.kind == SINGLE:
                raw["csv_column"] = g.csv_column
            raw.update({"display_ru": g.display_ru, "logits": [g.start, g.start + g.size], "classes": classes})
            groups.append(raw)
        return {"name": self.name, "version": self.version, "num_logits": self.num_logits,
                "filename_columns": list(self.filename_columns), "groups": groups}

    @classmethod
    def load(cls, path: str | Path = DEFAULT_TAXONOMY_PATH) -> Taxonomy:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TaxonomyError(f"cannot read taxonomy {path}: {exc}") from exc
        taxonomy = cls.from_dict(data)
        if "num_logits" in data and int(data["num_logits"]) != taxonomy.num_logits:
            raise TaxonomyError(f"{path}: num_logits says {data['num_logits']}, groups give {taxonomy.num_logits}")
        return taxonomy

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _parse_group(raw: Mapping[str, Any], start: int) -> Group:
    name = raw.get("name")
    kind = raw.get("kind")
    if not name or kind not in (SINGLE, MULTI):
        raise TaxonomyError(f"group {raw.get('name')!r}: needs a name and kind 'single' or 'multi'")
    raw_classes = raw.get("classes") or []
    if len(raw_classes) < (2 if kind == SINGLE else 1):
        raise TaxonomyError(f"group {name!r}: too few classes")
    classes = []
    for rc in raw_classes:
        if "id" not in rc:
            raise TaxonomyError(f"group {name!r}: a class has no id")
        if kind == SINGLE and not isinstance(rc.get("code"), int):
            raise TaxonomyError(f"group {name!r}, class {rc['id']!r}: single-choice classes need an integer code")
        if kind == MULTI and not rc.get("csv_column"):
            raise TaxonomyError(f"group {name!r}, class {rc['id']!r}: yes/no classes need a csv_column")
        threshold = float(rc.get("threshold", DEFAULT_THRESHOLD))
        if not 0.0 < threshold < 1.0:
            raise TaxonomyError(f"group {name!r}, class {rc['id']!r}: threshold {threshold} is not in (0, 1)")
        classes.append(TagClass(id=rc["id"], display_ru=rc.get("display_ru", rc["id"]), code=rc.get("code"),
                                csv_column=rc.get("csv_column"), threshold=threshold))
    ids = [c.id for c in classes]
    if len(set(ids)) != len(ids):
        raise TaxonomyError(f"group {name!r}: duplicate class ids")
    if kind == SINGLE:
        if not raw.get("csv_column"):
            raise TaxonomyError(f"group {name!r}: single-choice groups need a csv_column")
        codes = [c.code for c in classes]
        if len(set(codes)) != len(codes):
            raise TaxonomyError(f"group {name!r}: duplicate codes")
    return Group(name=name, kind=kind, display_ru=raw.get("display_ru", name), classes=tuple(classes),
                 start=start, csv_column=raw.get("csv_column"))


# ---- logits -> tags (pure) ---------------------------------------------------------------------------------
def _softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _sigmoid(value: float) -> float:
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    e = math.exp(value)
    return e / (1.0 + e)


def logits_to_tags(logits: Iterable[float], taxonomy: Taxonomy, model_version: str, digits: int = 4) -> dict:
    """Map one image's logit vector to the service's grouped-tag JSON.

    Single-choice groups give {"label", "score", "scores"} from a softmax over their slice; yes/no groups give
    {"labels", "scores"} with every class whose sigmoid score reaches its threshold. `tags` is the flat list a
    photobank indexes: each single-choice label except `unknown`, then the yes/no labels.
    """
    values = [float(v) for v in logits]
    taxonomy.check_model_outputs(len(values))
    result: dict[str, Any] = {}
    tags: list[str] = []
    for group in taxonomy.groups:
        chunk = values[group.logits]
        if group.kind == SINGLE:
            probs = _softmax(chunk)
            best = max(range(len(probs)), key=probs.__getitem__)
            label = group.classes[best].id
            result[group.name] = {
                "label": label,
                "score": round(probs[best], digits),
                "scores": {c.id: round(p, digits) for c, p in zip(group.classes, probs)},
            }
            if label != UNKNOWN:
                tags.append(label)
        else:
            probs = [_sigmoid(v) for v in chunk]
            labels = [c.id for c, p in zip(group.classes, probs) if p >= c.threshold]
            scores = {c.id: round(p, digits) for c, p in zip(group.classes, probs)}
            result[group.name] = {"labels": labels, "scores": scores}
            tags.extend(labels)
    result["tags"] = tags
    result["model_version"] = str(model_version)
    return result
