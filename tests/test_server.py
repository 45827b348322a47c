"""End to end against a real TorchServe started from the project's config.properties (token auth on):
REST and gRPC inference, batching, bad input inside a concurrent burst, management of model versions."""
from __future__ import annotations

import base64
import io
import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import requests
from PIL import Image

from client.auth import bearer
from client.grpc_client import GrpcTagger
from client.rest import ServiceError, call, tag_image

pytestmark = pytest.mark.server
GROUPS = {"time_of_day", "season", "terrain", "objects", "tags", "model_version", "image"}
# TorchServe 0.12's answer to a missing, wrong or expired token on every API (never 401).
KEY_REFUSED = {"code": 400, "type": "InvalidKeyException",
               "message": "Token Authorization failed. Token either incorrect, expired, or not provided correctly"}


def post(server, data=None, version=None, **kwargs):
    url = f"{server.inference_url}/predictions/tagger" + (f"/{version}" if version else "")
    return call("POST", url, "inference", server.key_file, data=data, **kwargs)


def manage(server, method, path, **kwargs):
    return call(method, f"{server.management_url}{path}", "management", server.key_file, **kwargs)


def test_ping_and_metrics(server):
    # TorchServe 0.12 guards /ping with the inference token too.
    unauthorised = requests.get(f"{server.inference_url}/ping", timeout=10)
    assert (unauthorised.status_code, unauthorised.json()) == (400, KEY_REFUSED)
    ping = call("GET", f"{server.inference_url}/ping", "inference", server.key_file)
    assert ping.json()["status"] == "Healthy", ping.text
    post(server, data=b"\xff\xd8\xff")
    metrics = requests.get(f"{server.metrics_url}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "ts_inference_requests_total" in metrics.text


def test_rest_single_image_has_the_documented_shape(server, sample_images):
    result = tag_image(sample_images[0], url=server.inference_url, key_file=server.key_file)
    assert set(result) == GROUPS
    assert result["model_version"] == "1.0"
    assert set(result["time_of_day"]["scores"]) == {"unknown", "day", "night", "twilight"}
    assert len(result["objects"]["scores"]) == 8
    assert all(0.0 <= v <= 1.0 for v in result["objects"]["scores"].values())
    # Where each tagged object is, in the photo's own pixels (and normalised to 0-1).
    width, height = Image.open(io.BytesIO(sample_images[0])).size
    assert result["image"] == {"width": width, "height": height}
    assert set(result["objects"]["boxes"]) == set(result["objects"]["labels"])
    for boxes in result["objects"]["boxes"].values():
        assert boxes
        for box in boxes:
            x0, y0, x1, y1 = box["box"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and 0 < box["score"] <= 1
            assert box["box_normalized"] == pytest.approx([x0 / width, y0 / height, x1 / width, y1 / height],
                                                          abs=1e-3)


def test_requests_without_a_valid_token_are_refused(server, sample_images):
    url = f"{server.inference_url}/predictions/tagger"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = requests.post(url, data=sample_images[0], headers=headers, timeout=30)
        assert (response.status_code, response.json()) == (400, KEY_REFUSED), response.text
    models = requests.get(f"{server.management_url}/models", timeout=30)
    assert (models.status_code, models.json()) == (400, KEY_REFUSED), models.text


def test_multipart_and_base64_inputs_give_the_same_tags(server, sample_images):
    raw = post(server, data=sample_images[1]).json()
    url = f"{server.inference_url}/predictions/tagger"
    multipart = requests.post(url, files={"data": ("photo.jpg", sample_images[1], "image/jpeg")},
                              headers=bearer("inference", server.key_file), timeout=60).json()
    as_json = requests.post(url, json={"data": base64.b64encode(sample_images[1]).decode()},
                            headers=bearer("inference", server.key_file), timeout=60).json()
    assert raw["tags"] == multipart["tags"] == as_json["tags"]
    assert raw["season"]["scores"] == pytest.approx(as_json["season"]["scores"], abs=1e-4)


@pytest.mark.parametrize("body, content_type, reason", [
    (b"", "application/octet-stream", None),
    (b"<html><body>hello</body></html>", "text/html", None),
    (b"%PDF-1.7\n%\xe2\xe3", "application/pdf", "not_an_image"),
    (b'{"data": "###"}', "application/json", "bad_base64"),
    (b'[{"data": "AAAA"}]', "application/json", "bad_json"),
    (b'{"image": "AAAA"}', "application/json", "bad_json"),
])
def test_bad_input_gets_400_with_a_json_message(server, body, content_type, reason):
    response = post(server, data=body, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["code"] == 400 and payload["error"]
    if reason:
        assert payload["reason"] == reason


def test_concurrent_burst_is_batched_and_a_corrupt_file_fails_alone(server, sample_images):
    good = sample_images[:12] * 2
    alone = {i: post(server, data=img).json()["tags"] for i, img in enumerate(sample_images[:12])}
    corrupt = {5: b"GIF89a\x00\x00garbage", 11: sample_images[0][:400], 17: b"just text"}
    bodies = [corrupt.get(i, img) for i, img in enumerate(good)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: post(server, data=b), bodies))
    for i, response in enumerate(responses):
        if i in corrupt:
            assert response.status_code == 400 and response.json()["code"] == 400
        else:
            assert response.status_code == 200, response.text
            assert response.json()["tags"] == alone[i % 12]
    batches = [tuple(map(int, m)) for m in
               re.findall(r"batch of (\d+) requests: (\d+) tagged, (\d+) refused", server.log_text())]
    assert any(size > 1 for size, _, _ in batches), batches
    assert any(tagged > 0 and refused > 0 for _, tagged, refused in batches), batches


def test_grpc_predictions(server, sample_images):
    with GrpcTagger(server.grpc_target, server.key_file) as tagger:
        result = tagger.tag(sample_images[2])
        assert set(result) == GROUPS
        assert result["tags"] == post(server, data=sample_images[2]).json()["tags"]
        refused = tagger.tag(b"definitely not an image")
        assert refused["code"] == 400 and "not a recognised image" in refused["error"]


def test_grpc_without_token_is_refused(server, sample_images):
    import inference_pb2
    import inference_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predictions(inference_pb2.PredictionsRequest(model_name="tagger", input={"data": sample_images[0]}),
                             timeout=30)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "Token Authorization failed" in info.value.details()


def test_client_raises_service_error_with_the_message(server):
    with pytest.raises(ServiceError) as info:
        tag_image(b"plain text", url=server.inference_url, key_file=server.key_file)
    assert info.value.status == 400 and "not a recognised image" in info.value.body


def test_model_version_lifecycle(server, sample_images):
    """Register 2.0, list versions, make it the default, scale it, then roll back and unregister it."""
    registered = manage(server, "POST", "/models?url=tagger-2.0.mar&initial_workers=1&synchronous=true")
    assert registered.status_code == 200, registered.text
    try:
        versions = {v["modelVersion"] for v in manage(server, "GET", "/models/tagger/all").json()}
        assert versions == {"1.0", "2.0"}
        assert post(server, data=sample_images[0], version="2.0").json()["model_version"] == "2.0"
        assert post(server, data=sample_images[0]).json()["model_version"] == "1.0"

        assert manage(server, "PUT", "/models/tagger/2.0/set-default").status_code == 200
        assert post(server, data=sample_images[0]).json()["model_version"] == "2.0"

        scaled = manage(server, "PUT", "/models/tagger/2.0?min_worker=2&max_worker=2&synchronous=true")
        assert scaled.status_code == 200, scaled.text
        [described] = manage(server, "GET", "/models/tagger/2.0").json()
        assert len(described["workers"]) == 2
        manage(server, "PUT", "/models/tagger/2.0?min_worker=1&max_worker=1&synchronous=true")

        # The default version cannot be unregistered: roll back first.
        kept = manage(server, "DELETE", "/models/tagger/2.0")
        assert kept.status_code == 403, kept.text
        assert kept.json() == {"code": 403, "type": "InvalidModelVersionException",
                               "message": "Cannot remove default version for model tagger"}
        assert manage(server, "PUT", "/models/tagger/1.0/set-default").status_code == 200
    finally:
        manage(server, "PUT", "/models/tagger/1.0/set-default")
        deleted = manage(server, "DELETE", "/models/tagger/2.0")
    assert deleted.status_code == 200, deleted.text
    versions = {v["modelVersion"] for v in manage(server, "GET", "/models/tagger/all").json()}
    assert versions == {"1.0"}
    assert post(server, data=sample_images[0]).json()["model_version"] == "1.0"


def test_registering_from_outside_the_model_store_is_refused(server):
    before = manage(server, "GET", "/models").json()
    for url in ("https://example.com/tagger.mar", "file:///etc/passwd"):
        response = manage(server, "POST", f"/models?url={url}")
        assert response.status_code == 404, response.text
        assert response.json() == {"code": 404, "type": "ModelNotFoundException",
                                   "message": f"Given URL {url} does not match any allowed URL(s)"}
    assert manage(server, "GET", "/models").json() == before
