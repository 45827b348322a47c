"""Latency of a lone photo: one client sends JPEGs (256×256, or --size) one after another to a running server
(make serve).

    .venv/bin/python -m loadtests.latency [--url http://127.0.0.1:8080] [--seconds 20] [--size camera]

At low load every request is a batch of one, and TorchServe holds it for up to maxBatchDelay waiting for company,
so this is the figure that batch delay trades against throughput.

    .venv/bin/python -m loadtests.latency --run runs/random-256 [--variant maxBatchDelay=0 ...]

With --run, it serves the run itself (an archive of the shipped model-config.yaml, and one per --variant, each on a
TorchServe of its own with metrics written to log files) and breaks each request's time down with TorchServe's
own metrics: QueueTime (frontend queue, batch delay included), WorkerThreadTime (the frontend's share around the
worker call), HandlerTime and PredictionTime (the worker's Python), the handler's TaggerDecodeTime and
TaggerInferenceTime, and the model's own single-image time offline (the handler in this process, the worker's
thread count).
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from client.auth import DEFAULT_KEY_FILE
from client.rest import call
from loadtests.bench import SIZES, TUNED_CONFIG, apply_overrides, build_archive, load_handler, summarize
from loadtests.faults import steady_load
from serving.torchserve_process import TorchServe
from training.synth.render import render_jpegs

# "QueueTime.Milliseconds:0.0|#Level:Host|..." in ts_metrics.log / model_metrics.log (metrics_mode=log)
METRIC_LINE = re.compile(r"\b(\w+)\.(Milliseconds|Microseconds|ms|Count):([0-9.eE+-]+)\|")
BREAKDOWN = ("QueueTime", "ts_queue_latency_microseconds", "WorkerThreadTime", "HandlerTime", "PredictionTime",
             "TaggerDecodeTime", "TaggerInferenceTime", "ts_inference_latency_microseconds")


def metric_medians(logs: Path, since_line: dict[str, int] | None = None) -> tuple[dict[str, float], dict[str, int]]:
    """Median of each BREAKDOWN metric in the TorchServe log folder (ms), counting only lines after `since_line`
    (per file); returns (medians, the line counts now)."""
    values: dict[str, list[float]] = {}
    counts = {}
    for name in ("ts_metrics.log", "model_metrics.log"):
        path = logs / name
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        counts[name] = len(lines)
        for line in lines[(since_line or {}).get(name, 0):]:
            for metric, unit, value in METRIC_LINE.findall(line):
                if metric in BREAKDOWN:
                    values.setdefault(metric, []).append(float(value) / (1000 if unit == "Microseconds" else 1))
    return {k: round(statistics.median(v), 2) for k, v in values.items()}, counts


def model_alone_ms(run: Path, settings: dict, photos: list[bytes], seconds: float = 5) -> float:
    """One photo's decode + forward in this process, the served handler with the worker's settings (ms)."""
    handler = load_handler(run, settings, batch_size=1)
    rows = [{"body": p} for p in photos]
    times = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline or len(times) < 5:
        started = time.perf_counter()
        batch, _ = handler.preprocess([rows[i % len(rows)]], [None])
        handler.inference(batch)
        times.append(1000 * (time.perf_counter() - started))
        i += 1
    return round(statistics.median(times[1:]), 2)


def served_breakdown(run: Path, variants: list[str], photos: list[bytes], seconds: float) -> list[dict]:
    """The shipped config and each variant, served in turn: lone-client latency and the metrics' medians."""
    shipped = yaml.safe_load(TUNED_CONFIG.read_text())
    rows = []
    with tempfile.TemporaryDirectory(prefix="tagger-latency-") as tmp:
        tmp = Path(tmp)
        for index, variant in enumerate(["", *variants]):
            config = apply_overrides(shipped, variant) if variant else shipped
            path = tmp / f"model-config{index}.yaml"
            path.write_text(yaml.safe_dump(config))
            store = build_archive(run, tmp / f"store{index}", tmp / f"build{index}", path).parent
            server = TorchServe(tmp / f"server{index}", store, extra_config={"metrics_mode": "log"}).start()
            try:
                # what the frontend applies, which is not always what the archive says: 0 reads as unset (100 ms)
                described = call("GET", f"{server.management_url}/models/tagger", "management", server.key_file)
                effective = {k: described.json()[0][k] for k in ("batchSize", "maxBatchDelay")}
                steady_load(server.inference_url, server.key_file, photos, clients=1, seconds=3)
                _, before = metric_medians(server.logs)
                load = steady_load(server.inference_url, server.key_file, photos, clients=1, seconds=seconds)
                time.sleep(1)  # the last requests' metric lines
                medians, _ = metric_medians(server.logs, before)
            finally:
                server.stop()
            rows.append({"config": variant or "shipped", **summarize(load.outcomes), "metrics_median_ms": medians,
                         "handler": config.get("handler", {}), "torchserve_applies": effective})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="inference address")
    parser.add_argument("--key-file", type=Path, default=DEFAULT_KEY_FILE, help="TorchServe's key_file.json")
    parser.add_argument("--seconds", type=float, default=20, help="measured time, after a 3 s warm-up")
    parser.add_argument("--run", type=Path, default=None,
                        help="serve this training run itself and break the time down from TorchServe's metrics")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="with --run: also serve the shipped config with these keys changed (repeatable)")
    parser.add_argument("--size", default="small", choices=sorted(SIZES),
                        help="photo size class, as make bench's (camera: 4000x3000, where the big-photo mode reads "
                             "the objects again at its larger input)")
    args = parser.parse_args(argv)
    photos = render_jpegs(*SIZES[args.size], 4, seed=1)
    if args.run is not None:
        for row in served_breakdown(args.run, args.variant, photos, args.seconds):
            print(f"{row['config']}: {row['ok']} of {row['requests']} answered 200; p50 {row['p50_ms']:.1f} ms, "
                  f"p95 {row['p95_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms")
            print("  TorchServe applies: " + ", ".join(f"{k} {v}" for k, v in row["torchserve_applies"].items()))
            print("  medians (ms): " + ", ".join(f"{k} {v}" for k, v in row["metrics_median_ms"].items()))
            settings = {**row["handler"], "decode_threads": 1}
            print(f"  the model alone (handler in process, {settings.get('torch_threads', 0)} torch threads): "
                  f"{model_alone_ms(args.run, settings, photos):.1f} ms per photo")
        return 0
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
