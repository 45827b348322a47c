"""Free loopback ports for the servers that the tests, the benchmarks and the load tests start, and starting such a
server again on new ports when one was taken after all.

Picking a port by binding port 0 and closing the socket at once lets the kernel hand the same port out again on
the next pick: six such picks for one TorchServe once gave metrics_address and grpc_inference_port the same port.
`free_ports` holds every socket until all are picked, and never hands out a port it handed out recently in this
process (a server started a moment ago may not have bound its ports yet). Another process can still take a port
between the pick and the server's bind, so `start_on_free_ports` starts again on new ports when the server's own
output says its bind failed for "address in use", a bounded number of times.
"""
from __future__ import annotations

import logging
import re
import socket
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

HOST = "127.0.0.1"
START_ATTEMPTS = 3
# Well below the ephemeral range (about 28,000 ports on Linux), so that skipping these never runs out of ports,
# and far above what one test session or benchmark run starts.
REMEMBERED = 4096

_lock = threading.Lock()
_recent: deque[int] = deque(maxlen=REMEMBERED)

# How the servers started on picked ports say that a bind failed because the port was taken: Netty and grpc-java
# (TorchServe: "Failed to bind to address: http://127.0.0.1:36071", then "bind(..) failed: Address already in
# use"), uvicorn ("[Errno 98] error while attempting to bind on address ...: address already in use"), grpcio,
# chromedriver, ZeroMQ (Locust's master) and Python's socketserver say "Address already in use" too. Only these: a
# bind that fails for any other reason (no such address, no permission) is a configuration error that new ports
# would not cure.
IN_USE = re.compile(r"address already in use|eaddrinuse|\[errno 98\]", re.IGNORECASE)
# The line that names the address, where the server prints one apart from the reason.
BIND_FAILED = re.compile(r"failed to bind|error while attempting to bind", re.IGNORECASE)
# A port on such a line: "http://127.0.0.1:36071", "/127.0.0.1:36071", "('127.0.0.1', 8090)", "[::]:8081".
PORT_ON_LINE = re.compile(r"(?::|',\s*)(\d{2,5})\b")


def free_ports(count: int, host: str = HOST) -> list[int]:
    """`count` distinct ports that nothing on `host` is bound to now and that this process has not handed out
    recently."""
    held: list[socket.socket] = []
    picked: list[int] = []
    try:
        with _lock:
            # A bound socket keeps its port from the kernel's next pick; a skipped recent port stays held too, so
            # that the next bind cannot land on it again.
            for _ in range(count * 20 + 100):
                if len(picked) == count:
                    break
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind((host, 0))
                port = sock.getsockname()[1]
                if port not in _recent:
                    picked.append(port)
            if len(picked) < count:
                raise OSError(f"found only {len(picked)} of {count} free ports on {host} not handed out lately")
            _recent.extend(picked)
    finally:
        for sock in held:
            sock.close()
    return picked


def port_in_use(text: str) -> str | None:
    """The line of a server's output that tells which bind failed because the address was in use (the failed
    bind's line where there is one, else the in-use line), or None if the output says no such thing."""
    lines = text.splitlines()
    in_use = next((line.strip() for line in lines if IN_USE.search(line)), None)
    if in_use is None:
        return None
    return next((line.strip() for line in lines if BIND_FAILED.search(line) and PORT_ON_LINE.search(line)), in_use)


class PortInUse(RuntimeError):
    """A server could not bind a picked port: another process took it after the pick. `line` is the server's own
    line that says so."""

    def __init__(self, line: str, ports: dict[str, int]):
        self.line, self.ports = line, dict(ports)
        # A server that names no port on its line (Python's "[Errno 98] Address already in use") had only one.
        self.port = taken_port(line, ports) or (next(iter(ports.values())) if len(ports) == 1 else None)
        taken = f"port {self.port}" if self.port else f"one of ports {sorted(self.ports.values())}"
        super().__init__(f"{taken} already in use ({line})")


def taken_port(line: str, ports: dict[str, int]) -> int | None:
    """Which of `ports` the server's in-use line names, if any."""
    named = {int(match) for match in PORT_ON_LINE.findall(line)}
    return next((port for port in ports.values() if port in named), None)


def start_on_free_ports(start: Callable[[dict[str, int]], T], names: Sequence[str], what: str,
                        first: dict[str, int] | None = None, attempts: int = START_ATTEMPTS) -> T:
    """Call `start(ports)` with a port per name (those of `first` on the first try, where given; free ones for
    the rest), and again on new free ports after each PortInUse it raises, up to `attempts` tries in all; each
    retry is logged with the taken port. Any other exception from `start` propagates at once."""
    first = first or {}
    missing = [name for name in names if name not in first]
    ports = {**dict(zip(missing, free_ports(len(missing)), strict=True)), **first}
    for attempt in range(1, attempts):
        try:
            return start(ports)
        except PortInUse as clash:
            ports = dict(zip(names, free_ports(len(names)), strict=True))
            log.warning("%s: %s; starting again on new ports %s (try %d of %d)", what, clash, ports, attempt + 1,
                        attempts)
    try:
        return start(ports)
    except PortInUse as clash:
        raise RuntimeError(f"{what}: {clash}; gave up after {attempts} tries, each on new ports") from clash
