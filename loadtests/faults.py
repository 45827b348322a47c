"""Bounded load on loopback for fault and overload checks: steady clients that report what is in flight, a burst
over capacity, the worker PIDs to kill.

Used by tests/test_faults.py (behaviour, synchronised on the load's events) and loadtests/reliability.py (the
measured figures).
"""
from __future__ import annotations

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
    # What went wrong: the JSON body's "type" (TorchServe's exception) or "reason" (the handler's refusal), or
    # "timeout" / "connection" when there was no answer; "" for a tag answer.
    kind: str = ""
    index: int = -1  # the order in which a LoadRun sent it

    @property
    def seconds(self) -> float:
        return self.finished - self.started


@dataclass
class LoadRun:
    """The outcomes of a load, and what is in flight: tests wait on it (`wait_for`) instead of sleeping."""
    outcomes: list[Outcome] = field(default_factory=list)
    # Re-entrant: a wait_for predicate runs with the lock held and may call answered() or in_flight().
    lock: threading.RLock = field(default_factory=threading.RLock)
    sent: int = 0
    pending: set[int] = field(default_factory=set)
    done: bool = False  # set when the load ends, so that nobody waits for answers that will not come

    def __post_init__(self):
        self.changed = threading.Condition(self.lock)

    def begin(self) -> int:
        with self.lock:
            index, self.sent = self.sent, self.sent + 1
            self.pending.add(index)
            return index

    def add(self, outcome: Outcome) -> None:
        with self.changed:
            self.outcomes.append(outcome)
            self.pending.discard(outcome.index)
            self.changed.notify_all()

    def finish(self) -> None:
        with self.changed:
            self.done = True
            self.changed.notify_all()

    def in_flight(self) -> set[int]:
        with self.lock:
            return set(self.pending)

    def answered(self, since: int = 0) -> int:
        """Requests answered 200 among those sent as number `since` or later."""
        with self.lock:
            return sum(o.status == 200 and o.index >= since for o in self.outcomes)

    def wait_for(self, predicate) -> bool:
        """Block until predicate(self) holds (True) or the load has ended without it (False)."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self) or self.done) and predicate(self)

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]


def send(url: str, key_file: Path, body: bytes, timeout: float = 150,
         session: requests.Session | None = None) -> Outcome:
    started = time.monotonic()
    try:
        headers = {"Authorization": f"Bearer {read_key('inference', key_file)}"}
        response = (session or requests).post(f"{url}/predictions/tagger", data=body, headers=headers,
                                              timeout=timeout)
    except requests.Timeout:
        return Outcome(started, time.monotonic(), 0, False, "timeout")
    except requests.RequestException as exc:
        return Outcome(started, time.monotonic(), 0, False,
                       "connection" if isinstance(exc, requests.ConnectionError) else type(exc).__name__)
    try:
        payload = response.json()
    except ValueError:
        return Outcome(started, time.monotonic(), response.status_code, False)
    kind = str(payload.get("type") or payload.get("reason") or "") if isinstance(payload, dict) else ""
    return Outcome(started, time.monotonic(), response.status_code, True, "" if response.ok else kind)


def steady_load(url: str, key_file: Path, bodies: list[bytes], clients: int, seconds: float | None = None,
                run: LoadRun | None = None, pause: float = 0.0, timeout: float = 150,
                stop: threading.Event | None = None) -> LoadRun:
    """`clients` closed-loop clients sending for `seconds`, or until `stop` is set (each waits for its answer or
    `timeout`, then `pause`), each over its own keep-alive connection, as a real client would."""
    if seconds is None and stop is None:
        raise ValueError("steady_load needs seconds or a stop event")
    run = run or LoadRun()
    deadline = None if seconds is None else time.monotonic() + seconds

    def going() -> bool:
        return not (stop and stop.is_set()) and (deadline is None or time.monotonic() < deadline)

    def client(index: int) -> None:
        i, session = index, requests.Session()
        while going():
            number = run.begin()
            outcome = send(url, key_file, bodies[i % len(bodies)], timeout=timeout, session=session)
            outcome.index = number
            run.add(outcome)
            i += clients
            if pause:
                time.sleep(pause)

    try:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
    finally:
        run.finish()
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


def recovery_after(run: LoadRun, moment: float) -> float | None:
    """Seconds from `moment` until the first request sent after it succeeded, or None."""
    later = sorted((o for o in run.outcomes if o.started >= moment and o.status == 200), key=lambda o: o.finished)
    return later[0].finished - moment if later else None
