"""The search index of a tagging run, OUT/index.sqlite, kept current from tags.jsonl and corrections.csv.

    photos  one row per photo: file, status, model version, reviewed, confidence (the weakest single-choice winner)
    tags    one row per tag a photo has, keyed (tag, photo), with the model's score for it (1.0 for the tags a
            volunteer reviewed): "which photos are tagged night" is one range of the key, "is this photo tagged
            dog_handler" one lookup, so a query costs its matches, not the folder's size

Tags are keyed group/class (time_of_day/night), since `unknown` is a class of three groups. The folder tagger
syncs the index after every run, and the search syncs it first if tags.jsonl or corrections.csv changed since:
a sync rewrites only the photos whose record or correction changed (each row keeps a digest of both), so it
resumes like the tagging does and an unchanged folder costs two stat calls.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from client.results import CORRECTIONS_NAME, INDEX_NAME, JSONL_NAME, read_corrections
from phototag.taxonomy import SINGLE, Taxonomy

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS photos (id INTEGER PRIMARY KEY, file TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
                                   model_version TEXT NOT NULL, reviewed INTEGER NOT NULL, confidence REAL,
                                   digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tags (tag TEXT NOT NULL, photo INTEGER NOT NULL, score REAL NOT NULL,
                                 PRIMARY KEY (tag, photo)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_by_photo ON tags (photo);
"""


class QueryError(ValueError):
    """A search word that is not a tag, or names several."""


def connect(out_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(Path(out_dir) / INDEX_NAME, timeout=30)
    # WAL: a search can read while a tagging run writes. NORMAL: a power cut can lose the last sync, which the
    # next sync redoes from tags.jsonl, but never corrupts the file.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


# ---- from a record to rows ----------------------------------------------------------------------------------------
def tag_key(group: str, cls: str) -> str:
    return f"{group}/{cls}"


def photo_tags(record: dict, labels: dict | None, taxonomy: Taxonomy) -> tuple[float, list[tuple[str, float]]]:
    """(confidence, [(tag key, score)]) of a tagged photo; `labels` are a volunteer's, which count as certain."""
    reviewed = labels is not None
    tags, winners = [], []
    for group in taxonomy.groups:
        part = record[group.name]
        if reviewed:
            chosen = [labels[group.name]] if group.kind == SINGLE else labels[group.name]
        else:
            chosen = [part["label"]] if group.kind == SINGLE else part["labels"]
        for cls in chosen:
            score = 1.0 if reviewed else float(part["scores"][cls])
            tags.append((tag_key(group.name, cls), score))
            if group.kind == SINGLE:
                winners.append(score)
    return min(winners, default=1.0), tags


def _stamp(out_dir: Path) -> str:
    """Size and time of the files an index is built from: equal stamps, nothing to sync."""
    parts = [SCHEMA_VERSION]
    for name in (JSONL_NAME, CORRECTIONS_NAME):
        try:
            stat = (out_dir / name).stat()
            parts.append(f"{stat.st_size}:{stat.st_mtime_ns}")
        except FileNotFoundError:
            parts.append("-")
    return " ".join(parts)


@dataclass(frozen=True)
class SyncResult:
    changed: int  # photos added or rewritten
    removed: int
    up_to_date: bool  # nothing was read: the sources were as at the last sync


_FILE_PREFIX = '{"file": "'


def _file_of(line: str) -> str | None:
    """The file a tags.jsonl line is about, without parsing the whole answer (the tagger writes "file" first)."""
    if line.startswith(_FILE_PREFIX):
        try:
            return json.decoder.scanstring(line, len(_FILE_PREFIX))[0]
        except ValueError:
            return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("file") if isinstance(record, dict) and isinstance(record.get("file"), str) else None


def latest_lines(out_dir: Path) -> dict[str, str]:
    """file -> its latest line in tags.jsonl, as text. The tagger appends whole lines, so only the last line can
    be cut short (a run killed mid-write, or one still writing): without its newline it is not read."""
    path = Path(out_dir) / JSONL_NAME
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    lines = text.split("\n")[:-1]  # the part after the last newline: empty, or a torn line
    latest = {}
    for line in lines:
        file = _file_of(line)
        if file is not None:
            latest[file] = line
    return latest


def sync(conn: sqlite3.Connection, out_dir: Path, taxonomy: Taxonomy, *, root: Path | None = None) -> SyncResult:
    """Bring the index up to date with OUT/tags.jsonl and OUT/corrections.csv. Only the lines of photos whose
    answer or correction changed are parsed. `root`, the folder that was tagged, is remembered so that a search
    can name the photos by their full path. LabelCsvError for a corrections.csv that cannot be read."""
    out_dir = Path(out_dir)
    if root is not None:
        _set_meta(conn, "root", str(Path(root).resolve()))
        conn.commit()
    stamp = _stamp(out_dir)
    if get_meta(conn, "source") == stamp:
        return SyncResult(0, 0, True)
    kept = out_dir / CORRECTIONS_NAME
    corrections = read_corrections([kept] if kept.is_file() else [], taxonomy)
    known = {file: (photo_id, digest) for photo_id, file, digest in conn.execute("SELECT id, file, digest FROM photos")}
    next_id = max((photo_id for photo_id, _ in known.values()), default=0) + 1
    photo_rows, tag_rows, stale = [], [], []
    for file, line in latest_lines(out_dir).items():
        correction = corrections.get(file)
        source = line if correction is None else line + json.dumps(correction, sort_keys=True)
        digest = hashlib.sha1(source.encode("utf-8")).hexdigest()
        photo_id, old_digest = known.pop(file, (None, None))
        if old_digest == digest:
            continue
        try:
            record = json.loads(line)
            status = "ok" if record.get("status") == "ok" else "failed"
            confidence, tags = photo_tags(record, correction, taxonomy) if status == "ok" else (None, [])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line that is not a whole answer: the photo keeps the row it had, if any
        if photo_id is None:
            photo_id, next_id = next_id, next_id + 1
        else:
            stale.append((photo_id,))
        photo_rows.append((photo_id, file, status, str(record.get("model_version", "")), int(correction is not None),
                           confidence, digest))
        tag_rows.extend((key, photo_id, score) for key, score in tags)
    gone = [(photo_id,) for photo_id, _ in known.values()]  # no longer in tags.jsonl
    with conn:  # one transaction: a killed sync leaves the index as it was before it
        conn.executemany("DELETE FROM tags WHERE photo = ?", stale + gone)
        conn.executemany("DELETE FROM photos WHERE id = ?", gone)
        conn.executemany("INSERT OR REPLACE INTO photos VALUES (?, ?, ?, ?, ?, ?, ?)", photo_rows)
        conn.executemany("INSERT INTO tags VALUES (?, ?, ?)", tag_rows)
        _set_meta(conn, "source", stamp)
    return SyncResult(len(photo_rows), len(gone), False)


# ---- words -> tag keys ----------------------------------------------------------------------------------------------
def _normal(word: str) -> str:
    """Case, `_`, `-` and repeated spaces do not matter: dog_handler, "dog handler", Dog-Handler are one tag."""
    return "/".join(" ".join(part.replace("_", " ").replace("-", " ").split()) for part in word.casefold().split("/"))


@cache
def _names(taxonomy: Taxonomy) -> dict[str, frozenset[str]]:
    names: dict[str, set[str]] = {}
    for group in taxonomy.groups:
        for cls in group.classes:
            for name in (cls.id, cls.display_ru, f"{group.name}/{cls.id}", f"{group.display_ru}/{cls.display_ru}"):
                names.setdefault(_normal(name), set()).add(tag_key(group.name, cls.id))
    return {name: frozenset(keys) for name, keys in names.items()}


def resolve(word: str, taxonomy: Taxonomy) -> str:
    """The tag key an English id or a Russian name stands for (either may be prefixed with its group and /)."""
    keys = _names(taxonomy).get(_normal(word))
    if not keys:
        known = ", ".join(c.id for g in taxonomy.groups for c in g.classes if c.id != "unknown")
        raise QueryError(f"{word!r} is not a tag; the tags are {known} (or their Russian names)")
    if len(keys) > 1:
        raise QueryError(f"{word!r} is a value of several groups; write one of {', '.join(sorted(keys))}")
    return next(iter(keys))


# ---- queries --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    file: str
    score: float  # the weakest of the asked tags' scores (with only exclusions: the photo's confidence)
    reviewed: bool


def query(conn: sqlite3.Connection, include: list[str], exclude: list[str] = (), min_score: float = 0.0) -> list[Hit]:
    """Tagged photos with every `include` tag at min_score or more and none of the `exclude` tags, best first."""
    include, exclude = list(dict.fromkeys(include)), list(dict.fromkeys(exclude))
    params: list = []
    marks = ", ".join("?" * len(exclude))
    if not include:
        # Every photo is a candidate: the excluded photos are listed once (NOT IN), not looked up per photo.
        without = f" AND p.id NOT IN (SELECT photo FROM tags WHERE tag IN ({marks}))" if exclude else ""
        sql = (f"SELECT p.file, p.confidence, p.reviewed FROM photos p WHERE p.status = 'ok' "
               f"AND p.confidence >= ?{without} ORDER BY 2 DESC, p.file")
        params = [min_score, *exclude]
    else:
        # The rarest tag drives the join (CROSS JOIN keeps SQLite to this order); each other tag is then one
        # primary-key lookup per candidate photo.
        counts = {key: conn.execute("SELECT COUNT(*) FROM tags WHERE tag = ?", (key,)).fetchone()[0]
                  for key in include}
        include.sort(key=counts.__getitem__)
        tables = " CROSS JOIN ".join(f"tags t{i}" for i in range(len(include)))
        where = ["t0.tag = ?", "t0.score >= ?"]
        for i in range(1, len(include)):
            where += [f"t{i}.tag = ?", f"t{i}.photo = t0.photo", f"t{i}.score >= ?"]
        for key in include:
            params += [key, min_score]
        # Few candidates: each is checked against the excluded tags by primary-key lookups.
        without = f" AND NOT EXISTS (SELECT 1 FROM tags x WHERE x.tag IN ({marks}) AND x.photo = p.id)" \
            if exclude else ""
        score = "t0.score" if len(include) == 1 else f"MIN({', '.join(f't{i}.score' for i in range(len(include)))})"
        sql = (f"SELECT p.file, {score}, p.reviewed FROM {tables} CROSS JOIN photos p "
               f"WHERE {' AND '.join(where)} AND p.id = t0.photo{without} ORDER BY 2 DESC, p.file")
        params += exclude
    return [Hit(file, float(score), bool(reviewed)) for file, score, reviewed in conn.execute(sql, params)]


def tag_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT tag, COUNT(*) FROM tags GROUP BY tag"))
