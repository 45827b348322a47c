"""The benchmark's building blocks without a server: config variants and the offline ceiling's handler."""
from __future__ import annotations

import pytest
import torch

from loadtests.bench import apply_overrides, load_handler, offline_rate, offline_settings
from training.synth import render_jpegs


def test_variants_change_only_the_named_keys():
    shipped = {"batchSize": 8, "minWorkers": 2, "handler": {"precision": "auto", "torch_threads": 1}}
    variant = apply_overrides(shipped, "batchSize=16,handler.torch_threads=0,handler.compile=default")
    assert variant == {"batchSize": 16, "minWorkers": 2,
                       "handler": {"precision": "auto", "torch_threads": 0, "compile": "default"}}
    assert shipped["handler"] == {"precision": "auto", "torch_threads": 1}  # the shipped config is untouched
    for bad in ("batchSize", "=3", "handler.x.y=1", "other.key=1"):
        with pytest.raises(ValueError):
            apply_overrides(shipped, bad)


def test_offline_ceiling_runs_the_served_handler(tiny_run):
    threads = torch.get_num_threads()
    settings = offline_settings({"precision": "fp32", "torch_threads": 1, "decode_threads": 1})
    assert settings["torch_threads"] == 0 and settings["decode_threads"] >= 1  # one process owns the machine
    handler = load_handler(tiny_run, settings, batch_size=4)
    assert torch.get_num_threads() == threads
    row = offline_rate(handler, render_jpegs(96, 96, 3, seed=5), batch_size=4, seconds=0.2)
    assert row["images"] >= 4 and row["images"] % 4 == 0 and row["images_per_s"] > 0


def test_random_init_run_loads_and_tags_at_its_size(tmp_path):
    """The tool behind `make bench RUN=runs/random-256`: a checkpoint of the project's format at the asked size,
    which the served handler loads and tags with, and which the bench report describes by its own size."""
    from loadtests.bench import describe_model
    from loadtests.random_model import write_random_run

    run = write_random_run(tmp_path / "random-64", image_size=64, arch="resnet18", calibration_photos=2)
    assert (run / "taxonomy.json").is_file()
    assert describe_model(run) == {"arch": "resnet18", "image_size": 64, "resize": "squash", "random_init": True,
                                   "int8": None}  # no int8 package: the report says so
    handler = load_handler(run, {"precision": "fp32", "decode_threads": 1}, batch_size=2)
    assert handler.image_size == 64
    rows = [{"body": b} for b in render_jpegs(80, 60, 2, seed=3)]
    batch, prepared = handler.preprocess(rows, [None, None])
    answers = handler.postprocess(handler.inference(batch), prepared)
    assert [sorted(a) for a in answers] == [sorted(answers[0])] * 2 and "tags" in answers[0]


def test_fastapi_baseline_answers_a_photo(tiny_run, tmp_path):
    """The original write-up's server, as the bench serves it: the tag JSON for a photo, 400 for junk."""
    import requests

    from loadtests.fastapi_baseline import FastApiBaseline
    from loadtests.faults import send

    server = FastApiBaseline(tmp_path, tiny_run).start()
    try:
        [photo] = render_jpegs(300, 200, 1, seed=4)
        outcome = send(server.inference_url, server.key_file, photo)
        assert outcome.status == 200 and outcome.json_body
        answer = requests.post(f"{server.inference_url}/predictions/tagger", data=photo, timeout=30).json()
        assert {"time_of_day", "season", "terrain", "objects", "tags"} <= set(answer)
        assert requests.post(f"{server.inference_url}/predictions/tagger", data=b"junk", timeout=30).status_code == 400
    finally:
        server.stop()
    assert server.process.poll() is not None


def test_latency_breakdown_reads_torchserve_metric_logs(tmp_path):
    """loadtests.latency --run: medians of TorchServe's log-mode metric lines, only those after a mark."""
    from loadtests.latency import metric_medians

    (tmp_path / "ts_metrics.log").write_text(
        "2026-11-27T10:00:00,001 - QueueTime.Milliseconds:90.0|#Level:Host|#hostname:h,timestamp:1\n"
        "2026-11-27T10:00:01,001 - QueueTime.Milliseconds:2.0|#Level:Host|#hostname:h,timestamp:2\n"
        "2026-11-27T10:00:01,002 - ts_inference_latency_microseconds.Microseconds:30000.0|#model_name:tagger|#h\n")
    (tmp_path / "model_metrics.log").write_text(
        "2026-11-27T10:00:01,003 - HandlerTime.Milliseconds:20.0|#ModelName:tagger,Level:Model|#type:GAUGE|#h\n"
        "2026-11-27T10:00:01,004 - HandlerTime.Milliseconds:24.0|#ModelName:tagger,Level:Model|#type:GAUGE|#h\n")
    medians, counts = metric_medians(tmp_path, {"ts_metrics.log": 1})
    assert counts == {"ts_metrics.log": 3, "model_metrics.log": 2}
    assert medians == {"QueueTime": 2.0, "ts_inference_latency_microseconds": 30.0, "HandlerTime": 22.0}
