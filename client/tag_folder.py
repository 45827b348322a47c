"""Tag every photo in a folder tree through the running TorchServe, resumably.

    python -m client.tag_folder /media/card/DCIM --out results/card1              # REST, 4 at a time
    python -m client.tag_folder photos --out results/photos --grpc --concurrency 8

    python -m client.tag_folder photos --out results/photos --xmp --lang ru        # + XMP sidecars for photo managers

OUT_DIR receives `tags.jsonl` (one line per photo: the server's answer, or why it failed), `tags.csv` (the
original dataset's CSV format, one row per tagged photo), the search index `index.sqlite` (client.search) and the
review page `index.html` (client.gallery). Running the same command again only sends the photos that are not
tagged yet: an interrupted run resumes, and failed photos are tried again. With --xmp every tagged photo gets an
XMP sidecar (client.xmp), merged into the one it may already have; --corrections makes a volunteer's reviewed
tags win over the model's, there and in the index.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import requests
from tqdm import tqdm

from client import search_index
from client.auth import DEFAULT_KEY_FILE, KeyFileError, read_key
from client.gallery import GalleryResult, write_gallery
from client.rest import DEFAULT_INFERENCE_URL, ServiceError, tag_image
from client.results import (
    CORRECTIONS_NAME,
    CSV_NAME,
    INDEX_NAME,
    JSONL_NAME,
    load_corrections,
    load_records,
    save_results,
)
from client.sidecars import (
    LANGS,
    NAMINGS,
    SidecarFolderError,
    SidecarOptions,
    SidecarReport,
    check_writable,
    write_sidecars,
)
from phototag.labels_csv import LabelCsvError, read_labels_csv
from phototag.payload import BIG_PHOTOS_CHOICES
from phototag.taxonomy import Taxonomy

IMAGE_EXTENSIONS = frozenset(".jpg .jpeg .png .webp .bmp .tif .tiff .gif .heic .heif .avif".split())
TRANSIENT_HTTP = frozenset({429, 502, 503, 504, 507})
TRANSIENT_GRPC = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            grpc.StatusCode.DEADLINE_EXCEEDED})
# After this many photos in a row fail for a transient reason even after all retries, the server is down or the
# key has expired: stop instead of spending minutes of backoff on every remaining photo.
GIVE_UP_AFTER = 10
DEFAULT_GRPC_TARGET = "127.0.0.1:7070"  # as client.grpc_client, which is only imported for --grpc (generated stubs)

Tagger = Callable[[bytes], dict]


@dataclass(frozen=True)
class Failure:
    error: str
    reason: str  # the handler's slug (not_an_image, truncated, ...) or ours (http_503, connection, ...)
    http_status: int | None = None
    transient: bool = False


@dataclass
class Summary:
    tagged: int = 0
    resumed: int = 0  # already tagged by an earlier run into the same OUT_DIR
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    failed: Counter = field(default_factory=Counter)  # reason -> count
    gave_up: str | None = None  # why the run stopped early, if it did

    def __str__(self) -> str:
        def by_reason(counter: Counter) -> str:
            return f" ({', '.join(f'{reason}: {n}' for reason, n in sorted(counter.items()))})" if counter else ""

        lines = [f"tagged:       {self.tagged}",
                 f"already done: {self.resumed} (resumed)",
                 f"skipped:      {sum(self.skipped.values())}{by_reason(self.skipped)}",
                 f"failed:       {sum(self.failed.values())}{by_reason(self.failed)}"]
        if self.gave_up:
            lines.append(f"stopped early: {self.gave_up}; the remaining photos were not sent, re-run to resume")
        return "\n".join(lines)


# ---- taggers: bytes -> tag JSON ------------------------------------------------------------------------------------
def rest_tagger(url: str = DEFAULT_INFERENCE_URL, key_file: str | Path = DEFAULT_KEY_FILE, model: str = "tagger",
                version: str | None = None, big_photos: str = BIG_PHOTOS_CHOICES[0]) -> Tagger:
    """REST tagging with one keep-alive session per thread (a requests.Session is not meant to be shared)."""
    local = threading.local()

    def tag(data: bytes) -> dict:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return tag_image(data, model=model, version=version, url=url, key_file=key_file, session=local.session,
                         big_photos=big_photos)

    return tag


def failure_of(exc: Exception) -> Failure:
    """What a tagger's exception means for this photo, and whether trying again can help."""
    if isinstance(exc, ServiceError):
        if exc.status == 401 or "InvalidKeyException" in exc.body:
            # rest.call already re-read the key file once; the file may be mid-rotation, so back off and re-read.
            return Failure(exc.body[:500], "auth_refused", exc.status, transient=True)
        try:
            payload = json.loads(exc.body)
        except ValueError:
            payload = None
        transient = exc.status in TRANSIENT_HTTP
        if isinstance(payload, dict) and payload.get("reason"):  # the handler's {"error", "reason", "code"}
            return Failure(str(payload.get("error", "")), str(payload["reason"]), exc.status, transient)
        return Failure(exc.body[:500], f"http_{exc.status}", exc.status, transient)
    if isinstance(exc, requests.Timeout):
        return Failure(str(exc), "timeout", transient=True)
    if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        return Failure(str(exc), "connection", transient=True)
    if isinstance(exc, grpc.RpcError):
        code = exc.code()
        if code == grpc.StatusCode.PERMISSION_DENIED:  # TorchServe 0.12's answer to a wrong or expired key
            return Failure(exc.details() or "", "auth_refused", transient=True)
        return Failure(exc.details() or str(code), f"grpc_{code.name.lower()}", transient=code in TRANSIENT_GRPC)
    if isinstance(exc, KeyFileError):  # TorchServe rewrites the file when it rotates a key: read it again later
        return Failure(str(exc), "key_file", transient=True)
    return Failure(f"{type(exc).__name__}: {exc}", type(exc).__name__)


# ---- one photo -----------------------------------------------------------------------------------------------------
def _tag_one(path: Path, name: str, tagger: Tagger, retries: int, backoff: float,
             stop: threading.Event) -> tuple[dict, bool]:
    """(the JSONL record, whether a failure was transient) for one photo, after retrying transient failures."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _failed(name, Failure(str(exc), "unreadable")), False
    for attempt in range(retries + 1):
        try:
            response = tagger(data)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded per photo; KeyboardInterrupt is not caught
            failure = failure_of(exc)
        else:
            if "error" not in response:
                return {"file": name, "status": "ok", **response}, False
            # gRPC carries the handler's refusal as the prediction itself
            failure = Failure(str(response["error"]), str(response.get("reason", "error")), response.get("code"))
        if not failure.transient or attempt == retries or stop.wait(backoff * 2 ** attempt):
            break
    return _failed(name, failure), failure.transient


def _failed(name: str, failure: Failure) -> dict:
    return {"file": name, "status": "failed", "error": failure.error, "reason": failure.reason,
            "http_status": failure.http_status}


# ---- the folder ----------------------------------------------------------------------------------------------------
def scan(root: Path, exclude: Path | set[Path] | None = None) -> tuple[list[tuple[str, Path]], Counter]:
    """([(relative posix name, path)] of the photos in sorted order, skip reason -> count). `exclude`: resolved
    folders not to walk (the run's own output and sidecar folders, when they lie inside root)."""
    exclude = {exclude} if isinstance(exclude, Path) else set(exclude or ())
    photos, skipped = [], Counter()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and Path(folder, d).resolve() not in exclude]
        for name in files:
            path = Path(folder, name)
            if path.suffix.lower() == ".xmp":
                continue  # a photo's sidecar (ours or a photo manager's): part of the photo, not a skipped file
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped["not an image"] += 1
            elif name.startswith("."):
                skipped["hidden file"] += 1  # macOS leaves ._IMG_0001.JPG metadata files next to the photos
            else:
                photos.append((path.relative_to(root).as_posix(), path))
    return sorted(photos), skipped


def tag_folder(root: str | Path, out_dir: str | Path, *, tagger: Tagger, concurrency: int = 4, retries: int = 4,
               progress: bool = True, backoff: float = 0.5, taxonomy: Taxonomy | None = None,
               exclude: tuple[Path, ...] = ()) -> Summary:
    """Tag the photos under root that OUT_DIR's tags.jsonl does not have as tagged yet; see the module docstring.

    tagger maps image bytes to the service's tag JSON and raises (client.rest.ServiceError, requests or grpc
    errors) when the call fails. Transient failures are retried `retries` times, waiting backoff, 2*backoff, ...
    Folders in `exclude` (e.g. the sidecar folder) are not walked, nor is OUT_DIR.
    """
    root, out_dir, retries = Path(root), Path(out_dir), max(0, retries)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    taxonomy = taxonomy or Taxonomy.load()
    summary = Summary()
    photos, summary.skipped = scan(root, exclude={out_dir.resolve(), *(Path(p).resolve() for p in exclude)})
    records = load_records(out_dir / JSONL_NAME)
    todo = [(name, path) for name, path in photos if records.get(name, {}).get("status") != "ok"]
    summary.resumed = len(photos) - len(todo)
    save_results(out_dir, records, taxonomy)  # drops a torn last line so that the lines appended below stay whole

    stop = threading.Event()
    pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="tag")
    try:
        with open(out_dir / JSONL_NAME, "a", encoding="utf-8") as log, \
                tqdm(total=len(todo), unit="photo", desc="tagging", disable=not progress, dynamic_ncols=True) as bar:
            transient_in_a_row = 0
            # No list of the futures is kept: as_completed lets go of each one it yields, answers included.
            for future in as_completed([pool.submit(_tag_one, path, name, tagger, retries, backoff, stop)
                                        for name, path in todo]):
                record, transient = future.result()
                log.write(json.dumps(record, ensure_ascii=False) + "\n")
                log.flush()  # a killed run keeps every answer it already had
                records[record["file"]] = record
                if record["status"] == "ok":
                    summary.tagged += 1
                else:
                    summary.failed[record["reason"]] += 1
                    bar.set_postfix(failed=sum(summary.failed.values()), refresh=False)
                transient_in_a_row = transient_in_a_row + 1 if transient else 0
                bar.update()
                if transient_in_a_row >= GIVE_UP_AFTER:
                    summary.gave_up = f"{GIVE_UP_AFTER} photos in a row failed with {record['reason']}"
                    break
    finally:
        stop.set()  # wakes workers out of their backoff
        pool.shutdown(wait=False, cancel_futures=True)
        save_results(out_dir, records, taxonomy)
    return summary


# ---- command line --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client.tag_folder", description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, metavar="DIR",
                        help="folder of photos, walked recursively (hidden folders are skipped)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT_DIR",
                        help=f"folder for {JSONL_NAME}, {CSV_NAME}, the search index and the review page; re-running "
                             f"with the same folder resumes")
    parser.add_argument("--key-file", type=Path, default=DEFAULT_KEY_FILE,
                        help="TorchServe's key_file.json (default: ./key_file.json or $TAGGER_KEY_FILE)")
    parser.add_argument("--model", default="tagger", help="model name on the server (default: tagger)")
    parser.add_argument("--version", help="model version (default: the server's default version)")
    parser.add_argument("--url", default=DEFAULT_INFERENCE_URL,
                        help=f"REST inference address (default: {DEFAULT_INFERENCE_URL})")
    parser.add_argument("--grpc", action="store_true", help="use gRPC Predictions instead of REST")
    parser.add_argument("--grpc-target", default=DEFAULT_GRPC_TARGET,
                        help=f"gRPC inference host:port (default: {DEFAULT_GRPC_TARGET})")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="photos in flight at once; TorchServe batches concurrent requests (default: 4)")
    parser.add_argument("--retries", type=int, default=4,
                        help="retries of a transient failure (HTTP 503, timeout, refused key, ...), waiting 0.5 s, "
                             "1 s, 2 s, ... in between (default: 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--big-photos", choices=BIG_PHOTOS_CHOICES, default=BIG_PHOTOS_CHOICES[0],
                        help="auto: the server's big-photo mode reads the objects of 12 MP drone and camera-trap "
                             "photos closer (its model-config.yaml decides); off: every photo at the ordinary size, "
                             "a quicker first pass (default: auto)")
    xmp = parser.add_argument_group("XMP sidecars, for digiKam, darktable, Lightroom and Immich")
    xmp.add_argument("--xmp", action="store_true",
                     help="write each tagged photo's tags into an XMP sidecar beside it, merged into an existing one "
                          "(other tools' metadata and the team's own keywords are kept)")
    xmp.add_argument("--xmp-dir", type=Path, metavar="DIR",
                     help="write the sidecars under DIR, in the photo folder's tree, instead of beside the photos "
                          "(for a read-only photo folder); implies --xmp")
    xmp.add_argument("--xmp-name", choices=NAMINGS, default=NAMINGS[0],
                     help=f"sidecar naming: {NAMINGS[0]} (digiKam, darktable, Immich; the default) or {NAMINGS[1]} "
                          f"(Lightroom; Immich reads it too)")
    xmp.add_argument("--lang", choices=LANGS, default=LANGS[0],
                     help="language of the sidecar keywords: en (AI tags/objects/dog_handler, the default) or ru "
                          "(ИИ-теги/Объекты/Кинолог, the taxonomy's Russian names)")
    parser.add_argument("--corrections", type=Path, action="append", default=[], metavar="CSV",
                        help=f"a corrections.csv downloaded from the gallery (repeatable): those photos' reviewed tags "
                             f"win over the model's in the sidecars and the search index; merged into "
                             f"OUT_DIR/{CORRECTIONS_NAME}, which every later run reads")
    return parser


@dataclass(frozen=True)
class Published:
    corrections_unknown: list[str]  # corrected files without an answer in this OUT_DIR (kept for a later run)
    sidecars: SidecarReport | None
    gallery: GalleryResult


def publish(root: Path, out_dir: Path, *, taxonomy: Taxonomy, corrections: list[Path] = (),
            sidecars: SidecarOptions | None = None, progress: bool = False) -> Published:
    """After tagging: merge `corrections` into OUT/corrections.csv, sync the search index, write the sidecars
    (with `sidecars`) and the review page, all from what OUT_DIR holds, so a rerun catches up on anything a
    killed run did not get to."""
    records = load_records(out_dir / JSONL_NAME)
    merged = load_corrections(out_dir, corrections, records, taxonomy)
    report = None
    with closing(search_index.connect(out_dir)) as conn:
        search_index.sync(conn, out_dir, taxonomy, root=root)
        if sidecars:
            report = write_sidecars(root, records, merged.labels, taxonomy, sidecars, conn, progress=progress)
    gallery = write_gallery(out_dir, root, records=records)  # every run rewrites it: a resumed run updates it
    return Published(merged.unknown, report, gallery)


def main(argv: list[str] | None = None) -> int:
    """Exit code 0 when every photo is tagged (and has its sidecar), 1 when some failed or a sidecar was left as
    it was, 2 for unusable arguments, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        read_key("inference", args.key_file)  # one clear message now rather than a failure for every photo
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.root.is_dir():
        print(f"error: {args.root} is not a folder", file=sys.stderr)
        return 2
    taxonomy = Taxonomy.load()
    sidecars = SidecarOptions(args.lang, args.xmp_name, args.xmp_dir) if args.xmp or args.xmp_dir else None
    not_walked = (args.xmp_dir,) if args.xmp_dir else ()
    try:
        for path in args.corrections:
            read_labels_csv(path, taxonomy)  # a bad file stops the run now, not after an hour of tagging
        if sidecars:
            photos, _ = scan(args.root, exclude={p.resolve() for p in (args.out, *not_walked)})
            check_writable(args.root, [name for name, _ in photos], sidecars)
    except (OSError, LabelCsvError, SidecarFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    grpc_tagger = None
    if args.grpc:
        from client.grpc_client import GrpcTagger  # needs the generated stubs (make setup)

        grpc_tagger = GrpcTagger(args.grpc_target, args.key_file)
        tagger = partial(grpc_tagger.tag, model=args.model, version=args.version, big_photos=args.big_photos)
    else:
        tagger = rest_tagger(args.url, args.key_file, args.model, args.version, args.big_photos)
    try:
        summary = tag_folder(args.root, args.out, tagger=tagger, concurrency=args.concurrency,
                             retries=args.retries, progress=not args.no_progress, taxonomy=taxonomy,
                             exclude=not_walked)
    except KeyboardInterrupt:
        print(f"interrupted: the answers so far are in {args.out / JSONL_NAME}; run the same command again to "
              f"resume", file=sys.stderr)
        return 130
    finally:
        if grpc_tagger:
            grpc_tagger.close()
    print(summary)
    print(f"results:      {args.out / JSONL_NAME}, {args.out / CSV_NAME}")
    published = publish(args.root, args.out, taxonomy=taxonomy, corrections=args.corrections, sidecars=sidecars,
                        progress=not args.no_progress)
    unknown = published.corrections_unknown
    if unknown:
        print(f"corrections:  {len(unknown)} for photos without an answer here, kept for a later run: "
              f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    print(f"search index: {args.out / INDEX_NAME} (python -m client.search {args.out} night dog_handler)")
    if published.sidecars:
        print(published.sidecars)
    print(f"gallery:      {published.gallery.page} (open it in a browser; works offline)")
    problems = published.sidecars and published.sidecars.problems
    return 1 if summary.failed or summary.gave_up or problems else 0


if __name__ == "__main__":
    sys.exit(main())
