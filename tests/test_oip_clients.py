"""A standard Open Inference Protocol client, tritonclient's HTTP client from PyPI (no one here wrote it), against
real servers:

- the one box: a TorchServe with the project's config.properties (token auth on), in JSON mode (tritonclient sends
  the JSON without a Content-Type) and in binary mode (OIP's binary tensor extension), with the same tags as
  `/predictions/tagger`; refused photos in either mode, alone and inside a batch; and what TorchServe 0.12 serves
  of OIP's other endpoints (the README's table is this test's finding);
- the KServe path: TorchServe started from the bundle's own config, with KServe's wrapper (the real kserve 0.13.0,
  tests/kserve_wrapper.py) in front, as in the pod: the documented path for standard clients.
"""
from __future__ import annotations

import base64
import json
import re
import time

import grpc
import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from client.auth import bearer
from phototag.payload import INFERENCE_HEADER
from serving.kserve_bundle import parse_properties
from tests.conftest import PYTHON, run
from tests.test_kserve import GPU_MODEL_CONFIG, box_rows, start_bundle_server, start_wrapper, stop_process_group

pytestmark = pytest.mark.server
GROUPS = {"time_of_day", "season", "terrain", "objects", "tags", "model_version", "image"}


def triton_client(url: str, concurrency: int = 1) -> triton.InferenceServerClient:
    """tritonclient wants host:port, without the scheme."""
    return triton.InferenceServerClient(url.split("://", 1)[1], concurrency=concurrency, connection_timeout=60,
                                        network_timeout=60)


def image_input(image: bytes, binary: bool) -> triton.InferInput:
    """The photo as OIP's one BYTES element: raw bytes in binary mode, base64 text in JSON mode."""
    tensor = triton.InferInput("image", [1], "BYTES")
    element = image if binary else base64.b64encode(image).decode()
    return tensor.set_data_from_numpy(np.array([element], dtype=object), binary_data=binary)


def token(server) -> dict[str, str]:
    """The inference key's header, a new dict per call: tritonclient's infer() adds its own
    Inference-Header-Content-Length to the headers dict it is given, which would follow the dict into later calls."""
    return bearer("inference", server.key_file)


def tags_output(binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput("tags", binary_data=binary)]


def tag_json(result: triton.InferResult) -> dict:
    """The tag (or error) JSON in a tritonclient result, after checking its OIP shape."""
    answer = result.get_response()
    assert answer["model_name"] == "tagger" and answer["model_version"] == "1.0" and answer["id"], answer
    [element] = result.as_numpy("tags")
    return json.loads(element)


def sent_binary(result: triton.InferResult) -> bool:
    """Whether the server answered "tags" as binary data (the extension's binary_data_size) rather than JSON."""
    output = result.get_output("tags")
    return "binary_data_size" in output.get("parameters", {}) and "data" not in output


def predictions(server, image: bytes) -> dict:
    response = requests.post(f"{server.inference_url}/predictions/tagger", data=image,
                             headers=bearer("inference", server.key_file), timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def refusal(server, image: bytes) -> dict:
    """The error JSON `/predictions/tagger` answers for a photo it refuses."""
    response = requests.post(f"{server.inference_url}/predictions/tagger", data=image, headers=token(server),
                             timeout=60)
    assert response.status_code == 400, response.text
    return response.json()


def grpc_code(target: str, service: str, headers: dict[str, str] | None = None) -> grpc.StatusCode:
    """The status of `ServerLive` called on `service` at `target`. An empty ServerLiveRequest is zero bytes on the
    wire, so no stubs are needed to ask; the token goes as TorchServe's "authorization" metadata."""
    metadata = tuple((name.lower(), value) for name, value in (headers or {}).items())
    with grpc.insecure_channel(target) as channel:
        live = channel.unary_unary(f"/{service}/ServerLive", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        try:
            reply = live(b"", metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
    assert reply == b"\x08\x01", reply  # ServerLiveResponse{live: true}
    return grpc.StatusCode.OK


def new_batches(server, since: int) -> list[tuple[int, int, int]]:
    """(size, tagged, refused) of each batch the worker logged after the log had `since` characters."""
    return [tuple(map(int, m)) for m in re.findall(r"batch of (\d+) requests: (\d+) tagged, (\d+) refused",
                                                      server.log_text()[since:])]


# ---- the one box: the project's config.properties, token on --------------------------------------------------------
def test_json_mode_gives_the_tags_of_predictions(server, sample_images):
    client = triton_client(server.inference_url)
    for index, image in enumerate(sample_images[:2]):
        plain = predictions(server, image)
        # No outputs named: tritonclient asks for binary outputs (binary_data_output), answered in JSON all the
        # same (KServe's wrapper could not read a binary answer); naming the output JSON asks for what it gets.
        for outputs in (None, tags_output(False)):
            result = client.infer("tagger", [image_input(image, binary=False)], outputs=outputs,
                                  request_id=f"json-{index}", headers=token(server))
            assert result.get_response()["id"] == f"json-{index}" and not sent_binary(result)
            tags = tag_json(result)
            assert set(tags) == GROUPS and tags["tags"] == plain["tags"]
            assert tags["season"]["scores"] == pytest.approx(plain["season"]["scores"], abs=1e-4)


def test_binary_mode_gives_the_tags_of_predictions_in_the_encoding_asked_for(server, sample_images):
    client = triton_client(server.inference_url)
    image = sample_images[2]
    plain = predictions(server, image)
    rows = box_rows(plain)
    for outputs, binary in ((None, True), (tags_output(True), True), (tags_output(False), False)):
        result = client.infer("tagger", [image_input(image, binary=True)], outputs=outputs, headers=token(server))
        assert sent_binary(result) is binary, result.get_response()
        tags = tag_json(result)
        assert tags["tags"] == plain["tags"]
        assert tags["season"]["scores"] == pytest.approx(plain["season"]["scores"], abs=1e-4)
        # The boxes as a standard client reads them: an FP32 [n, 6] array; only "tags" when only that was named.
        boxes = result.as_numpy("boxes")
        if outputs is None:
            assert boxes.dtype == np.float32 and boxes.shape == (len(rows), 6)
            assert boxes.ravel().tolist() == pytest.approx([v for row in rows for v in row], abs=1e-3)
        else:
            assert boxes is None
    # The binary answer as it travels: TorchServe passes the handler's Inference-Header-Content-Length on.
    body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 4 + len(image)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    raw = requests.post(f"{server.inference_url}/v2/models/tagger/infer", timeout=60,
                        data=body + len(image).to_bytes(4, "little") + image,
                        headers={**token(server), INFERENCE_HEADER: str(len(body))})
    assert raw.status_code == 200, raw.text[:300]
    length = int(raw.headers[INFERENCE_HEADER])
    header = json.loads(raw.content[:length])
    assert [o["name"] for o in header["outputs"]] == ["tags", "boxes"]
    tags_size, boxes_size = (o["parameters"]["binary_data_size"] for o in header["outputs"])
    assert length + tags_size + boxes_size == len(raw.content)
    element = raw.content[length + 4:length + tags_size]
    assert int.from_bytes(raw.content[length:length + 4], "little") == len(element)
    assert json.loads(element)["tags"] == plain["tags"]
    boxes = np.frombuffer(raw.content[length + tags_size:], dtype="<f4")
    assert boxes.tolist() == pytest.approx([v for row in rows for v in row], abs=1e-3)


def test_refused_photos_keep_the_oip_error_contract_of_their_mode(server, sample_images):
    """Binary mode (never sent through KServe's wrapper, which reads only JSON): HTTP 400 with OIP's {"error"},
    which tritonclient raises. JSON mode: HTTP 200 with the error as the element and as the answer's
    "parameters", the same answer as through KServe's wrapper (which would turn a 400 into 500)."""
    client = triton_client(server.inference_url)
    photo = sample_images[0]
    for image, reason in ((b"just text, not a photo", "not_an_image"), (photo[:len(photo) // 2], "truncated")):
        with pytest.raises(InferenceServerException) as info:
            client.infer("tagger", [image_input(image, binary=True)], headers=token(server))
        assert info.value.status() == "400", info.value
        assert info.value.message() == refusal(server, image)["error"]

        result = client.infer("tagger", [image_input(image, binary=False)], headers=token(server))
        error = tag_json(result)
        assert error["reason"] == reason and error["code"] == 400 and error["error"]
        assert result.get_response()["parameters"] == error

    url = f"{server.inference_url}/v2/models/tagger/infer"
    refused = requests.post(url, data=b'{"inputs": []}' + b"\x00" * 8, timeout=60,
                            headers={**token(server), INFERENCE_HEADER: "14"})
    assert refused.status_code == 400 and refused.json()["reason"] == "bad_oip", refused.text
    assert "add up to 0 bytes, but 8 bytes follow" in refused.json()["error"]
    # Neither base64 text nor the binary extension: the refusal names both.
    not_base64 = requests.post(url, timeout=60, headers=token(server), data=json.dumps(
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not base64 ###"]}]}))
    assert not_base64.status_code == 200, not_base64.text
    message = not_base64.json()["parameters"]["error"]
    assert "base64" in message and INFERENCE_HEADER in message


def test_a_broken_photo_in_a_burst_leaves_the_others_tagged(server, sample_images):
    client = triton_client(server.inference_url, concurrency=12)
    expected = {i: predictions(server, sample_images[i])["tags"] for i in range(4)}
    broken = {3: b"GIF89a\x00\x00garbage", 8: b"%PDF-1.7 not a photo"}  # one in each mode
    since = len(server.log_text())
    pending = {}
    for index in range(12):
        binary = index % 2 == 1
        image = broken.get(index, sample_images[index % 4])
        pending[index] = client.async_infer("tagger", [image_input(image, binary)], request_id=f"burst-{index}",
                                            headers=token(server))
    for index, handle in pending.items():
        if index == 3:  # binary mode
            with pytest.raises(InferenceServerException) as info:
                handle.get_result()
            assert info.value.status() == "400", info.value
            continue
        result = handle.get_result()
        assert result.get_response()["id"] == f"burst-{index}"
        tags = tag_json(result)
        if index == 8:  # JSON mode
            assert tags["reason"] == "not_an_image" and result.get_response()["parameters"]["code"] == 400
        else:
            assert tags["tags"] == expected[index % 4], index
    client.close()
    batches = new_batches(server, since)
    assert any(size > 1 for size, _, _ in batches), batches
    assert any(tagged > 0 and refused > 0 for _, tagged, refused in batches), batches


def test_what_torchserve_serves_of_the_standard_endpoints(server):
    """TorchServe 0.12 with the project's config routes only /v2/models/{model}/infer of OIP: health, readiness
    and metadata are 404 even with the token. /ping and the management API's /models/tagger are the equivalents."""
    client = triton_client(server.inference_url)
    assert not client.is_server_live(headers=token(server))
    assert not client.is_server_ready(headers=token(server))
    assert not client.is_model_ready("tagger", headers=token(server))
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("tagger", headers=token(server))
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/tagger/ready", "/v2/models/tagger", "/v2"):
        answer = requests.get(f"{server.inference_url}{path}", headers=token(server), timeout=10)
        assert answer.status_code == 404, (path, answer.text)
    versioned = requests.post(f"{server.inference_url}/v2/models/tagger/versions/1.0/infer", headers=token(server),
                              json={"inputs": []}, timeout=10)
    assert versioned.status_code == 404, versioned.text
    assert grpc_code(server.grpc_target, "inference.GRPCInferenceService", token(server)) == \
        grpc.StatusCode.UNIMPLEMENTED
    # The equivalents that do work
    ping = requests.get(f"{server.inference_url}/ping", headers=token(server), timeout=10)
    assert ping.json()["status"] == "Healthy"
    [described] = requests.get(f"{server.management_url}/models/tagger",
                               headers=bearer("management", server.key_file), timeout=10).json()
    assert any(worker["status"] == "READY" for worker in described["workers"])
    description = requests.get(f"{server.inference_url}/api-description", headers=token(server), timeout=10)
    assert description.status_code == 200 and description.json()["openapi"], description.text[:300]


# ---- the KServe path: KServe's wrapper (kserve 0.13.0) in front of TorchServe, as in the pod -------------------
@pytest.fixture(scope="module")
def kserve_pod(model_store, tmp_path_factory):
    """(TorchServe from the bundle's config, KServe's wrapper in front of it), as `make kserve-bundle` packs them."""
    bundle = tmp_path_factory.mktemp("oip_kserve_bundle")
    run([PYTHON, "-m", "serving.kserve_bundle", "--mar", str(model_store / "tagger.mar"), "--out", str(bundle),
         "--model-config", str(GPU_MODEL_CONFIG)])
    torchserve = start_bundle_server(bundle, tmp_path_factory.mktemp("oip_kserve_torchserve"))
    wrapper = None
    try:
        deadline = time.monotonic() + 240
        while not torchserve.ready():
            assert torchserve.process.poll() is None and time.monotonic() < deadline, (
                torchserve.workdir / "torchserve.out").read_text(errors="replace")[-3000:]
            time.sleep(1)
        wrapper = start_wrapper(torchserve.workdir / "config.properties",
                                tmp_path_factory.mktemp("oip_kserve_wrapper"))
        yield torchserve, wrapper
    finally:
        if wrapper is not None:
            stop_process_group(wrapper.process)
        torchserve.stop()


def test_through_kserves_wrapper_every_standard_call_works_in_json_mode(kserve_pod, server, sample_images):
    _, wrapper = kserve_pod
    client = triton_client(wrapper.url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tagger")
    assert client.get_model_metadata("tagger")["name"] == "tagger"
    image = sample_images[1]
    plain = predictions(server, image)  # the same archive on the one box
    # No outputs named: tritonclient asks for binary outputs, which the wrapper forwards to TorchServe; the
    # handler answers JSON to a JSON request, which is all the wrapper can read.
    for outputs in (None, tags_output(False)):
        result = client.infer("tagger", [image_input(image, binary=False)], outputs=outputs, request_id="k-1")
        assert result.get_response()["id"] == "k-1"
        assert tag_json(result)["tags"] == plain["tags"]
    refused = client.infer("tagger", [image_input(b"just text", binary=False)])
    assert tag_json(refused)["reason"] == "not_an_image" and refused.get_response()["parameters"]["code"] == 400
    # kserve 0.13 does not read the binary tensor extension: its REST server refuses the body itself (FastAPI's
    # JSON parse), so such a request never reaches TorchServe there. Binary mode is the one box's only.
    with pytest.raises(InferenceServerException) as info:
        client.infer("tagger", [image_input(image, binary=True)])
    assert info.value.status() == "400"
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 4 + len(image)}}]}).encode()
    raw = requests.post(f"{wrapper.url}/v2/models/tagger/infer", timeout=60,
                        data=header + len(image).to_bytes(4, "little") + image,
                        headers={INFERENCE_HEADER: str(len(header))})
    assert raw.status_code == 400 and raw.json() == {"detail": "There was an error parsing the body"}, raw.text


def test_the_bundles_torchserve_serves_oip_health_but_not_the_standard_grpc_package(kserve_pod):
    """With ts_open_inference_protocol=true (the bundle's config), TorchServe 0.12 answers /v2/health/* (ready
    without looking at the model: a constant), still not model readiness or metadata; and its OIP gRPC service is
    declared in TorchServe's own protobuf package, so a client of the standard `inference.GRPCInferenceService`
    gets UNIMPLEMENTED."""
    torchserve, _ = kserve_pod
    assert requests.get(f"{torchserve.url}/v2/health/live", timeout=10).json() == {"live": True}
    assert requests.get(f"{torchserve.url}/v2/health/ready", timeout=10).json() == {"ready": True}
    for path in ("/v2/models/tagger/ready", "/v2/models/tagger"):
        assert requests.get(f"{torchserve.url}{path}", timeout=10).status_code == 404, path
    assert requests.get(f"{torchserve.url}/v2", timeout=10).json()["name"] == "Torchserve"  # server metadata
    versioned = requests.post(f"{torchserve.url}/v2/models/tagger/versions/1.0/infer", json={"inputs": []}, timeout=10)
    assert versioned.status_code == 501 and "versioning is not yet supported" in versioned.text
    port = parse_properties((torchserve.workdir / "config.properties").read_text())["grpc_inference_port"]
    target = f"127.0.0.1:{port}"
    assert grpc_code(target, "org.pytorch.serve.grpc.openinference.GRPCInferenceService") == grpc.StatusCode.OK
    assert grpc_code(target, "inference.GRPCInferenceService") == grpc.StatusCode.UNIMPLEMENTED
