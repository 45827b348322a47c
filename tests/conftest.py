"""Shared fixtures: a tiny synthetic data set, a model trained on it by the real CLI, archives built by
`make archive`, and a real TorchServe serving them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.torchserve_process import REPO, TorchServe

PYTHON = sys.executable


def run(cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a project command from the repo root; with check, a failure shows its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """24 small synthetic scenes in the original CSV format; returns the CSV path."""
    out = tmp_path_factory.mktemp("tiny_data")
    run([PYTHON, "-m", "training.synth", "--out", str(out), "--count", "24", "--seed", "5", "--max-size", "480",
         "--workers", "2"])
    return out / "labels.csv"


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory) -> Path:
    """A ResNet34 tagger trained for one quick epoch by the real training CLI (quality is not the point). A small
    learning rate: three steps at the default peak leave batch-norm statistics so far from the weights that eval
    mode gives logits in the millions, and tests compare answers between precisions and paths.

    Letterboxed input and GeM object pooling (neither is the default), so that the served
    tests exercise the preprocessing and pooling that differ most from the old squash + average model."""
    out = tmp_path_factory.mktemp("tiny_run")
    run([PYTHON, "-m", "training.train", "--data", str(tiny_dataset), "--epochs", "1", "--batch-size", "8",
         "--image-size", "64", "--val-fraction", "0.25", "--lr", "0.005", "--resize", "letterbox",
         "--object-pooling", "gem",
         "--output-dir", str(out)])
    return out


@pytest.fixture(scope="session")
def model_store(tiny_run, tmp_path_factory) -> Path:
    """tagger.mar (version 1.0) and tagger-2.0.mar built by `make archive` from the same run."""
    store = tmp_path_factory.mktemp("store") / "model_store"
    build = tmp_path_factory.mktemp("build")
    for version in ("1.0", "2.0"):
        run(["make", "--no-print-directory", "archive", f"RUN={tiny_run}", f"STORE={store}", f"VERSION={version}",
             f"BUILD={build}"])
    return store


@pytest.fixture(scope="session")
def server(model_store, tmp_path_factory):
    """A real TorchServe with the project's config.properties (token auth on), on free ports."""
    ts = TorchServe(tmp_path_factory.mktemp("torchserve"), model_store)
    ts.start()
    yield ts
    ts.stop()


@pytest.fixture(scope="session")
def sample_images(tiny_dataset) -> list[bytes]:
    return [p.read_bytes() for p in sorted((tiny_dataset.parent / "images").iterdir())]
