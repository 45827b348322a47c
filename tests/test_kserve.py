"""Kubernetes with KServe: the manifests and the KServe config (offline), the bundle command, the handler's Open
Inference Protocol (KServe v2) answers in process, and two real TorchServe instances:

- the project's config.properties (token auth on) with TorchServe's OIP gRPC enabled: REST
  `POST /v2/models/tagger/infer` and gRPC `GRPCInferenceService/ModelInfer` give the same tags as
  `/predictions/tagger`, and both want the token;
- the bundle's own config/config.properties (what KServe mounts), on local ports: token off, the model loaded from
  model_snapshot, the management API's model registration off, and the runtime's TS_SERVICE_ENVELOPE ignored.
"""
from __future__ import annotations

import base64
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
import yaml

from client.auth import bearer, read_key
from client.kserve_bundle import KSERVE_MODEL_STORE, parse_properties
from client.protos import GENERATED_DIR, generate
from tests.conftest import PYTHON, run
from tests.torchserve_process import REPO, TORCHSERVE, TorchServe, derive_config, free_port

DEPLOY = REPO / "deploy" / "kserve"
GROUPS = {"time_of_day", "season", "terrain", "objects", "tags", "model_version"}


def load_yaml(name: str) -> dict:
    [document] = list(yaml.safe_load_all((DEPLOY / name).read_text()))
    return document


def oip_request(image: bytes, request_id: str | None = None, name: str = "image") -> dict:
    body = {"inputs": [{"name": name, "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(image).decode()]}]}
    if request_id is not None:
        body["id"] = request_id
    return body


def oip_tags(answer: dict) -> dict:
    """The tag (or error) JSON inside an OIP answer, after checking the answer's OIP shape."""
    assert answer["model_name"] == "tagger" and answer["model_version"] == "1.0" and answer["id"]
    [output] = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("tags", "BYTES", [1])
    [element] = output["data"]
    return json.loads(element)


# ---- manifests and configuration (offline) -------------------------------------------------------------------------
def test_inferenceservice_has_what_kserve_needs():
    isvc = load_yaml("inferenceservice.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["name"] == "tagger" and isvc["metadata"]["namespace"]
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "pytorch"
    assert model["protocolVersion"] == "v2"
    assert model["storageUri"].split("://")[0] in {"s3", "gs", "pvc", "https", "azure", "hdfs", "oci"}
    # The runtime image runs the TorchServe version this repo pins and tests.
    from ts.version import __version__ as torchserve_version
    assert model["runtimeVersion"].split("-")[0] == torchserve_version
    for kind in ("requests", "limits"):
        assert int(model["resources"][kind]["nvidia.com/gpu"]) == 1
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] in {"concurrency", "rps", "cpu", "memory"} and predictor["scaleTarget"] > 0
    annotations = isvc["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    assert int(annotations["autoscaling.knative.dev/target"]) == predictor["scaleTarget"]
    # Token auth is off in this deployment: it must not be published outside the cluster by default.
    assert isvc["metadata"]["labels"]["networking.kserve.io/visibility"] == "cluster-local"


def test_network_policy_admits_only_the_ingress_path():
    isvc, policy = load_yaml("inferenceservice.yaml"), load_yaml("networkpolicy.yaml")
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    assert policy["metadata"]["namespace"] == isvc["metadata"]["namespace"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    assert "Ingress" in policy["spec"]["policyTypes"]
    rules = policy["spec"]["ingress"]
    assert rules
    sources, ports = set(), set()
    for rule in rules:
        assert rule.get("from"), "a rule without 'from' admits every source"
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector"}, peer  # no ipBlock, no same-namespace pods
            sources.add(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
        assert rule.get("ports"), "a rule without 'ports' admits every port, TorchServe's included"
        ports |= {p["port"] for p in rule["ports"]}
    assert sources == {"istio-system", "knative-serving"}
    assert not ports & {8085, 7070, 7071, 8081}  # TorchServe itself is reached from inside the pod only


def test_kserve_config_disables_the_token_and_says_what_replaces_it():
    text = (DEPLOY / "config.properties").read_text()
    props = parse_properties(text)
    assert props["disable_token_authorization"] == "true"
    assert "networkpolicy.yaml" in text and "cluster-local" in text  # the comments name the replacement
    assert props["enable_model_api"] == "false"
    assert props["enable_envvars_config"] == "false"  # the runtime's TS_SERVICE_ENVELOPE=kservev2 must not apply
    assert "service_envelope" not in props
    assert props["inference_address"] == props["management_address"] == "http://0.0.0.0:8085"
    assert props["grpc_inference_port"] == "7070" and props["model_store"] == KSERVE_MODEL_STORE
    assert props["enable_metrics_api"] == "true" and props["metrics_mode"] == "prometheus"
    assert props["metrics_address"].endswith(":" + load_yaml("inferenceservice.yaml")["metadata"]["annotations"][
        "prometheus.io/port"])
    assert props["ts_open_inference_protocol"] == "true"
    assert json.loads(props["model_snapshot"])["models"]["tagger"]["1.0"]["marName"] == "tagger.mar"
    project = parse_properties((REPO / "config.properties").read_text())
    assert "disable_token_authorization" not in project  # the project's own config keeps the token
    for key in ("max_request_size", "max_response_size", "install_py_dep_per_model"):
        assert props[key] == project[key], key


# ---- the bundle command --------------------------------------------------------------------------------------------
def test_bundle_has_the_layout_and_properties_kserve_expects(model_store, tmp_path):
    out = tmp_path / "kserve"
    run([PYTHON, "-m", "client.kserve_bundle", "--mar", str(model_store / "tagger.mar"), "--out", str(out)])
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "config/config.properties", "model-store/tagger.mar"]
    assert (out / "model-store" / "tagger.mar").read_bytes() == (model_store / "tagger.mar").read_bytes()
    props = parse_properties((out / "config" / "config.properties").read_text())
    for key, value in {"inference_address": "http://0.0.0.0:8085", "management_address": "http://0.0.0.0:8085",
                       "grpc_inference_port": "7070", "model_store": "/mnt/models/model-store",
                       "enable_metrics_api": "true", "disable_token_authorization": "true"}.items():
        assert props[key] == value, key
    snapshot = json.loads(props["model_snapshot"])
    assert snapshot["modelCount"] == 1 and list(snapshot["models"]) == ["tagger"]
    entry = snapshot["models"]["tagger"]["1.0"]
    packed = yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text())
    assert entry["defaultVersion"] is True and entry["marName"] == "tagger.mar"
    for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"):
        assert entry[key] == packed[key], key

    # Re-bundling another version replaces the archive (KServe's wrapper refuses two) and describes 2.0.
    run([PYTHON, "-m", "client.kserve_bundle", "--mar", str(model_store / "tagger-2.0.mar"), "--out", str(out)])
    assert [p.name for p in (out / "model-store").iterdir()] == ["tagger-2.0.mar"]
    snapshot = json.loads(parse_properties((out / "config" / "config.properties").read_text())["model_snapshot"])
    assert snapshot["models"]["tagger"]["2.0"]["marName"] == "tagger-2.0.mar"

    missing = run([PYTHON, "-m", "client.kserve_bundle", "--mar", str(tmp_path / "none.mar"), "--out",
                   str(tmp_path / "x")], check=False)
    assert missing.returncode == 1 and "make archive" in missing.stderr
    (tmp_path / "junk.mar").write_bytes(b"not a zip")
    junk = run([PYTHON, "-m", "client.kserve_bundle", "--mar", str(tmp_path / "junk.mar"), "--out",
                str(tmp_path / "x")], check=False)
    assert junk.returncode == 1 and "not a readable TorchServe model archive" in junk.stderr


# ---- the handler's answer formatting (no model needed) -------------------------------------------------------------
def test_format_response_wraps_only_oip_requests():
    from ts.context import Context

    from handler.tagger_handler import PhotoTaggerHandler

    handler = PhotoTaggerHandler()  # format_response needs no model
    handler.model_version = "1.0"
    context = Context("tagger", "/nonexistent", {"model": {"modelName": "tagger", "modelVersion": "1.0"}}, 8, None,
                      "0.12.0")
    context.request_ids = {0: "ts-0", 1: "ts-1"}
    tags = {"tags": ["night", "лес"], "model_version": "1.0"}
    error = {"error": "the bytes are not a recognised image", "reason": "not_an_image", "code": 400}

    # Plain requests: exactly the body the handler always returned (compact JSON, UTF-8 kept).
    for request in ({"body": b"\xff\xd8"}, {"body": {"data": "AAAA"}}, {"file": b"x"}):
        assert handler.format_response(tags, request, 0, context) == json.dumps(tags, ensure_ascii=False)
        assert handler.format_response(error, request, 1, context) == json.dumps(error, ensure_ascii=False)

    answer = json.loads(handler.format_response(tags, {"body": oip_request(b"img", "client-7")}, 0, context))
    assert answer["id"] == "client-7" and "error" not in answer
    assert oip_tags(answer) == tags
    assert answer["outputs"][0]["data"][0] == json.dumps(tags, ensure_ascii=False)
    # No id (or TorchServe's gRPC bridge sending ""): TorchServe's request id, so the gRPC answer has one.
    for request_id in (None, "", "  "):
        answer = json.loads(handler.format_response(error, {"body": oip_request(b"img", request_id)}, 1, context))
        assert answer["id"] == "ts-1" and answer["error"] == error["error"] and oip_tags(answer) == error
    context.request_ids = None
    assert json.loads(handler.format_response(tags, {"data": oip_request(b"img")}, 0, context))["id"] == ""


# ---- two real TorchServe instances ---------------------------------------------------------------------------------
@dataclass
class BundleServer:
    """TorchServe started from a KServe bundle's config/config.properties, only addresses and paths moved."""
    workdir: Path
    process: subprocess.Popen
    url: str

    def ready(self) -> bool:
        try:
            response = requests.get(f"{self.url}/models/tagger", timeout=5)
        except requests.RequestException:
            return False
        return response.status_code == 200 and any(
            w.get("status") == "READY" for version in response.json() for w in version.get("workers", []))

    def stop(self) -> None:
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            if self.process.poll() is not None:
                break
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                continue
        try:  # workers run in the frontend's process group: none may outlive it
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_bundle_server(bundle: Path, workdir: Path) -> BundleServer:
    port = free_port()
    overrides = {"inference_address": f"http://127.0.0.1:{port}", "management_address": f"http://127.0.0.1:{port}",
                 "metrics_address": f"http://127.0.0.1:{free_port()}", "grpc_inference_port": str(free_port()),
                 "grpc_management_port": str(free_port()), "initial_worker_port": str(free_port()),
                 "model_store": str(bundle / "model-store")}
    (workdir / "tmp").mkdir(parents=True)
    (workdir / "config.properties").write_text(
        derive_config(overrides, source=bundle / "config" / "config.properties"))
    # As KServe's runtime does: this must be ignored (enable_envvars_config=false).
    env = {**os.environ, "TMPDIR": str(workdir / "tmp"), "LOG_LOCATION": str(workdir / "logs"),
           "METRICS_LOCATION": str(workdir / "logs"), "PYTHONPATH": "", "TS_SERVICE_ENVELOPE": "kservev2"}
    process = subprocess.Popen([str(TORCHSERVE), "--start", "--foreground", "--ts-config", "config.properties"],
                               cwd=workdir, env=env, stdout=open(workdir / "torchserve.out", "wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    return BundleServer(workdir, process, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def servers(model_store, tmp_path_factory):
    """(OIP server with the project's config, server with the KServe bundle's config), started side by side."""
    bundle = tmp_path_factory.mktemp("kserve_bundle")
    run([PYTHON, "-m", "client.kserve_bundle", "--mar", str(model_store / "tagger.mar"), "--out", str(bundle)])
    kserve = start_bundle_server(bundle, tmp_path_factory.mktemp("kserve_torchserve"))
    oip = TorchServe(tmp_path_factory.mktemp("oip_torchserve"), model_store,
                     extra_config={"ts_open_inference_protocol": "true"})
    try:
        oip.start()
        deadline = time.monotonic() + 240
        while not kserve.ready():
            assert kserve.process.poll() is None and time.monotonic() < deadline, (
                kserve.workdir / "torchserve.out").read_text(errors="replace")[-3000:]
            time.sleep(1)
        yield oip, kserve
    finally:
        oip.stop()
        kserve.stop()


@pytest.fixture(scope="module")
def oip_stubs():
    if not (GENERATED_DIR / "open_inference_grpc_pb2_grpc.py").exists():
        generate()  # stale generated/ (make setup regenerates it when client/protos.py changes)
    if str(GENERATED_DIR) not in sys.path:
        sys.path.insert(0, str(GENERATED_DIR))
    return (importlib.import_module("open_inference_grpc_pb2"),
            importlib.import_module("open_inference_grpc_pb2_grpc"))


def predictions(server, image: bytes) -> dict:
    response = requests.post(f"{server.inference_url}/predictions/tagger", data=image,
                             headers=bearer("inference", server.key_file), timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


# The project's config.properties (token on) with TorchServe's OIP gRPC service enabled.
@pytest.mark.server
def test_rest_v2_infer_gives_the_tags_of_predictions(servers, sample_images):
    server, _ = servers
    url = f"{server.inference_url}/v2/models/tagger/infer"
    for index, image in enumerate(sample_images[:2]):
        response = requests.post(url, json=oip_request(image, f"req-{index}"),
                                 headers=bearer("inference", server.key_file), timeout=60)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["id"] == f"req-{index}"
        tags, plain = oip_tags(answer), predictions(server, image)
        assert tags["tags"] == plain["tags"]
        assert tags["season"]["scores"] == pytest.approx(plain["season"]["scores"], abs=1e-4)

    bad = requests.post(url, json=oip_request(b"just text"), headers=bearer("inference", server.key_file),
                        timeout=60)
    assert bad.status_code == 400 and "not a recognised image" in bad.json()["error"]
    assert oip_tags(bad.json())["reason"] == "not_an_image"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = requests.post(url, json=oip_request(sample_images[0]), headers=headers, timeout=30)
        assert refused.status_code in (400, 401) and "Token Authorization failed" in refused.text


@pytest.mark.server
def test_grpc_model_infer_gives_the_tags_of_predictions(servers, sample_images, oip_stubs):
    server, _ = servers
    pb2, pb2_grpc = oip_stubs

    def infer(stub, image: bytes, metadata=(), request_id: str = ""):
        tensor = pb2.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(image)
        return stub.ModelInfer(pb2.ModelInferRequest(model_name="tagger", id=request_id, inputs=[tensor]),
                               metadata=metadata, timeout=60)

    def tag_json(reply) -> dict:
        [output] = reply.outputs
        assert (output.name, output.datatype, list(output.shape)) == ("tags", "BYTES", [1])
        [element] = output.contents.bytes_contents
        # TorchServe 0.12 writes each BYTES element with gson's JsonElement.toString(): the JSON string the handler
        # put in "data" arrives quoted, so it is decoded twice.
        return json.loads(json.loads(element))

    metadata = (("authorization", f"Bearer {read_key('inference', server.key_file)}"),)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelReady(pb2.ModelReadyRequest(name="tagger"), metadata=metadata, timeout=30).ready
        reply = infer(stub, sample_images[3], metadata, "g-1")
        assert (reply.model_name, reply.model_version, reply.id) == ("tagger", "1.0", "g-1")
        result = tag_json(reply)
        assert set(result) == GROUPS and result["tags"] == predictions(server, sample_images[3])["tags"]
        # Per-request status codes do not reach gRPC: a refused photo comes back as the error JSON, as on Predictions.
        refused = tag_json(infer(stub, b"definitely not an image", metadata))
        assert refused["code"] == 400 and refused["reason"] == "not_an_image"
        # Requests the handler cannot use still get an OIP body: anything else makes TorchServe's frontend fail
        # the call with "Worker died.". (TorchServe 0.12 ignores raw_input_contents: only contents reach the handler.)
        tensor = pb2.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
        for request in (pb2.ModelInferRequest(model_name="tagger"),
                        pb2.ModelInferRequest(model_name="tagger", inputs=[tensor], raw_input_contents=[b"x"])):
            error = tag_json(stub.ModelInfer(request, metadata=metadata, timeout=60))
            assert error["code"] == 400 and error["reason"] == "bad_oip", error
        assert tag_json(infer(stub, sample_images[3], metadata))["tags"] == result["tags"]
        with pytest.raises(grpc.RpcError) as info:
            infer(stub, sample_images[3])
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.server
def test_plain_and_oip_requests_in_one_burst_keep_their_formats(servers, sample_images):
    server, _ = servers
    headers = bearer("inference", server.key_file)

    def send(index: int) -> tuple[int, dict]:
        image = sample_images[index % 4]
        if index % 2:
            return index, requests.post(f"{server.inference_url}/v2/models/tagger/infer",
                                        json=oip_request(image), headers=headers, timeout=60).json()
        return index, requests.post(f"{server.inference_url}/predictions/tagger", data=image,
                                    headers=headers, timeout=60).json()

    with ThreadPoolExecutor(8) as pool:
        answers = dict(pool.map(send, range(8)))
    tags_by_image: dict[int, set] = {}
    for index, answer in answers.items():
        tags = oip_tags(answer) if index % 2 else answer  # odd: OIP answer, even: plain tag JSON
        assert set(tags) == GROUPS
        tags_by_image.setdefault(index % 4, set()).add(tuple(tags["tags"]))
    assert all(len(found) == 1 for found in tags_by_image.values()), tags_by_image


# ---- a real TorchServe from the KServe bundle's config -------------------------------------------------------------
@pytest.mark.server
def test_bundle_config_serves_oip_without_token_from_the_snapshot(servers, sample_images):
    oip_server, kserve = servers
    [described] = requests.get(f"{kserve.url}/models/tagger", timeout=30).json()
    assert described["modelVersion"] == "1.0" and described["batchSize"] == 8
    response = requests.post(f"{kserve.url}/v2/models/tagger/infer", json=oip_request(sample_images[1], "k-1"),
                             timeout=60)
    assert response.status_code == 200, response.text
    # KServe's wrapper posts the same v2 request to /predictions/tagger: answered in OIP form there too (so the
    # runtime's kservev2 envelope did not apply).
    via_wrapper_path = requests.post(f"{kserve.url}/predictions/tagger", json=oip_request(sample_images[1]),
                                     timeout=60)
    assert via_wrapper_path.status_code == 200, via_wrapper_path.text
    assert oip_tags(response.json())["tags"] == oip_tags(via_wrapper_path.json())["tags"] == predictions(
        oip_server, sample_images[1])["tags"]
    assert response.json()["id"] == "k-1"
    assert not (kserve.workdir / "key_file.json").exists()  # token authorization is off
    registered = requests.post(f"{kserve.url}/models?url=tagger.mar", timeout=30)
    assert registered.status_code >= 400  # enable_model_api=false
