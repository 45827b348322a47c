"""The front proxy (serving/proxy.py, deploy/nginx/tagger.conf; issue 27): the real nginx in front of the real
TorchServe refuses what it can before the body is read (a declared size over the limit, a form content type, a
missing or refused key, a client over its limits), answers each refusal with a JSON message, and an honest client
is answered while another client floods it with large uploads. The memory the frontend is given (vmargs) covers
the bodies the proxy lets in.

Nothing here is timed: the flood is a bounded number of uploads, and limits are checked by their statuses. The
figures (latency, peak memory during a minute of flood) are the benchmark's, loadtests/reliability.py."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from client.auth import bearer, read_key
from loadtests.faults import worker_pids
from loadtests.reliability import FLOOD_SOURCE, flood, frontend_pid, oom_lines
from serving.ports import PortInUse, free_ports
from serving.proxy import Limits, NginxProxy, jvm_memory, memory_needed, nginx_binary, read_properties, render
from serving.torchserve_process import REPO
from tests.conftest import run

DEPLOY = REPO / "deploy"
MAX_REQUEST_SIZE = int(read_properties()["max_request_size"])


def needs_nginx() -> None:
    try:
        nginx_binary()
    except SystemExit:
        pytest.skip("needs nginx: apt-get install nginx-light (.ci/run installs it)")


def self_signed(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return key, cert


def start_proxy(folder: Path, upstream: str, **limits) -> NginxProxy:
    needs_nginx()
    return NginxProxy(folder, upstream, Limits(**limits)).start()


def headers_only(url: str, headers: dict[str, str], length: int) -> tuple[int, dict]:
    """Send a POST's headers declaring a `length`-byte body, send none of the body, and read the answer: a proxy
    that answers has decided without reading the body."""
    host, port = url.split("//")[1].split(":")
    lines = ["POST /predictions/tagger HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {length}",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall("\r\n".join(lines).encode())
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < content_length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body)


def content_length(answer: bytes) -> int:
    found = re.search(rb"content-length:\s*(\d+)", answer.split(b"\r\n\r\n", 1)[0], re.IGNORECASE)
    return int(found.group(1)) if found else 0


def torchserve_predictions(server) -> int:
    """Prediction requests TorchServe's access log has recorded so far."""
    path = server.logs / "access_log.log"
    return path.read_text(errors="replace").count("/predictions/tagger") if path.exists() else 0


def flush_access_log(server, proxy: NginxProxy, photo: bytes) -> int:
    """An honest request through the proxy, then wait until TorchServe's access log shows it: every request
    before it is then in the log too. Returns the predictions recorded."""
    before = torchserve_predictions(server)
    answer = requests.post(f"{proxy.url}/predictions/tagger", data=photo, timeout=120,
                           headers={**bearer("inference", server.key_file), "Content-Type": "image/jpeg"})
    assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 60  # the log is written asynchronously; this only bounds a broken log
    while torchserve_predictions(server) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return torchserve_predictions(server)


# ---- the config, offline -------------------------------------------------------------------------------------------
def test_rendered_config_is_valid_nginx_and_carries_the_limits(tmp_path):
    needs_nginx()
    limits = Limits(conns_per_client=3, rate="7r/s", burst=5, upstream_conns=9, clients_in_flight=50)
    proxy = NginxProxy(tmp_path / "plain", "127.0.0.1:1", limits, port=free_ports(1)[0])
    result = proxy.test_config()
    assert result.returncode == 0, result.stderr
    text = proxy.conf.read_text()
    assert "{{" not in text and "ssl_certificate" not in text and " ssl;" not in text
    for line in (f"client_max_body_size {MAX_REQUEST_SIZE};", "limit_conn tagger_per_client 3;",
                 "rate=7r/s;", "burst=5 nodelay;", "max_conns=9", "limit_conn tagger_all 50;", "daemon off;",
                 "proxy_request_buffering on;", f"client_body_temp_path {tmp_path / 'plain'}/temp/client_body"):
        assert line in text, line
    key, cert = self_signed(tmp_path)
    tls = NginxProxy(tmp_path / "tls", "127.0.0.1:1", limits, port=free_ports(1)[0], cert=cert, key=key)
    result = tls.test_config()
    assert result.returncode == 0, result.stderr
    assert f"ssl_certificate {cert};" in tls.conf.read_text() and " ssl;" in tls.conf.read_text()
    with pytest.raises(ValueError):
        render("127.0.0.1:1", "127.0.0.1:2", tmp_path, cert=cert)  # a certificate without its key
    with pytest.raises(ValueError):
        render("127.0.0.1:1", "127.0.0.1:2", tmp_path, Limits(rate="7"))


def test_frontend_memory_covers_what_the_proxy_lets_in():
    """vmargs in both configs cover U bodies of max_request_size, where U is what reaches TorchServe at once:
    the proxy's upstream max_conns on the one box, containerConcurrency in the cluster."""
    one_box = jvm_memory()
    needed = memory_needed(Limits().upstream_conns, MAX_REQUEST_SIZE)
    assert one_box["heap_mb"] >= needed["heap_mb"] and one_box["direct_mb"] >= needed["direct_mb"]
    assert one_box["bound_mb"] <= 0.1 * 24 * 1024  # a small share of the 24 GiB machine the service runs on
    assert Limits().max_body == MAX_REQUEST_SIZE  # nginx refuses exactly what TorchServe would
    [isvc] = yaml.safe_load_all((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    in_flight = isvc["spec"]["predictor"]["containerConcurrency"]
    pod = jvm_memory(DEPLOY / "kserve" / "config.properties")
    needed = memory_needed(in_flight, MAX_REQUEST_SIZE)
    assert pod["heap_mb"] >= needed["heap_mb"] and pod["direct_mb"] >= needed["direct_mb"]
    limit_gib = float(isvc["spec"]["predictor"]["model"]["resources"]["limits"]["memory"].removesuffix("Gi"))
    assert pod["bound_mb"] <= 0.25 * limit_gib * 1024


def test_kserve_ingress_mirrors_the_proxy_limits():
    [envoy] = yaml.safe_load_all((DEPLOY / "kserve" / "ingress-limits.yaml").read_text())
    [policy] = yaml.safe_load_all((DEPLOY / "kserve" / "networkpolicy.yaml").read_text())
    assert envoy["kind"] == "EnvoyFilter" and envoy["metadata"]["namespace"] == policy["metadata"]["namespace"]
    assert envoy["spec"]["workloadSelector"]["labels"] == policy["spec"]["podSelector"]["matchLabels"]
    filters = {patch["patch"]["value"]["name"]: patch["patch"]["value"]["typed_config"]
               for patch in envoy["spec"]["configPatches"]}
    assert filters["envoy.filters.http.buffer"]["max_request_bytes"] == MAX_REQUEST_SIZE
    bucket = filters["envoy.filters.http.local_ratelimit"]["token_bucket"]
    assert bucket["tokens_per_fill"] > 0 and bucket["max_tokens"] >= bucket["tokens_per_fill"]
    text = (DEPLOY / "kserve" / "ingress-limits.yaml").read_text()
    assert 'proxy-body-size: "20m"' in text and 'proxy-request-buffering: "on"' in text  # the ingress-nginx note


# ---- the real nginx, without TorchServe --------------------------------------------------------------------------
def test_make_serve_proxy_starts_nginx_in_the_foreground_and_stop_proxy_ends_it(tmp_path):
    """`make serve-proxy` leaves nginx running (a normal process, no daemon, its files under the prefix); with
    TorchServe down a request with a key gets a JSON 503 to retry, and `make stop-proxy` ends it."""
    needs_nginx()
    port, closed = free_ports(2)
    prefix = tmp_path / "nginx"
    run(["make", "--no-print-directory", "serve-proxy", f"PROXY_LISTEN=127.0.0.1:{port}", f"PROXY_PREFIX={prefix}",
         f"PROXY_ARGS=--upstream 127.0.0.1:{closed}"])
    try:
        pid = int((prefix / "nginx.pid").read_text())
        assert "nginx" in psutil.Process(pid).name()
        answer = requests.post(f"http://127.0.0.1:{port}/predictions/tagger", data=b"\xff\xd8", timeout=60,
                               headers={"Authorization": "Bearer some-key", "Content-Type": "image/jpeg"})
        assert answer.status_code == 503 and answer.json()["reason"] == "unavailable", answer.text
        assert answer.headers["Retry-After"] == "1"
        assert (prefix / "temp" / "client_body").is_dir() and (prefix / "logs" / "access.log").exists()
    finally:
        run(["make", "--no-print-directory", "stop-proxy", f"PROXY_PREFIX={prefix}"])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_taken_port_is_reported_as_such(tmp_path):
    needs_nginx()
    [port] = free_ports(1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(PortInUse) as raised:
            NginxProxy(tmp_path, "127.0.0.1:1", port=port).start()
    assert raised.value.port == port


# ---- the real nginx in front of the real TorchServe --------------------------------------------------------------
@pytest.fixture(scope="module")
def proxy(server, tmp_path_factory):
    """The shipped limits in front of the session's TorchServe."""
    front = start_proxy(tmp_path_factory.mktemp("proxy"), f"127.0.0.1:{server.ports['inference']}")
    yield front
    front.stop()


@pytest.mark.server
def test_a_photo_is_tagged_through_the_proxy(server, proxy, sample_images):
    for content_type in ({"Content-Type": "image/jpeg"}, {}):  # no type at all is fine too (tritonclient sends none)
        answer = requests.post(f"{proxy.url}/predictions/tagger", data=sample_images[0], timeout=120,
                               headers={**bearer("inference", server.key_file), **content_type})
        assert answer.status_code == 200, answer.text
        assert "tags" in answer.json()
    files = {"data": ("photo.jpg", sample_images[1], "image/jpeg")}
    answer = requests.post(f"{proxy.url}/predictions/tagger", files=files, timeout=120,
                           headers=bearer("inference", server.key_file))
    assert answer.status_code == 200 and "tags" in answer.json(), answer.text


@pytest.mark.server
def test_refusals_come_before_the_body_and_never_reach_torchserve(server, proxy, sample_images):
    """Each answer arrives although not a byte of the body was sent, and TorchServe's access log records none of
    these requests."""
    key = bearer("inference", server.key_file)
    before = flush_access_log(server, proxy, sample_images[0])
    status, body = headers_only(proxy.url, {**key, "Content-Type": "image/jpeg"}, MAX_REQUEST_SIZE + 1)
    assert (status, body["reason"], body["code"]) == (413, "too_large", 413)
    status, body = headers_only(proxy.url, {**key, "Content-Type": "application/x-www-form-urlencoded"}, 5_000_000)
    assert (status, body["reason"]) == (415, "form_content_type")
    assert "image/jpeg" in body["error"] and "-T photo.jpg" in body["error"]
    status, body = headers_only(proxy.url, {"Content-Type": "image/jpeg"}, 5_000_000)
    assert (status, body["reason"]) == (401, "no_key")
    status, body = headers_only(proxy.url, {"Authorization": "Bearer not-the-key", "Content-Type": "image/jpeg"},
                                5_000_000)
    assert (status, body["reason"]) == (401, "refused_key")  # TorchServe checked it (its /ping), without the body
    # The management key is not an inference key, at the proxy as at TorchServe.
    management = {"Authorization": f"Bearer {read_key('management', server.key_file)}"}
    answer = requests.post(f"{proxy.url}/predictions/tagger", data=sample_images[0], timeout=120, headers=management)
    assert answer.status_code == 401 and answer.json()["reason"] == "refused_key", answer.text
    assert flush_access_log(server, proxy, sample_images[0]) == before + 1


@pytest.mark.server
def test_curl_data_binary_without_a_type_gets_a_415_that_says_what_to_send(server, proxy, sample_images, tmp_path):
    """curl --data-binary @photo.jpg sends application/x-www-form-urlencoded; TorchServe alone answers 500."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(sample_images[0])
    auth = f"Authorization: Bearer {read_key('inference', server.key_file)}"
    answer = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-H", auth, "--data-binary", f"@{photo}",
                             f"{proxy.url}/predictions/tagger"], capture_output=True, text=True, check=True)
    body, status = answer.stdout.rsplit("\n", 1)
    assert status == "415" and json.loads(body)["reason"] == "form_content_type"
    answer = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-H", auth, "-T", str(photo),
                             f"{proxy.url}/predictions/tagger"], capture_output=True, text=True, check=True)
    body, status = answer.stdout.rsplit("\n", 1)
    assert status == "200" and "tags" in json.loads(body)


@pytest.mark.server
def test_a_client_over_its_rate_or_its_connections_gets_429(server, sample_images, tmp_path):
    upstream = f"127.0.0.1:{server.ports['inference']}"
    headers = {**bearer("inference", server.key_file), "Content-Type": "image/jpeg"}
    slow = start_proxy(tmp_path / "rate", upstream, rate="1r/m", burst=0)
    try:
        statuses = [requests.post(f"{slow.url}/predictions/tagger", data=sample_images[0], headers=headers,
                                  timeout=120) for _ in range(2)]
        assert statuses[0].status_code == 200, statuses[0].text
        assert statuses[1].status_code == 429 and statuses[1].json()["reason"] == "rate_limited"
        assert statuses[1].headers["Retry-After"] == "1"
    finally:
        slow.stop()
    one = start_proxy(tmp_path / "conns", upstream, conns_per_client=1)
    try:
        # The first request's headers are in, its body never comes: it holds the client's one request in flight.
        host, port = one.url.split("//")[1].split(":")
        with socket.create_connection((host, int(port)), timeout=60) as holder:
            holder.sendall((f"POST /predictions/tagger HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000\r\n"
                            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
            deadline = time.monotonic() + 60  # until nginx counts it (it answers 200 before that)
            while True:
                answer = requests.post(f"{one.url}/predictions/tagger", data=sample_images[0], headers=headers,
                                       timeout=120)
                if answer.status_code == 429 or time.monotonic() > deadline:
                    break
            assert answer.status_code == 429 and answer.json()["reason"] == "rate_limited", answer.text
    finally:
        one.stop()


@pytest.mark.server
def test_an_honest_client_is_answered_during_a_bounded_flood_of_large_uploads(server, proxy, sample_images):
    """A client at another address floods 5 MB uploads of random bytes, first without a key, then with the key;
    every photo of the honest client is tagged meanwhile, every flood upload is refused (401, or 429/503 from the
    limits, or 400 not_an_image from the handler), and no worker restarts, no OutOfMemoryError."""
    workers = sorted(worker_pids(server.management_url, server.key_file))
    oom_before = oom_lines(server)
    body = os.urandom(5_000_000)
    key = read_key("inference", server.key_file)
    for flood_key, allowed in ((None, {"401"}), (key, {"400", "429", "503"})):
        result: dict = {}
        flooder = threading.Thread(target=lambda k=flood_key, into=result: into.update(
            statuses=flood(proxy.url, body, k, concurrency=24, count=96, source=FLOOD_SOURCE)))
        flooder.start()
        honest = []
        while flooder.is_alive() or not honest:
            honest.append(requests.post(
                f"{proxy.url}/predictions/tagger", data=sample_images[len(honest) % len(sample_images)], timeout=120,
                headers={**bearer("inference", server.key_file), "Content-Type": "image/jpeg"}))
            time.sleep(0.1)  # a person's pace, well under the per-client rate: this client must never be limited
        flooder.join()
        assert [a.status_code for a in honest] == [200] * len(honest), [a.text for a in honest if not a.ok]
        assert set(result["statuses"]) <= allowed, result["statuses"]
        assert sum(result["statuses"].values()) == 96
    assert sorted(worker_pids(server.management_url, server.key_file)) == workers
    assert oom_lines(server) == oom_before


@pytest.mark.server
def test_proxy_over_tls(server, sample_images, tmp_path):
    key, cert = self_signed(tmp_path)
    needs_nginx()
    front = NginxProxy(tmp_path / "nginx", f"127.0.0.1:{server.ports['inference']}", cert=cert, key=key).start()
    try:
        assert front.url.startswith("https://")
        answer = requests.post(f"{front.url}/predictions/tagger", data=sample_images[0], timeout=120, verify=str(cert),
                               headers={**bearer("inference", server.key_file), "Content-Type": "image/jpeg"})
        assert answer.status_code == 200 and "tags" in answer.json(), answer.text
    finally:
        front.stop()


@pytest.mark.server
def test_the_frontend_runs_with_the_configured_memory_limits(server):
    vmargs = read_properties(server.workdir / "config.properties")["vmargs"].split()
    assert {"-Xmx1g", "-XX:MaxDirectMemorySize=768m"} <= set(vmargs)
    assert set(vmargs) <= set(psutil.Process(frontend_pid(server)).cmdline())
