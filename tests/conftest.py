"""Shared fixtures: a tiny synthetic data set, a model trained on it by the real CLI, archives built by
`make archive`, and a real TorchServe serving them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from serving.torchserve_process import REPO, TorchServe

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

    --bn-photos 0 keeps the running batch-norm averages of those few steps: set exactly from the photos
    (training.objects.recalibrate_batch_norm), a network this far from trained is a chaotic function of its input,
    whose answers swing with each rounding of bf16, int8 or another resize, and these tests compare such paths.
    tests/test_objects.py tests the recalibration itself.

    Letterboxed input (not the default) and the per-cell object head trained from the box sidecar on crops, so
    that the served tests exercise the preprocessing and the head that differ most from the old squash + average
    model."""
    out = tmp_path_factory.mktemp("tiny_run")
    run([PYTHON, "-m", "training.train", "--data", str(tiny_dataset), "--epochs", "1", "--batch-size", "8",
         "--image-size", "64", "--val-fraction", "0.25", "--lr", "0.005", "--resize", "letterbox",
         "--crops-per-step", "8", "--crop-size", "32", "--bn-photos", "0",
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


# ---- the `server` marker -------------------------------------------------------------------------------------------
# `pytest -m "not server"` is the quick run, also on a machine without Java, so the marker must sit on exactly the
# tests that need a TorchServe. Every TorchServe.start() in the test process is watched, and so is every fixture
# that leaves a `torchserve` child process behind (the KServe tests start the bundle's server themselves): a test
# without the marker that starts one, itself or through a fixture it asks for, fails. A marked test that starts
# none gets a warning.
_server_fixtures: set[str] = set()  # fixtures seen starting a TorchServe
_in_setup: list[str] = []  # the fixtures being set up, innermost last
_current: dict = {"item": None, "started": False}  # the test being run; whether its own body started a TorchServe
_unwatched_start = TorchServe.start


def _watched_start(self, *args, **kwargs):
    item = _current["item"]
    if item is not None:
        if _in_setup:
            _server_fixtures.add(_in_setup[-1])
        else:
            _current["started"] = True
        if item.get_closest_marker("server") is None:
            through = f" through fixture {_in_setup[-1]!r}" if _in_setup else ""
            pytest.fail(f"{item.nodeid} starts TorchServe{through} but is not marked @pytest.mark.server",
                        pytrace=False)
    return _unwatched_start(self, *args, **kwargs)


TorchServe.start = _watched_start


def _torchserve_children() -> set[int]:
    found = set()
    for child in psutil.Process().children():
        try:
            if any(Path(arg).name == "torchserve" for arg in child.cmdline()[:2]):
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


class _ServerMarkerGuard:
    """Registered as a plugin of its own: hooks in a conftest only see the nodes below it, and session fixtures
    (`server`) are set up by the session node."""

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        _in_setup.append(fixturedef.argname)
        before = _torchserve_children()
        try:
            return (yield)
        finally:
            _in_setup.pop()
            if _torchserve_children() - before:
                _server_fixtures.add(fixturedef.argname)

    def pytest_runtest_setup(self, item):
        _current.update(item=item, started=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        # Fixtures are set up by now, so every one that starts a TorchServe is known, even one started earlier for
        # another test.
        marked = item.get_closest_marker("server") is not None
        fixtures = sorted(_server_fixtures & set(item.fixturenames))
        if fixtures and not marked:
            pytest.fail(f"{item.nodeid} uses TorchServe (fixtures {fixtures}) but is not marked @pytest.mark.server",
                        pytrace=False)
        result = yield
        if marked and not fixtures and not _current["started"]:
            item.warn(pytest.PytestWarning(f"{item.nodeid} is marked server but starts no TorchServe"))
        return result


def pytest_configure(config):
    config.pluginmanager.register(_ServerMarkerGuard(), "server-marker-guard")
