"""What the commands share: exit codes, the terminal's rich output, who runs the command."""

from __future__ import annotations

import os
from typing import Any

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
