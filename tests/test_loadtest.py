"""A short real distributed Locust run (a master and two forked workers; REST and gRPC users) against the test
server: requests flow from both workers and none fail."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.torchserve_process import REPO

pytestmark = pytest.mark.server


def test_locust_rest_and_grpc_users_validate_answers(server, tmp_path):
    locust = Path(sys.executable).parent / "locust"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TAGGER_KEY_FILE": str(server.key_file),
           "TAGGER_GRPC_TARGET": server.grpc_target}
    result = subprocess.run(
        [str(locust), "--config", "loadtests/locust.conf", "--host", server.inference_url, "--users", "2",
         "--spawn-rate", "2", "--run-time", "15s", "--processes", "2", "--csv", str(tmp_path / "stats"),
         "--html", str(tmp_path / "report.html")],
        # A hang backstop, not a speed check: a 15 s run took 780 s once on a 2-core machine at load average 35.
        cwd=REPO, env=env, capture_output=True, text=True, timeout=800)
    with open(tmp_path / "stats_stats.csv") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0, result.stderr[-2000:]
    assert int(total["Failure Count"]) == 0, result.stderr[-3000:]
    assert any(name.startswith("REST") for name in rows) and any(name.startswith("gRPC") for name in rows)
    assert (tmp_path / "report.html").stat().st_size > 0
    assert "2 workers connected" in result.stderr, result.stderr[-2000:]
