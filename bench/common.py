"""What the benchmarks share: the machine they ran on, and waiting for the daemon to drain a sink."""

from __future__ import annotations

import asyncio
import os
import platform
import time
from pathlib import Path

from daemon.status import request_status
from tests.support import Daemon


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def sink_status(socket: Path, sink: str) -> dict:
    """One sink's status, asked over the socket in-process (a `chatledger status` subprocess would
    steal a core from what is measured)."""
    return asyncio.run(request_status(socket))["sinks"][sink]


def wait_drained(daemon: Daemon, socket: Path, sink: str, events: int, poll: float) -> None:
    """Return once `sink` holds all `events` and has nothing pending."""
    while True:
        status = sink_status(socket, sink)
        if status["pending"] == 0 and status["delivered"] == events:
            return
        if daemon.process.poll() is not None:
            raise RuntimeError(f"daemon exited:\n{daemon.log()[-2000:]}")
        time.sleep(poll)
