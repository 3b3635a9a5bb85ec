"""What the commands share: exit codes, the terminal's rich output, who runs the command."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from daemon.config import Config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd's RestartPreventExitStatus names it
EXIT_USAGE = 64  # EX_USAGE: a bad command line (2 is `status`'s "no daemon answers")
EXIT_BAD_WHEN = 2  # `reconcile --since`: the contract


def rich_terminal(stream: Any) -> Any:
    """daemon.terminal's rich output when `stream` is a terminal; None: plain text, as scripts and logs read it."""
    if not stream.isatty():
        return None
    from daemon.terminal import Terminal  # rich's import is not needed off a terminal

    return Terminal.on(stream)


def current_operator() -> str:
    """Who runs this command, as the daemon would record them from its socket's peer."""
    import pwd

    from daemon.params import operator_name

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    return operator_name(user, os.environ.get("SUDO_USER"))


def through_daemon(
    config: Config, route: str, timeout_s: float, progress: Callable[[dict[str, Any]], Any] | None
) -> dict[str, Any]:
    """POST `route` to the daemon, which streams its answer: each progress line to `progress`, the last line
    returned; StatusUnreachable when no daemon answers."""
    from daemon.status import stream_status

    async def read() -> dict[str, Any]:
        last: dict[str, Any] = {}
        async for line in stream_status(config.status.socket, route, timeout_s):
            if "progress" in line:
                if progress:
                    progress(line["progress"])
            else:
                last = line
        return last

    return asyncio.run(read())
