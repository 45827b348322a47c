"""The handler's custom metrics reach TorchServe's Prometheus endpoint after a few requests."""
from __future__ import annotations

import re
import time

import pytest
import requests

from client.rest import call

pytestmark = pytest.mark.server


def scrape(server) -> str:
    return requests.get(f"{server.metrics_url}/metrics", timeout=30).text


def test_handler_metrics_on_prometheus_endpoint(server, sample_images):
    url = f"{server.inference_url}/predictions/tagger"
    tags = call("POST", url, "inference", server.key_file, data=sample_images[0]).json()["tags"]
    assert call("POST", url, "inference", server.key_file, data=b"%PDF-1.4 nope").status_code == 400
    deadline, text = time.monotonic() + 30, ""
    while time.monotonic() < deadline:  # the frontend reads backend metrics from the worker's log stream
        text = scrape(server)
        if "TaggerTagsServed" in text and "TaggerDecodeFailures" in text:
            break
        time.sleep(1)
    for name in ("TaggerDecodeTime", "TaggerInferenceTime", "TaggerBatchSize", "TaggerDecodeFailures",
                 "TaggerTagsServed"):
        assert re.search(rf"^{name}\{{", text, re.M), f"{name} missing from /metrics"
    assert re.search(r'^TaggerDecodeFailures\{.*Reason="not_an_image".*\} [1-9]', text, re.M)
    for tag in tags:
        assert re.search(rf'^TaggerTagsServed\{{.*Tag="{tag}".*\}} [1-9]', text, re.M), tag
