"""Faults and overload against a real TorchServe of our own (it is killed, flooded and restarted here):
a SIGKILLed worker is replaced and every request comes back, a flood gets well-formed 503s, a restart brings back
versions and the default. Behaviour only: no check here depends on how fast the machine is; the timings are
measured by loadtests/reliability.py (docs/reliability.md)."""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from client.auth import read_key
from client.rest import call
from loadtests.faults import LoadRun, burst, send, steady_load, worker_pids
from serving.torchserve_process import TorchServe
from training.synth import render_jpegs

pytestmark = pytest.mark.server
QUEUE = 8  # a small job queue so that a flood overflows it within seconds on a 2-core machine
CLIENTS = 3
# Seconds a load client waits for an answer that TorchServe may never send (see below). Only how long a lost
# request takes to count as failed: a slow answer that runs past it is a failure the test accepts too.
CLIENT_TIMEOUT = 15


@pytest.fixture(scope="module")
def ts(model_store, tmp_path_factory):
    server = TorchServe(tmp_path_factory.mktemp("faults"), model_store, extra_config={"job_queue_size": str(QUEUE)})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """2 MP phone-sized JPEGs: enough decoding work per request to saturate the worker."""
    return render_jpegs(1632, 1224, count=4)


def replaced_workers(ts: TorchServe, killed: int, count: int) -> list[int]:
    """The worker PIDs once the killed one is gone and `count` workers report a PID again."""
    while True:  # polls for the event; a server that never replaces the worker is stopped by pytest's timeout
        assert ts.process.poll() is None, ts.log_text("ts_log.log")[-3000:]
        pids = worker_pids(ts.management_url, ts.key_file)
        if killed not in pids and len(pids) == count:
            return pids
        time.sleep(0.2)


def test_killed_worker_is_replaced_and_nothing_hangs(ts, photos):
    before = worker_pids(ts.management_url, ts.key_file)
    run, stop = LoadRun(), threading.Event()
    # TorchServe 0.12 loses the requests a worker thread had gathered into a batch when its backend dies before
    # the batch is sent: they are never answered (seen with 2 workers, where one often waits for a batch).
    # A client must time out and retry, as ours do; these clients give up after CLIENT_TIMEOUT seconds.
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(steady_load, ts.inference_url, ts.key_file, photos, CLIENTS, run=run, stop=stop,
                           timeout=CLIENT_TIMEOUT)
        try:
            with run.changed:  # held from the check to the kill: what is pending here is in flight at the kill
                run.changed.wait_for(lambda: run.done or (run.answered() >= 2 * CLIENTS and run.pending))
                assert not run.done, run.outcomes
                in_flight = set(run.pending)
                os.kill(before[0], signal.SIGKILL)
            after = replaced_workers(ts, before[0], len(before))
            replaced_at = run.sent  # requests numbered from here were sent once the new worker was there
            assert run.wait_for(lambda r: r.answered(since=replaced_at) >= CLIENTS), run.outcomes
        finally:
            stop.set()
        load.result()  # the load's own errors, if any

    failed = run.failed()
    print(f"\nworker kill: {run.sent} requests, {len(in_flight)} in flight at the kill, {len(failed)} failed "
          f"{dict(Counter(o.kind or o.status for o in failed))}")
    assert in_flight and after != before
    assert len(run.outcomes) == run.sent and not run.pending  # every request came back, answered or failed
    # 507: answered "worker died"; timeout: lost by the frontend and given up by the client.
    assert all((o.status in (500, 503, 507) and o.json_body) or o.kind == "timeout" for o in failed), failed
    # Only the kill's own casualties: nothing sent once the replacement was up failed.
    assert all(o.index < replaced_at for o in failed), failed


def test_flood_gets_well_formed_503s_and_recovers(ts, photos):
    run = burst(ts.inference_url, ts.key_file, photos, count=120, concurrency=60)
    rejected = [o for o in run.outcomes if o.status == 503]
    served = [o for o in run.outcomes if o.status == 200]
    print(f"\nflood: {len(served)} served, {len(rejected)} refused with 503")
    assert len(served) + len(rejected) == len(run.outcomes) == 120  # no other error, no timeout
    assert rejected and served
    # TorchServe's "queue full, retry later" (worded as if there were no worker), as JSON a client can read.
    assert all(o.json_body and o.kind == "ServiceUnavailableException" for o in rejected), rejected[:3]
    assert send(ts.inference_url, ts.key_file, photos[0]).status == 200  # load gone: served again


def test_restart_brings_back_versions_and_default(ts, photos):
    def manage(method, path):
        return call(method, f"{ts.management_url}{path}", "management", ts.key_file)

    assert manage("POST", "/models?url=tagger-2.0.mar&initial_workers=1&synchronous=true").status_code == 200
    assert manage("PUT", "/models/tagger/2.0/set-default").status_code == 200
    ts.stop()
    ts.start(restore_snapshot=True)
    versions = {v["modelVersion"]: v for v in manage("GET", "/models/tagger/all").json()}
    assert set(versions) == {"1.0", "2.0"}
    assert manage("GET", "/models/tagger").json()[0]["modelVersion"] == "2.0"
    assert all(v["workers"] for v in versions.values())
    headers = {"Authorization": f"Bearer {read_key('inference', ts.key_file)}"}
    answer = requests.post(f"{ts.inference_url}/predictions/tagger", data=photos[0], headers=headers, timeout=60)
    assert answer.json()["model_version"] == "2.0"
