"""The KServe wrapper of TorchServe 0.12.0's KServe image, for tests/test_kserve.py; run with .venv-kserve's Python.

In the cluster, the pytorch/torchserve-kfs image starts TorchServe and, in front of it on port 8080, TorchServe's
`kserve_wrapper`: a few lines on top of the `kserve` package (pinned there to kserve[storage]==0.13.0). That
wrapper's source ships only inside the image, not on PyPI, so this file redoes those few lines, and everything
else -- parsing the request, calling TorchServe, turning TorchServe's answer or error into KServe's, the HTTP
server -- is the real kserve 0.13.0 from PyPI (.venv-kserve, made by `make setup` from requirements-kserve.txt;
its numpy<2 and protobuf<4 pins cannot share the project's .venv).

What the wrapper adds, and this file does the same way:
- reads inference_address, management_address, model_store and model_snapshot from CONFIG_PATH;
- one kserve.Model per model of the snapshot, calling TorchServe at inference_address's host:port over the
  protocol in PROTOCOL_VERSION (KServe sets v2 for `protocolVersion: v2`): OIP REST, POST /v2/models/<name>/infer;
- before serving, kserve's Storage.download on the model store (which must hold .mar files), then asks the
  management API whether a worker is READY, up to MODEL_LOAD_MAX_TRY times, MODEL_LOAD_DELAY s apart (defaults
  10 and 30), each ask with MODEL_LOAD_TIMEOUT s (default 5); a model not ready by then stays not ready;
- postprocess: an InferResponse goes back to a REST caller as the dict kserve makes of it;
- kserve.ModelServer: HTTP on KSERVE_HTTP_PORT (8080 in the pod), its gRPC on KSERVE_GRPC_PORT (8081).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import time

import kserve
import requests
from kserve.errors import ModelMissingError
from kserve.model_repository import ModelRepository
from kserve.model_server import ModelServer
from kserve.protocol.infer_type import InferResponse
from kserve.storage import Storage

log = logging.getLogger("kserve_wrapper")


def read_properties(path: str) -> dict[str, str]:
    keys = {}
    for line in pathlib.Path(path).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            keys[name.strip()] = value.strip()
    return keys


class TorchServeModel(kserve.Model):
    def __init__(self, name: str, inference_address: str, management_address: str, protocol: str, model_dir: str):
        super().__init__(name)
        self.predictor_host = inference_address.split("//")[1]
        self.management_address = management_address
        self.protocol = protocol
        self.model_dir = model_dir

    def load(self) -> bool:
        store = pathlib.Path(Storage.download(self.model_dir))
        if not [p for p in store.glob("*") if p.is_dir() or p.suffixes == [".mar"]]:
            raise ModelMissingError(store)
        tries = int(os.environ.get("MODEL_LOAD_MAX_TRY", 10))
        delay = int(os.environ.get("MODEL_LOAD_DELAY", 30))
        timeout = int(os.environ.get("MODEL_LOAD_TIMEOUT", 5))
        attempt = 0
        while attempt < tries and not self.ready:
            attempt += 1
            log.info("Loading %s .. %d of %d tries..", self.name, attempt, tries)
            try:
                described = requests.get(f"{self.management_address}/models/{self.name}?customized=false",
                                         timeout=timeout).json()[0]
                self.ready = any(w["status"] == "READY" for w in described["workers"])
            except (requests.ConnectionError, requests.Timeout):
                log.info("The model %s is not ready", self.name)
            except Exception as exc:  # noqa: BLE001 - the wrapper stops asking on any other answer (e.g. a 404 JSON)
                log.info("Failed loading model %s: %r", self.name, exc)
                break
            time.sleep(delay)  # as the wrapper does: after the successful ask too
        log.info("The model %s is %s", self.name, "ready" if self.ready else "NOT ready: giving up")
        return self.ready

    def postprocess(self, response, headers=None):
        if headers and "application/json" in headers.get("content-type", "") and isinstance(response, InferResponse):
            return response.to_rest()
        return response


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    config = read_properties(os.environ["CONFIG_PATH"])
    protocol = os.environ.get("PROTOCOL_VERSION", "v1")
    models = []
    for name in json.loads(config["model_snapshot"])["models"]:
        model = TorchServeModel(name, config["inference_address"], config["management_address"], protocol,
                                config["model_store"])
        model.load()
        models.append(model)
    ModelServer(registered_models=ModelRepository(config["model_store"]),
                http_port=int(os.environ.get("KSERVE_HTTP_PORT", 8080)),
                grpc_port=int(os.environ.get("KSERVE_GRPC_PORT", 8081))).start(models)


if __name__ == "__main__":
    main()
