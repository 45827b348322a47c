"""Find the photos of a tagged folder by their tags, best first, from the run's search index.

    python -m client.search results/card1 night winter forest dog_handler    # every tag given, any order
    python -m client.search results/card1 ночь зима кинолог -город            # Russian names; -tag excludes it
    python -m client.search results/card1 dog_handler --min-score 0.8 --open  # + a gallery page of the matches
    python -m client.search results/card1                                     # how many photos have each tag

One line per photo: the weakest score among the tags asked for (1.00 for tags a volunteer reviewed), the photo's
path, and "reviewed" where a volunteer's corrections set its tags. The index (RESULTS_DIR/index.sqlite) is
brought up to date with tags.jsonl and corrections.csv first, so a search during or after any run sees its
answers. Exit code 0 when something matched, 1 when nothing did, 2 for a word that is not a tag.
"""
from __future__ import annotations

import argparse
import sys
import time
import webbrowser
from contextlib import closing
from pathlib import Path

from client import search_index
from client.gallery import write_gallery
from client.results import JSONL_NAME, load_records
from phototag.labels_csv import LabelCsvError
from phototag.taxonomy import Taxonomy

SEARCH_PAGE = "search.html"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client.search", description=__doc__.split("\n")[0],
                                     epilog="A word written -night (a dash, then the tag) excludes that tag.")
    parser.add_argument("results", type=Path, metavar="RESULTS_DIR",
                        help="the folder tagger's OUT_DIR (with tags.jsonl)")
    parser.add_argument("words", nargs="*", metavar="TAG",
                        help="tags every photo must have: English ids (night, dog_handler) or Russian names "
                             "(ночь, кинолог), optionally group/tag (season/unknown); none: count each tag")
    parser.add_argument("--min-score", type=float, default=0.0,
                        help="only photos whose score for each tag asked for is at least this (0-1; default 0)")
    parser.add_argument("--limit", type=int, default=50,
                        help="photos listed, best first (default 50; 0 lists all; the count is always of all)")
    parser.add_argument("--open", action="store_true",
                        help=f"also write RESULTS_DIR/{SEARCH_PAGE}, the review page with only the matches, best "
                             f"first (it shares index.html's corrections), and open it when run from a terminal")
    parser.add_argument("--photos", type=Path, metavar="DIR",
                        help="the folder that was tagged (default: the one the folder tagger recorded)")
    return parser


def split_exclusions(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the arguments for argparse, the tags after a single dash). argparse would take -night for an unknown
    option and -horses for -h with a value, so these are taken out first."""
    rest, excluded = [], []
    for arg in argv:
        if len(arg) > 1 and arg[0] == "-" and arg[1] != "-" and not arg[1].isdigit() and arg != "-h":
            excluded.append(arg[1:])
        else:
            rest.append(arg)
    return rest, excluded


def main(argv: list[str] | None = None) -> int:
    args_list, excluded = split_exclusions(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(args_list)
    if not (args.results / JSONL_NAME).is_file():
        print(f"error: {args.results / JSONL_NAME} not found: tag the folder first (make tag-folder)", file=sys.stderr)
        return 2
    taxonomy = Taxonomy.load()
    try:
        include = [search_index.resolve(word, taxonomy) for word in args.words]
        exclude = [search_index.resolve(word, taxonomy) for word in excluded]
    except search_index.QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with closing(search_index.connect(args.results)) as conn:
        try:
            search_index.sync(conn, args.results, taxonomy)
        except LabelCsvError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not include and not exclude:
            for tag, count in sorted(search_index.tag_counts(conn).items(), key=lambda item: (-item[1], item[0])):
                print(f"{count:8d}  {tag}")
            return 0
        hits = search_index.query(conn, include, exclude, args.min_score)
        recorded = search_index.get_meta(conn, "root")
    elapsed = time.perf_counter() - started
    root = args.photos or (Path(recorded) if recorded else None)
    asked = " ".join(include + [f"-{key}" for key in exclude])
    print(f"{len(hits)} photos match {asked} ({elapsed:.3f} s)", file=sys.stderr)
    shown = hits if args.limit <= 0 else hits[:args.limit]
    for hit in shown:
        path = root / hit.file if root else hit.file
        print(f"{hit.score:.2f}\t{path}" + ("\treviewed" if hit.reviewed else ""))
    if len(shown) < len(hits):
        print(f"... and {len(hits) - len(shown)} more (--limit 0 lists all)", file=sys.stderr)
    if args.open:
        if root is None:
            print("error: the photo folder is not recorded in the index: pass --photos DIR", file=sys.stderr)
            return 2
        records = load_records(args.results / JSONL_NAME)
        page = write_gallery(args.results, root, records=records, only=[hit.file for hit in hits],
                             page_name=SEARCH_PAGE, search=asked).page
        print(f"gallery:      {page}", file=sys.stderr)
        if sys.stdout.isatty():
            webbrowser.open(page.resolve().as_uri())
    return 0 if hits else 1


if __name__ == "__main__":
    sys.exit(main())
