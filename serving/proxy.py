"""The front proxy: nginx from the distribution, in front of TorchServe's inference API (issue 27, README "Serving
behind the proxy"). Renders deploy/nginx/tagger.conf with ports, folders, limits and TLS, and runs nginx as an
ordinary foreground process of the project (no system service), with its pid file, logs and temp folders under
its own prefix folder.

    python -m serving.proxy start --listen 127.0.0.1:8090     # in the background (make serve-proxy)
    python -m serving.proxy stop                               # make stop-proxy
    python -m serving.proxy run --listen 0.0.0.0:8443 --cert cert.pem --key key.pem   # in the foreground
    python -m serving.proxy render                             # print the rendered config

The tests and the reliability benchmark start it through NginxProxy, on a port from serving.ports.
"""
from __future__ import annotations

import argparse
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from serving.ports import PortInUse, port_in_use, start_on_free_ports
from serving.process_group import stop_process_group

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "deploy" / "nginx" / "tagger.conf"
CONFIG = REPO / "config.properties"
DEFAULT_PREFIX = REPO / "build" / "nginx"
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def read_properties(path: Path = CONFIG) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def torchserve_inference_address(path: Path = CONFIG) -> str:
    """host:port of TorchServe's inference API in a config.properties. Plain HTTP only: TLS ends at the proxy, and
    TorchServe stays on loopback behind it."""
    address = read_properties(path)["inference_address"]
    scheme, _, rest = address.partition("://")
    if scheme != "http":
        raise SystemExit(f"{path}: inference_address is {address}; behind the proxy keep TorchServe on loopback "
                         "HTTP and give the proxy the certificate (--cert/--key)")
    return rest.rstrip("/")


# The JVM's own memory beside heap and direct buffers (metaspace, code cache, thread stacks, GC bookkeeping), as
# config.properties' vmargs comment counts it.
JVM_OWN_MB = 256
SIZE = re.compile(r"(\d+)([kmgKMG]?)")


def _megabytes(text: str) -> float:
    number, unit = SIZE.fullmatch(text).groups()
    return int(number) / 2**20 * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit.lower()]


def jvm_memory(path: Path = CONFIG) -> dict[str, float]:
    """The frontend's heap and direct memory limits from a config.properties' vmargs, and the resident memory it
    is expected to stay under (both plus the JVM's own)."""
    vmargs = read_properties(path).get("vmargs", "")
    heap = re.search(r"-Xmx(\S+)", vmargs)
    direct = re.search(r"-XX:MaxDirectMemorySize=(\S+)", vmargs)
    if heap is None or direct is None:
        raise ValueError(f"{path}: vmargs sets no -Xmx or no -XX:MaxDirectMemorySize: {vmargs!r}")
    heap_mb, direct_mb = _megabytes(heap.group(1)), _megabytes(direct.group(1))
    return {"heap_mb": heap_mb, "direct_mb": direct_mb, "jvm_own_mb": JVM_OWN_MB,
            "bound_mb": heap_mb + direct_mb + JVM_OWN_MB}


def memory_needed(in_flight: int, max_request_size: int) -> dict[str, float]:
    """What the frontend needs for `in_flight` bodies of max_request_size (config.properties explains the terms)."""
    body_mb = max_request_size / 2**20
    return {"direct_mb": 2 * in_flight * body_mb, "heap_mb": in_flight * body_mb + 250}


@dataclass
class Limits:
    """What one client, and all of them together, may have the proxy hold or pass on.

    The defaults fit the 2-core CPU box (capacity 12-24 photos/s): 8 requests in flight per client is
    sar-tag-folder's --concurrency 8; 20 requests/s (burst 40) is more than one box tags; 16 requests into
    TorchServe at once is two workers' batches of 8, and what config.properties' vmargs are sized for."""
    max_body: int = int(read_properties().get("max_request_size", 20971520))
    conns_per_client: int = 8
    rate: str = "20r/s"
    burst: int = 40
    upstream_conns: int = 16
    clients_in_flight: int = 128


def render(listen: str, upstream: str, prefix: Path, limits: Limits | None = None, cert: Path | None = None,
           key: Path | None = None, workers: str = "auto", template: Path = TEMPLATE) -> str:
    """deploy/nginx/tagger.conf with every double-braced placeholder filled in; TLS on when cert and key are given."""
    limits = limits or Limits()
    if (cert is None) != (key is None):
        raise ValueError("TLS needs both a certificate and its key")
    if not re.fullmatch(r"\d+r/[sm]", limits.rate):
        raise ValueError(f"rate {limits.rate!r}: write it as nginx does, e.g. 20r/s or 60r/m")
    tls = ""
    if cert is not None:
        tls = (f"        ssl_certificate {Path(cert).resolve()};\n"
               f"        ssl_certificate_key {Path(key).resolve()};\n"
               "        ssl_protocols TLSv1.2 TLSv1.3;\n"
               "        ssl_session_cache shared:tagger_tls:1m;\n")
    values = {
        "listen": f"{listen} ssl" if cert is not None else listen,
        "tls": tls,
        "upstream": upstream,
        "prefix": str(Path(prefix).resolve()),
        "user": getpass.getuser(),
        "workers": workers,
        "max_body": str(limits.max_body),
        "conns_per_client": str(limits.conns_per_client),
        "rate": limits.rate,
        # nginx refuses burst=0; leaving it out means the same: no request over the rate.
        "limit_req": f"zone=tagger_rate burst={limits.burst} nodelay" if limits.burst else "zone=tagger_rate",
        "upstream_conns": str(limits.upstream_conns),
        "clients_in_flight": str(limits.clients_in_flight),
    }
    text = template.read_text()
    unknown = sorted(set(PLACEHOLDER.findall(text)) - set(values))
    if unknown:
        raise ValueError(f"{template}: no value for {unknown}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def nginx_binary() -> str:
    # root's PATH has /usr/sbin, a normal user's often does not.
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)
    if found is None:
        raise SystemExit("nginx is not installed: apt-get install nginx-light (or nginx)")
    return found


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class NginxProxy:
    """nginx with the rendered config in its own prefix folder (conf/, logs/, temp/, nginx.pid)."""
    prefix: Path
    upstream: str  # TorchServe's inference host:port
    limits: Limits = field(default_factory=Limits)
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free one (serving.ports) when started
    cert: Path | None = None
    key: Path | None = None
    workers: str = "auto"
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.cert else 'http'}://{self.host}:{self.port}"

    @property
    def conf(self) -> Path:
        return self.prefix / "conf" / "tagger.conf"

    @property
    def pid_file(self) -> Path:
        return self.prefix / "nginx.pid"

    @property
    def output(self) -> Path:
        return self.prefix / "logs" / "nginx.out"

    def write_config(self) -> Path:
        for folder in ("conf", "logs", "temp"):
            (self.prefix / folder).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(render(f"{self.host}:{self.port}", self.upstream, self.prefix, self.limits, self.cert,
                                    self.key, self.workers))
        return self.conf

    def command(self) -> list[str]:
        # -e: the error log before the config is read (else nginx first opens the compiled-in /var/log/nginx one).
        return [nginx_binary(), "-p", f"{self.prefix.resolve()}/", "-c", str(self.conf.resolve()),
                "-e", str((self.prefix / "logs" / "error.log").resolve())]

    def test_config(self) -> subprocess.CompletedProcess:
        self.write_config()
        return subprocess.run([*self.command(), "-t", "-q"], capture_output=True, text=True)

    def start(self, timeout: float = 30) -> NginxProxy:
        """Start on `port`, or on a free port (again on a new one if it was taken before nginx could bind it)."""
        if self.port is not None:
            return self._start_once(timeout)

        def start_on(ports: dict[str, int]) -> NginxProxy:
            self.port = ports["proxy"]
            return self._start_once(timeout)

        try:
            return start_on_free_ports(start_on, ("proxy",), f"nginx in {self.prefix}")
        except Exception:
            self.port = None
            raise

    def _start_once(self, timeout: float) -> NginxProxy:
        self.write_config()
        self.pid_file.unlink(missing_ok=True)
        with open(self.output, "wb") as sink:
            self.process = subprocess.Popen(self.command(), stdout=sink, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        # nginx writes its pid file after it has bound its ports.
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.pid_file.exists() and self.pid_file.read_text().strip() == str(self.process.pid) \
                    and _listening(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        text = self.output.read_text(errors="replace") + self._error_log()
        clash = port_in_use(text)
        if clash:
            raise PortInUse(clash, {"proxy": self.port})
        raise RuntimeError(f"nginx ({' '.join(self.command())}) did not start within {timeout:.0f} s:\n"
                           f"{text[-3000:]}")

    def _error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> str:
        path = self.prefix / "logs" / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, grace: float = 10) -> None:
        # SIGQUIT lets nginx finish the requests in flight; TERM, then KILL the group if it does not.
        stop_process_group(self.process, [(signal.SIGQUIT, grace), (signal.SIGTERM, grace), (signal.SIGKILL, grace)])


def running_pid(prefix: Path) -> int | None:
    """The pid of the nginx that `start` left running in `prefix`, or None."""
    try:
        pid = int((prefix / "nginx.pid").read_text().strip())
        # `start` exits and leaves nginx to init: an exited nginx may stay a zombie for a while.
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return None
    except (OSError, ValueError, psutil.Error):
        return None
    return pid


def stop_by_pid_file(prefix: Path, grace: float = 10) -> bool:
    """Stop the proxy `start` left running in `prefix`; False when none runs there."""
    pid = running_pid(prefix)
    if pid is None:
        return False
    os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if running_pid(prefix) != pid:
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    return True


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--listen {listen!r}: write it as HOST:PORT, e.g. 127.0.0.1:8090 or 0.0.0.0:8443")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("start", "run", "stop", "render", "check"),
                        help="start: in the background, wait until it listens; run: in the foreground (for a "
                             "supervisor or a container); stop: the one start left running in --prefix; render: "
                             "print the config; check: nginx -t on it")
    parser.add_argument("--listen", default="127.0.0.1:8090",
                        help="HOST:PORT the proxy listens on (0.0.0.0:8443 with --cert/--key to serve the network)")
    parser.add_argument("--upstream", default=None,
                        help="TorchServe's inference HOST:PORT (default: inference_address of --ts-config)")
    parser.add_argument("--ts-config", type=Path, default=CONFIG,
                        help="TorchServe config.properties to read inference_address and max_request_size from")
    parser.add_argument("--prefix", type=Path, default=DEFAULT_PREFIX,
                        help="folder for nginx's config, logs, pid file and temp files (request bodies)")
    parser.add_argument("--cert", type=Path, default=None, help="TLS certificate (PEM): serve HTTPS")
    parser.add_argument("--key", type=Path, default=None, help="private key of --cert (PEM)")
    defaults = Limits()
    parser.add_argument("--conns-per-client", type=int, default=defaults.conns_per_client,
                        help="requests in flight per client address; more get 429")
    parser.add_argument("--rate", default=defaults.rate, help="requests per client address, e.g. 20r/s or 60r/m")
    parser.add_argument("--burst", type=int, default=defaults.burst,
                        help="requests a client may go over --rate by before it gets 429")
    parser.add_argument("--upstream-conns", type=int, default=defaults.upstream_conns,
                        help="requests passed to TorchServe at once, all clients together (what its JVM memory "
                             "in config.properties' vmargs is sized for); more get 503")
    parser.add_argument("--clients-in-flight", type=int, default=defaults.clients_in_flight,
                        help="requests the proxy holds at once, all clients together (bounds the disk its "
                             "temp bodies take: this many times the body limit); more get 429")
    parser.add_argument("--workers", default="auto", help="nginx worker processes (auto: one per core)")
    args = parser.parse_args(argv)

    prefix = args.prefix.resolve()
    if args.action == "stop":
        print("proxy stopped" if stop_by_pid_file(prefix) else f"no proxy running in {prefix}")
        return 0
    host, port = split_listen(args.listen)
    limits = Limits(max_body=int(read_properties(args.ts_config).get("max_request_size", defaults.max_body)),
                    conns_per_client=args.conns_per_client, rate=args.rate, burst=args.burst,
                    upstream_conns=args.upstream_conns, clients_in_flight=args.clients_in_flight)
    proxy = NginxProxy(prefix, args.upstream or torchserve_inference_address(args.ts_config), limits, host, port,
                       args.cert, args.key, args.workers)
    if args.action == "render":
        print(render(args.listen, proxy.upstream, prefix, limits, args.cert, args.key, args.workers), end="")
        return 0
    if args.action == "check":
        result = proxy.test_config()
        print(result.stdout + result.stderr, end="")
        return result.returncode
    if args.action == "run":
        proxy.write_config()
        os.execv(nginx_binary(), proxy.command())
    if running_pid(prefix) is not None:
        raise SystemExit(f"a proxy is already running from {prefix}: make stop-proxy first")
    try:
        proxy.start()
    except PortInUse as clash:
        raise SystemExit(f"cannot listen on {args.listen}: {clash}") from None
    print(f"proxy on {proxy.url} -> TorchServe http://{proxy.upstream} (pid {proxy.process.pid}, logs in "
          f"{prefix / 'logs'}); stop it with make stop-proxy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
