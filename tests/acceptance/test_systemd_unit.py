"""The shipped systemd unit: accepted by systemd-analyze, and consistent with the daemon."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon.cli import EXIT_CONFIG
from tests.support import chatledger_bin

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "chatledger.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        match = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if match:
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    # verify checks that ExecStart exists, so point it at the chatledger these tests installed
    unit = tmp_path / "chatledger.service"
    unit.write_text(UNIT.read_text().replace("/opt/chatledger/bin/chatledger", chatledger_bin()))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "chatledger.service" not in result.stderr, result.stderr  # no warnings about our unit


def test_unit_matches_what_the_daemon_does():
    unit = directives()
    assert unit["Type"] == ["notify"]
    assert int(unit["WatchdogSec"][0]) >= 10
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]
    assert unit["ExecStart"][0].endswith("chatledger run --config /etc/chatledger/config.toml")
    assert unit["User"] == ["chatledger"]
    assert unit["StateDirectory"] == ["chatledger"] and unit["RuntimeDirectory"] == ["chatledger"]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert hardening in unit
    assert unit["ProtectSystem"] == ["strict"]
