"""A short real distributed Locust run (a master and two forked workers; REST and gRPC users) against the test
server: requests flow from both workers and none fail. The master listens on a port from serving.ports, not on
Locust's fixed 5557, so that it cannot collide with another run or server on the machine."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.ports import PortInUse, port_in_use, start_on_free_ports
from serving.process_group import kill_group
from serving.torchserve_process import REPO

pytestmark = pytest.mark.server


def test_locust_rest_and_grpc_users_validate_answers(server, tmp_path):
    locust = Path(sys.executable).parent / "locust"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TAGGER_KEY_FILE": str(server.key_file),
           "TAGGER_GRPC_TARGET": server.grpc_target}

    def run_locust(ports: dict[str, int]) -> str:
        """Locust's stderr, once its master has exited."""
        # The forked workers connect to --master-host/--master-port, so both name the master's picked port.
        master = ["--master-bind-host", "127.0.0.1", "--master-bind-port", str(ports["master"]),
                  "--master-host", "127.0.0.1", "--master-port", str(ports["master"])]
        log = tmp_path / f"locust-{ports['master']}.err"
        with open(log, "w") as sink:
            process = subprocess.Popen(
                [str(locust), "--config", "loadtests/locust.conf", "--host", server.inference_url, "--users", "2",
                 "--spawn-rate", "2", "--run-time", "15s", "--processes", "2", *master,
                 "--csv", str(tmp_path / "stats"), "--html", str(tmp_path / "report.html")],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True)
        try:
            # A hang backstop, not a speed check: a 15 s run took 780 s once on a 2-core machine at load average 35.
            process.wait(timeout=800)
        finally:
            # Workers forked before a master that then failed to bind retry connecting to it for minutes.
            kill_group(process.pid)
        stderr = log.read_text(errors="replace")
        if clash := port_in_use(stderr):
            raise PortInUse(clash, ports)
        return stderr

    stderr = start_on_free_ports(run_locust, ["master"], "Locust's master")
    with open(tmp_path / "stats_stats.csv") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0, stderr[-2000:]
    assert int(total["Failure Count"]) == 0, stderr[-3000:]
    assert any(name.startswith("REST") for name in rows) and any(name.startswith("gRPC") for name in rows)
    assert (tmp_path / "report.html").stat().st_size > 0
    assert "2 workers connected" in stderr, stderr[-2000:]
