"""XMP sidecars for a whole tagged folder (client.tag_folder --xmp): where each one goes, which are already
current, and which were left alone and why. Writing one sidecar is client.xmp's part."""
from __future__ import annotations

import hashlib
import os
import sqlite3
from collections import defaultdict
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from client.xmp import KEPT_REVIEWED, ROOTS, SidecarError, sidecar_tags, temporary_path, write_sidecar
from phototag.taxonomy import Taxonomy

# digiKam, darktable and Immich look for photo.jpg.xmp; Lightroom writes photo.xmp (Immich reads both).
NAMINGS = ("photo.jpg.xmp", "photo.xmp")
LANGS = tuple(ROOTS)
SHOWN_PROBLEMS = 10


class SidecarFolderError(Exception):
    """Sidecars cannot be written where they should go; the message names the folder."""


@dataclass(frozen=True)
class SidecarOptions:
    lang: str = "en"
    naming: str = NAMINGS[0]
    xmp_dir: Path | None = None  # a mirror of the photo folder's tree, for photo folders that are read-only


def sidecar_path(root: Path, file: str, options: SidecarOptions) -> Path:
    """The sidecar of the photo `file` (relative to root), beside it or at the same place under --xmp-dir."""
    photo = (options.xmp_dir or root) / file
    return photo.with_name(photo.name + ".xmp") if options.naming == NAMINGS[0] else photo.with_suffix(".xmp")


def check_writable(root: Path, files: list[str], options: SidecarOptions) -> None:
    """SidecarFolderError naming the first folder where sidecars cannot be written, before any photo is sent."""
    if options.xmp_dir:
        try:
            options.xmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SidecarFolderError(f"cannot create the sidecar folder {options.xmp_dir}: {exc.strerror}") from None
        folders = {options.xmp_dir}  # its sub-folders are made as photos need them
    else:
        folders = {sidecar_path(root, file, options).parent for file in files}
    read_only = sorted(folder for folder in folders if not os.access(folder, os.W_OK))
    if read_only:
        more = f" (and {len(read_only) - 1} more folders)" if len(read_only) > 1 else ""
        hint = "choose a writable one" if options.xmp_dir else "pass --xmp-dir DIR to write them under another folder"
        raise SidecarFolderError(f"cannot write sidecars in {read_only[0]}{more}: the folder is read-only; {hint}")


@dataclass
class SidecarReport:
    written: int = 0
    current: int = 0  # unchanged since the run that wrote them
    kept_reviewed: int = 0  # a volunteer's tags were in them, and this run had only the model's
    photo_gone: int = 0  # tagged once, no longer in the folder: no sidecar without its photo
    problems: dict[str, str] = field(default_factory=dict)  # sidecar path -> why it was left as it was

    def __str__(self) -> str:
        line = (f"sidecars:     {self.written} written, {self.current} up to date, {self.kept_reviewed} kept "
                f"(reviewed by a volunteer), {len(self.problems)} left as they were"
                + (f", {self.photo_gone} photos no longer there" if self.photo_gone else ""))
        shown = sorted(self.problems.items())[:SHOWN_PROBLEMS]
        lines = [line] + [f"  left as it was: {path}: {why}" for path, why in shown]
        if len(self.problems) > SHOWN_PROBLEMS:
            lines.append(f"  ... and {len(self.problems) - SHOWN_PROBLEMS} more")
        return "\n".join(lines)


STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS sidecars (file TEXT PRIMARY KEY, path TEXT NOT NULL, digest TEXT NOT NULL,
                                     mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL);
"""


def write_sidecars(root: Path, records: dict[str, dict], corrections: dict[str, dict], taxonomy: Taxonomy,
                   options: SidecarOptions, state: sqlite3.Connection, progress: bool = False) -> SidecarReport:
    """Create or merge the sidecar of every tagged photo; corrections (file -> labels) are written as reviewed.

    `state` remembers what each sidecar got and its size and time after the write, so that a rerun rewrites only
    the sidecars whose tags changed or that someone else has touched since (a merge keeps their change)."""
    state.executescript(STATE_SCHEMA)
    report = SidecarReport()
    files = sorted(name for name, record in records.items() if record.get("status") == "ok")
    paths = {file: sidecar_path(root, file, options) for file in files}
    sharing = defaultdict(list)
    for file, path in paths.items():
        sharing[path].append(file)
    known = {row[0]: row[1:] for row in state.execute("SELECT file, path, digest, mtime_ns, size FROM sidecars")}
    for file in tqdm(files, unit="sidecar", desc="sidecars", disable=not progress, dynamic_ncols=True):
        path = paths[file]
        if not (root / file).is_file():
            report.photo_gone += 1
            continue
        with suppress(OSError):  # what a run killed mid-write left beside the sidecar; the write reports the rest
            temporary_path(path).unlink()
        if len(sharing[path]) > 1:  # photo.xmp naming: IMG_1.jpg and IMG_1.png would overwrite each other
            report.problems[str(path)] = (f"shared by {' and '.join(sharing[path])}; written for none of them "
                                          f"(--xmp-name {NAMINGS[0]} gives each its own)")
            continue
        tags = sidecar_tags(records[file], taxonomy, options.lang, corrections.get(file))
        digest = hashlib.sha1(f"{tags.digest()}\0{path}".encode()).hexdigest()
        previous = known.get(file)
        if previous and previous[:2] == (str(path), digest):
            try:
                stat = path.stat()
            except FileNotFoundError:
                stat = None
            if stat and (stat.st_mtime_ns, stat.st_size) == previous[2:]:
                report.current += 1
                continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Under --xmp-dir, a sidecar beside the photo is carried over, so the mirror can be copied back later.
            beside = sidecar_path(root, file, SidecarOptions(naming=options.naming)) if options.xmp_dir else None
            outcome = write_sidecar(path, tags, start_from=beside)
            stat = path.stat()
        except SidecarError as exc:
            report.problems[str(path)] = str(exc)
            continue
        except OSError as exc:
            report.problems[str(path)] = f"cannot write it: {exc.strerror or exc}"
            continue
        if outcome == KEPT_REVIEWED:
            report.kept_reviewed += 1
        else:
            report.written += 1
        state.execute("INSERT OR REPLACE INTO sidecars VALUES (?, ?, ?, ?, ?)",
                      (file, str(path), digest, stat.st_mtime_ns, stat.st_size))
        if (report.written + report.kept_reviewed) % 1000 == 0:
            state.commit()  # a killed pass keeps most of what it did; the rest is merged again, to the same result
    state.commit()
    return report
