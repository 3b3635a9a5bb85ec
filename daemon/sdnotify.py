"""systemd's sd_notify protocol (READY, STOPPING, STATUS, WATCHDOG) without a C library."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from loguru import logger


class Notifier:
    """Send datagrams to $NOTIFY_SOCKET; a no-op when the daemon is not run by systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self._address = address or None
        self._watchdog_usec = _watchdog_usec(environ)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None without a watchdog."""
        if not self.enabled or not self._watchdog_usec:
            return None
        return self._watchdog_usec / 2_000_000

    def notify(self, *assignments: str) -> None:
        if self._address is None:
            return
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            logger.warning("sd_notify to {} failed: {}", self._address.replace("\0", "@"), exc)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    pid = environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # the watchdog is meant for another process
    value = environ.get("WATCHDOG_USEC", "")
    return int(value) if value.isdigit() and int(value) > 0 else None
