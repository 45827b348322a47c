"""Wait until TorchServe answers and a model has a READY worker (used by `make serve` and the tests)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import psutil
import requests

from client.auth import DEFAULT_KEY_FILE, KeyFileError
from client.rest import DEFAULT_MANAGEMENT_URL, call


def server_alive(pid_file: Path | None = None) -> bool:
    """Whether the TorchServe frontend recorded in its pid file (written by `torchserve --start`) still runs."""
    pid_file = pid_file or Path(tempfile.gettempdir()) / ".model_server.pid"
    try:
        return psutil.pid_exists(int(pid_file.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return False


def model_ready(model: str, management_url: str, key_file: str | Path) -> bool:
    try:
        response = call("GET", f"{management_url}/models/{model}", "management", key_file, timeout=5)
    except (requests.RequestException, KeyFileError):
        return False
    if response.status_code != 200:
        return False
    return any(w.get("status") == "READY" for version in response.json() for w in version.get("workers", []))


def wait_until_ready(model: str = "tagger", management_url: str = DEFAULT_MANAGEMENT_URL,
                     key_file: str | Path = DEFAULT_KEY_FILE, timeout: float = 300, alive=lambda: True) -> None:
    """Poll until `model` has a READY worker; TimeoutError after `timeout` s, RuntimeError if `alive()` turns False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if model_ready(model, management_url, key_file):
            return
        if not alive():
            raise RuntimeError("TorchServe exited before the model became ready "
                               "(a port in use? see logs/torchserve.out and logs/ts_log.log)")
        time.sleep(1.0)
    raise TimeoutError(f"model {model!r} not READY after {timeout:.0f} s (see logs/model_log.log)")
