"""Reliability benchmark: capacity, a worker SIGKILL under load, a flood over capacity, and a soak at ~70% of
capacity with frontend and worker memory sampled over time. Starts its own TorchServe (the project's config on
free loopback ports) from an archive, prints a table and writes JSON.

    python -m loadtests.reliability --store model_store --minutes 10 --out reports/reliability.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from loadtests.faults import LoadRun, burst, kill_worker, recovery_after, send, steady_load, worker_pids
from tests.torchserve_process import TorchServe
from training.synth import render_jpegs


def rss_mb(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return float("nan")


def frontend_pid(server: TorchServe) -> int:
    # `torchserve --start --foreground` runs the Java frontend as its child.
    children = psutil.Process(server.process.pid).children()
    return next(c.pid for c in children if "java" in c.name().lower())


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
        "p50_ms": round(1000 * latencies[len(latencies) // 2]), "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))]),
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
        loader = threading.Thread(target=steady_load, args=(server.inference_url, server.key_file, photos,
                                                            args.clients, 40, run))
        loader.start()
        time.sleep(10)
        killed_at = time.monotonic()
        kill_worker(server.management_url, server.key_file)
        loader.join()
        results["worker_kill"] = {
            "requests": len(run.outcomes), "failed": len(run.failed()),
            "failed_statuses": sorted({o.status for o in run.failed()}),
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

        rate = args.load_fraction * results["capacity_per_s"]
        results["soak"] = soak(server, photos, rate, args.minutes * 60)
        summary = {k: v for k, v in results["soak"].items() if k != "samples"}
        print(f"soak: {summary}")
    finally:
        server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
