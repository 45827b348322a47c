"""How long the search index of a large folder takes to build and to answer, on synthetic answers.

    python -m client.search_bench                       # 100,000 photos in a temporary folder
    python -m client.search_bench --photos 20000 --out /tmp/bench-results

Writes a tags.jsonl of made-up service answers (seeded; about a quarter of the photos per object, as the
synthetic scenes have), then times: building the index from it (reading tags.jsonl included), the sync of an
unchanged folder, a sync after 1% more photos, the queries below (median of 5 runs each), and the whole
`python -m client.search` command, Python's start included, which is what a volunteer waits for.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from functools import partial
from pathlib import Path

from client import search_index
from client.results import JSONL_NAME
from phototag.taxonomy import SINGLE, UNKNOWN, Taxonomy

# (words as typed, --min-score)
QUERIES = ((["night", "winter", "forest", "dog_handler"], 0.0), (["day"], 0.0), (["ночь", "кинолог", "-город"], 0.0),
           (["drone", "cars"], 0.8), (["-night", "-day"], 0.0))
REPEATS = 5


def synthetic_record(rng: random.Random, file: str, taxonomy: Taxonomy) -> dict:
    """A made-up answer in the service's shape: a softmax-like single-choice winner, objects at a 0.5 threshold."""
    record: dict = {"file": file, "status": "ok"}
    tags = []
    for group in taxonomy.groups:
        if group.kind == SINGLE:
            winner = rng.randrange(group.size)
            rest = [rng.random() for _ in range(group.size)]
            top = rng.uniform(0.4, 0.999)
            share = (1 - top) / (sum(rest) - rest[winner])
            scores = {c.id: round(top if i == winner else rest[i] * share, 4) for i, c in enumerate(group.classes)}
            label = group.classes[winner].id
            record[group.name] = {"label": label, "score": scores[label], "scores": scores}
            tags += [label] if label != UNKNOWN else []
        else:
            scores = {c.id: round(rng.uniform(0.5, 1.0) if rng.random() < 0.25 else rng.uniform(0, 0.5), 4)
                      for c in group.classes}
            labels = [c.id for c in group.classes if scores[c.id] >= 0.5]
            record[group.name] = {"labels": labels, "scores": scores}
            tags += labels
    record.update(tags=tags, model_version="1.0")
    return record


def write_results(out: Path, count: int, taxonomy: Taxonomy, seed: int = 0, start: int = 0) -> None:
    """Append `count` synthetic answers to out/tags.jsonl (names card000/IMG_000000.jpg, ...)."""
    rng = random.Random(seed + start)
    with open(out / JSONL_NAME, "a", encoding="utf-8") as handle:
        for i in range(start, start + count):
            record = synthetic_record(rng, f"card{i // 1000:03d}/IMG_{i:06d}.jpg", taxonomy)
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _clock() -> tuple[float, float]:
    """(wall time, CPU time of this process and of its finished children): on a busy machine the wall time says how
    long a volunteer waited, the CPU time what the search itself costs."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), time.process_time() + children.ru_utime + children.ru_stime


def _since(start: tuple[float, float]) -> tuple[float, float]:
    now = _clock()
    return now[0] - start[0], now[1] - start[1]


def _repeated(action) -> dict:
    """Median and max wall time, and median CPU time, of REPEATS runs of action(); its last result as "result"."""
    walls, cpus = [], []
    for _ in range(REPEATS):
        start = _clock()
        result = action()
        wall, cpu = _since(start)
        walls.append(wall)
        cpus.append(cpu)
    return {"median_s": statistics.median(walls), "max_s": max(walls), "cpu_median_s": statistics.median(cpus),
            "result": result}


def bench(out: Path, count: int) -> dict:
    taxonomy = Taxonomy.load()
    write_results(out, count, taxonomy)
    timings: dict = {"photos": count, "cpu": _cpu()}
    with closing(search_index.connect(out)) as conn:
        start = _clock()
        search_index.sync(conn, out, taxonomy)
        timings["build_s"], timings["build_cpu_s"] = _since(start)
        start = _clock()
        assert search_index.sync(conn, out, taxonomy).up_to_date
        timings["sync_unchanged_s"], _ = _since(start)
        write_results(out, count // 100, taxonomy, start=count)
        start = _clock()
        timings["sync_more_changed"] = search_index.sync(conn, out, taxonomy).changed
        timings["sync_more_s"], timings["sync_more_cpu_s"] = _since(start)
        timings["queries"] = []
        for words, min_score in QUERIES:
            include = [search_index.resolve(w, taxonomy) for w in words if not w.startswith("-")]
            exclude = [search_index.resolve(w[1:], taxonomy) for w in words if w.startswith("-")]
            runs = _repeated(partial(search_index.query, conn, include, exclude, min_score))
            shown = " ".join(words) + (f" --min-score {min_score}" if min_score else "")
            timings["queries"].append({"words": shown, "matches": len(runs.pop("result")), **runs})
    command = [sys.executable, "-m", "client.search", str(out), *QUERIES[0][0], "--limit", "10"]
    runs = _repeated(lambda: subprocess.run(command, check=True, capture_output=True))
    runs.pop("result")
    timings["command"] = {"words": " ".join(QUERIES[0][0]), **runs}
    return timings


def report(timings: dict) -> str:
    lines = [f"search index of {timings['photos']:,} synthetic photos on {timings['cpu']} "
             f"(wall time / CPU time)",
             f"  build from tags.jsonl:       {timings['build_s']:.2f} s / {timings['build_cpu_s']:.2f} s",
             f"  sync, nothing changed:       {timings['sync_unchanged_s'] * 1000:.1f} ms",
             f"  sync, {timings['sync_more_changed']:,} photos more:     {timings['sync_more_s']:.2f} s / "
             f"{timings['sync_more_cpu_s']:.2f} s"]
    for q in timings["queries"]:
        lines.append(f"  query {q['words']!r}: {q['matches']:,} matches, median {q['median_s'] * 1000:.1f} ms / "
                     f"{q['cpu_median_s'] * 1000:.1f} ms, max {q['max_s'] * 1000:.1f} ms")
    c = timings["command"]
    lines.append(f"  python -m client.search {c['words']} (Python start included): median {c['median_s']:.2f} s / "
                 f"{c['cpu_median_s']:.2f} s, max {c['max_s']:.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.search_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=100_000, help="synthetic photos to index (default 100000)")
    parser.add_argument("--out", type=Path,
                        help="an empty folder to write tags.jsonl and index.sqlite into (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the timings to this JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        if (out / JSONL_NAME).exists():
            parser.error(f"{out / JSONL_NAME} exists: give an empty folder")
        timings = bench(out, args.photos)
    print(report(timings))
    if args.json:
        args.json.write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
