"""Latency of a lone photo: one client sends 256×256 JPEGs one after another to a running server (make serve).

    .venv/bin/python -m loadtests.latency [--url http://127.0.0.1:8080] [--seconds 20]

At low load every request is a batch of one, and TorchServe holds it for up to maxBatchDelay waiting for company,
so this is the figure that batch delay trades against throughput.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from client.auth import DEFAULT_KEY_FILE
from loadtests.bench import summarize
from loadtests.faults import steady_load
from training.synth import render_jpegs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="inference address")
    parser.add_argument("--key-file", type=Path, default=DEFAULT_KEY_FILE, help="TorchServe's key_file.json")
    parser.add_argument("--seconds", type=float, default=20, help="measured time, after a 3 s warm-up")
    args = parser.parse_args(argv)
    photos = render_jpegs(256, 256, 4, seed=1)
    steady_load(args.url, args.key_file, photos, clients=1, seconds=3)
    run = steady_load(args.url, args.key_file, photos, clients=1, seconds=args.seconds)
    row = summarize(run.outcomes)
    if row["ok"] < 2:
        parser.exit(1, f"only {row['ok']} of {row['requests']} requests succeeded\n")
    print(f"{row['ok']} of {row['requests']} requests answered 200; "
          f"p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
