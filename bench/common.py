"""What the benchmarks share: the machine they ran on, and waiting for the daemon to drain a sink."""

from __future__ import annotations

import asyncio
import os
import platform
import time
from pathlib import Path

from daemon.status import request_status
from tests.support import AirtableEmulator, Daemon, cli, write_config


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


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


def airtable_daemon(work: Path, emulator: AirtableEmulator, airtable_settings: str = "") -> tuple[Daemon, Path]:
    """The installed daemon (Airtable only) on a base `airtable init` set up, once it reports Airtable up
    (its start-up check done: what follows is what is measured); and its status socket."""
    extra = emulator.config().replace("[airtable]\n", "[airtable]\n" + airtable_settings)
    config = write_config(work, extra=extra)
    init = cli(config, "airtable", "init")
    assert init.returncode == 0, init.stdout + init.stderr
    daemon = Daemon(config).start()
    socket = work / "run" / "status.sock"
    while sink_status(socket, "airtable")["state"] != "up":
        time.sleep(0.05)
    return daemon, socket
