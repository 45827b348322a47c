"""Stopping a server that was started in its own process group (``start_new_session=True``).

TorchServe's frontend forks its Python workers, nginx its worker processes, Locust its workers: a server is a
group, and stopping it means the whole group. Each server gets a ladder of signals, politest first, each given
`grace` seconds before the next; whatever of the group is left after the ladder is killed.
"""
from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence

# Ask, then insist: TorchServe unloads its models on TERM within seconds; 30 s covers a busy 2-core machine.
TERM_THEN_KILL = ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0))


def stop_process_group(process: subprocess.Popen | None,
                       ladder: Sequence[tuple[int, float]] = TERM_THEN_KILL) -> None:
    """Signal `process`'s group with each (signal, grace seconds) of `ladder` until the leader exits, then kill
    what is left of the group (children that outlived their leader). Nothing to do for a process that exited
    and left no group behind."""
    if process is None:
        return
    for sig, grace in ladder:
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    kill_group(process.pid)


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by `pid`, if any of it is left."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
