"""Reading and writing label CSVs in the original hackathon dataset's format.

One row per image: a filename column (`Названия` or `filename`), one numeric column per single-choice group
(`Время суток`, `Время года`, `Местность`, or their English ids) and one 0/1 column per yes/no class (`Авиа`, ...).
Files from spreadsheets come `;`- or `,`-separated, in UTF-8 (with or without BOM) or cp1251.

In memory a row's labels are a dict in the same shape as the service's answer:
`{"time_of_day": "day", "season": "winter", "terrain": "forest", "objects": ["drone"]}`.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from phototag.taxonomy import SINGLE, Taxonomy

Labels = dict  # group name -> class id (single-choice) or list of class ids (yes/no group)


class LabelCsvError(ValueError):
    """The CSV cannot be used: a missing column, a malformed or out-of-range value (the message names row and
    column)."""


@dataclass(frozen=True)
class LabeledImage:
    filename: str
    labels: Labels
    line: int  # line number in the CSV, for messages


def _decode(raw: bytes, path: Path) -> str:
    for encoding in ("utf-8-sig", "cp1251"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise LabelCsvError(f"{path}: neither UTF-8 nor cp1251 text")


def _delimiter(header_line: str) -> str:
    return ";" if header_line.count(";") >= header_line.count(",") else ","


def _column_index(header: list[str], names: Iterable[str]) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    return None


def _parse_int(value: str, line: int, column: str) -> int:
    text = value.strip()
    try:
        number = float(text)  # spreadsheets sometimes export 1 as "1.0"
    except ValueError:
        raise LabelCsvError(f"line {line}, column {column!r}: {value!r} is not a number") from None
    if not number.is_integer():
        raise LabelCsvError(f"line {line}, column {column!r}: {value!r} is not a whole number")
    return int(number)


def read_labels_csv(path: str | Path, taxonomy: Taxonomy) -> list[LabeledImage]:
    """Parse a label CSV; LabelCsvError names the row and column of the first bad value."""
    path = Path(path)
    text = _decode(path.read_bytes(), path)
    lines = text.splitlines()
    if not lines:
        raise LabelCsvError(f"{path}: empty file")
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(lines[0]))
    header = [h.strip() for h in next(reader)]

    missing: list[str] = []
    file_col = _column_index(header, taxonomy.filename_columns)
    if file_col is None:
        missing.append(" or ".join(taxonomy.filename_columns))
    columns: dict[str, tuple[int, str]] = {}  # group name or class id -> (index, column name)
    for group in taxonomy.groups:
        wanted = [(group.name, [group.csv_column, group.name])] if group.kind == SINGLE else \
                 [(c.id, [c.csv_column, c.id]) for c in group.classes]
        for key, names in wanted:
            index = _column_index(header, names)
            if index is None:
                missing.append(" or ".join(names))
            else:
                columns[key] = (index, header[index])
    if missing:
        raise LabelCsvError(f"{path}: missing column(s): {', '.join(missing)}; header is {header}")

    rows: list[LabeledImage] = []
    for line, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue  # trailing blank lines from spreadsheets
        if len(cells) < len(header):
            raise LabelCsvError(f"line {line}: {len(cells)} cells, the header has {len(header)}")
        labels: Labels = {}
        for group in taxonomy.groups:
            if group.kind == SINGLE:
                index, name = columns[group.name]
                code = _parse_int(cells[index], line, name)
                try:
                    labels[group.name] = group.classes[group.index_of_code(code)].id
                except ValueError as exc:
                    raise LabelCsvError(f"line {line}, column {name!r}: {exc}") from None
            else:
                present = []
                for cls in group.classes:
                    index, name = columns[cls.id]
                    flag = _parse_int(cells[index], line, name)
                    if flag not in (0, 1):
                        raise LabelCsvError(f"line {line}, column {name!r}: {flag} is not 0 or 1")
                    if flag:
                        present.append(cls.id)
                labels[group.name] = present
        rows.append(LabeledImage(filename=cells[file_col].strip(), labels=labels, line=line))
    return rows


def labels_to_row(filename: str, labels: Labels, taxonomy: Taxonomy) -> list[str]:
    """One CSV row, in `taxonomy.csv_columns()` order, with the original dataset's numeric codes."""
    row = [filename]
    for group in taxonomy.groups:
        if group.kind == SINGLE:
            chosen = labels[group.name]
            row.append(str(next(c.code for c in group.classes if c.id == chosen)))
        else:
            present = set(labels.get(group.name, ()))
            row.extend("1" if c.id in present else "0" for c in group.classes)
    return row


def write_labels_csv(path: str | Path, items: Iterable[tuple[str, Labels]], taxonomy: Taxonomy) -> None:
    """Write (filename, labels) pairs as a `;`-separated UTF-8 CSV the reader above (and spreadsheets) accept."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=";", lineterminator="\n")
        writer.writerow(taxonomy.csv_columns())
        for filename, labels in items:
            writer.writerow(labels_to_row(filename, labels, taxonomy))


def split_missing(rows: list[LabeledImage], image_dir: Path) -> tuple[list[LabeledImage], dict[str, str]]:
    """The rows whose file exists in image_dir, and {filename: why} for the others (named by their CSV line)."""
    present, skipped = [], {}
    for row in rows:
        if (Path(image_dir) / row.filename).is_file():
            present.append(row)
        else:
            skipped[row.filename] = f"missing file (CSV line {row.line})"
    return present, skipped
