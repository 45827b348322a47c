"""Kubernetes with KServe: the manifests and the KServe config (offline), the bundle command, the handler's Open
Inference Protocol (KServe v2) answers in process, and two real TorchServe instances:

- the project's config.properties (token auth on) with TorchServe's OIP gRPC enabled: REST
  `POST /v2/models/tagger/infer` and gRPC `GRPCInferenceService/ModelInfer` give the same tags as
  `/predictions/tagger`, and both want the token;
- the bundle's own config/config.properties (what KServe mounts, GPU model-config), on local ports: token off, the
  model loaded from model_snapshot, the management API's model registration off, and the runtime's
  TS_SERVICE_ENVELOPE ignored; in front of it KServe's wrapper (tests/kserve_wrapper.py on the real kserve 0.13.0
  in .venv-kserve), as in the pod: a refused photo comes back as HTTP 200 with the error, not as KServe's 500.
"""
from __future__ import annotations

import base64
import importlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
import yaml
from PIL import Image

from client.auth import bearer, read_key
from client.grpc_client import GrpcTagger
from client.rest import tag_image
from serving.kserve_bundle import KSERVE_MODEL_STORE, parse_properties
from serving.ports import PortInUse, free_ports, port_in_use, start_on_free_ports
from serving.process_group import stop_process_group
from serving.protos import GENERATED_DIR, generate
from serving.torchserve_process import REPO, TORCHSERVE, TorchServe, derive_config
from tests.conftest import PYTHON, run

DEPLOY = REPO / "deploy" / "kserve"
GPU_MODEL_CONFIG = DEPLOY / "model-config.gpu.yaml"
KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"
GROUPS = {"time_of_day", "season", "terrain", "objects", "tags", "model_version", "image"}
OBJECTS = ["aviation", "cars", "drone", "diver", "dog_handler", "horses", "hugs", "sherp"]  # the taxonomy's order
# The label that keeps an InferenceService off the public gateway, by the deployment mode that reads it: Knative
# (Serverless) reads its own label, KServe's RawDeployment / Gateway API mode reads KServe's (KServe PR #2518).
VISIBILITY_LABEL = {"Serverless": "networking.knative.dev/visibility",
                    "RawDeployment": "networking.kserve.io/visibility"}


def load_yaml(name: str) -> dict:
    [document] = list(yaml.safe_load_all((DEPLOY / name).read_text()))
    return document


def cluster_local(isvc: dict) -> bool:
    """Whether KServe keeps this InferenceService cluster-local in the deployment mode it declares (Serverless is
    KServe's default mode)."""
    mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode", "Serverless")
    return isvc["metadata"].get("labels", {}).get(VISIBILITY_LABEL[mode]) == "cluster-local"


def oip_request(image: bytes, request_id: str | None = None, name: str = "image") -> dict:
    body = {"inputs": [{"name": name, "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(image).decode()]}]}
    if request_id is not None:
        body["id"] = request_id
    return body


def oip_tags(answer: dict) -> dict:
    """The tag (or error) JSON inside an OIP answer, after checking the answer's OIP shape: "tags" first (clients
    that read the first output keep working), and for a tagged photo the "boxes" output after it."""
    assert answer["model_name"] == "tagger" and answer["model_version"] == "1.0" and answer["id"]
    output, *others = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("tags", "BYTES", [1])
    [element] = output["data"]
    tags = json.loads(element)
    assert [o["name"] for o in others] == ([] if "error" in tags or "image" not in tags else ["boxes"])
    return tags


def box_rows(answer: dict) -> list[list[float]]:
    """The rows the OIP "boxes" output should hold for a tag answer: [object index, score, x0, y0, x1, y1]."""
    return [[float(k), box["score"], *box["box"]] for k, label in enumerate(OBJECTS)
            for box in answer["objects"]["boxes"].get(label, ())]


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
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in VISIBILITY_LABEL


@pytest.mark.parametrize("mode", sorted(VISIBILITY_LABEL))
def test_inferenceservice_is_cluster_local_in_each_deployment_mode(mode):
    """Token auth is off in this deployment: it must not get a host on the public gateway, in whichever mode."""
    isvc = load_yaml("inferenceservice.yaml")
    assert cluster_local(isvc)  # as shipped
    isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = mode
    assert cluster_local(isvc), f"{mode} reads {VISIBILITY_LABEL[mode]}"
    # The manifest carried only the other mode's label: this check would have caught it.
    del isvc["metadata"]["labels"][VISIBILITY_LABEL[mode]]
    assert not cluster_local(isvc)


def test_storage_uri_is_read_with_the_service_account():
    isvc, account = load_yaml("inferenceservice.yaml"), load_yaml("serviceaccount.yaml")
    assert account["apiVersion"] == "v1" and account["kind"] == "ServiceAccount"
    assert isvc["spec"]["predictor"]["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["namespace"] == isvc["metadata"]["namespace"]
    # The credentials are one of two commented choices (IRSA role or an S3 secret), each valid once uncommented.
    lines = (DEPLOY / "serviceaccount.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("apiVersion:"))
    manifest = lines[start:]
    uncommented = yaml.safe_load("\n".join(line.replace("# ", "", 1) for line in manifest))
    assert uncommented["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert uncommented["secrets"] == [{"name": "tagger-s3"}]
    secret_help = "\n".join(lines[:start])
    for annotation in ("serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps", "serving.kserve.io/s3-region"):
        assert annotation in secret_help
    assert "secret generic tagger-s3" in secret_help


def test_model_load_wait_outlasts_the_worker_start():
    """KServe's wrapper gives up on the model after MODEL_LOAD_MAX_TRY x MODEL_LOAD_DELAY s (default 10 x 30); the
    GPU pod's worker may take startupTimeout s, after TorchServe's frontend itself has started."""
    isvc = load_yaml("inferenceservice.yaml")
    env = {item["name"]: item["value"] for item in isvc["spec"]["predictor"]["model"]["env"]}
    assert all(isinstance(value, str) for value in env.values())  # Kubernetes wants env values as strings
    wait_s = int(env["MODEL_LOAD_MAX_TRY"]) * int(env["MODEL_LOAD_DELAY"])
    startup_s = yaml.safe_load(GPU_MODEL_CONFIG.read_text())["startupTimeout"]
    assert wait_s >= startup_s + 120, (wait_s, startup_s)
    deadline = isvc["metadata"]["annotations"]["serving.knative.dev/progress-deadline"]
    assert deadline.endswith("m") and int(deadline[:-1]) * 60 > wait_s  # Knative must not fail the revision first


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
    assert 8013 not in ports  # queue-proxy's h2c port: no gRPC in the cluster (REST v2 only)
    # The policy limits the last hop only: its comment must not let a reader take it for caller authentication.
    text = (DEPLOY / "networkpolicy.yaml").read_text()
    assert "NOT who the caller is" in text and "authorizationpolicy.example.yaml" in text


def test_authorization_policy_example_checks_the_caller():
    isvc, policy = load_yaml("inferenceservice.yaml"), load_yaml("networkpolicy.yaml")
    documents = list(yaml.safe_load_all((DEPLOY / "authorizationpolicy.example.yaml").read_text()))
    by_kind = {d["kind"]: d for d in documents}
    assert sorted(by_kind) == ["AuthorizationPolicy", "RequestAuthentication"] and len(documents) == 2
    pods = policy["spec"]["podSelector"]["matchLabels"]
    for document in documents:
        assert document["apiVersion"] == "security.istio.io/v1"
        assert document["metadata"]["namespace"] == isvc["metadata"]["namespace"]
        assert document["spec"]["selector"]["matchLabels"] == pods  # the predictor pods, as the NetworkPolicy
    [jwt] = by_kind["RequestAuthentication"]["spec"]["jwtRules"]
    assert jwt["issuer"].startswith("https://") and jwt["jwksUri"].startswith("https://") and jwt["audiences"]
    authz = by_kind["AuthorizationPolicy"]["spec"]
    assert authz["action"] == "ALLOW"  # everything not allowed is denied on these pods
    infer_path = f"/v2/models/{isvc['metadata']['name']}/infer"
    reaching_infer = []
    for rule in authz["rules"]:
        assert rule.get("from") and rule.get("to"), "a rule without 'from' or 'to' allows any caller or any path"
        paths = {p for op in rule["to"] for p in op["operation"]["paths"]}
        sources = [peer["source"] for peer in rule["from"]]
        if any(p == infer_path or p.endswith("*") for p in paths):
            reaching_infer.append(rule)
            # Only a validated token of the identity provider (it survives the activator hop), plus a claim.
            assert all(set(source) == {"requestPrincipals"} for source in sources), sources
            assert all(principal.startswith(jwt["issuer"] + "/") for source in sources
                       for principal in source["requestPrincipals"])
            assert rule.get("when"), "any valid token of the provider would do"
        else:
            assert paths <= {"/metrics", "/healthz"}, paths  # Knative's own probes and scrapes only
    assert len(reaching_infer) == 1


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
    run([PYTHON, "-m", "serving.kserve_bundle", "--mar", str(model_store / "tagger.mar"), "--out", str(out)])
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
    run([PYTHON, "-m", "serving.kserve_bundle", "--mar", str(model_store / "tagger-2.0.mar"), "--out", str(out)])
    assert [p.name for p in (out / "model-store").iterdir()] == ["tagger-2.0.mar"]
    snapshot = json.loads(parse_properties((out / "config" / "config.properties").read_text())["model_snapshot"])
    assert snapshot["models"]["tagger"]["2.0"]["marName"] == "tagger-2.0.mar"

    missing = run([PYTHON, "-m", "serving.kserve_bundle", "--mar", str(tmp_path / "none.mar"), "--out",
                   str(tmp_path / "x")], check=False)
    assert missing.returncode == 1 and "make archive" in missing.stderr
    (tmp_path / "junk.mar").write_bytes(b"not a zip")
    junk = run([PYTHON, "-m", "serving.kserve_bundle", "--mar", str(tmp_path / "junk.mar"), "--out",
                str(tmp_path / "x")], check=False)
    assert junk.returncode == 1 and "not a readable TorchServe model archive" in junk.stderr


def test_bundle_takes_the_gpu_model_config_or_the_one_named(model_store, tmp_path):
    """`make kserve-bundle` bundles the GPU pod's settings (not the CPU ones `make archive` packed), in the snapshot
    and inside the bundled archive alike; MODEL_CONFIG= names another file."""
    def bundle(*make_args: str) -> tuple[dict, list[str], bytes]:
        """(the snapshot's entry, the bundled archive's file names, its packed model-config.yaml)"""
        out = tmp_path / "bundle"
        run(["make", "--no-print-directory", "kserve-bundle", f"STORE={model_store}", f"KSERVE_OUT={out}",
             *make_args])
        snapshot = json.loads(parse_properties((out / "config" / "config.properties").read_text())["model_snapshot"])
        mar = out / "model-store" / "tagger.mar"
        with zipfile.ZipFile(mar) as archive:
            packed = archive.read(json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["configFile"])
            names = sorted(archive.namelist())
        return snapshot["models"]["tagger"]["1.0"], names, packed

    with zipfile.ZipFile(model_store / "tagger.mar") as original:
        original_names = sorted(original.namelist())
    for args, source in (((), GPU_MODEL_CONFIG), (("MODEL_CONFIG=handler/model-config.yaml",),
                                                   REPO / "handler" / "model-config.yaml")):
        entry, names, packed = bundle(*args)
        settings = yaml.safe_load(source.read_text())
        for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout"):
            assert entry[key] == settings[key], (source.name, key)
        assert packed == source.read_bytes()  # the handler: section the worker reads agrees with the snapshot
        assert names == original_names  # weights, handler, phototag/ ... all still there
    gpu, cpu = yaml.safe_load(GPU_MODEL_CONFIG.read_text()), yaml.safe_load(
        (REPO / "handler" / "model-config.yaml").read_text())
    assert gpu["minWorkers"] == gpu["maxWorkers"] == 1 and gpu["batchSize"] > cpu["batchSize"]

    for text, message in (("minWorkers: two\n", "positive whole number"), ("- a list\n", "mapping"),
                          ("minWorkers: 3\nmaxWorkers: 1\n", "more than maxWorkers")):
        (tmp_path / "bad.yaml").write_text(text)
        refused = run([PYTHON, "-m", "serving.kserve_bundle", "--mar", str(model_store / "tagger.mar"), "--out",
                       str(tmp_path / "x"), "--model-config", str(tmp_path / "bad.yaml")], check=False)
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr


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
        assert answer["id"] == "ts-1" and oip_tags(answer) == error
        # The error also in OIP's response parameters: KServe's wrapper keeps those, and drops other fields.
        assert answer["parameters"] == error and "error" not in answer
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
        stop_process_group(self.process)


def start_bundle_server(bundle: Path, workdir: Path) -> BundleServer:
    """TorchServe with the bundle's config on local ports, once its model is READY; on new ports if one was taken
    by the time it binds. No deadline of our own (a busy machine is slow, not broken): a server that dies ends the
    wait at once, one that hangs is stopped by pytest's timeout (pyproject.toml)."""
    def start_on(ports: dict[str, int]) -> BundleServer:
        url = f"http://127.0.0.1:{ports['http']}"
        overrides = {"inference_address": url, "management_address": url,
                     "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
                     "grpc_inference_port": str(ports["grpc"]), "grpc_management_port": str(ports["grpc_mgmt"]),
                     "initial_worker_port": str(ports["worker"]), "model_store": str(bundle / "model-store")}
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        (workdir / "config.properties").write_text(
            derive_config(overrides, source=bundle / "config" / "config.properties"))
        # As KServe's runtime does: this must be ignored (enable_envvars_config=false).
        env = {**os.environ, "TMPDIR": str(workdir / "tmp"), "LOG_LOCATION": str(workdir / "logs"),
               "METRICS_LOCATION": str(workdir / "logs"), "PYTHONPATH": "", "TS_SERVICE_ENVELOPE": "kservev2"}
        out = workdir / "torchserve.out"
        with open(out, "wb") as sink:
            process = subprocess.Popen(
                [str(TORCHSERVE), "--start", "--foreground", "--ts-config", "config.properties"], cwd=workdir,
                env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        server = BundleServer(workdir, process, url)
        while not server.ready():
            if process.poll() is not None:
                stop_process_group(process)  # workers it had started
                text = out.read_text(errors="replace")
                if clash := port_in_use(text):
                    raise PortInUse(clash, ports)
                raise AssertionError(text[-3000:])
            time.sleep(1)
        return server

    return start_on_free_ports(start_on, ("http", "metrics", "grpc", "grpc_mgmt", "worker"),
                               f"the KServe bundle's TorchServe in {workdir}")


@pytest.fixture(scope="module")
def servers(model_store, tmp_path_factory):
    """(OIP server with the project's config, server with the KServe bundle's config), started side by side."""
    bundle = tmp_path_factory.mktemp("kserve_bundle")
    run([PYTHON, "-m", "serving.kserve_bundle", "--mar", str(model_store / "tagger.mar"), "--out", str(bundle),
         "--model-config", str(GPU_MODEL_CONFIG)])  # what `make kserve-bundle` bundles; on the CPU here
    oip = TorchServe(tmp_path_factory.mktemp("oip_torchserve"), model_store,
                     extra_config={"ts_open_inference_protocol": "true"})
    with ThreadPoolExecutor(1) as pool:
        kserve = pool.submit(start_bundle_server, bundle, tmp_path_factory.mktemp("kserve_torchserve"))
        try:
            oip.start()
            yield oip, kserve.result()
        finally:
            oip.stop()
            if kserve.exception() is None:  # waits for its start: a server still starting is stopped too
                kserve.result().stop()


@pytest.fixture(scope="module")
def oip_stubs():
    if not (GENERATED_DIR / "open_inference_grpc_pb2_grpc.py").exists():
        generate()  # stale generated/ (make setup regenerates it when serving/protos.py changes)
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

    # A refused photo: HTTP 200 (as through KServe's wrapper, which would turn a 400 into 500), the error JSON as
    # the element and as the response's parameters.
    bad = requests.post(url, json=oip_request(b"just text"), headers=bearer("inference", server.key_file),
                        timeout=60)
    assert bad.status_code == 200, bad.text
    error = oip_tags(bad.json())
    assert error["reason"] == "not_an_image" and error["code"] == 400 and "not a recognised image" in error["error"]
    assert bad.json()["parameters"] == error
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
        output = reply.outputs[0]
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
def test_one_photo_gets_the_same_boxes_over_rest_grpc_and_oip(servers, sample_images, oip_stubs):
    """REST Predictions, gRPC Predictions, OIP over REST and OIP's gRPC ModelInfer: the same boxes, in the tag
    JSON each carries and, for OIP, in the FP32 "boxes" output as well."""
    server, _ = servers
    pb2, pb2_grpc = oip_stubs
    answers = [(image, predictions(server, image)) for image in sample_images[:8]]
    image, rest = next(((i, a) for i, a in answers if a["objects"]["boxes"]), (None, None))
    assert rest is not None, "the tiny model tagged no object on 8 photos: nothing to compare"
    expected = rest["objects"]["boxes"]

    with GrpcTagger(server.grpc_target, server.key_file) as tagger:
        assert tagger.tag(image)["objects"]["boxes"] == expected

    answer = requests.post(f"{server.inference_url}/v2/models/tagger/infer", json=oip_request(image),
                           headers=bearer("inference", server.key_file), timeout=60).json()
    assert oip_tags(answer)["objects"]["boxes"] == expected
    boxes = answer["outputs"][1]
    assert (boxes["datatype"], boxes["shape"]) == ("FP32", [len(box_rows(rest)), 6])
    assert boxes["data"] == pytest.approx([v for row in box_rows(rest) for v in row], abs=1e-3)

    metadata = (("authorization", f"Bearer {read_key('inference', server.key_file)}"),)
    tensor = pb2.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(image)
    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb2.ModelInferRequest(model_name="tagger", inputs=[tensor]), metadata=metadata, timeout=60)
    tags, boxes = reply.outputs
    assert json.loads(json.loads(tags.contents.bytes_contents[0]))["objects"]["boxes"] == expected
    assert (boxes.name, boxes.datatype, list(boxes.shape)) == ("boxes", "FP32", [len(box_rows(rest)), 6])
    assert list(boxes.contents.fp32_contents) == pytest.approx([v for row in box_rows(rest) for v in row], abs=1e-2)


def big_jpeg() -> bytes:
    """A 2667x2000 JPEG: past the shipped big_photo_side (2000), so the mode reads its objects closer."""
    buffer = io.BytesIO()
    Image.new("RGB", (2667, 2000), (70, 110, 60)).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


@pytest.mark.server
def test_a_request_can_turn_the_big_photo_mode_off_over_every_protocol(servers):
    """big_photos=off as a REST header (X-Big-Photos) or multipart field, a gRPC input-map entry and an OIP request
    parameter: the photo is read at the ordinary size only; left out, the archive's mode reads it closer; any
    other value is a 400 naming the parameter."""
    server, _ = servers
    photo, headers = big_jpeg(), bearer("inference", server.key_file)
    url = f"{server.inference_url}/predictions/tagger"

    def read_at(answer: dict) -> int | None:
        assert answer["image"]["width"] == 2667, answer
        return answer["image"].get("objects_read_at")

    assert read_at(tag_image(photo, url=server.inference_url, key_file=server.key_file)) == 768
    assert read_at(tag_image(photo, url=server.inference_url, key_file=server.key_file, big_photos="off")) is None
    form = requests.post(url, files={"photo": ("big.jpg", photo, "image/jpeg")}, data={"big_photos": "off"},
                         headers=headers, timeout=60)
    assert form.status_code == 200 and read_at(form.json()) is None, form.text
    with GrpcTagger(server.grpc_target, server.key_file) as tagger:
        assert read_at(tagger.tag(photo)) == 768
        assert read_at(tagger.tag(photo, big_photos="off")) is None
    oip = requests.post(f"{server.inference_url}/v2/models/tagger/infer",
                        json={**oip_request(photo), "parameters": {"big_photos": "off"}}, headers=headers, timeout=60)
    assert read_at(oip_tags(oip.json())) is None

    refused = requests.post(url, data=photo, headers={**headers, "X-Big-Photos": "maybe"}, timeout=60)
    assert refused.status_code == 400, refused.text
    assert refused.json()["reason"] == "bad_parameter" and "big_photos" in refused.json()["error"]


@pytest.mark.server
def test_plain_and_oip_requests_in_one_burst_keep_their_formats(servers, sample_images):
    """Plain and OIP requests, good and refused, in one burst (batches mix them): each keeps its own format and
    status (refused: plain 400, OIP 200 with the error), and the good photos are tagged."""
    server, _ = servers
    headers = bearer("inference", server.key_file)
    refused = {4: b"not a photo", 9: b"not a photo either"}  # one plain (even), one OIP (odd)

    def send(index: int) -> tuple[int, tuple[int, dict]]:
        image = refused.get(index, sample_images[index % 4])
        if index % 2:
            response = requests.post(f"{server.inference_url}/v2/models/tagger/infer", json=oip_request(image),
                                     headers=headers, timeout=60)
        else:
            response = requests.post(f"{server.inference_url}/predictions/tagger", data=image, headers=headers,
                                     timeout=60)
        return index, (response.status_code, response.json())

    with ThreadPoolExecutor(10) as pool:
        answers = dict(pool.map(send, range(10)))
    tags_by_image: dict[int, set] = {}
    for index, (status, answer) in answers.items():
        tags = oip_tags(answer) if index % 2 else answer  # odd: OIP answer, even: plain tag JSON
        if index in refused:
            assert status == (200 if index % 2 else 400) and tags["reason"] == "not_an_image", (index, answer)
            continue
        assert status == 200 and set(tags) == GROUPS, (index, answer)
        tags_by_image.setdefault(index % 4, set()).add(tuple(tags["tags"]))
    assert all(len(found) == 1 for found in tags_by_image.values()), tags_by_image


# ---- a real TorchServe from the KServe bundle's config -------------------------------------------------------------
@pytest.mark.server
def test_bundle_config_serves_oip_without_token_from_the_snapshot(servers, sample_images):
    oip_server, kserve = servers
    [described] = requests.get(f"{kserve.url}/models/tagger", timeout=30).json()
    gpu = yaml.safe_load(GPU_MODEL_CONFIG.read_text())
    assert described["modelVersion"] == "1.0"
    for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay"):
        assert described[key] == gpu[key], key  # the GPU pod's settings, from the snapshot
    response = requests.post(f"{kserve.url}/v2/models/tagger/infer", json=oip_request(sample_images[1], "k-1"),
                             timeout=60)
    assert response.status_code == 200, response.text
    # The same OIP body on /predictions/tagger is answered in OIP form too: the runtime's kservev2 envelope,
    # which would rewrite it, did not apply.
    via_predictions = requests.post(f"{kserve.url}/predictions/tagger", json=oip_request(sample_images[1]),
                                    timeout=60)
    assert via_predictions.status_code == 200, via_predictions.text
    assert oip_tags(response.json())["tags"] == oip_tags(via_predictions.json())["tags"] == predictions(
        oip_server, sample_images[1])["tags"]
    assert response.json()["id"] == "k-1"
    assert not (kserve.workdir / "key_file.json").exists()  # token authorization is off

    # enable_model_api=false: a registration that the project's config (model API on) accepts is refused here with
    # the disabled API's own answer, not with the 409 that registering the loaded tagger again would get anyway.
    registration = "/models?url=tagger.mar&model_name=probe&initial_workers=1&synchronous=true"
    accepted = requests.post(f"{oip_server.management_url}{registration}", timeout=300,
                             headers=bearer("management", oip_server.key_file))
    assert accepted.status_code == 200, accepted.text
    unregistered = requests.delete(f"{oip_server.management_url}/models/probe", timeout=60,
                                   headers=bearer("management", oip_server.key_file))
    assert unregistered.status_code == 200, unregistered.text
    refused = requests.post(f"{kserve.url}{registration}", timeout=60)
    assert refused.status_code == 405, refused.text
    assert refused.json() == {"code": 405, "type": "MethodNotAllowedException",
                              "message": "Requested method is not allowed, please refer to API document."}
    assert [m["modelName"] for m in requests.get(f"{kserve.url}/models", timeout=30).json()["models"]] == ["tagger"]


# ---- KServe's wrapper (kserve 0.13.0) in front of the bundle's TorchServe, as in the pod -----------------------
@dataclass
class Wrapper:
    process: subprocess.Popen
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_wrapper(config: Path, workdir: Path, **env: str) -> Wrapper:
    """tests/kserve_wrapper.py on .venv-kserve, reading TorchServe's addresses from config as the pod's wrapper
    reads /mnt/models/config/config.properties; listening once its model-load wait has ended."""
    if not KSERVE_PYTHON.exists():
        pytest.fail(f"{KSERVE_PYTHON} is missing: `make setup` creates it from requirements-kserve.txt")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "wrapper.log"

    def start_on(ports: dict[str, int]) -> Wrapper:
        environment = {**os.environ, "PYTHONPATH": "", "CONFIG_PATH": str(config), "PROTOCOL_VERSION": "v2",
                       "KSERVE_HTTP_PORT": str(ports["http"]), "KSERVE_GRPC_PORT": str(ports["grpc"]),
                       "MODEL_LOAD_DELAY": "1", **env}
        with open(log, "wb") as sink:
            process = subprocess.Popen([str(KSERVE_PYTHON), str(REPO / "tests" / "kserve_wrapper.py")], cwd=workdir,
                                       env=environment, stdout=sink, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        wrapper = Wrapper(process, f"http://127.0.0.1:{ports['http']}", log)
        while True:  # no deadline of our own: a wrapper that hangs is stopped by pytest's timeout (pyproject.toml)
            try:
                requests.get(f"{wrapper.url}/v2/health/live", timeout=5)
                return wrapper
            except requests.RequestException:  # a timeout too: whoever took the port may not answer
                if process.poll() is not None:
                    stop_process_group(process)
                    if clash := port_in_use(wrapper.log_text()):
                        raise PortInUse(clash, ports) from None
                    raise AssertionError(f"KServe wrapper did not start:\n{wrapper.log_text()[-3000:]}") from None
                time.sleep(0.5)

    return start_on_free_ports(start_on, ("http", "grpc"), f"KServe's wrapper in {workdir}")


@pytest.fixture(scope="module")
def wrapper(servers, tmp_path_factory):
    _, kserve = servers
    started = start_wrapper(kserve.workdir / "config.properties", tmp_path_factory.mktemp("kserve_wrapper"))
    yield started
    stop_process_group(started.process)


@pytest.mark.server
def test_through_kserves_wrapper_a_refused_photo_is_200_with_the_error(servers, wrapper, sample_images):
    oip_server, _ = servers
    url = f"{wrapper.url}/v2/models/tagger/infer"
    assert requests.get(f"{wrapper.url}/v2/models/tagger/ready", timeout=10).json()["ready"] is True
    good = requests.post(url, json=oip_request(sample_images[2], "w-1"), timeout=60)
    assert good.status_code == 200, good.text
    assert good.json()["id"] == "w-1" and not good.json().get("parameters")
    assert oip_tags(good.json())["tags"] == predictions(oip_server, sample_images[2])["tags"]

    body = oip_request(b"")
    body["inputs"][0]["data"] = ["###"]
    photo = sample_images[0]
    for request, reason in ((oip_request(b"just text"), "not_an_image"), (body, "bad_base64"),
                            (oip_request(photo[:len(photo) // 2]), "truncated")):
        response = requests.post(url, json=request, timeout=60)
        # Anything but 2xx from TorchServe would be KServe's HTTP 500 "HTTPStatusError : ..." here.
        assert response.status_code == 200, (reason, response.status_code, response.text[:300])
        answer = response.json()
        error = oip_tags(answer)
        assert error["reason"] == reason and error["code"] == 400 and error["error"], error
        assert answer["parameters"] == error  # kept by KServe (a top-level "error" field would be dropped)


@pytest.mark.server
def test_through_kserves_wrapper_one_refused_photo_leaves_the_burst_tagged(servers, wrapper, sample_images):
    oip_server, _ = servers
    expected = {i: predictions(oip_server, sample_images[i])["tags"] for i in range(4)}

    def send(index: int) -> tuple[int, requests.Response]:
        image = b"%PDF-1.4 not a photo" if index == 5 else sample_images[index % 4]
        return index, requests.post(f"{wrapper.url}/v2/models/tagger/infer", json=oip_request(image, f"b-{index}"),
                                    timeout=60)

    with ThreadPoolExecutor(8) as pool:
        answers = dict(pool.map(send, range(8)))
    for index, response in answers.items():
        assert response.status_code == 200, (index, response.text[:300])
        assert response.json()["id"] == f"b-{index}"
        tags = oip_tags(response.json())
        if index == 5:
            assert tags["reason"] == "not_an_image"
        else:
            assert tags["tags"] == expected[index % 4], index


@pytest.mark.server
def test_kserves_wrapper_turns_a_torchserve_error_status_into_500(wrapper):
    """Why refused photos are answered 200: the wrapper (kserve 0.13.0's Model._http_predict) raises on any
    non-2xx answer from TorchServe and KServe answers 500. Here TorchServe refuses a body over max_request_size
    (20 MiB) with 413, as it would any request; a 5xx tells clients to retry."""
    photo = os.urandom(16 * 2**20)  # 21.3 MB once in base64
    response = requests.post(f"{wrapper.url}/v2/models/tagger/infer", json=oip_request(photo), timeout=120)
    assert response.status_code == 500, response.text[:300]
    assert response.json()["error"].startswith("HTTPStatusError") and "413" in response.json()["error"]


@pytest.mark.server
def test_kserves_wrapper_gives_up_on_a_model_not_ready_in_time(servers, tmp_path):
    """MODEL_LOAD_MAX_TRY x MODEL_LOAD_DELAY is all the wrapper waits: after it, the model stays not ready and
    every request gets 503, however soon TorchServe becomes ready (inferenceservice.yaml raises the wait)."""
    _, kserve = servers
    config = tmp_path / "config.properties"
    [nothing_there] = free_ports(1)
    config.write_text(derive_config({"management_address": f"http://127.0.0.1:{nothing_there}"},
                                    source=kserve.workdir / "config.properties"))
    late = start_wrapper(config, tmp_path / "wrapper", MODEL_LOAD_MAX_TRY="2")
    try:
        assert "2 of 2 tries" in late.log_text() and "NOT ready" in late.log_text()
        ready = requests.get(f"{late.url}/v2/models/tagger/ready", timeout=10)
        infer = requests.post(f"{late.url}/v2/models/tagger/infer", json=oip_request(b"x"), timeout=30)
        assert ready.status_code == infer.status_code == 503, (ready.text, infer.text)
    finally:
        stop_process_group(late.process)
