"""Reliability benchmark: capacity, a worker SIGKILL under load, a flood over capacity, decompression bombs, and a
soak at ~70% of capacity with frontend and worker memory sampled over time. Starts its own TorchServe (the
project's config on free loopback ports) from an archive, prints a table and writes JSON.

The timings live here, printed and written, never asserted: tests/test_faults.py and tests/test_decoding.py check
the same behaviour without a clock, so that a busy machine cannot fail them.

    python -m loadtests.reliability --store model_store --minutes 10 --out reports/reliability.json
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import struct
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from loadtests.faults import LoadRun, burst, recovery_after, send, steady_load, worker_pids
from phototag.decoding import ImageDecodeError, decode_image
from serving.torchserve_process import TorchServe
from training.report import write_json
from training.synth.render import render_jpegs


def rss_mb(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return float("nan")


def frontend_pid(server: TorchServe) -> int:
    # `torchserve --start --foreground` runs the Java frontend as its child.
    children = psutil.Process(server.process.pid).children()
    return next(c.pid for c in children if "java" in c.name().lower())


# As in tests/test_faults.py: how long a load client waits for an answer TorchServe 0.12 may never send after a
# worker kill (docs/reliability.md); such a request is counted as failed with kind "timeout".
CLIENT_TIMEOUT = 15


def png_bomb(side: int = 30000) -> bytes:
    """A complete, valid 1-bit side x side PNG: a few hundred KB that would decode to side**2 pixels."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row * 500) for _ in range(side // 500)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bomb_refusal(server: TorchServe, repeats: int = 20) -> dict:
    """How fast a 30000x30000 PNG is refused, in process and over REST, and the workers' memory around the REST
    refusals (refused from the header, it should not move)."""
    bomb = png_bomb()
    in_process, reasons = [], set()
    for _ in range(repeats):
        started = time.perf_counter()
        try:
            decode_image(bomb)
        except ImageDecodeError as exc:
            reasons.add(exc.reason)
        in_process.append(time.perf_counter() - started)
    workers = worker_pids(server.management_url, server.key_file)
    rss_before = sum(rss_mb(pid) for pid in workers)
    answers = [send(server.inference_url, server.key_file, bomb) for _ in range(repeats)]
    rss_after = sum(rss_mb(pid) for pid in workers)
    return {"bytes": len(bomb), "pixels": 30000 * 30000, "repeats": repeats, "decode_reasons": sorted(reasons),
            "decode_refusal_ms_median": round(1000 * statistics.median(in_process), 2),
            "decode_refusal_ms_max": round(1000 * max(in_process), 2),
            "rest_answers": dict(Counter(f"{a.status} {a.kind}" for a in answers)),
            "rest_ms_median": round(1000 * statistics.median(a.seconds for a in answers)),
            "rest_ms_max": round(1000 * max(a.seconds for a in answers)),
            "workers_rss_mb_before": round(rss_before, 1), "workers_rss_mb_after": round(rss_after, 1)}


def wait_for_replacement(server: TorchServe, killed: int, count: int) -> float:
    """time.monotonic() when the killed worker's PID is gone and `count` workers report a PID again."""
    while True:
        pids = worker_pids(server.management_url, server.key_file)
        if killed not in pids and len(pids) == count:
            return time.monotonic()
        time.sleep(0.1)


def measure_capacity(server: TorchServe, photos: list[bytes], clients: int, seconds: float) -> float:
    run = steady_load(server.inference_url, server.key_file, photos, clients, seconds)
    ok = [o for o in run.outcomes if o.status == 200]
    span = max(o.finished for o in ok) - min(o.started for o in ok)
    return len(ok) / span


def soak(server: TorchServe, photos: list[bytes], rate: float, seconds: float, sample_every: float = 10.0) -> dict:
    """Open-loop load at `rate` requests/s for `seconds`, memory of the frontend and the worker sampled."""
    run = LoadRun()
    samples = []
    java = frontend_pid(server)
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            worker = worker_pids(server.management_url, server.key_file)[0]
            samples.append({"t": round(time.monotonic() - begin, 1), "frontend_mb": round(rss_mb(java), 1),
                            "worker_mb": round(rss_mb(worker), 1)})
            stop.wait(sample_every)

    begin = time.monotonic()
    threading.Thread(target=sampler, daemon=True).start()
    with ThreadPoolExecutor(32) as pool:
        for i in range(int(rate * seconds)):
            time.sleep(max(0.0, begin + i / rate - time.monotonic()))
            pool.submit(lambda b: run.add(send(server.inference_url, server.key_file, b)), photos[i % len(photos)])
    stop.set()
    latencies = sorted(o.seconds for o in run.outcomes)
    third = max(1, len(samples) // 3)
    first, last = samples[:third], samples[-third:]
    return {
        "rate_per_s": rate, "seconds": seconds, "requests": len(run.outcomes), "failed": len(run.failed()),
        "p50_ms": round(1000 * latencies[len(latencies) // 2]),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))]),
        "frontend_mb_first_third": round(statistics.mean(s["frontend_mb"] for s in first), 1),
        "frontend_mb_last_third": round(statistics.mean(s["frontend_mb"] for s in last), 1),
        "worker_mb_first_third": round(statistics.mean(s["worker_mb"] for s in first), 1),
        "worker_mb_last_third": round(statistics.mean(s["worker_mb"] for s in last), 1),
        "samples": samples,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=Path("model_store"), help="model store holding tagger.mar")
    parser.add_argument("--minutes", type=float, default=10, help="soak duration")
    parser.add_argument("--load-fraction", type=float, default=0.7, help="soak rate as a share of measured capacity")
    parser.add_argument("--clients", type=int, default=4, help="closed-loop clients for the capacity and kill runs")
    parser.add_argument("--out", type=Path, default=Path("reports/reliability.json"), help="JSON results")
    args = parser.parse_args(argv)

    photos = render_jpegs(1632, 1224, count=6)  # 2 MP phone photos
    server = TorchServe(Path(tempfile.mkdtemp(prefix="reliability-")), args.store.resolve()).start()
    results: dict = {"photo": "1632x1224 JPEG (2 MP phone size)", "cpu_count": psutil.cpu_count()}
    try:
        results["capacity_per_s"] = round(measure_capacity(server, photos, args.clients, 30), 2)
        print(f"capacity: {results['capacity_per_s']} photos/s with {args.clients} closed-loop clients")

        run = LoadRun()
        before = worker_pids(server.management_url, server.key_file)
        loader = threading.Thread(target=steady_load, args=(server.inference_url, server.key_file, photos,
                                                            args.clients, 40, run),
                                  kwargs={"timeout": CLIENT_TIMEOUT})
        loader.start()
        time.sleep(10)
        with run.lock:  # nothing is answered between counting what is in flight and the kill
            in_flight = len(run.pending)
            killed_at = time.monotonic()
            os.kill(before[0], signal.SIGKILL)
        replaced_at = wait_for_replacement(server, before[0], len(before))
        loader.join()
        failed = run.failed()
        results["worker_kill"] = {
            "requests": len(run.outcomes), "in_flight_at_kill": in_flight, "failed": len(failed),
            "failed_by_kind": dict(Counter(f"{o.status} {o.kind}".strip() for o in failed)),
            "worker_replaced_s": round(replaced_at - killed_at, 1),
            "recovery_s": round(recovery_after(run, killed_at) or float("nan"), 1),
            "slowest_s": round(max(o.seconds for o in run.outcomes), 1)}
        print(f"worker kill: {results['worker_kill']}")

        flood = burst(server.inference_url, server.key_file, photos, count=400, concurrency=128)
        refused = sorted(o.seconds for o in flood.outcomes if o.status == 503)
        results["flood"] = {
            "requests": 400, "concurrency": 128, "served": sum(o.status == 200 for o in flood.outcomes),
            "refused_503": len(refused), "other": sum(o.status not in (200, 503) for o in flood.outcomes),
            "refused_p50_ms": round(1000 * refused[len(refused) // 2]) if refused else None,
            "refused_p95_ms": round(1000 * refused[int(0.95 * (len(refused) - 1))]) if refused else None}
        after = send(server.inference_url, server.key_file, photos[0])
        results["flood"]["first_request_after_flood"] = {"status": after.status, "ms": round(1000 * after.seconds)}
        print(f"flood: {results['flood']}")

        results["bomb"] = bomb_refusal(server)
        print(f"decompression bomb: {results['bomb']}")

        rate = args.load_fraction * results["capacity_per_s"]
        results["soak"] = soak(server, photos, rate, args.minutes * 60)
        summary = {k: v for k, v in results["soak"].items() if k != "samples"}
        print(f"soak: {summary}")
    finally:
        server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
