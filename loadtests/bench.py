"""Throughput benchmark: the offline ceiling vs a naive TorchServe setup vs the shipped (tuned) one, per input size.

    python -m loadtests.bench --run runs/demo --out reports/bench.json [--seconds 20] [--concurrency 32]
                              [--sizes small,phone[,camera]] [--batch-sizes 1,8,16,32] [--toggles ...]
                              [--variant batchSize=16 --variant minWorkers=1,maxWorkers=1 ...]

1. offline: the served handler class itself (preprocess + inference with the shipped model-config.yaml handler
   settings, but decode_threads = the core count and torch's default threads: one process owning the machine),
   initialised in this process through TorchServe's Context, without HTTP. Every batch size of
   --batch-sizes is timed; the best one is the ceiling. Then each setting of --toggles (precision, channels_last,
   compile, jpeg_decoder) is flipped on and off at that batch size, one at a time.
2. original: the original write-up's FastAPI server (loadtests/fastapi_baseline.py: one photo per request in an
   async endpoint, train mode, fp32, OpenCV), served by uvicorn on a free port (--no-original leaves it out).
3. naive: an archive packed with handler/model-config.naive.yaml (batchSize 1, maxBatchDelay 0, 1 worker,
   decode_threads 1), served by a real TorchServe (the project's config.properties on free loopback ports).
4. tuned: the same with the shipped handler/model-config.yaml (or --tuned-config), and each --variant of it.

The model is the run's checkpoint, at the input size stored in it (the report's "model" says which; a
random-init run at the served size, `python -m loadtests.random_model`, benches the full-size model without a
trained one). Both archives are built with `make archive ... MODEL_CONFIG=...` into a temporary store. Each
server is loaded by --concurrency closed-loop clients (Python threads + requests, in this process) for --seconds
per size class after a short warm-up, then stopped before the next starts. The client's own CPU use is recorded
per load phase: the client and the server share the machine's cores, so a busy client takes CPU away from the
server.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
import yaml
from ts.context import Context

from handler.tagger_handler import PhotoTaggerHandler
from loadtests.fastapi_baseline import FastApiBaseline
from loadtests.faults import Outcome, steady_load
from phototag.checkpoint import read_checkpoint
from phototag.int8 import PACKAGE_FILE, incompatibility, read_report
from phototag.model import ModelConfig
from serving.torchserve_process import TorchServe
from training.report import write_json
from training.synth.render import render_jpegs

REPO = Path(__file__).resolve().parent.parent
SIZES = {"small": (256, 256), "phone": (1632, 1224), "camera": (4000, 3000)}
TUNED_CONFIG = REPO / "handler" / "model-config.yaml"
NAIVE_CONFIG = REPO / "handler" / "model-config.naive.yaml"



# ---- offline ceiling --------------------------------------------------------------------------------------------
def load_handler(run: Path, handler_settings: dict, batch_size: int) -> PhotoTaggerHandler:
    """The served handler class, initialised in this process from the training run as TorchServe would from the
    archive (TorchServe's own Context), with `handler_settings` as the model-config.yaml handler section."""
    config = {"batchSize": batch_size, "handler": handler_settings}
    manifest = {"model": {"modelName": "tagger", "modelVersion": "offline"}}
    handler = PhotoTaggerHandler()
    handler.initialize(Context("tagger", str(run), manifest, batch_size, None, "0.12.0", model_yaml_config=config))
    return handler


def offline_rate(handler: PhotoTaggerHandler, photos: list[bytes], batch_size: int, seconds: float) -> dict:
    """handler.preprocess + handler.inference end to end, batches of `batch_size` for about `seconds`."""
    def one_batch(start: int) -> None:
        rows = [{"body": photos[(start + j) % len(photos)]} for j in range(batch_size)]
        batch, _ = handler.preprocess(rows, [None] * batch_size)
        handler.inference(batch)

    one_batch(0)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done == 0:
        one_batch(done)
        done += batch_size
    elapsed = time.perf_counter() - started
    return {"batch_size": batch_size, "images": done, "seconds": round(elapsed, 3),
            "images_per_s": round(done / elapsed, 2)}


def offline_settings(handler_settings: dict) -> dict:
    """The served handler settings for one process that has the whole machine: every core decodes and computes
    (a served worker may be given a share of the cores with decode_threads and torch_threads)."""
    return {**handler_settings, "decode_threads": os.cpu_count() or 1, "torch_threads": 0}


def run_offline(run: Path, photos_by_size: dict[str, list[bytes]], batch_sizes: list[int], seconds: float,
                handler_settings: dict) -> dict:
    handler_settings = offline_settings(handler_settings)
    handler = load_handler(run, handler_settings, max(batch_sizes))
    results = {}
    for size, photos in photos_by_size.items():
        rows = []
        for b in batch_sizes:
            row = offline_rate(handler, photos, b, seconds)
            print(f"  offline {size:6s} batch {b:3d}: {row['images_per_s']:8.2f} img/s", flush=True)
            rows.append(row)
        best = max(rows, key=lambda r: r["images_per_s"])
        results[size] = {"by_batch_size": rows, "best_batch_size": best["batch_size"],
                         "images_per_s": best["images_per_s"]}
    return {"runtime": handler.runtime.describe(), "jpeg_decoder": handler.jpeg_decoder,
            "image_size": handler.image_size, "decode_threads": handler_settings["decode_threads"],
            "sizes": results}


# Each GPU-path handler setting, measured at both values while the others keep their shipped ones.
TOGGLES = {"precision": ("fp32", "bf16"), "channels_last": (False, True), "compile": (False, "default"),
           "jpeg_decoder": ("pil", "torchvision")}


def run_toggles(run: Path, photos_by_size: dict[str, list[bytes]], offline: dict, seconds: float,
                handler_settings: dict, names: list[str]) -> dict:
    """Offline img/s with each setting on and off, at each size class's best offline batch size."""
    results = {}
    for name in names:
        values = {}
        for value in TOGGLES[name]:
            settings = {**offline_settings(handler_settings), name: value}
            t0 = time.perf_counter()
            handler = load_handler(run, settings, max(o["best_batch_size"] for o in offline["sizes"].values()))
            start_s = time.perf_counter() - t0
            rates = {size: offline_rate(handler, photos, offline["sizes"][size]["best_batch_size"],
                                        seconds)["images_per_s"] for size, photos in photos_by_size.items()}
            values[str(value)] = {"worker_start_s": round(start_s, 1), "images_per_s": rates,
                                  "runtime": handler.runtime.describe(), "jpeg_decoder": handler.jpeg_decoder}
            print(f"  {name}={value}: " + ", ".join(f"{k} {v:.2f} img/s" for k, v in rates.items())
                  + f"  (worker start {start_s:.1f} s)", flush=True)
        results[name] = values
    return results


# ---- served -----------------------------------------------------------------------------------------------------
def build_archive(run: Path, store: Path, build: Path, model_config: Path) -> Path:
    subprocess.run(["make", "--no-print-directory", "archive", f"RUN={run}", f"STORE={store}", "VERSION=1.0",
                    f"BUILD={build}", f"MODEL_CONFIG={model_config}"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    return store / "tagger.mar"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summarize(outcomes: list[Outcome]) -> dict:
    ok = [o for o in outcomes if o.status == 200]
    latencies = sorted(1000 * o.seconds for o in ok)
    span = (max(o.finished for o in ok) - min(o.started for o in ok)) if ok else float("nan")
    return {"requests": len(outcomes), "ok": len(ok), "errors": len(outcomes) - len(ok),
            "error_statuses": sorted({o.status for o in outcomes if o.status != 200}),
            "images_per_s": round(len(ok) / span, 2) if ok else 0.0,
            "p50_ms": round(percentile(latencies, 50), 1), "p95_ms": round(percentile(latencies, 95), 1),
            "p99_ms": round(percentile(latencies, 99), 1)}


def server_cpu_seconds(server: TorchServe) -> float:
    """CPU seconds used so far by the server's process tree (frontend + worker)."""
    total = 0.0
    try:
        root = psutil.Process(server.process.pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def run_served(name: str, archive_store: Path | None, workdir: Path, photos_by_size: dict[str, list[bytes]],
               clients: int, seconds: float, warmup: float, server=None) -> dict:
    """Load one server (a TorchServe of `archive_store`, or `server`: anything with start/stop, process,
    inference_url and key_file, such as the FastAPI baseline) with each size class in turn."""
    server = server or TorchServe(workdir, archive_store)
    t0 = time.monotonic()
    server.start()
    startup = time.monotonic() - t0
    me = psutil.Process()
    results = {}
    try:
        for size, photos in photos_by_size.items():
            steady_load(server.inference_url, server.key_file, photos, clients, warmup)
            me.cpu_percent(None)
            psutil.cpu_percent(None)
            srv0, wall0 = server_cpu_seconds(server), time.monotonic()
            outcomes = steady_load(server.inference_url, server.key_file, photos, clients, seconds).outcomes
            wall = time.monotonic() - wall0
            row = summarize(outcomes)
            row["client_cpu_percent"] = round(me.cpu_percent(None), 1)  # 100 = one core busy
            row["server_cpu_percent"] = round(100 * (server_cpu_seconds(server) - srv0) / wall, 1)
            row["machine_cpu_percent"] = round(psutil.cpu_percent(None), 1)  # 100 = every core busy
            results[size] = row
            print(f"  {name:6s} {size:6s}: {row['images_per_s']:8.2f} img/s  p50 {row['p50_ms']:.0f} ms  "
                  f"p99 {row['p99_ms']:.0f} ms  errors {row['errors']}  client CPU {row['client_cpu_percent']}%",
                  flush=True)
    finally:
        server.stop()
    return {"startup_s": round(startup, 1), "sizes": results}


def apply_overrides(config: dict, variant: str) -> dict:
    """'batchSize=16,handler.torch_threads=0' -> a copy of the model-config with those keys set (YAML values)."""
    config = {**config, "handler": dict(config.get("handler") or {})}
    for item in variant.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        section, _, name = key.strip().rpartition(".")
        if section not in ("", "handler"):
            raise ValueError(f"only top-level keys and handler.KEY can be changed, not {key!r}")
        (config["handler"] if section else config)[name] = yaml.safe_load(value)
    return config


# ---- report -----------------------------------------------------------------------------------------------------
def describe_model(run: Path) -> dict:
    """What the benchmarked checkpoint is: the size the figures are for comes from the checkpoint itself."""
    payload = read_checkpoint(run / "model.pt")
    config, args = ModelConfig.from_dict(payload["model_config"]), payload.get("args") or {}
    return {"arch": config.arch, "image_size": config.image_size, "resize": config.resize,
            "random_init": bool(args.get("random_init", False)), "int8": int8_summary(run)}


def int8_summary(run: Path) -> dict | None:
    """The run's int8 package check (training/quantize.py), reported next to the speed it buys; None: no package."""
    report = read_report(run)
    if report is None or not (run / PACKAGE_FILE).exists():
        return None
    check = report["check"]
    return {"tag_agreement": check["tag_agreement"], "identical_tags": check["identical_tags"],
            "photos": check["photos"], "check_source": check["source"], "passed": check["passed"],
            "reference": report["reference"], "metric_changes": check["metric_changes"],
            "usable_here": incompatibility(report, run / "model.pt") is None}


def serving_settings(path: Path) -> dict:
    config = yaml.safe_load(path.read_text())
    keys = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return {"file": str(shown), **{k: config.get(k) for k in keys}, "handler": config.get("handler", {})}


def table(report: dict) -> str:
    lines = [f"{'setup':8s} {'size':7s} {'img/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'errors':>7s}"
             f" {'client CPU':>11s} {'server CPU':>11s}",
             "-" * 85]
    offline = report["offline"]["sizes"]
    for size in report["sizes"]:
        o = offline[size]
        lines.append(f"{'offline':8s} {size:7s} {o['images_per_s']:8.2f} {'-':>8s} {'-':>8s} {'-':>8s} {'-':>7s}"
                     f" {'(batch ' + str(o['best_batch_size']) + ')':>11s} {'':>11s}")
        for setup in ("original", "naive", "tuned"):
            if not report.get(setup):
                continue
            r = report[setup]["sizes"][size]
            lines.append(f"{setup:8s} {size:7s} {r['images_per_s']:8.2f} {r['p50_ms']:8.0f} {r['p95_ms']:8.0f}"
                         f" {r['p99_ms']:8.0f} {r['errors']:7d} {r['client_cpu_percent']:10.0f}%"
                         f" {r['server_cpu_percent']:10.0f}%")
    lines.append("")
    model = report["model"]
    lines.insert(0, f"model: {model['arch']}, {model['image_size']} px input"
                    + (" (random init)" if model["random_init"] else "") + f", from {report['run']}")
    int8 = model.get("int8")
    lines.insert(1, f"served runtime (offline handler, shipped settings): {report['offline']['runtime']}")
    if int8:
        lines.insert(2, f"int8 package: identical tags vs eager ({int8['reference']}) on {int8['identical_tags']} of "
                        f"{int8['photos']} held-out photos ({100 * int8['tag_agreement']:.1f}%), largest metric "
                        f"change {max(abs(v) for v in int8['metric_changes'].values()):.4f}: check "
                        f"{'passed' if int8['passed'] else 'FAILED (auto serves eager)'}")
    for size, ratio in report["ratios"].items():
        if ratio.get("tuned_over_original") is not None:
            lines.append(f"{size:7s} tuned/original {ratio['tuned_over_original']:.2f}x")
        lines.append(f"{size:7s} tuned/naive {ratio['tuned_over_naive']:.2f}x   "
                     f"tuned/offline {ratio['tuned_over_offline']:.2f}   "
                     f"naive/offline {ratio['naive_over_offline']:.2f}")
    for name, result in [("tuned as shipped", report["tuned"]), *report.get("variants", {}).items()]:
        lines.append(f"served {name}: " + ", ".join(
            f"{size} {r['images_per_s']:.1f} img/s p99 {r['p99_ms']:.0f} ms" for size, r in result["sizes"].items()))
    for name, values in report.get("toggles", {}).items():
        cells = "   ".join(
            f"{name}={value}: " + ", ".join(f"{size} {rate:.1f}" for size, rate in v["images_per_s"].items())
            for value, v in values.items())
        lines.append(f"offline img/s  {cells}")
    m = report["machine"]
    lines.append("")
    lines.append(f"{m['cpu_count']} CPUs, torch threads {m['torch_threads']}; client = {report['load']['clients']} "
                 f"closed-loop Python threads (requests) in the bench process, sharing the cores with the server "
                 f"(CPU % : 100 = one core).")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="training run with model.pt")
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"), help="where the JSON report goes")
    parser.add_argument("--seconds", type=float, default=20, help="measured load per setup and size class")
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured load before each measured phase")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="closed-loop clients: enough that the next batch is queued while one is computed")
    parser.add_argument("--sizes", default="small,phone", help=f"comma list of {','.join(SIZES)}")
    parser.add_argument("--batch-sizes", default="1,8,16,32", help="offline batch sizes tried")
    parser.add_argument("--offline-seconds", type=float, default=None,
                        help="per offline batch size (default: a quarter of --seconds, at least 2)")
    parser.add_argument("--images", type=int, default=4, help="distinct photos per size class")
    parser.add_argument("--tuned-config", type=Path, default=TUNED_CONFIG,
                        help="model-config.yaml of the tuned setup (default: the shipped one)")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="also serve the tuned config with these keys changed (repeatable), e.g. batchSize=16 "
                             "or minWorkers=1,maxWorkers=1,handler.torch_threads=0: the measurements that chose "
                             "the shipped values")
    parser.add_argument("--no-original", dest="original", action="store_false",
                        help="leave out the original write-up's FastAPI server (served by default, first)")
    parser.add_argument("--toggles", default="precision,channels_last,jpeg_decoder",
                        help=f"handler settings measured on and off offline (comma list of {','.join(TOGGLES)}; "
                             "'' for none; compile costs minutes of worker start on a CPU)")
    return parser


@dataclass(frozen=True)
class BenchPlan:
    """The command line, checked: what to measure and for how long."""

    run: Path
    sizes: list[str]
    batch_sizes: list[int]
    offline_seconds: float
    toggles: list[str]
    tuned_config: Path


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> BenchPlan:
    """Refuses (parser.error, exit 2) an unknown size class, variant key or toggle, or a run without a model."""
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size class {unknown}; choose from {list(SIZES)}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    for variant in args.variant:
        try:
            apply_overrides({"handler": {}}, variant)
        except ValueError as exc:
            parser.error(f"--variant {variant!r}: {exc}")
    toggle_names = [t.strip() for t in args.toggles.split(",") if t.strip()]
    if any(t not in TOGGLES for t in toggle_names):
        parser.error(f"--toggles: choose from {list(TOGGLES)}")
    run = args.run.resolve()
    if not (run / "model.pt").is_file():
        parser.error(f"{run}/model.pt not found")
    return BenchPlan(run=run, sizes=sizes, batch_sizes=batch_sizes,
                     offline_seconds=args.offline_seconds or max(2.0, args.seconds / 4), toggles=toggle_names,
                     tuned_config=args.tuned_config.resolve())


def run_bench(args: argparse.Namespace, plan: BenchPlan) -> dict:
    """Offline ceiling, settings on/off, then naive, tuned and each variant served by a real TorchServe."""
    sizes = plan.sizes
    tuned_settings = serving_settings(plan.tuned_config)
    print(f"rendering {args.images} JPEGs (quality 90) per size class: {', '.join(sizes)}", flush=True)
    photos = {s: render_jpegs(*SIZES[s], args.images, seed=i + 1) for i, s in enumerate(sizes)}

    print("offline ceiling (no HTTP, same decode + forward code)", flush=True)
    offline = run_offline(plan.run, photos, plan.batch_sizes, plan.offline_seconds, tuned_settings["handler"])
    toggles = {}
    if plan.toggles:
        print("settings on/off (offline, best batch size)", flush=True)
        toggles = run_toggles(plan.run, photos, offline, plan.offline_seconds, tuned_settings["handler"],
                              plan.toggles)

    served, variants = {}, {}
    with tempfile.TemporaryDirectory(prefix="tagger-bench-") as tmp:
        tmp = Path(tmp)
        # (label, model-config, where its result goes, under which key)
        setups = [("naive", NAIVE_CONFIG, served, "naive"), ("tuned", plan.tuned_config, served, "tuned")]
        for index, variant in enumerate(args.variant):
            path = tmp / f"model-config.variant{index}.yaml"
            path.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(plan.tuned_config.read_text()), variant)))
            setups.append((f"variant{index}", path, variants, variant))
        if args.original:
            print("original: the write-up's FastAPI server (loadtests/fastapi_baseline.py)", flush=True)
            baseline = FastApiBaseline(tmp / "original", plan.run)
            served["original"] = run_served("orig", None, tmp / "original", photos, args.concurrency, args.seconds,
                                            args.warmup, server=baseline)
        for label, config, results, key in setups:
            store = tmp / label / "model_store"
            build_archive(plan.run, store, tmp / f"build-{label}", config)
            print(f"{label}: serving {config.name}" + (f" (tuned with {key})" if key != label else ""), flush=True)
            results[key] = run_served(label, store, tmp / label / "server", photos, args.concurrency, args.seconds,
                                      args.warmup)

    return {"photos": photos, "offline": offline, "toggles": toggles, "served": served, "variants": variants,
            "settings": {"naive": serving_settings(NAIVE_CONFIG), "tuned": tuned_settings}}


def build_report(args: argparse.Namespace, plan: BenchPlan, measured: dict, argv, seconds: float) -> dict:
    """The JSON report: machine, load, every measurement and the tuned/naive/offline ratios per size class."""
    sizes, served, offline, photos = plan.sizes, measured["served"], measured["offline"], measured["photos"]
    ratios = {}
    for s in sizes:
        t, n, o = (served["tuned"]["sizes"][s]["images_per_s"], served["naive"]["sizes"][s]["images_per_s"],
                   offline["sizes"][s]["images_per_s"])
        ratios[s] = {"tuned_over_naive": round(t / n, 2) if n else None,
                     "tuned_over_offline": round(t / o, 2) if o else None,
                     "naive_over_offline": round(n / o, 2) if o else None}
        if "original" in served:
            g = served["original"]["sizes"][s]["images_per_s"]
            ratios[s]["tuned_over_original"] = round(t / g, 2) if g else None

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m loadtests.bench " + " ".join(argv if argv is not None else os.sys.argv[1:]),
        "run": str(args.run),
        "model": describe_model(plan.run),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "platform": platform.platform(), "cuda": torch.cuda.is_available()},
        "sizes": sizes,
        "size_pixels": {s: list(SIZES[s]) for s in sizes},
        "jpeg_bytes": {s: [len(b) for b in photos[s]] for s in sizes},
        "settings": measured["settings"],
        "load": {"generator": "closed-loop Python threads + requests.Session, in the bench process",
                 "clients": args.concurrency, "seconds": args.seconds, "warmup_seconds": args.warmup,
                 "note": "client and server share the same cores; client_cpu_percent is the bench process "
                         "(100 = one core), server_cpu_percent the TorchServe process tree, "
                         "machine_cpu_percent all cores (100 = all busy)"},
        "offline": offline,
        "toggles": measured["toggles"],
        "variants": measured["variants"],
        "original": served.get("original"),
        "naive": served["naive"],
        "tuned": served["tuned"],
        "ratios": ratios,
        "total_seconds": round(seconds, 1),
    }


def main(argv=None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    plan = validate(args, parser)
    started = time.monotonic()
    measured = run_bench(args, plan)
    report = build_report(args, plan, measured, argv, time.monotonic() - started)
    print()
    print(table(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    print(f"\nwrote {args.out} ({report['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
