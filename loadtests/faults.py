"""Bounded load on loopback for fault and overload checks: steady clients, a worker kill, a burst over capacity.

Used by tests/test_faults.py (behaviour) and loadtests/reliability.py (the measured figures).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from client.auth import read_key
from client.rest import call


@dataclass
class Outcome:
    started: float
    finished: float
    status: int  # HTTP status, or 0 for a connection error / client timeout
    json_body: bool

    @property
    def seconds(self) -> float:
        return self.finished - self.started


@dataclass
class LoadRun:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]


def send(url: str, key_file: Path, body: bytes, timeout: float = 150,
         session: requests.Session | None = None) -> Outcome:
    started = time.monotonic()
    try:
        headers = {"Authorization": f"Bearer {read_key('inference', key_file)}"}
        response = (session or requests).post(f"{url}/predictions/tagger", data=body, headers=headers,
                                              timeout=timeout)
        try:
            response.json()
            is_json = True
        except ValueError:
            is_json = False
        return Outcome(started, time.monotonic(), response.status_code, is_json)
    except requests.RequestException:
        return Outcome(started, time.monotonic(), 0, False)


def steady_load(url: str, key_file: Path, bodies: list[bytes], clients: int, seconds: float,
                run: LoadRun | None = None, pause: float = 0.0, timeout: float = 150) -> LoadRun:
    """`clients` closed-loop clients sending for `seconds` (each waits for its answer or `timeout`, then `pause`),
    each over its own keep-alive connection, as a real client would."""
    run = run or LoadRun()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        i, session = index, requests.Session()
        while time.monotonic() < deadline:
            run.add(send(url, key_file, bodies[i % len(bodies)], timeout=timeout, session=session))
            i += clients
            if pause:
                time.sleep(pause)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return run


def burst(url: str, key_file: Path, bodies: list[bytes], count: int, concurrency: int) -> LoadRun:
    """`count` requests from `concurrency` threads at once: an open flood, not a polite closed loop."""
    run = LoadRun()
    with ThreadPoolExecutor(concurrency) as pool:
        for outcome in pool.map(lambda i: send(url, key_file, bodies[i % len(bodies)]), range(count)):
            run.add(outcome)
    return run


def worker_pids(management_url: str, key_file: Path, model: str = "tagger") -> list[int]:
    described = call("GET", f"{management_url}/models/{model}", "management", key_file).json()
    return [int(w["pid"]) for version in described for w in version["workers"] if w.get("pid")]


def kill_worker(management_url: str, key_file: Path) -> int:
    pid = worker_pids(management_url, key_file)[0]
    os.kill(pid, signal.SIGKILL)
    return pid


def recovery_after(run: LoadRun, moment: float) -> float | None:
    """Seconds from `moment` until the first request sent after it succeeded, or None."""
    later = sorted((o for o in run.outcomes if o.started >= moment and o.status == 200), key=lambda o: o.finished)
    return later[0].finished - moment if later else None
