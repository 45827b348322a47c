"""Start a real TorchServe for tests: the project's config.properties on free loopback ports, in its own folder.

Each instance gets its own working directory (key_file.json and logs land there) and its own TMPDIR (TorchServe
keeps its pid file in the temp dir, so two instances would otherwise refuse to coexist), and runs in its own
process group so that teardown kills the frontend and every worker even when a test failed. Its ports come from
serving.ports, all at once; if one was taken by the time TorchServe binds it, it starts again on new ones.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from client.ready import wait_until_ready
from serving.ports import PortInUse, port_in_use, start_on_free_ports
from serving.process_group import stop_process_group
from serving.serve_config import build_config

REPO = Path(__file__).resolve().parent.parent
TORCHSERVE = Path(sys.executable).parent / "torchserve"


# Every port a TorchServe is given. "worker" is initial_worker_port: on Linux it only names the workers' Unix
# sockets (in the instance's own temp dir), but it is picked with the others so that no two names share one.
PORT_NAMES = ("inference", "management", "metrics", "grpc", "grpc_mgmt", "worker")


def derive_config(overrides: dict[str, str], source: Path = REPO / "config.properties") -> str:
    """The project's config with some keys replaced (ports, model store); every other setting kept as shipped."""
    lines, seen = [], set()
    for line in source.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if not line.lstrip().startswith("#") and key in overrides:
            line = f"{key}={overrides[key]}"
            seen.add(key)
        lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    return "\n".join(lines) + "\n"


@dataclass
class TorchServe:
    workdir: Path
    model_store: Path
    extra_config: dict[str, str] = field(default_factory=dict)
    inference_scheme: str = "http"  # "https" with private_key_file/certificate_file in extra_config
    process: subprocess.Popen | None = None
    # Ports (by PORT_NAMES) to try first instead of free ones; the rest are picked when the server first starts.
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def inference_url(self) -> str:
        return f"{self.inference_scheme}://127.0.0.1:{self.ports['inference']}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def start(self, timeout: float = 240, restore_snapshot: bool = False) -> TorchServe:
        """Start and wait until `tagger` is READY; with restore_snapshot, like `make serve` after a restart. A
        restart keeps the ports of the last start unless one of them is taken by now."""
        def start_on(ports: dict[str, int]) -> TorchServe:
            self.ports = ports
            return self._start_once(timeout, restore_snapshot)

        return start_on_free_ports(start_on, PORT_NAMES, f"TorchServe in {self.workdir}", first=self.ports)

    def _start_once(self, timeout: float, restore_snapshot: bool) -> TorchServe:
        overrides = {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": self.metrics_url,
            "grpc_inference_port": str(self.ports["grpc"]),
            "grpc_management_port": str(self.ports["grpc_mgmt"]),
            "initial_worker_port": str(self.ports["worker"]),
            "model_store": str(self.model_store),
            **self.extra_config,
        }
        (self.workdir / "config.properties").write_text(derive_config(overrides))
        config = "config.properties"
        if restore_snapshot:
            text, _ = build_config(self.workdir / "config.properties", self.logs / "config")
            (self.workdir / "serve.properties").write_text(text)
            config = "serve.properties"
        (self.workdir / "tmp").mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(self.workdir / "tmp"), "LOG_LOCATION": str(self.logs),
               "METRICS_LOCATION": str(self.logs), "PYTHONPATH": ""}
        # Written anew by each start, so that what it says is about this start only.
        out = self.workdir / "torchserve.out"
        with open(out, "wb") as sink:
            self.process = subprocess.Popen(
                [str(TORCHSERVE), "--start", "--foreground", "--ts-config", config],
                cwd=self.workdir, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_ready("tagger", self.management_url, self.key_file, timeout,
                             alive=lambda: self.process.poll() is None)
        except Exception as failure:
            exited = self.process.poll() is not None
            self.stop()
            if not exited:
                raise
            text = out.read_text(errors="replace") if out.exists() else ""
            clash = port_in_use(text)
            if clash:
                raise PortInUse(clash, self.ports) from failure
            raise RuntimeError(f"TorchServe in {self.workdir} exited before tagger was ready; "
                               f"{out.name} ends:\n{text[-3000:]}") from failure
        return self

    def stop(self) -> None:
        """TERM, then KILL; TorchServe's workers run in the frontend's process group, and none may outlive it."""
        stop_process_group(self.process)

    def log_text(self, name: str = "model_log.log") -> str:
        path = self.logs / name
        return path.read_text(errors="replace") if path.exists() else ""
