"""serving.ports: several free ports at once and never the same one twice, and a server whose picked port was taken
before it could bind it starts again on new ports (a real TorchServe, a real Python HTTP server), while any other
start failure fails at once with the server's own words."""
from __future__ import annotations

import logging
import socket
import subprocess
import sys
from contextlib import closing

import pytest
import requests

from client.auth import bearer
from serving.ports import PortInUse, free_ports, port_in_use, start_on_free_ports, taken_port
from serving.torchserve_process import TorchServe


def listening(port: int) -> socket.socket:
    """A socket of the test's own, bound and listening on `port`, as another program would hold it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


def test_free_ports_never_returns_a_port_twice():
    seen: list[int] = []
    for _ in range(200):
        draw = free_ports(6)
        assert len(set(draw)) == 6, draw
        seen += draw
    assert len(set(seen)) == len(seen), "a port was handed out twice in 200 draws of 6"
    assert all(1024 < port < 65536 for port in seen)


def test_free_ports_are_free_all_at_once():
    held = [listening(port) for port in free_ports(6)]  # each can be bound while the others are held
    for sock in held:
        sock.close()


def test_free_ports_passes_over_a_port_in_use():
    with closing(listening(free_ports(1)[0])) as taken:
        port = taken.getsockname()[1]
        assert all(port not in free_ports(6) for _ in range(50))


# What the servers started on picked ports print when a port is taken (copied from real runs), and failures
# that are not about a taken port.
IN_USE = {
    "torchserve_rest": ("java.io.IOException: Failed to bind to address: http://127.0.0.1:49765\n"
                        "Caused by: io.netty.channel.unix.Errors$NativeIoException: bind(..) failed: "
                        "Address already in use", 49765),
    "torchserve_grpc": ("2026-12-06T20:52:04,968 [INFO ] main org.pytorch.serve.ModelServer - Metrics API bind to: "
                        "http://127.0.0.1:33039\njava.io.IOException: Failed to bind to address /127.0.0.1:58823\n"
                        "Caused by: io.grpc.netty.shaded.io.netty.channel.unix.Errors$NativeIoException: bind(..) "
                        "failed: Address already in use", 58823),
    "uvicorn": ("ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 34505): address "
                "already in use", 34505),
    "grpcio": ("E1206 20:52:57.226032    4906 add_port.cc:83] Failed to add port to server: No address added "
               "out of total 1 resolved for '[::]:33963' (... Error in bind for address '[::]:33963': Address "
               "already in use)\nRuntimeError: Failed to bind to address [::]:33963; set GRPC_VERBOSITY=debug "
               "environment variable to see detailed error message.", 33963),
    "chromedriver": ("[1796590419.387][SEVERE]: bind() failed: Address already in use (98)\n"
                     "[1796590419.387][INFO]: listen on IPv4 failed with error ERR_ADDRESS_IN_USE", None),
    "locust": ("locust.exception.RPCError: Socket bind failure: Address already in use "
               "(addr='tcp://127.0.0.1:42237')", 42237),
}
NOT_IN_USE = [
    "java.io.IOException: Failed to bind to address: http://10.9.9.9:8080\n"
    "Caused by: io.netty.channel.unix.Errors$NativeIoException: bind(..) failed: Cannot assign requested address",
    "ERROR:    [Errno 13] error while attempting to bind on address ('127.0.0.1', 80): permission denied",
    "java.lang.IllegalArgumentException: Model store directory not found: /nowhere",
    "",
]


# "program", not "server": a parameter named like the session's TorchServe fixture reads as asking for it.
@pytest.mark.parametrize("program", sorted(IN_USE))
def test_a_taken_port_is_recognised_in_each_servers_words(program):
    text, port = IN_USE[program]
    line = port_in_use(text)
    assert line and line in text
    assert taken_port(line, {"a": 1234, "b": port or 4321}) == port


@pytest.mark.parametrize("text", NOT_IN_USE)
def test_other_start_failures_are_not_taken_for_a_taken_port(text):
    assert port_in_use(text) is None


# ---- start_on_free_ports with a real server: Python's http.server in a child process ----------------------------
def start_http_server(ports: dict[str, int], *extra: str) -> subprocess.Popen:
    """`python -m http.server` on ports["http"], once it says it serves; PortInUse if its bind failed for a taken
    port, RuntimeError with its output for any other exit. (Its own words, not a connection, tell that it is up: a
    connection to a port the test holds would succeed too.)"""
    process = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", *extra,
                                str(ports["http"])], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in process.stdout:
        if line.startswith("Serving HTTP"):
            return process
        output.append(line)
    process.wait()
    if clash := port_in_use("".join(output)):
        raise PortInUse(clash, ports)
    raise RuntimeError(f"http.server exited: {''.join(output)}")


def test_a_server_on_a_taken_port_starts_again_on_another(caplog):
    with closing(listening(free_ports(1)[0])) as taken:
        held = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="serving.ports"):
            server = start_on_free_ports(lambda ports: (ports, start_http_server(ports)), ["http"], "http.server",
                                         first={"http": held})
        ports, process = server
        try:
            assert ports["http"] != held
            assert requests.get(f"http://127.0.0.1:{ports['http']}/", timeout=10).ok
        finally:
            process.kill()
            process.communicate()
    [retry] = [r.getMessage() for r in caplog.records if r.name == "serving.ports"]
    assert f"port {held} already in use" in retry and "try 2 of 3" in retry, retry


def test_a_port_taken_on_every_try_gives_up_after_the_bounded_tries(caplog):
    tries = []

    def always_taken(ports):
        tries.append(ports["http"])
        with closing(listening(ports["http"])):
            start_http_server(ports)

    with pytest.raises(RuntimeError, match=r"already in use .*gave up after 3 tries"):
        start_on_free_ports(always_taken, ["http"], "http.server")
    assert len(tries) == len(set(tries)) == 3  # new ports each time
    assert len([r for r in caplog.records if r.name == "serving.ports"]) == 2


def test_any_other_start_failure_fails_at_once_with_the_servers_message(caplog):
    tries = []

    def start(ports):
        tries.append(ports)
        return start_http_server(ports, "--bind", "192.0.2.1")  # TEST-NET-1: an address no machine has

    with pytest.raises(RuntimeError, match="http.server exited: (?s:.*)Cannot assign requested address"):
        start_on_free_ports(start, ["http"], "http.server")
    assert len(tries) == 1 and not [r for r in caplog.records if r.name == "serving.ports"]


# ---- a real TorchServe ---------------------------------------------------------------------------------------------
@pytest.mark.server
def test_torchserve_on_a_taken_port_comes_up_on_another(model_store, sample_images, tmp_path, caplog):
    """The gRPC port (the last one TorchServe binds, after its REST APIs and the model's workers are under way) is
    held by this test: the first start fails on it, the second comes up on new ports and serves."""
    with closing(listening(free_ports(1)[0])) as taken:
        held = taken.getsockname()[1]
        ts = TorchServe(tmp_path / "ts", model_store, ports={"grpc": held})
        with caplog.at_level(logging.WARNING, logger="serving.ports"):
            ts.start()
        try:
            assert ts.ports["grpc"] != held and len(set(ts.ports.values())) == len(ts.ports)
            assert accepts(ts.ports["grpc"])
            answer = requests.post(f"{ts.inference_url}/predictions/tagger", data=sample_images[0], timeout=120,
                                   headers=bearer("inference", ts.key_file))
            assert answer.status_code == 200 and "tags" in answer.json(), answer.text
        finally:
            ts.stop()
    [retry] = [r.getMessage() for r in caplog.records if r.name == "serving.ports"]
    assert f"port {held} already in use" in retry and "try 2 of 3" in retry, retry
    assert str(ts.workdir) in retry


@pytest.mark.server
def test_torchserve_failing_for_another_reason_fails_at_once_with_its_own_message(model_store, tmp_path, caplog):
    ts = TorchServe(tmp_path / "ts", model_store, extra_config={"model_store": str(tmp_path / "nowhere")})
    with pytest.raises(RuntimeError, match="exited before tagger was ready") as failure:
        ts.start()
    assert "nowhere" in str(failure.value)  # TorchServe's own words about the missing store
    assert not [r for r in caplog.records if r.name == "serving.ports"]
