"""A tagging run's folder (OUT_DIR): what the folder tagger writes there and the other tools read back.

    tags.jsonl        one line per photo: the server's answer, or why it failed (the latest line of a file wins)
    tags.csv          the tagged photos in the original CSV format
    corrections.csv   the photos a volunteer reviewed in the gallery, in the same format: their tags win
    index.sqlite      the search index and the sidecars' state (client.search_index); rebuilt from the above

Kept apart from client.tag_folder and client.gallery so that each reads the folder without importing the other.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from phototag.labels_csv import Labels, read_labels_csv, write_labels_csv
from phototag.taxonomy import SINGLE, Taxonomy

JSONL_NAME, CSV_NAME, CORRECTIONS_NAME, INDEX_NAME = "tags.jsonl", "tags.csv", "corrections.csv", "index.sqlite"


def load_records(path: Path) -> dict[str, dict]:
    """file -> its latest record in tags.jsonl; a line cut short by a killed run is ignored."""
    records: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("file"), str):
                records[record["file"]] = record
    return records


def response_labels(record: dict, taxonomy: Taxonomy) -> Labels:
    """The labels of a tag answer in the shape phototag.labels_csv reads and writes."""
    return {g.name: record[g.name]["label"] if g.kind == SINGLE else list(record[g.name]["labels"])
            for g in taxonomy.groups}


def replace_file(path: Path, write) -> None:
    """Call write(temporary path), then rename it over path: a reader or a kill never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_results(out_dir: Path, records: dict[str, dict], taxonomy: Taxonomy) -> None:
    """Rewrite tags.jsonl (one line per file) and tags.csv, each replaced whole."""
    ordered = [records[name] for name in sorted(records)]
    replace_file(out_dir / JSONL_NAME, lambda tmp: tmp.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered), encoding="utf-8"))
    replace_file(out_dir / CSV_NAME, lambda tmp: write_labels_csv(
        tmp, [(r["file"], response_labels(r, taxonomy)) for r in ordered if r.get("status") == "ok"], taxonomy))


# ---- corrections: a volunteer's decision outranks any model's --------------------------------------------------
@dataclass(frozen=True)
class Corrections:
    labels: dict[str, Labels]  # file -> the reviewed labels
    unknown: list[str]  # files named in a corrections CSV that this run has no answer for


def read_corrections(paths: Iterable[Path], taxonomy: Taxonomy) -> dict[str, Labels]:
    """file -> reviewed labels from corrections CSVs, a later row for a file replacing an earlier one.
    LabelCsvError names a bad row."""
    labels: dict[str, Labels] = {}
    for path in paths:
        for row in read_labels_csv(path, taxonomy):
            labels[row.filename] = row.labels
    return labels


def load_corrections(out_dir: Path, extra: Iterable[Path], records: dict[str, dict], taxonomy: Taxonomy,
                     *, save: bool = True) -> Corrections:
    """OUT/corrections.csv, then each `extra` CSV (the gallery's downloads) on top. With `save`, the merge goes
    back to OUT/corrections.csv, so that a later run without --corrections still knows what a human decided."""
    kept = out_dir / CORRECTIONS_NAME
    extra = [Path(p) for p in extra]
    labels = read_corrections(([kept] if kept.is_file() else []) + extra, taxonomy)
    if save and extra:
        replace_file(kept, lambda tmp: write_labels_csv(tmp, sorted(labels.items()), taxonomy))
    unknown = sorted(name for name in labels if records.get(name, {}).get("status") != "ok")
    return Corrections({name: value for name, value in labels.items() if name not in unknown}, unknown)
