"""The installed `chatledger` facing a mistaken config, a damaged journal and loose file modes."""

import os
import shutil
import sqlite3
import stat
import subprocess

import pytest

from tests.support import Daemon, chatledger_bin, cli, incoming, post, write_config

pytestmark = pytest.mark.acceptance


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path)


def journal_with_events(config, count):
    """Run the daemon once and acknowledge `count` events; return the journal's path."""
    daemon = Daemon(config).start()
    try:
        assert post(daemon.url, [incoming(f"m{i}") for i in range(count)])[0] == 200
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    return config.parent / "state" / "journal.sqlite"


def events_in(path):
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]


def test_a_status_socket_set_to_the_journal_is_refused_and_the_journal_survives(config):
    journal = journal_with_events(config, 3)
    original = config.read_text()
    config.write_text(original.replace('socket = "run/status.sock"', 'socket = "state/journal.sqlite"'))
    for command in ("run", "check-config", "status", "dead"):
        result = cli(config, command, timeout=30)
        assert result.returncode == 78, (command, result.stderr)
        assert "[status] socket: is the journal" in result.stderr
    assert events_in(journal) == 3
    config.write_text(original)
    daemon = Daemon(config).start()
    try:
        assert daemon.status()["journal"]["events"] == 3
    finally:
        daemon.stop()


def test_a_file_at_the_status_socket_path_is_left_alone(config):
    journal_with_events(config, 1)
    stray = config.parent / "run" / "status.sock"
    stray.write_text("not mine to delete")
    daemon = Daemon(config).start(wait=False)
    assert daemon.process.wait(timeout=30) == 1
    assert "is a regular file, not a socket" in daemon.log()
    assert stray.read_text() == "not mine to delete"


def without_root_powers(config, *command):
    """Run chatledger as root stripped of the capabilities that bypass file modes: a user for whom
    the journal's owner is someone else."""
    return subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", chatledger_bin(),
                           *command, "--config", str(config)], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_user_who_cannot_read_the_journal_is_told_why(config):
    journal = journal_with_events(config, 2)
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.parent.stat().st_mode) == 0o700
    owned = [journal.parent, *journal.parent.iterdir()]
    for path in owned:
        os.chown(path, 65534, 65534)  # the daemon's user is now someone else (nobody)
    for folder_mode in (0o700, 0o755):  # the folder closed, then only the file
        journal.parent.chmod(folder_mode)
        for command in (["dead"], ["journal", "check"]):
            result = without_root_powers(config, *command)
            assert result.returncode == 1, (command, result.stdout, result.stderr)
            assert f"journal {journal}: permission denied" in result.stderr
            assert "run the command as that user" in result.stderr and "Traceback" not in result.stderr
    for path in owned:
        os.chown(path, 0, 0)
    assert without_root_powers(config, "dead").returncode == 0  # its owner can
