"""The shipped config.properties keeps the service closed: tokens on every API, registrations only from the local
model store, key rotation that long-running clients survive, and TLS for inference."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from client.rest import call, tag_image
from serving.torchserve_process import REPO, TorchServe, derive_config
from tests.conftest import run


def manage(server, method, path, **kwargs):
    return call(method, f"{server.management_url}{path}", "management", server.key_file, **kwargs)


def test_shipped_config_is_closed_by_default():
    props = dict(line.split("=", 1) for line in (REPO / "config.properties").read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), key
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert "disable_token_authorization" not in props or props["disable_token_authorization"] == "false"
    assert props["install_py_dep_per_model"] == props["enable_envvars_config"] == "false"
    assert "http" not in props["allowed_urls"] and "model_store" in props["allowed_urls"]
    assert 16 * 2**20 <= int(props["max_request_size"]) <= 32 * 2**20


@pytest.mark.server
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-key"}])
def test_management_without_the_management_key_changes_nothing(server, headers):
    before = manage(server, "GET", "/models").json()
    inference_key = json.loads(server.key_file.read_text())["inference"]["key"]
    attempts = [("POST", "/models?url=tagger-2.0.mar"), ("PUT", "/models/tagger?min_worker=3"),
                ("DELETE", "/models/tagger/1.0"), ("GET", "/models")]
    for method, path in attempts:
        for auth in (headers, {"Authorization": f"Bearer {inference_key}"}):  # the inference key is not enough
            response = requests.request(method, f"{server.management_url}{path}", headers=auth, timeout=30)
            assert response.status_code in (400, 401), (method, path, response.text)
            assert "Token Authorization failed" in response.text
    assert manage(server, "GET", "/models").json() == before


@pytest.mark.parametrize("url", [
    "https://example.com/tagger.mar",
    "http://127.0.0.1:1/tagger.mar",
    "file:///etc/passwd",
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "tagger.mar/../../../etc/passwd",
])
@pytest.mark.server
def test_model_registration_only_from_the_local_store(server, url):
    before = manage(server, "GET", "/models").json()
    response = manage(server, "POST", f"/models?url={url}&initial_workers=1&synchronous=true")
    assert response.status_code == 404, response.text
    assert "allowed URL" in response.text or "Relative path is not allowed" in response.text
    assert manage(server, "GET", "/models").json() == before


@pytest.mark.server
@pytest.mark.parametrize("url", ["https://example.com/wf.war", "file:///etc/passwd", "../../etc/passwd"])
def test_workflow_registration_is_refused(server, url):
    # enable_model_api does not cover the workflow API in 0.12; allowed_urls does.
    response = manage(server, "POST", f"/workflows?url={url}")
    assert response.status_code == 404, response.text
    assert manage(server, "GET", "/workflows").json().get("workflows", []) == []


@pytest.mark.server
def test_body_over_max_request_size_is_refused_without_reaching_the_worker(server):
    response = call("POST", f"{server.inference_url}/predictions/tagger", "inference", server.key_file,
                    data=b"\xff\xd8" + b"\0" * (21 * 2**20))
    assert response.status_code == 413


@pytest.mark.server
def test_rotated_keys_old_refused_client_follows(server, sample_images):
    keys = json.loads(server.key_file.read_text())
    run([sys.executable, "-m", "client", "--key-file", str(server.key_file), "rotate-keys",
         "--management-url", server.management_url])
    new_keys = json.loads(server.key_file.read_text())
    for kind in ("inference", "management"):
        assert new_keys[kind]["key"] != keys[kind]["key"]
    old = requests.post(f"{server.inference_url}/predictions/tagger", data=sample_images[0], timeout=60,
                        headers={"Authorization": f"Bearer {keys['inference']['key']}"})
    assert old.status_code == 400 and "InvalidKeyException" in old.text
    assert "tags" in tag_image(sample_images[0], url=server.inference_url, key_file=server.key_file)
    assert manage(server, "GET", "/models").status_code == 200


def _self_signed_certificate(folder):
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return key, cert


@pytest.mark.server
def test_inference_over_tls(model_store, tmp_path, sample_images):
    key, cert = _self_signed_certificate(tmp_path)
    ts = TorchServe(tmp_path / "tls", model_store, inference_scheme="https",
                    extra_config={"private_key_file": str(key), "certificate_file": str(cert)})
    ts.start()
    try:
        assert ts.inference_url.startswith("https://")
        with pytest.raises(requests.exceptions.SSLError):  # an unknown certificate is not trusted
            requests.get(f"{ts.inference_url}/ping", timeout=30)
        result = tag_image(sample_images[0], url=ts.inference_url, key_file=ts.key_file, verify=str(cert))
        assert "tags" in result
    finally:
        ts.stop()


def test_derive_config_keeps_security_settings():
    text = derive_config({"inference_address": "http://127.0.0.1:1"})
    assert "allowed_urls=" in text and "enable_envvars_config=false" in text


@pytest.mark.server
def test_key_file_is_private_to_the_server_user(server):
    assert server.key_file.stat().st_mode & 0o077 == 0
