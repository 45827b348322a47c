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
